"""Super-resolution by average pooling (the SR3 / DDNM task)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ScaledAdjointOperator, check_image_size
from .registry import register_operator


@register_operator
class SuperResolution(ScaledAdjointOperator):
    """``A`` averages each ``factor × factor`` patch: ``(B, C, H, W) → (B, C, H/f, W/f)``.

    Each row of ``A`` holds ``f²`` entries ``1/f²``, so ``A Aᵀ = I / f²``,
    ``Aᵀ y`` spreads ``y / f²`` over the patch and ``A† = f² Aᵀ`` (``gram_scale = 1/f²``)
    replicates every low-resolution pixel over its patch (nearest-neighbour upsampling).
    No random parameters (``update()`` takes no keywords).
    """

    name = "superres"

    def __init__(self, image_size: int | tuple[int, int], factor: int, channels: int = 1) -> None:
        super().__init__()
        h, w = check_image_size(image_size)
        if int(factor) != factor or factor < 1 or h % factor or w % factor:
            raise ValueError(
                f"factor must be a positive integer dividing image_size {(h, w)}, got {factor}"
            )
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        factor = int(factor)
        self.factor = factor
        self.gram_scale = 1.0 / factor**2
        self._config = dict(image_size=[h, w], factor=factor, channels=int(channels))
        self.image_shape = (channels, h, w)
        self.measurement_shape = (channels, h // factor, w // factor)

    def _A(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.factor)

    def _A_pinv(self, y: torch.Tensor) -> torch.Tensor:
        # f² Aᵀ y without the division and multiplication round-off.
        return y.repeat_interleave(self.factor, dim=-2).repeat_interleave(self.factor, dim=-1)

    def _At(self, y: torch.Tensor) -> torch.Tensor:
        return self._A_pinv(y) / self.factor**2
