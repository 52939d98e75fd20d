"""A crude 2-D brain extraction for training augmentation: skull-stripped look-alikes of
the head slices the corpus trains on.

Users bring both whole-head scans and skull-stripped brains (a brain on an exactly zero
background, with a sharp brain–background edge that a head never shows). The corpus's
training heads keep their skull, so a model trained on them alone has never seen that
edge. :func:`brain_mask` finds the brain of a T1-like slice the classical way, without
any learned model: threshold the head (Otsu), erode its outline by the depth of scalp and
skull, drop the dark skull left inside by a small opening, keep the largest connected part
and fill its holes (the ventricles stay in). It is a look-alike for augmentation, not a
segmentation to measure anatomy with.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import disk


def brain_mask(image: np.ndarray, depth: float = 0.04) -> np.ndarray:
    """Boolean mask ``(H, W)`` of the brain of a head slice: the tissue lying deeper than
    the scalp and skull.

    Args:
        image: a 2-D magnitude image (any scale).
        depth: thickness of scalp and skull removed from the head's outline, as a
            fraction of the image's larger side (0.04: 10 px of a 1 mm 256² slice).

    Returns an all-False mask for an image with no structure (constant).
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"brain_mask takes a 2-D image, got shape {image.shape}")
    if not np.isfinite(image).all() or image.max() <= image.min():
        return np.zeros(image.shape, dtype=bool)
    smooth = ndimage.gaussian_filter(image, 1.0)
    bright = smooth > threshold_otsu(smooth)
    head = ndimage.binary_fill_holes(bright)
    inner = ndimage.binary_erosion(head, disk(max(1, round(depth * max(image.shape)))))
    # the skull is dark: the opening cuts what is left of it from the brain
    tissue = ndimage.binary_opening(inner & bright, disk(2))
    labels, n = ndimage.label(tissue)
    if n == 0:  # nothing that deep (a slice through the scalp): keep the head itself
        return head
    sizes = ndimage.sum_labels(tissue, labels, index=np.arange(1, n + 1))
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def skull_strip(image: np.ndarray, depth: float = 0.04) -> np.ndarray:
    """``image`` with everything outside :func:`brain_mask` set to exactly zero."""
    return np.where(brain_mask(image, depth), image, 0).astype(np.asarray(image).dtype)
