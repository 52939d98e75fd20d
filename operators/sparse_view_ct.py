"""Sparse-view CT: ``y = R_Θ x``, parallel-beam or fan-beam projections at a few angles.

``geometry="parallel"`` (default) is the Radon transform of :mod:`.radon`;
``geometry="fan"`` the fan-beam transform of :mod:`.fan_beam` (flat or arc detector,
source–isocentre / source–detector distances in pixels; the keywords of
:class:`.fan_beam.FanGeometry`, e.g. from :func:`.fan_beam.fan_geometry_from_dicom`), a
full scan over 360° by default. Both are sparse matrices with an exact transpose and share
everything below.

``A`` samples ``n_views`` projections equally spaced over ``[0°, angle_range)``. By
default the detector has ``⌈√2·N⌉`` bins and covers the whole image (skimage's
``radon(..., circle=False)``); ``circle=True`` keeps ``N`` bins and measures only the
inscribed disc (``circle=True``). ``A`` has far fewer rows than columns, is rank deficient
(``A Aᵀ`` has exact null vectors, e.g. the difference of the 0° and 90° view sums) and
is ill conditioned on its range (κ(A Aᵀ) of 1e8-1e9 already at 32²-48²), so no
preconditioner we tried (ramp filter, Jacobi, both with row scaling) makes CG converge in
a few iterations. Measured at 48², 20 views (1236 rays that meet the image): the ramp
filter M puts 75% of the eigenvalues of M·AAᵀ within [0.1, 1]·λ_max, but 209 (17%) lie
below 1e-3 and spread down to 1e-10, so the small ones are not a few outliers to deflate
(thousands at 256²); after 160 iterations CG in image or data space, ramp-preconditioned
or not, is still 8-9% from A⁺y in image space.
``A_pinv`` therefore has two solvers:

* ``"direct"``: the dense numerical pseudo-inverse of ``A`` restricted to the rays that
  meet the image (:func:`truncated_pinv`, SVD with numerical rank ``σ > rcond·σ_max``,
  :data:`DIRECT_RCOND`), cached per device and weight dtype. Exact to rounding for every
  ``y`` (also outside the range) and linear, so autograd differentiates it exactly.
* ``"cg"``: CG on ``AᵀA x = Aᵀ y`` in float64 (:class:`CGPseudoInverse`), warm-started
  from the filtered back-projection ``Aᵀ (Δθ/2 · ramp * y)`` (in the range of ``Aᵀ``, so
  the minimum-norm solution is kept), with the implicit CG backward. NOT exact: it
  matches the data closely but the image-space identities only to ~1e-2 (ill
  conditioning); it is the fallback where the dense pseudo-inverse does not fit.

``pinv="auto"`` (default) picks ``"direct"`` when the dense matrix has at most
:data:`DIRECT_MAX_ENTRIES` entries (an SVD of seconds) and ``"cg"`` otherwise.
:meth:`SparseViewCT.fbp` offers the fast but approximate filtered back-projection.

Backends: ``"torch"`` is the pure-torch sparse-matrix transform of :mod:`.radon` (CPU and
GPU, float32/float64, exact adjoint). ``"torch_radon"`` uses the optional CUDA extension
`torch-radon` (not on PyPI); ``"auto"`` picks it for float32 CUDA inputs when it is
importable. The torch-radon path is deliberately thin and UNTESTED in this repository (it
cannot be installed here); its ray-driven discretisation is close to, but not identical
with, ours, so sinograms from the two backends differ slightly.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Operator, check_image_size
from .conjugate_gradient import CGPseudoInverse, LinearMap, pinv_by_cg
from .fan_beam import FanBeamTransform, FanGeometry
from .radon import FILTERS, RadonTransform, parallel_beam_angles
from .registry import register_operator

try:  # optional CUDA extension; absent on CPU-only installs
    import torch_radon as _torch_radon
except ImportError:  # pragma: no cover - depends on the environment
    _torch_radon = None

GEOMETRIES = ("parallel", "fan")
#: Keyword arguments of the fan geometry (:class:`.fan_beam.FanGeometry`), pixel units.
FAN_KEYS = ("source_distance", "detector_distance", "detector", "n_detectors", "detector_spacing")
BACKENDS = ("auto", "torch", "torch_radon")

PINV_SOLVERS = ("auto", "direct", "cg")
#: ``pinv="auto"`` uses the dense pseudo-inverse up to this many entries (rays meeting
#: the image x pixels): 4 M is an SVD of a few seconds and 32 MB in float64.
DIRECT_MAX_ENTRIES = 4_000_000
#: Numerical rank of the dense pseudo-inverse, per dtype of the stored weights: the
#: data's precision sets how small a singular value can be resolved.
DIRECT_RCOND = {torch.float64: 1e-6, torch.float32: 1e-4}
# CG settings of the "cg" solver (large geometries). κ(A) on its row space reaches 1e4-1e8
# (rays that clip a corner), so no bounded CG run is exact in image space; these bound the
# cost at the order of the earlier defaults (1e-5, 200) and reach the data to ~1e-4
# (benchmarks/results/operators_ct.md).
DEFAULT_CG_TOL = 1e-6
DEFAULT_CG_MAX_ITER = 200


def torch_radon_available() -> bool:
    """Whether the optional ``torch_radon`` CUDA extension can be imported."""
    return _torch_radon is not None


class _TorchRadonBackend:
    """Thin adapter to torch-radon (UNTESTED here: the extension needs CUDA to build).

    Supports the v1 API ``Radon(resolution, angles, det_count)`` and the v2 API
    ``ParallelBeam(det_count, angles)``; both map ``(..., N, N) <-> (..., V, D)``.
    """

    def __init__(self, image_size: int, angles: torch.Tensor, n_detectors: int) -> None:
        angles = angles.detach().cpu().double().numpy()
        if hasattr(_torch_radon, "ParallelBeam"):
            self.projector = _torch_radon.ParallelBeam(n_detectors, angles)
        else:
            self.projector = _torch_radon.Radon(image_size, angles, det_count=n_detectors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector.forward(x.contiguous())

    def backward(self, y: torch.Tensor) -> torch.Tensor:
        return self.projector.backprojection(y.contiguous())


def truncated_pinv(matrix: torch.Tensor, rcond: float) -> torch.Tensor:
    """Numerical pseudo-inverse ``V_k Σ_k⁻¹ U_kᵀ`` ``(n, m)`` of a dense ``(m, n)`` matrix.

    ``M = U Σ Vᵀ`` by SVD; singular values below ``rcond·σ_max`` count as zero (the
    numerical rank). Applying this matrix directly (rather than ``Mᵀ (M Mᵀ)⁺``) keeps the
    rounding error at ``ε·κ`` with ``κ ≤ 1/rcond``: sparse-view CT matrices have
    singular values down to 1e-9·σ_max, which the squared form cannot resolve.
    """
    u, sigma, vh = torch.linalg.svd(matrix, full_matrices=False)
    keep = sigma > rcond * sigma[0]
    return (vh[keep].T / sigma[keep]) @ u[:, keep].T


@register_operator
class SparseViewCT(CGPseudoInverse, Operator):
    """Sparse-view CT operator (parallel or fan beam).

    Shapes: image ``(B, 1, N, N)``, measurement ``(B, 1, n_views, D)`` (views, detectors)
    with ``D = ⌈√2·N⌉`` (parallel, ``circle=False``, default), ``D = N`` (parallel,
    ``circle=True``) or the fan geometry's ``n_detectors``.

    ``A x = R_Θ x`` (line integrals with unit step, bilinear interpolation);
    ``At`` the exact adjoint ``R_Θᵀ`` (back-projection); ``A_pinv y = R_Θ⁺ y`` the
    minimum-norm least-squares solution, by the solver ``pinv`` (module docstring);
    ``AtA`` projects onto the row space. With ``circle=True`` pixels outside the inscribed
    disc are in the null space.

    Args:
        image_size: ``N`` or ``(N, N)``; images must be square.
        n_views: number of projection angles (>= 1).
        geometry: ``"parallel"`` or ``"fan"``.
        backend: ``"auto"``, ``"torch"`` or ``"torch_radon"`` (see the module docstring);
            the fan geometry always uses ``"torch"``.
        angle_range: span of the equally spaced views in degrees, in ``(0, 360]``; default
            180 (parallel) or 360 (fan, full scan; a short scan needs ≥ 180° + fan angle
            for the FBP).
        circle: measure only the inscribed disc with ``N`` detector bins (parallel only).
        pinv: ``"auto"``, ``"direct"`` or ``"cg"``.
        cg_tol: relative normal-equation residual ``‖AᵀA x - Aᵀy‖ / ‖Aᵀy‖`` at which CG
            stops (``"cg"`` only).
        cg_max_iter: CG iteration cap (``"cg"`` only).
        **fan: fan-beam geometry (:data:`FAN_KEYS`): ``source_distance``,
            ``detector_distance``, ``detector`` (``"arc"`` / ``"flat"``), ``n_detectors``,
            ``detector_spacing``; defaults in :meth:`.fan_beam.FanGeometry.create`.
    """

    name = "ct"

    def __init__(
        self,
        image_size: int | tuple[int, int],
        n_views: int,
        geometry: str = "parallel",
        backend: str = "auto",
        angle_range: float | None = None,
        circle: bool = False,
        pinv: str = "auto",
        cg_tol: float = DEFAULT_CG_TOL,
        cg_max_iter: int = DEFAULT_CG_MAX_ITER,
        **fan: Any,
    ) -> None:
        super().__init__()
        height, width = check_image_size(image_size)
        if height != width:
            raise ValueError(f"image_size must be square for CT, got {image_size!r}")
        if isinstance(n_views, bool) or int(n_views) != n_views or n_views < 1:
            raise ValueError(f"n_views must be a positive integer, got {n_views!r}")
        if geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        unknown = set(fan) - set(FAN_KEYS)
        if unknown or (fan and geometry != "fan"):
            raise TypeError(
                f"unexpected keyword arguments {sorted(fan)} for geometry {geometry!r} "
                f"(fan-beam keywords: {FAN_KEYS})"
            )
        if geometry == "fan" and (backend == "torch_radon" or circle):
            raise ValueError("the fan geometry has backend='torch' and circle=False only")
        if backend == "torch_radon" and not torch_radon_available():
            raise ImportError(
                "backend='torch_radon' needs the torch_radon CUDA extension, which is not "
                "importable (it is not on PyPI: build it from source); use backend='torch'"
            )
        if angle_range is None:
            angle_range = 360.0 if geometry == "fan" else 180.0
        if not 0.0 < float(angle_range) <= 360.0:
            raise ValueError(f"angle_range must lie in (0, 360] degrees, got {angle_range!r}")
        if pinv not in PINV_SOLVERS:
            raise ValueError(f"pinv must be one of {PINV_SOLVERS}, got {pinv!r}")
        cg_config = self._init_cg(cg_tol, cg_max_iter)

        n, n_views = int(height), int(n_views)
        angles = parallel_beam_angles(n_views, float(angle_range))
        self.radon: RadonTransform | FanBeamTransform
        if geometry == "fan":
            fan_geometry = FanGeometry.create(n, **fan)
            self.radon = FanBeamTransform(fan_geometry, angles, float(angle_range))
            fan = fan_geometry.config()
        else:
            self.radon = RadonTransform(n, angles, angle_range=float(angle_range), circle=circle)
        self._config: dict[str, Any] = {
            "image_size": n,
            "n_views": n_views,
            "geometry": geometry,
            "backend": backend,
            "angle_range": float(angle_range),
            "circle": bool(circle),
            "pinv": pinv,
            **cg_config,
            **fan,
        }
        self.image_shape = (1, n, n)
        self.measurement_shape = (1, n_views, self.radon.n_detectors)
        live = self.radon.ray_lengths().flatten() > 0
        self.register_buffer("live_rays", live.nonzero().squeeze(1), persistent=False)
        if pinv == "auto":
            pinv = "direct" if self.live_rays.numel() * n * n <= DIRECT_MAX_ENTRIES else "cg"
        self.solver = pinv
        self._dense_pinv: dict[tuple, torch.Tensor] = {}
        self._torch_radon: _TorchRadonBackend | None = None

    @property
    def angles(self) -> torch.Tensor:
        """View angles in radians, ``(n_views,)``."""
        return self.radon.angles

    # -- backend dispatch ------------------------------------------------------------
    def _uses_torch_radon(self, t: torch.Tensor) -> bool:
        backend = self._config["backend"]
        if backend == "torch" or self._config["geometry"] == "fan":
            return False
        fits = t.is_cuda and t.dtype == torch.float32
        if backend == "torch_radon":
            if not fits:
                raise ValueError(
                    f"backend='torch_radon' needs float32 CUDA tensors, got {t.dtype} on {t.device}"
                )
            return True
        return fits and torch_radon_available()

    def _external(self) -> _TorchRadonBackend:
        if self._torch_radon is None:
            self._torch_radon = _TorchRadonBackend(
                self._config["image_size"], self.angles, self.radon.n_detectors
            )
        return self._torch_radon

    # -- contract --------------------------------------------------------------------
    def _A(self, x: torch.Tensor) -> torch.Tensor:
        if self._uses_torch_radon(x):  # pragma: no cover - needs CUDA + torch_radon
            return self._external().forward(x)
        return self.radon.project(x)

    def _At(self, y: torch.Tensor) -> torch.Tensor:
        if self._uses_torch_radon(y):  # pragma: no cover - needs CUDA + torch_radon
            return self._external().backward(y)
        return self.radon.backproject(y)

    def _A_pinv(self, y: torch.Tensor) -> torch.Tensor:
        if self._uses_torch_radon(y):  # pragma: no cover - needs CUDA + torch_radon
            return pinv_by_cg(y, self._A, self._At, self.cg_tol, self.cg_max_iter)
        if self.solver == "direct":
            return self._direct_pinv(y)
        return self._cg_pinv(y)

    # -- the exact solvers -----------------------------------------------------------
    def _direct_pinv(self, y: torch.Tensor) -> torch.Tensor:
        """``A⁺ y`` with the dense numerical pseudo-inverse over the rays that meet the
        image, applied in float64 (linear, so autograd gives ``(A⁺)ᵀ`` exactly)."""
        weights = self.radon.val
        key = (weights.device, weights.dtype)
        if key not in self._dense_pinv:
            # From the weights as stored (float32-rounded in a float32 operator), so the
            # identities hold for the matrix A actually applies.
            fwd, _ = self.radon._matrices(torch.float64)
            dense = fwd.to_dense()[self.live_rays]
            rcond = DIRECT_RCOND.get(weights.dtype, DIRECT_RCOND[torch.float32])
            self._dense_pinv = {key: truncated_pinv(dense, rcond)}  # one device at a time
        pinv = self._dense_pinv[key]
        flat = y.to(torch.float64).reshape(y.shape[0], -1)[:, self.live_rays]
        return (flat @ pinv.T).view(y.shape[0], *self.image_shape).to(y.dtype)

    def _cg_maps(self, dtype: torch.dtype) -> tuple[LinearMap, LinearMap]:
        return self.radon.linear_maps(dtype)

    def _cg_warm_start(self, y: torch.Tensor, A: LinearMap, At: LinearMap) -> torch.Tensor:
        """``Aᵀ z`` with ``z`` the ramp-filtered sinogram: the FBP written with the exact
        adjoint, so it lies in the range of ``Aᵀ`` and CG keeps the minimum-norm solution."""
        return At(self.radon.adjoint_fbp_sinogram(y))

    def fbp(self, y: torch.Tensor, filter_name: str = "ramp") -> torch.Tensor:
        """Filtered back-projection, a fast approximate inverse: ``(B, 1, V, D) -> (B, 1, N, N)``.

        Accurate only with many views (it assumes dense angular sampling); with sparse
        views it shows streaks, which is what the learned reconstruction removes.
        ``filter_name`` is one of ``"ramp"``, ``"shepp-logan"``, ``"cosine"``,
        ``"hamming"``, ``"hann"``.
        """
        if filter_name not in FILTERS:
            raise ValueError(f"filter_name must be one of {FILTERS}, got {filter_name!r}")
        return self.radon.fbp(self.check_measurement(y), filter_name)
