"""The operator contract shared by every forward model.

An operator describes how an image ``x`` was measured: ``y = A x``. The IDM core uses
only the four linear maps below, so any operator that honours them plugs into it:

==============  ==============================================================
``A(x)``        measurements ``y``
``At(y)``       the exact adjoint ``Aᵀ``: ``<A x, y> = <x, Aᵀ y>``
``A_pinv(y)``   the Moore–Penrose pseudo-inverse ``A† y``
``AtA(x)``      ``A† A x``, the orthogonal projection onto the row space of ``A``
==============  ==============================================================

Images are real tensors shaped ``(B, C, H, W)``; complex images (MRI) are two channels
(real, imaginary). Measurements are real tensors shaped ``(B, *measurement_shape)``.
Matrices and masks are registered as buffers, so ``op.to(device)``, ``op.double()`` and
``state_dict()`` behave as for any ``nn.Module``.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn


def _describe(shape: tuple[int, ...]) -> str:
    return "(B, " + ", ".join(str(s) for s in shape) + ")"


class Operator(nn.Module, metaclass=ABCMeta):
    """Base class of all forward operators.

    Subclasses set :attr:`name` (their registry key), fill ``self._config`` with the
    constructor arguments that rebuild them, set :attr:`image_shape` and
    :attr:`measurement_shape`, and implement :meth:`_A`, :meth:`_At` and :meth:`_A_pinv`.
    The public methods validate their input and call those.
    """

    name: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self._config: dict[str, Any] = {}
        self.image_shape: tuple[int, ...] = ()
        self.measurement_shape: tuple[int, ...] = ()

    # -- contract --------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """Arguments such that ``make_operator(**op.config)`` rebuilds this operator."""
        return {"name": self.name, **self._config}

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Forward model ``y = A x``: ``(B, *image_shape) -> (B, *measurement_shape)``."""
        return self._A(self.check_image(x))

    def At(self, y: torch.Tensor) -> torch.Tensor:
        """Exact adjoint ``Aᵀ y``: ``(B, *measurement_shape) -> (B, *image_shape)``."""
        return self._At(self.check_measurement(y))

    def A_pinv(self, y: torch.Tensor) -> torch.Tensor:
        """Pseudo-inverse ``A† y``: ``(B, *measurement_shape) -> (B, *image_shape)``."""
        return self._A_pinv(self.check_measurement(y))

    def AtA(self, x: torch.Tensor) -> torch.Tensor:
        """Projection ``A† A x`` onto the row space of ``A`` (same shape as ``x``)."""
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

    # -- validation ------------------------------------------------------------------
    def check_image(self, x: torch.Tensor, argument: str = "x") -> torch.Tensor:
        """Validate an image batch; raises ``ValueError`` naming the problem."""
        return _check(x, self.image_shape, argument, "image")

    def check_measurement(self, y: torch.Tensor, argument: str = "y") -> torch.Tensor:
        """Validate a measurement batch; raises ``ValueError`` naming the problem."""
        return _check(y, self.measurement_shape, argument, "measurement")

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._config.items() if k != "mask")


def range_null_space_projection(
    x: torch.Tensor, y: torch.Tensor, operator: Operator
) -> torch.Tensor:
    """``x − A†(A x − y)``: keep the null-space part of ``x`` and take its row-space part
    from the measurements, so that ``A`` of the result equals ``y`` (for ``y`` in the range
    of ``A``). The data-consistency step of DDNM, IDM and the TV baseline."""
    return x - operator.A_pinv(operator.A(x) - y)


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
    if not bool(torch.isfinite(t.detach()).all()):
        raise ValueError(f"{argument} contains NaN or infinite values")
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
