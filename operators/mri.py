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
  under undersampling, but the problem separates into one small least-squares problem
  per image row, solved exactly by a cached batched SVD (:mod:`idm_med.operators.sense`)
  with the relative cutoff ``pinv_rtol``.

Parameters apart from the structure: the column mask (seeded by ``seed`` through the
:class:`~idm_med.operators.mri_masks.MaskFunc` of ``mask_type``, or explicit) and the coil
maps. :meth:`MRI.update` replaces them in place; explicit ones travel in the
``state_dict`` (``config`` says ``explicit_mask`` / ``num_coils``) while generated masks
are rebuilt from the seed.

As a real-linear map on the ``(real, imag)`` layout, the complex adjoint ``Aᴴ`` is exactly
the real transpose, because ``Re⟨A x, y⟩ = Re⟨x, Aᴴ y⟩``; so ``At`` passes the real
dot-product test.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import ScaledAdjointOperator, check_image_size
from .mri_masks import MaskSeed, check_seed, mask_func
from .registry import register_operator
from .sense import SenseRowSVD, apply_sense_pinv, sense_row_svd

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


_UNSET = object()


@register_operator
class MRI(ScaledAdjointOperator):
    """Undersampled Fourier operator, ``A x = M F x`` (single coil) or SENSE ``M F S_c x``.

    Single coil is a partial isometry (``A Aᴴ = M``): ``A† = Aᴴ`` in closed form (the
    :class:`~idm_med.operators.base.ScaledAdjointOperator` tier). SENSE overrides ``A†``
    with the exact separable solve of :mod:`idm_med.operators.sense`.

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
        mask: optional column mask ``(W,)`` (bool or 0/1) overriding the generated one.
        num_coils: coil count of an operator whose maps come later (from ``update`` or
            ``load_state_dict``; it cannot be used before); ignored when ``coil_maps`` is
            given.
        explicit_mask: the mask comes later from ``update(mask=...)`` or
            ``load_state_dict`` (set in ``config`` when the mask was explicit).
        pinv_rtol: SENSE singular values below ``pinv_rtol · σ_max`` are dropped from
            ``A†`` (it bounds the noise amplification by ``1 / pinv_rtol``).
        cg_tol, cg_max_iter: accepted so that configs written before the exact SENSE
            solve still load; unused.

    Measurements: zero-filled k-space, ``(B, 2, H, W)`` single coil or
    ``(B, Ncoil, 2, H, W)`` multi-coil. ``A`` / ``Aᴴ`` run in the input's precision
    (float32 → complex64, float64 → complex128; half precision is upcast to float32 and
    the result cast back); the SENSE ``A†`` runs in complex128 and casts back.
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
        num_coils: int | None = None,
        explicit_mask: bool = False,
        pinv_rtol: float = 1e-6,
        cg_tol: float | None = None,
        cg_max_iter: int | None = None,
    ) -> None:
        super().__init__()
        height, width = check_image_size(image_size)
        self.mask_func = mask_func(mask_type, center_fraction, acceleration)
        if not 0.0 < float(pinv_rtol) < 1.0:
            raise ValueError(f"pinv_rtol must lie in (0, 1), got {pinv_rtol!r}")
        self.image_shape = (2, height, width)
        self._config = {
            "image_size": [height, width],
            "acceleration": self.mask_func.acceleration,
            "center_fraction": self.mask_func.center_fraction,
            "mask_type": mask_type,
            "seed": 0,
            "num_coils": None,
            "explicit_mask": False,
            "pinv_rtol": float(pinv_rtol),
        }
        self._svd: SenseRowSVD | None = None
        self.register_buffer("mask", torch.zeros(width, dtype=torch.bool))
        self.register_buffer("coil_maps", None)
        if coil_maps is None and num_coils is not None:
            if isinstance(num_coils, bool) or int(num_coils) != num_coils or num_coils < 1:
                raise ValueError(f"num_coils must be a positive int, got {num_coils!r}")
            self.update(coil_maps=torch.zeros(int(num_coils), 2, height, width))
            self._missing.add("coil_maps")
        else:
            self.update(coil_maps=coil_maps)
        if mask is not None:
            self.update(mask=mask)
        else:
            self.update(seed=seed)
            if explicit_mask:
                self._config["explicit_mask"] = True
                self._missing.add("mask")

    # -- parameters ------------------------------------------------------------------
    def update(
        self, mask: Any = None, coil_maps: Any = _UNSET, seed: MaskSeed | None = None
    ) -> MRI:
        """Replace parameters in place; returns ``self``.

        Args:
            mask: explicit column mask ``(W,)`` (bool or 0/1).
            coil_maps: new sensitivities (layouts as in the constructor) or ``None`` for
                single coil; the coil count, and so ``measurement_shape``, may change.
            seed: draw the mask from this seed with the operator's mask function.
        """
        if mask is not None and seed is not None:
            raise ValueError("give mask or seed, not both")
        _, height, width = self.image_shape
        if seed is not None:
            seed = check_seed(seed)
            self.mask = self.mask_func(width, seed).to(self.mask.device)
            self._config.update(seed=list(seed) if isinstance(seed, tuple) else seed)
            self._config["explicit_mask"] = False
            self._missing.discard("mask")
        if mask is not None:
            self.mask = _check_mask(mask, width).to(self.mask.device)
            self._config["explicit_mask"] = True
            self._missing.discard("mask")
        if coil_maps is not _UNSET:
            self._set_coil_maps(coil_maps, height, width)
        self._svd = None
        return self

    def resample(self, seed: int) -> MRI:
        """A new mask from ``seed`` (coil maps are kept); returns ``self``."""
        return self.update(seed=seed)

    def _set_coil_maps(self, coil_maps: Any, height: int, width: int) -> None:
        if coil_maps is None:
            self.coil_maps = None
            self.measurement_shape = (2, height, width)
            self._config["num_coils"] = None
            self._missing.discard("coil_maps")
            return
        maps = _check_coil_maps(coil_maps, height, width)
        ref = self.coil_maps
        self.coil_maps = maps.to(
            device=self.mask.device, dtype=ref.dtype if ref is not None else maps.dtype
        )
        self._missing.discard("coil_maps")
        self.measurement_shape = (int(maps.shape[0]), 2, height, width)
        self._config["num_coils"] = int(maps.shape[0])

    def _after_state_loaded(self) -> None:
        self._svd = None

    # -- diagnostics -----------------------------------------------------------------
    @property
    def multicoil(self) -> bool:
        return self.coil_maps is not None

    @property
    def solver(self) -> str:
        """How ``A†`` is computed (for benchmark tables)."""
        return "SENSE row SVD (cached)" if self.multicoil else "closed form"

    @property
    def num_coils(self) -> int:
        return 1 if self.coil_maps is None else int(self.coil_maps.shape[0])

    @property
    def sampled_fraction(self) -> float:
        """Fraction of k-space columns sampled, ``|M| / W``."""
        return float(self.mask.float().mean())

    @property
    def acceleration_achieved(self) -> float:
        """``W / |M|`` (``inf`` for an empty mask); ``acceleration`` is only its target."""
        count = int(self.mask.sum())
        return float("inf") if count == 0 else self.mask.numel() / count

    def extra_repr(self) -> str:
        parts = [f"{k}={v!r}" for k, v in self._config.items()]
        parts.append(f"acceleration_achieved={self.acceleration_achieved:.3f}")
        return ", ".join(parts)

    # -- maps ------------------------------------------------------------------------
    def _work_dtype(self, t: torch.Tensor) -> torch.dtype:
        # torch.fft has no complex32 support worth relying on: upcast half precision.
        return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32

    def _maps(self, dtype: torch.dtype) -> torch.Tensor:
        """Coil maps as complex ``(Ncoil, H, W)`` of the precision of real ``dtype``."""
        return channels_to_complex(self.coil_maps.to(dtype=dtype))

    def _A(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self._work_dtype(x)
        z = channels_to_complex(x.to(dtype))  # (B, H, W)
        if self.multicoil:
            z = self._maps(dtype) * z.unsqueeze(1)  # (B, Ncoil, H, W)
        k = fft2c(z) * self.mask.to(dtype)
        return complex_to_channels(k).to(x.dtype)

    def _At(self, y: torch.Tensor) -> torch.Tensor:
        dtype = self._work_dtype(y)
        k = channels_to_complex(y.to(dtype)) * self.mask.to(dtype)
        z = ifft2c(k)
        if self.multicoil:
            z = (self._maps(dtype).conj() * z).sum(dim=1)
        return complex_to_channels(z).to(y.dtype)

    def sense_svd(self) -> SenseRowSVD:
        """The cached row SVDs of SENSE, built on first use and after every :meth:`update`
        (see :mod:`idm_med.operators.sense`)."""
        if not self.multicoil:
            raise ValueError("sense_svd needs coil maps (multi-coil operator)")
        if self._svd is None or self._svd.s.device != self.mask.device:
            maps = self._maps(torch.float64)
            self._svd = sense_row_svd(maps, self.mask, self._config["pinv_rtol"])
        return self._svd

    def _sense_solve(self, y: torch.Tensor, damping: float | torch.Tensor | None) -> torch.Tensor:
        k = channels_to_complex(y.to(torch.float64))
        z = apply_sense_pinv(k, self.sense_svd().to(k.device), self.mask, damping)
        return complex_to_channels(z).to(y.dtype)

    def _A_pinv(self, y: torch.Tensor) -> torch.Tensor:
        if not self.multicoil:
            return super()._A_pinv(y)  # A is a partial isometry: A† = Aᴴ
        return self._sense_solve(y, None)

    def _A_pinv_damped(self, y: torch.Tensor, damping: float | torch.Tensor) -> torch.Tensor:
        if not self.multicoil:
            return super()._A_pinv_damped(y, damping)
        return self._sense_solve(y, damping)
