"""IDM injectors: feed the measurement and the operator into UNet features.

For a feature map ``F_in`` of shape ``(B, C, H/r, W/r)`` inside the noise estimator, where
``(H, W)`` is the image size and ``r`` the feature's downscaling factor, an injector computes

    f     = Conv1(PixelShuffle_r(F_in))                           (C/r² → c_img channels)
    F_out = F_in + PixelUnshuffle_r(Conv2([f, A†A f, A†y]))        (3·c_img → C/r² channels)

so the network sees, at every injection site, its own full-resolution image estimate ``f``,
that estimate's projection onto the row space of ``A`` and the measurement back-projection
``A†y``. ``c_img`` is the number of image channels (1, or 2 for complex MRI). With ``r = 1``
the (un)shuffles are identities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class InjectionSite:
    """Where an injector sits in a noise estimator: feature channels and downscale factor."""

    channels: int
    factor: int


@dataclass
class InjectorContext:
    """What every injector of one forward pass needs from the measurement.

    Attributes:
        x_pinv: ``A†y``, shaped ``(B, c_img, H, W)``.
        AtA: the row-space projection ``x ↦ A†A x`` on ``(B, c_img, H, W)`` tensors.
    """

    x_pinv: torch.Tensor
    AtA: Callable[[torch.Tensor], torch.Tensor]


class Injector(nn.Module):
    """One injector for a feature ``(B, channels, H/factor, W/factor)``.

    Args:
        channels: feature channels ``C``; must be divisible by ``factor²``.
        factor: ``r = image size / feature size``.
        image_channels: ``c_img``.
        kernel_size: odd kernel size of both convolutions (1 as in the authors' code; the
            paper states 3).
    """

    def __init__(
        self, channels: int, factor: int, image_channels: int = 1, kernel_size: int = 1
    ) -> None:
        super().__init__()
        if factor < 1 or channels % (factor * factor):
            raise ValueError(
                f"injector channels ({channels}) must be divisible by factor² ({factor}²)"
            )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size}")
        self.channels, self.factor, self.image_channels = channels, factor, image_channels
        inner = channels // (factor * factor)
        pad = kernel_size // 2
        self.shuffle = nn.PixelShuffle(factor)
        self.unshuffle = nn.PixelUnshuffle(factor)
        self.conv1 = nn.Conv2d(inner, image_channels, kernel_size, padding=pad)
        self.conv2 = nn.Conv2d(3 * image_channels, inner, kernel_size, padding=pad)

    def forward(self, feature: torch.Tensor, ctx: InjectorContext) -> torch.Tensor:
        """``(B, C, H/r, W/r) -> (B, C, H/r, W/r)``; ``ctx.x_pinv`` is ``(B, c_img, H, W)``."""
        f = self.conv1(self.shuffle(feature))
        if f.shape != ctx.x_pinv.shape:
            raise ValueError(
                f"injector at factor {self.factor} produced an image of shape {tuple(f.shape)} "
                f"but A†y has shape {tuple(ctx.x_pinv.shape)}"
            )
        stacked = torch.cat([f, ctx.AtA(f), ctx.x_pinv], dim=1)
        return feature + self.unshuffle(self.conv2(stacked))


def make_injectors(
    sites: list[InjectionSite], image_channels: int, kernel_size: int = 1
) -> nn.ModuleList:
    """One :class:`Injector` per site, in the estimator's traversal order."""
    return nn.ModuleList(Injector(s.channels, s.factor, image_channels, kernel_size) for s in sites)
