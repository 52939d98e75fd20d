"""Image-quality metrics with each community's conventions.

All functions take a ground truth ``gt`` and a reconstruction ``pred`` of the same shape
(NumPy arrays or tensors; 2-D images or volumes with slices first).

* MRI (fastMRI's ``evaluate.py``): :func:`evaluate` on a whole volume — NMSE
  ``‖gt − pred‖² / ‖gt‖²``, PSNR and SSIM with data range ``gt.max()`` over the volume,
  SSIM with a 7×7 window per slice, averaged over slices.
* CT (:func:`ct_metrics`): PSNR and SSIM in Hounsfield units over a stated display window
  (both images clipped to ``[lo, hi]`` HU, data range ``hi − lo``), plus PSNR/SSIM on the
  normalised attenuation scale ``[0, 1]`` (:func:`idm_med.acquisition.ct.hu_to_attenuation`)
  with data range 1.
* Natural images (:func:`luma_metrics`): PSNR/SSIM of the BT.601 luma ``Y`` of YCbCr on
  ``[0, 1]`` (data range 1); RGB images are converted first, grey images are their luma.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from .acquisition.ct import attenuation_to_hu


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
    """All three metrics as a dict ``{"psnr", "ssim", "nmse"}`` (fastMRI's volume-level
    metrics when ``gt`` is a ``(slices, H, W)`` volume and ``data_range`` is ``None``)."""
    return {
        "psnr": psnr(gt, pred, data_range),
        "ssim": ssim(gt, pred, data_range),
        "nmse": nmse(gt, pred),
    }


# -- CT -------------------------------------------------------------------------------------
CT_WINDOW = (-160.0, 240.0)  # soft-tissue display window (level 40 HU, width 400 HU)


def ct_metrics(gt, pred, window: tuple[float, float] = CT_WINDOW) -> dict[str, float]:
    """CT metrics of normalised-attenuation images ``gt``/``pred`` (2-D or slices first).

    Returns ``psnr_hu`` / ``ssim_hu`` over the HU ``window`` (both clipped to it, data
    range its width), ``psnr`` / ``ssim`` on ``[0, 1]`` (data range 1) and ``nmse``.
    """
    gt, pred = _pair(gt, pred)
    lo, hi = window
    if not hi > lo:
        raise ValueError(f"window must be (lo, hi) with hi > lo, got {window}")
    gt_w = attenuation_to_hu(_as_numpy(gt)).clip(lo, hi)
    pred_w = attenuation_to_hu(_as_numpy(pred)).clip(lo, hi)
    return {
        "psnr_hu": psnr(gt_w, pred_w, data_range=hi - lo),
        "ssim_hu": ssim(gt_w, pred_w, data_range=hi - lo),
        "psnr": psnr(gt, pred, data_range=1.0),
        "ssim": ssim(gt, pred, data_range=1.0),
        "nmse": nmse(gt, pred),
    }


# -- natural images --------------------------------------------------------------------------
BT601 = (0.299, 0.587, 0.114)


def luma(image) -> np.ndarray:
    """BT.601 luma ``Y = 0.299 R + 0.587 G + 0.114 B`` of ``(..., H, W, 3)`` RGB in [0, 1];
    a 2-D (or slices-first) grey image is returned as is."""
    a = _as_numpy(image)
    if a.ndim >= 3 and a.shape[-1] == 3:
        return a @ np.asarray(BT601)
    return a


def luma_metrics(gt, pred) -> dict[str, float]:
    """PSNR / SSIM / NMSE of the luma on ``[0, 1]`` (data range 1)."""
    gt_y, pred_y = luma(gt), luma(pred)
    return {
        "psnr": psnr(gt_y, pred_y, data_range=1.0),
        "ssim": ssim(gt_y, pred_y, data_range=1.0),
        "nmse": nmse(gt_y, pred_y),
    }
