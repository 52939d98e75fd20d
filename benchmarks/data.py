"""Benchmark images from the project's corpus (:mod:`idm_med.datasets.corpus`).

Validation images tune the baselines (``python -m benchmarks tune``); test images only
feed the result tables. Every image is brought to a square ``size × size`` float32 array
in ``[0, 1]``: images smaller than ``size`` in both axes are zero-padded (MRI slices keep
their resolution), larger ones are centre-cropped to a square and resized with
anti-aliasing.
"""

from __future__ import annotations

import numpy as np
from skimage.transform import resize

from idm_med.datasets import corpus


def square(image: np.ndarray, size: int) -> np.ndarray:
    """Pad or crop-and-resize a 2-D image to ``(size, size)`` (see the module docstring)."""
    h, w = image.shape
    if h <= size and w <= size:
        out = np.zeros((size, size), dtype=np.float32)
        top, left = (size - h) // 2, (size - w) // 2
        out[top : top + h, left : left + w] = image
        return out
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[top : top + side, left : left + side]
    return resize(crop, (size, size), anti_aliasing=True, order=1).astype(np.float32)


def images(
    modality: str,
    split: str,
    size: int,
    max_sources: int | None = None,
    max_slices: int | None = None,
) -> dict[str, list[np.ndarray]]:
    """``{source name: [size × size images]}`` of the corpus ``modality`` / ``split``,
    optionally only the first ``max_sources`` sources and ``max_slices`` slices of each."""
    named = corpus.load_named(modality, split)
    out = {}
    for name, imgs in list(named.items())[:max_sources]:
        out[name] = [square(np.asarray(im, dtype=np.float32), size) for im in imgs[:max_slices]]
    return out
