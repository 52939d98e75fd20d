"""Sparse-view parallel-beam CT: ``y = R_Θ x``, the Radon transform at a few angles.

``A`` samples ``n_views`` projections equally spaced over ``[0°, angle_range)`` with one
detector bin per image column (skimage's ``radon(..., circle=True)`` convention: pixels
outside the inscribed disc are not measured). ``A`` has far fewer rows than columns and no
closed-form pseudo-inverse, so ``A_pinv`` solves the normal equations by conjugate
gradients (:func:`pinv_by_cg`), and :meth:`SparseViewCT.fbp` offers the fast but
approximate filtered back-projection.

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
from .conjugate_gradient import pinv_by_cg
from .radon import FILTERS, RadonTransform, parallel_beam_angles
from .registry import register_operator

try:  # optional CUDA extension; absent on CPU-only installs
    import torch_radon as _torch_radon
except ImportError:  # pragma: no cover - depends on the environment
    _torch_radon = None

GEOMETRIES = ("parallel",)
BACKENDS = ("auto", "torch", "torch_radon")

# CG defaults for A_pinv. Measured at 256², 60 views (Shepp–Logan, a real CT slice and
# uniform noise, float64 CG): the relative normal-equation residual ‖AᵀA x - Aᵀy‖/‖Aᵀy‖
# reaches 1e-3 in 10-14 iterations, 1e-5 in 35-75 and 1e-6 in 113-263. 1e-5 leaves
# ‖A x - y‖/‖y‖ ≈ 2e-4 at a bounded cost (one A and one Aᵀ per iteration); the cap stops
# a slowly converging sample.
DEFAULT_CG_TOL = 1e-5
DEFAULT_CG_MAX_ITER = 200


def torch_radon_available() -> bool:
    """Whether the optional ``torch_radon`` CUDA extension can be imported."""
    return _torch_radon is not None


class _TorchRadonBackend:
    """Thin adapter to torch-radon (UNTESTED here: the extension needs CUDA to build).

    Supports the v1 API ``Radon(resolution, angles, det_count)`` and the v2 API
    ``ParallelBeam(det_count, angles)``; both map ``(..., N, N) <-> (..., V, N)``.
    """

    def __init__(self, image_size: int, angles: torch.Tensor) -> None:
        angles = angles.detach().cpu().double().numpy()
        if hasattr(_torch_radon, "ParallelBeam"):
            self.projector = _torch_radon.ParallelBeam(image_size, angles)
        else:
            self.projector = _torch_radon.Radon(image_size, angles, det_count=image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector.forward(x.contiguous())

    def backward(self, y: torch.Tensor) -> torch.Tensor:
        return self.projector.backprojection(y.contiguous())


@register_operator
class SparseViewCT(Operator):
    """Sparse-view parallel-beam CT operator.

    Shapes: image ``(B, 1, N, N)``, measurement ``(B, 1, n_views, N)`` (views, detectors).

    ``A x = R_Θ x`` (line integrals with unit step, bilinear interpolation);
    ``At`` the exact adjoint ``R_Θᵀ`` (back-projection); ``A_pinv y`` the minimum-norm
    least-squares solution of ``R_Θᵀ R_Θ x = R_Θᵀ y`` by CG to relative residual
    ``cg_tol`` (or ``cg_max_iter`` iterations); ``AtA`` therefore projects onto the row
    space up to that accuracy. Pixels outside the inscribed disc are in the null space.

    Args:
        image_size: ``N`` or ``(N, N)``; images must be square.
        n_views: number of projection angles (>= 1).
        geometry: only ``"parallel"``.
        backend: ``"auto"``, ``"torch"`` or ``"torch_radon"`` (see the module docstring).
        angle_range: span of the equally spaced views in degrees, in ``(0, 360]``.
        cg_tol: relative normal-equation residual ``‖AᵀA x - Aᵀy‖ / ‖Aᵀy‖`` at which CG
            stops.
        cg_max_iter: CG iteration cap.

    Accuracy of ``A_pinv``: CG runs in float64 whatever the input dtype. The data residual
    ``‖A A† y - y‖`` converges fast, the image-space error does not: on its row space ``A``
    has condition numbers of 1e3-1e4 even at 32² with 8-16 views, so with the default
    tolerance ``AtA`` is idempotent/symmetric only to about 1e-2. A tight ``cg_tol``
    (1e-12) with enough iterations (about 2,000 at 32², 12 views) reaches 1e-9.
    """

    name = "ct"

    def __init__(
        self,
        image_size: int | tuple[int, int],
        n_views: int,
        geometry: str = "parallel",
        backend: str = "auto",
        angle_range: float = 180.0,
        cg_tol: float = DEFAULT_CG_TOL,
        cg_max_iter: int = DEFAULT_CG_MAX_ITER,
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
        if backend == "torch_radon" and not torch_radon_available():
            raise ImportError(
                "backend='torch_radon' needs the torch_radon CUDA extension, which is not "
                "importable (it is not on PyPI: build it from source); use backend='torch'"
            )
        if not 0.0 < float(angle_range) <= 360.0:
            raise ValueError(f"angle_range must lie in (0, 360] degrees, got {angle_range!r}")
        if not float(cg_tol) > 0.0:
            raise ValueError(f"cg_tol must be positive, got {cg_tol!r}")
        if int(cg_max_iter) != cg_max_iter or cg_max_iter < 1:
            raise ValueError(f"cg_max_iter must be a positive integer, got {cg_max_iter!r}")

        n, n_views = int(height), int(n_views)
        self._config: dict[str, Any] = {
            "image_size": n,
            "n_views": n_views,
            "geometry": geometry,
            "backend": backend,
            "angle_range": float(angle_range),
            "cg_tol": float(cg_tol),
            "cg_max_iter": int(cg_max_iter),
        }
        self.image_shape = (1, n, n)
        self.measurement_shape = (1, n_views, n)
        angles = parallel_beam_angles(n_views, float(angle_range))
        self.radon = RadonTransform(n, angles, angle_range=float(angle_range))
        self._torch_radon: _TorchRadonBackend | None = None

    @property
    def angles(self) -> torch.Tensor:
        """View angles in radians, ``(n_views,)``."""
        return self.radon.angles

    # -- backend dispatch ------------------------------------------------------------
    def _uses_torch_radon(self, t: torch.Tensor) -> bool:
        backend = self._config["backend"]
        if backend == "torch":
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
            self._torch_radon = _TorchRadonBackend(self._config["image_size"], self.angles)
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
        tol, max_iter = self._config["cg_tol"], self._config["cg_max_iter"]
        if self._uses_torch_radon(y):  # pragma: no cover - needs CUDA + torch_radon
            return pinv_by_cg(y, self._A, self._At, tol, max_iter)
        # CG always runs in float64: cond(AᵀA) on the row space is 1e5-1e8 even at 32², so
        # float32 CG stalls near a 1e-6 residual and, iterated past that, diverged in our
        # tests. The weights are cast once per solve; the result returns in y's dtype.
        project, backproject = self.radon.linear_maps(torch.float64)
        x = pinv_by_cg(y.to(torch.float64), project, backproject, tol, max_iter)
        return x.to(y.dtype)

    def fbp(self, y: torch.Tensor, filter_name: str = "ramp") -> torch.Tensor:
        """Filtered back-projection, a fast approximate inverse: ``(B, 1, V, N) -> (B, 1, N, N)``.

        Accurate only with many views (it assumes dense angular sampling); with sparse
        views it shows streaks, which is what the learned reconstruction removes.
        ``filter_name`` is one of ``"ramp"``, ``"shepp-logan"``, ``"cosine"``,
        ``"hamming"``, ``"hann"``.
        """
        if filter_name not in FILTERS:
            raise ValueError(f"filter_name must be one of {FILTERS}, got {filter_name!r}")
        return self.radon.fbp(self.check_measurement(y), filter_name)
