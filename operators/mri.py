"""Undersampled Cartesian Fourier operator (fastMRI single-coil and multi-coil SENSE).

Images are complex, stored as two real channels ``(real, imag)``: ``x`` is ``(B, 2, H, W)``.
``F`` is the centred orthonormal 2-D DFT of fastMRI (``ifftshift → fft2(norm="ortho") →
fftshift``), a unitary map, and ``M`` keeps the sampled phase-encode columns (the same
column mask for every row; see :mod:`idm_med.operators.mri_masks`).

* single coil: ``A x = M F x``, measured as the zero-filled full k-space ``(B, 2, H, W)``.
  ``A Aᴴ = M`` is a projection, so ``A`` is a partial isometry and ``A† = Aᴴ = Fᴴ M``
  in closed form, ``A†A = Fᴴ M F``.
* multi-coil SENSE with sensitivities ``S_c``: ``A x = (M F (S_c ⊙ x))_c``, measured as
  ``(B, Ncoil, 2, H, W)``. ``Aᴴ y = Σ_c conj(S_c) ⊙ Fᴴ M y_c``. ``A†`` has no closed form
  under undersampling: it is the minimum-norm solution of ``AᴴA x = Aᴴ y`` by conjugate
  gradients (relative residual ``cg_tol``), differentiated implicitly.

Conditioning (measured, see tests/test_mri.py): SENSE with smooth coil maps and a random
acceleration-4 mask has nonzero singular values down to ~1e-6 σ_max, so CG stops at
``cg_max_iter`` with ``‖A A† y − y‖ ≈ 1e-3 ‖y‖`` and ``A†A`` idempotent only to a few
percent; identities hold to ``≈ κ(AᴴA) · cg_tol`` when the problem is well conditioned
(e.g. equispaced acceleration 2).

As a real-linear map on the ``(real, imag)`` layout, the complex adjoint ``Aᴴ`` is exactly
the real transpose, because ``Re⟨A x, y⟩ = Re⟨x, Aᴴ y⟩``; so ``At`` passes the real
dot-product test.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import Operator, check_image_size
from .conjugate_gradient import pinv_by_cg
from .mri_masks import (
    MASK_TYPES,
    MaskSeed,
    check_acceleration,
    check_center_fraction,
    check_seed,
    column_mask,
)
from .registry import register_operator

_FFT_DIMS = (-2, -1)


def fft2c(z: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D DFT over the last two dims of a complex tensor (fastMRI
    ``fft2c``): ``fftshift(fft2(ifftshift(z), norm="ortho"))``. Unitary."""
    z = torch.fft.ifftshift(z, dim=_FFT_DIMS)
    z = torch.fft.fft2(z, dim=_FFT_DIMS, norm="ortho")
    return torch.fft.fftshift(z, dim=_FFT_DIMS)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Inverse (= adjoint) of :func:`fft2c`: ``fftshift(ifft2(ifftshift(k), norm="ortho"))``."""
    k = torch.fft.ifftshift(k, dim=_FFT_DIMS)
    k = torch.fft.ifft2(k, dim=_FFT_DIMS, norm="ortho")
    return torch.fft.fftshift(k, dim=_FFT_DIMS)


def channels_to_complex(x: torch.Tensor) -> torch.Tensor:
    """``(..., 2, H, W)`` real (real, imag) → ``(..., H, W)`` complex of matching precision."""
    return torch.view_as_complex(x.movedim(-3, -1).contiguous())


def complex_to_channels(z: torch.Tensor) -> torch.Tensor:
    """``(..., H, W)`` complex → ``(..., 2, H, W)`` real (real, imag), contiguous."""
    return torch.view_as_real(z).movedim(-1, -3).contiguous()


def _check_mask(mask: Any, width: int) -> torch.Tensor:
    """An explicit column mask: shape ``(W,)``, entries 0/1 or bool → bool ``(W,)`` on CPU."""
    mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    if tuple(mask.shape) != (width,):
        raise ValueError(
            f"mask must have shape ({width},) (one entry per column W), got {tuple(mask.shape)}"
        )
    mask = mask.detach().cpu()
    if mask.dtype != torch.bool:
        if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must be boolean or contain only 0 and 1")
        mask = mask != 0
    return mask.clone()


def _check_coil_maps(coil_maps: Any, height: int, width: int) -> torch.Tensor:
    """Coil sensitivities, complex ``(Ncoil, H, W)`` or real ``(Ncoil, 2, H, W)`` →
    real ``(Ncoil, 2, H, W)`` (a real buffer follows ``op.double()`` / ``op.to(dtype)``,
    a complex one would not)."""
    maps = coil_maps if isinstance(coil_maps, torch.Tensor) else torch.as_tensor(coil_maps)
    maps = maps.detach()
    expected = f"complex (Ncoil, {height}, {width}) or real (Ncoil, 2, {height}, {width})"
    if maps.is_complex():
        if maps.dim() != 3 or tuple(maps.shape[1:]) != (height, width) or maps.shape[0] < 1:
            raise ValueError(f"coil_maps must have shape {expected}, got {tuple(maps.shape)}")
        maps = complex_to_channels(maps)
    elif maps.is_floating_point():
        if maps.dim() != 4 or tuple(maps.shape[1:]) != (2, height, width) or maps.shape[0] < 1:
            raise ValueError(f"coil_maps must have shape {expected}, got {tuple(maps.shape)}")
    else:
        raise ValueError(f"coil_maps must be a floating-point or complex tensor, got {maps.dtype}")
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("coil_maps contains NaN or infinite values")
    return maps.clone()


@register_operator
class MRI(Operator):
    """Undersampled Fourier operator, ``A x = M F x`` (single coil) or SENSE ``M F S_c x``.

    Args:
        image_size: ``H`` or ``(H, W)``; images are ``(B, 2, H, W)`` (real, imag).
        acceleration: undersampling factor ``>= 1`` of the generated column mask.
        center_fraction: fully sampled centre fraction in ``(0, 1]``.
        mask_type: ``"random"`` (fastMRI ``RandomMaskFunc``) or ``"equispaced"``.
        seed: mask seed, an int or a sequence of ints such as
            :func:`~idm_med.operators.mri_masks.seed_from_filename` (fastMRI's per-file seed).
        coil_maps: optional sensitivities, complex ``(Ncoil, H, W)`` or real
            ``(Ncoil, 2, H, W)``. ``None`` means single coil. Maps normalised so that
            ``Σ_c |S_c|² = 1`` make ``AᴴA = I`` at full sampling.
        mask: optional column mask ``(W,)`` (bool or 0/1) overriding the generated one;
            ``acceleration``, ``center_fraction``, ``mask_type`` and ``seed`` are then only
            validated and recorded.
        cg_tol: relative residual of the CG pseudo-inverse (multi-coil only).
        cg_max_iter: CG iteration cap (multi-coil only).

    Measurements: zero-filled k-space, ``(B, 2, H, W)`` single coil or
    ``(B, Ncoil, 2, H, W)`` multi-coil. Computation runs in the input's precision
    (float32 → complex64, float64 → complex128; half precision is upcast to float32 and
    the result cast back).
    """

    name = "mri"

    def __init__(
        self,
        image_size: int | tuple[int, int],
        acceleration: float = 4,
        center_fraction: float = 0.08,
        mask_type: str = "random",
        seed: MaskSeed = 0,
        coil_maps: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cg_tol: float = 1e-6,
        cg_max_iter: int = 200,
    ) -> None:
        super().__init__()
        height, width = check_image_size(image_size)
        acceleration = check_acceleration(acceleration)
        center_fraction = check_center_fraction(center_fraction)
        if mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
        seed = check_seed(seed)
        if not 0.0 < float(cg_tol) < 1.0:
            raise ValueError(f"cg_tol must lie in (0, 1), got {cg_tol!r}")
        if isinstance(cg_max_iter, bool) or int(cg_max_iter) != cg_max_iter or cg_max_iter < 1:
            raise ValueError(f"cg_max_iter must be a positive int, got {cg_max_iter!r}")
        self.cg_tol = float(cg_tol)
        self.cg_max_iter = int(cg_max_iter)

        self._explicit_mask = mask is not None
        if mask is None:
            mask = column_mask(mask_type, width, acceleration, center_fraction, seed)
        else:
            mask = _check_mask(mask, width)
        self.register_buffer("mask", mask)

        if coil_maps is None:
            self.register_buffer("coil_maps", None)
            self.num_coils = 1
            self.measurement_shape = (2, height, width)
        else:
            maps = _check_coil_maps(coil_maps, height, width)
            self.register_buffer("coil_maps", maps)
            self.num_coils = int(maps.shape[0])
            self.measurement_shape = (self.num_coils, 2, height, width)
        self.image_shape = (2, height, width)
        self._config = {
            "image_size": (height, width),
            "acceleration": acceleration,
            "center_fraction": center_fraction,
            "mask_type": mask_type,
            "seed": seed,
            "cg_tol": self.cg_tol,
            "cg_max_iter": self.cg_max_iter,
        }

    # -- diagnostics -----------------------------------------------------------------
    @property
    def multicoil(self) -> bool:
        return self.coil_maps is not None

    @property
    def sampled_fraction(self) -> float:
        """Fraction of k-space columns sampled, ``|M| / W``."""
        return float(self.mask.float().mean())

    @property
    def acceleration_achieved(self) -> float:
        """``W / |M|`` (``inf`` for an empty mask); ``acceleration`` is only its target."""
        count = int(self.mask.sum())
        return float("inf") if count == 0 else self.mask.numel() / count

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments; explicit masks and coil maps appear as (cloned) tensors."""
        config = super().config
        config["coil_maps"] = None if self.coil_maps is None else self.coil_maps.detach().clone()
        config["mask"] = self.mask.detach().clone() if self._explicit_mask else None
        return config

    def extra_repr(self) -> str:
        parts = [f"{k}={v!r}" for k, v in self._config.items()]
        parts.append(f"num_coils={self.num_coils}, explicit_mask={self._explicit_mask}")
        parts.append(f"acceleration_achieved={self.acceleration_achieved:.3f}")
        return ", ".join(parts)

    # -- maps ------------------------------------------------------------------------
    def _work_dtype(self, t: torch.Tensor) -> torch.dtype:
        # torch.fft has no complex32 support worth relying on: upcast half precision.
        return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32

    def _column_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """Mask as a real ``(W,)`` tensor of ``dtype``, broadcasting over rows (and coils)."""
        return self.mask.to(dtype=dtype)

    def _maps(self, dtype: torch.dtype) -> torch.Tensor:
        """Coil maps as complex ``(Ncoil, H, W)`` of the precision of real ``dtype``."""
        return channels_to_complex(self.coil_maps.to(dtype=dtype))

    def _A(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self._work_dtype(x)
        z = channels_to_complex(x.to(dtype))  # (B, H, W)
        if self.multicoil:
            z = self._maps(dtype) * z.unsqueeze(1)  # (B, Ncoil, H, W)
        k = fft2c(z) * self._column_mask(dtype)
        return complex_to_channels(k).to(x.dtype)

    def _At(self, y: torch.Tensor) -> torch.Tensor:
        dtype = self._work_dtype(y)
        k = channels_to_complex(y.to(dtype)) * self._column_mask(dtype)
        z = ifft2c(k)
        if self.multicoil:
            z = (self._maps(dtype).conj() * z).sum(dim=1)
        return complex_to_channels(z).to(y.dtype)

    def _A_pinv(self, y: torch.Tensor) -> torch.Tensor:
        if not self.multicoil:
            return self._At(y)  # A is a partial isometry: A† = Aᴴ
        # CG in at least float32: half-precision recurrences would not reach cg_tol.
        work = y.to(self._work_dtype(y))
        x = pinv_by_cg(work, self._A, self._At, tol=self.cg_tol, max_iter=self.cg_max_iter)
        return x.to(y.dtype)
