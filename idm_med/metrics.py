"""Image-quality metrics, with fastMRI's conventions.

All functions take a ground truth ``gt`` and a reconstruction ``pred`` of the same shape
(NumPy arrays or tensors; 2-D images or volumes with slices first). As in fastMRI's
evaluation, the data range of PSNR and SSIM is the maximum of the ground truth (over the
whole volume), and SSIM uses a 7×7 window per slice.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def _as_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _pair(gt, pred) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = _as_numpy(gt), _as_numpy(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred must have the same shape, got {gt.shape} and {pred.shape}")
    return gt, pred


def nmse(gt, pred) -> float:
    """Normalised mean squared error ``‖gt − pred‖² / ‖gt‖²``."""
    gt, pred = _pair(gt, pred)
    return float(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2)


def psnr(gt, pred, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB, with ``data_range = gt.max()`` by default."""
    gt, pred = _pair(gt, pred)
    data_range = float(gt.max()) if data_range is None else data_range
    return float(peak_signal_noise_ratio(gt, pred, data_range=data_range))


def ssim(gt, pred, data_range: float | None = None) -> float:
    """Mean structural similarity of 2-D slices (7×7 window), ``data_range = gt.max()``."""
    gt, pred = _pair(gt, pred)
    data_range = float(gt.max()) if data_range is None else data_range
    if gt.ndim == 2:
        gt, pred = gt[None], pred[None]
    if gt.ndim != 3:
        raise ValueError(f"ssim expects a 2-D image or a (slices, H, W) volume, got {gt.shape}")
    scores = [
        structural_similarity(g, p, win_size=7, data_range=data_range)
        for g, p in zip(gt, pred, strict=True)
    ]
    return float(np.mean(scores))


def evaluate(gt, pred, data_range: float | None = None) -> dict[str, float]:
    """All three metrics as a dict ``{"psnr", "ssim", "nmse"}``."""
    return {
        "psnr": psnr(gt, pred, data_range),
        "ssim": ssim(gt, pred, data_range),
        "nmse": nmse(gt, pred),
    }
