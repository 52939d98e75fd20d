"""Metrics against scikit-image on the same arrays."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import rgb2ycbcr
from skimage.metrics import (
    normalized_root_mse,
    peak_signal_noise_ratio,
    structural_similarity,
)

from idm_med import metrics


def _volume(seed: int = 0, shape=(3, 24, 20)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = rng.uniform(0, 1, shape) * np.linspace(0.5, 2.0, shape[0])[:, None, None]
    return gt, gt + 0.05 * rng.standard_normal(shape)


def test_fastmri_volume_metrics_match_skimage() -> None:
    gt, pred = _volume()
    got = metrics.evaluate(gt, pred)
    # NMSE = NRMSE² with Euclidean normalisation.
    assert got["nmse"] == pytest.approx(
        normalized_root_mse(gt, pred, normalization="euclidean") ** 2
    )
    # PSNR over the whole volume with the volume maximum (not per-slice maxima).
    assert got["psnr"] == pytest.approx(peak_signal_noise_ratio(gt, pred, data_range=gt.max()))
    per_slice_max = np.mean(
        [peak_signal_noise_ratio(g, p, data_range=g.max()) for g, p in zip(gt, pred, strict=True)]
    )
    assert got["psnr"] != pytest.approx(per_slice_max)
    ssim = np.mean(
        [
            structural_similarity(g, p, win_size=7, data_range=gt.max())
            for g, p in zip(gt, pred, strict=True)
        ]
    )
    assert got["ssim"] == pytest.approx(ssim)


def test_ct_metrics_in_hu_window_and_on_unit_scale() -> None:
    gt, pred = _volume(1, (2, 16, 16))
    gt, pred = 0.2 + 0.05 * gt, 0.2 + 0.05 * pred  # soft tissue: around 0.25 (water)
    got = metrics.ct_metrics(gt, pred, window=(-160.0, 240.0))
    hu = lambda a: (4000.0 * a - 1000.0).clip(-160.0, 240.0)  # noqa: E731
    assert got["psnr_hu"] == pytest.approx(
        peak_signal_noise_ratio(hu(gt), hu(pred), data_range=400.0)
    )
    ssim_hu = np.mean(
        [
            structural_similarity(g, p, win_size=7, data_range=400.0)
            for g, p in zip(hu(gt), hu(pred), strict=True)
        ]
    )
    assert got["ssim_hu"] == pytest.approx(ssim_hu)
    assert got["psnr"] == pytest.approx(peak_signal_noise_ratio(gt, pred, data_range=1.0))
    with pytest.raises(ValueError, match="window"):
        metrics.ct_metrics(gt, pred, window=(10.0, 0.0))


def test_luma_is_the_y_of_skimage_ycbcr() -> None:
    rng = np.random.default_rng(2)
    rgb = rng.uniform(0, 1, (16, 16, 3))
    y_skimage = (rgb2ycbcr(rgb)[..., 0] - 16.0) / 219.0  # BT.601 Y on [0, 1]
    assert np.allclose(metrics.luma(rgb), y_skimage)
    noisy = (rgb + 0.02 * rng.standard_normal(rgb.shape)).clip(0, 1)
    got = metrics.luma_metrics(rgb, noisy)
    y1, y2 = metrics.luma(rgb), metrics.luma(noisy)
    assert got["psnr"] == pytest.approx(peak_signal_noise_ratio(y1, y2, data_range=1.0))
    assert got["ssim"] == pytest.approx(structural_similarity(y1, y2, data_range=1.0, win_size=7))
    grey = rgb[..., 0]
    assert metrics.luma_metrics(grey, grey)["psnr"] == np.inf
