"""Inpainting: observe a subset of pixels."""

from __future__ import annotations

import math

import torch

from .base import ScaledAdjointOperator, check_image_size
from .registry import register_operator

MASK_TYPES = ("random", "box")


def random_pixel_mask(height: int, width: int, missing_ratio: float, seed: int) -> torch.Tensor:
    """Keep mask (True = observed) with exactly ``round(missing_ratio·H·W)`` pixels missing,
    chosen uniformly at random by a seeded permutation."""
    n = height * width
    gen = torch.Generator().manual_seed(seed)
    missing = torch.randperm(n, generator=gen)[: round(missing_ratio * n)]
    mask = torch.ones(n, dtype=torch.bool)
    mask[missing] = False
    return mask.reshape(height, width)


def box_mask(height: int, width: int, missing_ratio: float, seed: int) -> torch.Tensor:
    """Keep mask with one missing rectangle of about ``missing_ratio`` of the area, with the
    image's aspect ratio, placed at a seeded random position."""
    scale = math.sqrt(missing_ratio)
    bh, bw = round(scale * height), round(scale * width)
    gen = torch.Generator().manual_seed(seed)
    top = int(torch.randint(0, height - bh + 1, (1,), generator=gen))
    left = int(torch.randint(0, width - bw + 1, (1,), generator=gen))
    mask = torch.ones(height, width, dtype=torch.bool)
    mask[top : top + bh, left : left + bw] = False
    return mask


class PixelMaskFunc:
    """Seeded inpainting-mask generator: ``mask_func(height, width, seed)`` → bool
    ``(H, W)`` keep mask (True = observed), the same for the same arguments.

    Args:
        missing_ratio: fraction of pixels not observed, in ``[0, 1)``.
        mask_type: ``"random"`` (:func:`random_pixel_mask`) or ``"box"`` (:func:`box_mask`).
    """

    def __init__(self, missing_ratio: float, mask_type: str = "random") -> None:
        if mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
        missing_ratio = float(missing_ratio)
        if not 0.0 <= missing_ratio < 1.0:
            raise ValueError(f"missing_ratio must lie in [0, 1), got {missing_ratio}")
        self.missing_ratio, self.mask_type = missing_ratio, mask_type

    def __call__(self, height: int, width: int, seed: int = 0) -> torch.Tensor:
        make = random_pixel_mask if self.mask_type == "random" else box_mask
        return make(height, width, self.missing_ratio, int(seed))


@register_operator
class Inpainting(ScaledAdjointOperator):
    """Pixel masking ``A x = M ⊙ x`` with a binary mask ``M`` shared by all channels.

    Measurements keep the image shape with zeros at missing pixels, so ``A`` is the
    orthogonal projection ``diag(M)`` and ``Aᵀ = A† = A†A = A``.

    Args:
        image_size: ``H`` or ``(H, W)``.
        missing_ratio: fraction of pixels not observed, in ``[0, 1)``; not needed when
            ``mask`` is given.
        mask: optional ``(H, W)`` tensor, nonzero/True where observed.
        mask_type: ``"random"`` (independent pixels) or ``"box"`` (one rectangle).
        seed: seed of the generated mask (new masks: ``update(seed=...)``).
        channels: image channels ``C``.
        explicit_mask: the mask comes later from ``update(mask=...)`` or
            ``load_state_dict`` (set in ``config`` when the mask was explicit).
    """

    name = "inpainting"

    def __init__(
        self,
        image_size: int | tuple[int, int],
        missing_ratio: float | None = None,
        mask: torch.Tensor | None = None,
        mask_type: str = "random",
        seed: int = 0,
        channels: int = 1,
        explicit_mask: bool = False,
    ) -> None:
        super().__init__()
        h, w = check_image_size(image_size)
        if mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if mask is None and missing_ratio is None and not explicit_mask:
            raise ValueError("missing_ratio must be given when mask is None")
        self.mask_func = None if missing_ratio is None else PixelMaskFunc(missing_ratio, mask_type)
        self._config = dict(
            image_size=[h, w],
            missing_ratio=None if missing_ratio is None else self.mask_func.missing_ratio,
            mask_type=mask_type,
            seed=int(seed),
            channels=int(channels),
            explicit_mask=False,
        )
        self.image_shape = self.measurement_shape = (channels, h, w)
        self.register_buffer("mask", torch.ones(h, w, dtype=torch.bool))
        if mask is not None:
            self.update(mask=mask)
        elif self.mask_func is not None and not explicit_mask:
            self.update(seed=seed)
        else:
            self._config["explicit_mask"] = True
            self._missing.add("mask")

    def update(self, mask: torch.Tensor | None = None, seed: int | None = None) -> Inpainting:
        """Replace the mask in place: an explicit ``(H, W)`` ``mask`` or a new ``seed``
        for the mask function; returns ``self``."""
        if mask is not None and seed is not None:
            raise ValueError("give mask or seed, not both")
        _, h, w = self.image_shape
        if seed is not None:
            if self.mask_func is None:
                raise ValueError("this operator has no missing_ratio to draw masks from")
            self.mask = self.mask_func(h, w, seed).to(self.mask.device)
            self._config.update(seed=int(seed), explicit_mask=False)
        elif mask is not None:
            mask = torch.as_tensor(mask)
            if tuple(mask.shape) != (h, w):
                raise ValueError(f"mask must have shape {(h, w)}, got {tuple(mask.shape)}")
            self.mask = (mask.detach() != 0).to(self.mask.device)
            self._config["explicit_mask"] = True
        else:
            return self
        self._missing.discard("mask")
        return self

    def resample(self, seed: int) -> Inpainting:
        """A new mask from ``seed`` (operators built from an explicit mask keep it)."""
        return self if self.mask_func is None else self.update(seed=seed)

    def _A(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask.to(x.dtype)

    def _At(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.mask.to(y.dtype)
