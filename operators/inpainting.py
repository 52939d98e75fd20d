"""Inpainting: observe a subset of pixels."""

from __future__ import annotations

import math

import torch

from .base import Operator, check_image_size
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


@register_operator
class Inpainting(Operator):
    """Pixel masking ``A x = M ⊙ x`` with a binary mask ``M`` shared by all channels.

    Measurements keep the image shape with zeros at missing pixels, so ``A`` is the
    orthogonal projection ``diag(M)`` and ``Aᵀ = A† = A†A = A``.

    Args:
        image_size: ``H`` or ``(H, W)``.
        missing_ratio: fraction of pixels not observed, in ``[0, 1)``; ignored when ``mask``
            is given.
        mask: optional ``(H, W)`` tensor, nonzero/True where observed.
        mask_type: ``"random"`` (independent pixels) or ``"box"`` (one rectangle).
        seed: seed of the generated mask.
        channels: image channels ``C``.
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
    ) -> None:
        super().__init__()
        h, w = check_image_size(image_size)
        if mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if mask is not None:
            mask = torch.as_tensor(mask)
            if tuple(mask.shape) != (h, w):
                raise ValueError(f"mask must have shape {(h, w)}, got {tuple(mask.shape)}")
            mask = mask.detach().cpu() != 0
        elif missing_ratio is None:
            raise ValueError("missing_ratio must be given when mask is None")
        else:
            missing_ratio = float(missing_ratio)
            if not 0.0 <= missing_ratio < 1.0:
                raise ValueError(f"missing_ratio must lie in [0, 1), got {missing_ratio}")
            make = random_pixel_mask if mask_type == "random" else box_mask
            mask = make(h, w, missing_ratio, seed)
        self._config = dict(
            image_size=(h, w),
            missing_ratio=missing_ratio,
            mask=mask.clone() if missing_ratio is None else None,
            mask_type=mask_type,
            seed=seed,
            channels=channels,
        )
        self.image_shape = self.measurement_shape = (channels, h, w)
        self.register_buffer("mask", mask)

    def _apply_mask(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask.to(x.dtype)

    def _A(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply_mask(x)

    def _At(self, y: torch.Tensor) -> torch.Tensor:
        return self._apply_mask(y)

    def _A_pinv(self, y: torch.Tensor) -> torch.Tensor:
        return self._apply_mask(y)
