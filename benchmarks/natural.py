"""What the natural-image suites (cs, inpaint, superres) share: grey images in [0, 1]
(the corpus stores luma), scored by luminance PSNR / SSIM / NMSE."""

from __future__ import annotations

import numpy as np
import torch

from idm_med import metrics

COLUMNS = (("psnr", "PSNR (dB)", ".2f"), ("ssim", "SSIM", ".4f"), ("nmse", "NMSE", ".4f"))
NOTES = (
    "Luminance (BT.601 Y) PSNR/SSIM on [0, 1], data range 1, SSIM 7×7; the corpus "
    "stores natural images as luma. Mean over test images."
)


def encode(image: np.ndarray, index: int) -> torch.Tensor:
    return torch.from_numpy(image[None, None].astype(np.float32))


def decode(x: torch.Tensor) -> np.ndarray:
    return x.detach()[0, 0].cpu().double().numpy().clip(0.0, 1.0)


def score(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return metrics.luma_metrics(gt, pred)
