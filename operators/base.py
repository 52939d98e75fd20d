"""The operator contract shared by every forward model, and its two tiers.

An operator describes how an image ``x`` was measured: ``y = A x``. The IDM core uses
only the four linear maps below, so any operator that honours them plugs into it:

==============  ==============================================================
``A(x)``        measurements ``y``
``At(y)``       the exact adjoint ``Aᵀ``: ``<A x, y> = <x, Aᵀ y>``
``A_pinv(y)``   the Moore–Penrose pseudo-inverse ``A† y``
``AtA(x)``      ``A† A x`` (A-dagger A, *not* ``AᵀA``): the orthogonal projection onto
                the row space of ``A``
==============  ==============================================================

Images are real tensors shaped ``(B, C, H, W)``; complex images (MRI) are two channels
(real, imaginary). Measurements are real tensors shaped ``(B, *measurement_shape)``.
Matrices and masks are registered as buffers, so ``op.to(device)``, ``op.double()`` and
``state_dict()`` behave as for any ``nn.Module``.

An operator is a fixed *structure* (image size, block size, FFT, geometry), described by
the JSON-safe :attr:`Operator.config`, plus *parameters* that may change per slice or per
training step (a mask, coil maps, a permutation). Parameters live in buffers; they are
regenerated from a seed recorded in the config or, when given explicitly, travel in the
``state_dict``. :meth:`Operator.update` swaps them in place, so one operator serves a whole
volume or training run.

Tiers (after deepinv's Physics → LinearPhysics → DecomposablePhysics):

* :class:`Operator` — any linear operator; subclasses give ``A``, ``Aᵀ`` and ``A†``.
* :class:`ScaledAdjointOperator` — ``A Aᵀ = c P`` with ``P`` an orthogonal projection
  (equivalently every nonzero singular value of ``A`` equals ``√c``), so ``A† = Aᵀ / c``
  in closed form; subclasses give ``A``, ``Aᵀ`` and ``c`` only.

Input checks: every call validates type, dtype and shape (cheap, no device sync). NaN/inf
checks need a host sync on a GPU, so they are not made per call: entry points (the
pipeline, the model's forward) call :func:`check_finite` once on their input.
"""

from __future__ import annotations

import math
from abc import ABCMeta, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn


def _describe(shape: tuple[int, ...]) -> str:
    return "(B, " + ", ".join(str(s) for s in shape) + ")"


class Operator(nn.Module, metaclass=ABCMeta):
    """Base class of all forward operators.

    Subclasses set :attr:`name` (their registry key), fill ``self._config`` with JSON-safe
    constructor arguments that rebuild their structure, set :attr:`image_shape` and
    :attr:`measurement_shape`, and implement :meth:`_A`, :meth:`_At` and :meth:`_A_pinv`.
    The public methods validate their input and call those. Parameters that only an
    explicit tensor can define (not a seed) are listed in ``self._missing`` until they are
    set by :meth:`update` or ``load_state_dict``; using the operator before raises.
    """

    name: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self._config: dict[str, Any] = {}
        self._missing: set[str] = set()
        self.image_shape: tuple[int, ...] = ()
        self.measurement_shape: tuple[int, ...] = ()

    # -- contract --------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """JSON-safe arguments: ``make_operator(**op.config)`` rebuilds this operator's
        structure and seeded parameters; ``load_state_dict(op.state_dict())`` then restores
        parameters that were given explicitly."""
        return {"name": self.name, **self._config}

    def update(self, **params: Any) -> Operator:
        """Replace random parameters in place (e.g. ``mask=``, ``coil_maps=``, ``seed=``);
        returns ``self``. Operators without parameters accept no keywords."""
        if params:
            raise TypeError(f"operator {self.name!r} has no parameters {sorted(params)}")
        return self

    def resample(self, seed: int) -> Operator:
        """Draw new random parameters from ``seed`` with the operator's generators (a new
        mask per training step); returns ``self``. Operators without any: no-op."""
        return self

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Forward model ``y = A x``: ``(B, *image_shape) -> (B, *measurement_shape)``."""
        return self._A(self.check_image(x))

    def At(self, y: torch.Tensor) -> torch.Tensor:
        """Exact adjoint ``Aᵀ y``: ``(B, *measurement_shape) -> (B, *image_shape)``."""
        return self._At(self.check_measurement(y))

    def A_pinv(self, y: torch.Tensor) -> torch.Tensor:
        """Pseudo-inverse ``A† y``: ``(B, *measurement_shape) -> (B, *image_shape)``."""
        return self._A_pinv(self.check_measurement(y))

    def A_pinv_damped(self, y: torch.Tensor, damping: float | torch.Tensor) -> torch.Tensor:
        """Damped pseudo-inverse ``V diag(s / (s² + λ)) Uᵀ y`` for ``A = U diag(s) Vᵀ``
        (``damping`` ``λ >= 0``, a scalar or ``(B,)`` tensor): the Tikhonov solution
        ``argmin ‖A x − y‖² + λ ‖x‖²``, ``A† y`` at ``λ = 0``; shapes as :meth:`A_pinv`.

        Exact for :class:`ScaledAdjointOperator` (``A† y · c / (c + λ)``) and for operators
        that override :meth:`_A_pinv_damped` (multi-coil SENSE); otherwise
        ``A† y / (1 + λ)``, which treats every singular value as 1.
        """
        y = self.check_measurement(y)
        if torch.is_tensor(damping):
            if damping.dim() not in (0, 1) or bool((damping < 0).any()):
                raise ValueError("damping must be a scalar or (B,) tensor of values >= 0")
        elif damping < 0:
            raise ValueError(f"damping must be >= 0, got {damping}")
        return self._A_pinv_damped(y, damping)

    def _A_pinv_damped(self, y: torch.Tensor, damping: float | torch.Tensor) -> torch.Tensor:
        return _scale_per_item(self._A_pinv(y), 1.0 / (1.0 + damping))

    def AtA(self, x: torch.Tensor) -> torch.Tensor:
        """``A† A x`` (A-dagger A): the orthogonal projection onto the row space of ``A``
        (equal to ``Aᵀ A x`` only when the rows of ``A`` are orthonormal); same shape."""
        x = self.check_image(x)
        return self._A_pinv(self._A(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(x)

    # -- to implement (inputs already validated) --------------------------------------
    @abstractmethod
    def _A(self, x: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _At(self, y: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _A_pinv(self, y: torch.Tensor) -> torch.Tensor: ...

    # -- diagnostics -----------------------------------------------------------------
    def adjointness_test(self, batch: int = 2, seed: int = 0) -> float:
        """``|<A x, y> − <x, Aᵀ y>| / (‖A x‖ ‖y‖)`` on seeded random ``x``, ``y`` in the
        operator's dtype and device (round-off for an exact adjoint)."""
        x, y = self._random_pair(batch, seed)
        with torch.no_grad():
            ax = self.A(x)
            lhs, rhs = (ax * y).sum(), (x * self.At(y)).sum()
            return float((lhs - rhs).abs() / (ax.norm() * y.norm()).clamp_min(1e-300))

    def operator_norm(self, max_iter: int = 100, tol: float = 1e-7, seed: int = 0) -> float:
        """``‖A‖₂ = σ_max(A)`` by power iteration on ``AᵀA`` (stops when the estimate's
        relative change is below ``tol``)."""
        x, _ = self._random_pair(1, seed)
        estimate = 0.0
        with torch.no_grad():
            for _ in range(max_iter):
                x = x / x.norm()
                x = self.At(self.A(x))
                new = math.sqrt(float(x.norm()))
                if abs(new - estimate) <= tol * new:
                    return new
                estimate = new
        return estimate

    def _random_pair(self, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        ref = next(iter(self.buffers()), None)
        dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float64
        device = ref.device if ref is not None else torch.device("cpu")
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, *self.image_shape, generator=gen, dtype=dtype)
        y = torch.randn(batch, *self.measurement_shape, generator=gen, dtype=dtype)
        return x.to(device), y.to(device)

    # -- validation ------------------------------------------------------------------
    def check_image(self, x: torch.Tensor, argument: str = "x") -> torch.Tensor:
        """Validate an image batch (type, dtype, shape); raises ``ValueError``."""
        self._check_ready()
        return _check(x, self.image_shape, argument, "image")

    def check_measurement(self, y: torch.Tensor, argument: str = "y") -> torch.Tensor:
        """Validate a measurement batch (type, dtype, shape); raises ``ValueError``."""
        self._check_ready()
        return _check(y, self.measurement_shape, argument, "measurement")

    def _check_ready(self) -> None:
        if self._missing:
            raise RuntimeError(
                f"operator {self.name!r} has no {', '.join(sorted(self._missing))} yet: "
                "call update(...) or load_state_dict(...) first"
            )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        for name in self._missing:
            # A placeholder takes the stored tensor's dtype (no rounding through float32).
            current, stored = self._buffers.get(name), state_dict.get(prefix + name)
            if current is not None and isinstance(stored, torch.Tensor):
                self._buffers[name] = torch.empty_like(stored, device=current.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._missing -= {name for name in list(self._missing) if prefix + name in state_dict}
        self._after_state_loaded()

    def _after_state_loaded(self) -> None:
        """Hook: parameters were replaced by ``load_state_dict`` (drop derived caches)."""

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._config.items())


class ScaledAdjointOperator(Operator):
    """Operators with ``A Aᵀ = c P`` (``P`` an orthogonal projection, ``c > 0``).

    Every nonzero singular value of ``A`` is ``√c``, so ``A† = Aᵀ / c`` and
    ``A†A = AᵀA / c`` in closed form. Subclasses implement ``_A``, ``_At`` and
    :attr:`gram_scale` (``c``; 1 for partial isometries such as masks and orthonormal
    sensing matrices).
    """

    gram_scale: float = 1.0

    def _A_pinv(self, y: torch.Tensor) -> torch.Tensor:
        x = self._At(y)
        return x if self.gram_scale == 1.0 else x / self.gram_scale

    def _A_pinv_damped(self, y: torch.Tensor, damping: float | torch.Tensor) -> torch.Tensor:
        # Every nonzero singular value is √c: s / (s² + λ) = (1 / s) · c / (c + λ).
        return _scale_per_item(self._A_pinv(y), self.gram_scale / (self.gram_scale + damping))


def _scale_per_item(x: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """``x · factor`` with a scalar or ``(B,)`` ``factor`` (one per batch item)."""
    if torch.is_tensor(factor):
        factor = factor.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return x * factor


def check_finite(t: torch.Tensor, argument: str = "y") -> torch.Tensor:
    """Raise ``ValueError`` if ``t`` holds NaN or ±inf (one host sync on a GPU); returns
    ``t``. Entry points call it once; the operators' per-call checks do not."""
    if not bool(torch.isfinite(t.detach()).all()):
        raise ValueError(f"{argument} contains NaN or infinite values")
    return t


def range_null_space_projection(
    x: torch.Tensor, y: torch.Tensor, operator: Operator
) -> torch.Tensor:
    """``x − A†(A x − y)``: keep the null-space part of ``x`` and take its row-space part
    from the measurements, so that ``A`` of the result equals ``y`` (for ``y`` in the range
    of ``A``). The data-consistency step of DDNM, IDM and the TV baseline."""
    return x - operator.A_pinv(operator.A(x) - y)


def noise_aware_projection(
    x: torch.Tensor,
    y: torch.Tensor,
    operator: Operator,
    noise_sigma: float | torch.Tensor,
    prior_sigma: float | torch.Tensor,
) -> torch.Tensor:
    """Data consistency for noisy ``y = A x* + n``, ``n ~ N(0, σ_y² I)`` (``σ_y`` per real
    measurement component: ``σ/√2`` for complex k-space noise with ``E|n|² = σ²``):
    ``x − A_λ(A x − y)`` with the damped inverse ``A_λ`` of :meth:`Operator.A_pinv_damped`,
    ``λ = σ_y² / σ_x²``.

    With the estimate ``x`` modelled as ``x* + e``, ``e ~ N(0, σ_x² I)``, this is the
    posterior mean of ``x*`` given ``x`` and ``y`` wherever ``A_λ`` is exact: per singular
    value the step is weighted by ``s² σ_x² / (s² σ_x² + σ_y²)``, so for ``A Aᵀ = c P``
    (:class:`ScaledAdjointOperator`) it is ``x − σ_x² / (σ_x² + σ_y² / c) · A†(A x − y)``;
    operators without an exact ``A_λ`` take the DDNM+ scalar approximation (``c = 1``).
    ``σ_y = 0`` gives :func:`range_null_space_projection`; the null-space part of ``x`` is
    kept in every case. Shapes as that function; ``noise_sigma`` may also be a ``(B,)``
    tensor (one level per batch item) and ``prior_sigma`` a scalar tensor (a learned σ_x,
    gradients flow through it).
    """
    if torch.is_tensor(noise_sigma):
        if noise_sigma.dim() not in (0, 1) or bool((noise_sigma < 0).any()):
            raise ValueError("noise_sigma must be a scalar or (B,) tensor of values >= 0")
        noise_sigma = noise_sigma.to(x.dtype)
    elif noise_sigma < 0:
        raise ValueError(f"noise_sigma must be >= 0, got {noise_sigma}")
    if not torch.is_tensor(prior_sigma) and prior_sigma <= 0:
        raise ValueError(f"prior_sigma must be > 0, got {prior_sigma}")
    return x - operator.A_pinv_damped(operator.A(x) - y, noise_sigma**2 / prior_sigma**2)


def _check(t: torch.Tensor, shape: tuple[int, ...], argument: str, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{argument} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(
            f"{argument} must be a real floating-point tensor (float32 or float64), "
            f"got dtype {t.dtype}"
        )
    if t.dim() != len(shape) + 1 or tuple(t.shape[1:]) != tuple(shape):
        raise ValueError(
            f"{argument} must have {what} shape {_describe(shape)}, got {tuple(t.shape)}"
        )
    return t


def check_ratio(value: float, argument: str) -> float:
    """A sampling ratio must lie in (0, 1]."""
    value = float(value)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{argument} must lie in (0, 1], got {value}")
    return value


def check_image_size(image_size: int | tuple[int, int], argument: str = "image_size"):
    """Normalise ``image_size`` (an int or ``(H, W)``) to a tuple of positive ints."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"{argument} must be a positive int or (H, W), got {image_size!r}")
    return int(size[0]), int(size[1])
