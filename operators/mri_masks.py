"""Cartesian phase-encode (column) undersampling masks with fastMRI semantics.

A mask is a boolean vector over the ``W`` columns of a centred k-space (``W // 2`` is the
DC column after ``fftshift``). Both mask families keep a fully sampled centre of
``num_low = round(W * center_fraction)`` columns, starting at ``(W - num_low + 1) // 2``,
and add outer columns so that about ``W / acceleration`` columns are sampled in total:

* **random** (fastMRI ``RandomMaskFunc``): every column is drawn independently with
  probability ``p = (W / acc - num_low) / (W - num_low)``, so the expected count is
  ``num_low + p (W - num_low) = W / acc`` (up to the centre columns drawn twice).
* **equispaced** (fastMRI's original ``EquiSpacedMaskFunc``): columns
  ``round(offset + k · a)`` for ``0 ≤ offset + k·a < W - 1``, with the spacing adjusted to
  ``a = acc (num_low - W) / (num_low · acc - W)`` so the centre plus the lines give
  ``W / acc`` columns, and ``offset`` uniform in ``[0, round(a))``.

Generation is delegated to MONAI's ``RandomKspaceMask`` / ``EquispacedKspaceMask``
(adapted by MONAI from fastMRI), driven by a ``numpy.random.RandomState`` seeded exactly
as fastMRI seeds it, so a given seed reproduces fastMRI's masks. fastMRI seeds validation
masks from the file name (``tuple(map(ord, fname))``); :func:`seed_from_filename` returns
that tuple, and every function here accepts an ``int`` or such a tuple as ``seed``.

:class:`RandomMaskFunc` and :class:`EquiSpacedMaskFunc` are the seeded generators in
fastMRI's ``MaskFunc`` style: built once from the sampling settings, called with a width
and a seed, so an operator keeps its structure and draws new masks through
``op.update(seed=...)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.apps.reconstruction.transforms.array import (
    EquispacedKspaceMask,
    KspaceMask,
    RandomKspaceMask,
)

#: A mask seed: a non-negative int below 2**32, or a sequence of them (fastMRI's file seed).
MaskSeed = int | Sequence[int]

MASK_TYPES = ("random", "equispaced")


def seed_from_filename(name: str | os.PathLike[str]) -> tuple[int, ...]:
    """fastMRI's per-file mask seed: the code points of the file's base name.

    fastMRI passes ``tuple(map(ord, fname))`` (``fname`` = base name such as
    ``"file1000001.h5"``) as the numpy seed, so every slice of a file, on every run and
    machine, gets the same mask while different files get different ones. Directories are
    stripped so the seed does not depend on where the data lives.

    >>> seed_from_filename("/data/knee/file1.h5") == tuple(map(ord, "file1.h5"))
    True
    """
    base = Path(os.fspath(name)).name
    if not base:
        raise ValueError(f"name must name a file, got {name!r}")
    return tuple(ord(c) for c in base)


def check_seed(seed: MaskSeed, argument: str = "seed") -> int | tuple[int, ...]:
    """Normalise ``seed`` to an ``int`` or a tuple of ints valid for ``RandomState``."""
    if isinstance(seed, bool):
        raise ValueError(f"{argument} must be an int or a sequence of ints, got {seed!r}")
    if isinstance(seed, (int, np.integer)):
        values: tuple[int, ...] = (int(seed),)
        normalised: int | tuple[int, ...] = int(seed)
    elif isinstance(seed, Sequence) and not isinstance(seed, str) and len(seed) > 0:
        if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seed):
            raise ValueError(f"{argument} must be an int or a sequence of ints, got {seed!r}")
        values = tuple(int(s) for s in seed)
        normalised = values
    else:
        raise ValueError(f"{argument} must be an int or a non-empty sequence of ints, got {seed!r}")
    if any(not 0 <= v < 2**32 for v in values):
        raise ValueError(f"{argument} values must lie in [0, 2**32), got {seed!r}")
    return normalised


def check_acceleration(acceleration: float, argument: str = "acceleration") -> float:
    """An acceleration (undersampling factor) must be a finite number ``>= 1``."""
    value = float(acceleration)
    if not np.isfinite(value) or value < 1.0:
        raise ValueError(f"{argument} must be a finite number >= 1, got {acceleration!r}")
    return value


def check_center_fraction(center_fraction: float, argument: str = "center_fraction") -> float:
    """The fully sampled centre fraction must lie in ``(0, 1]``."""
    value = float(center_fraction)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{argument} must lie in (0, 1], got {center_fraction!r}")
    return value


def _check_width(width: int) -> int:
    if isinstance(width, bool) or int(width) != width or width < 1:
        raise ValueError(f"width must be a positive int, got {width!r}")
    return int(width)


def num_center_columns(width: int, center_fraction: float) -> int:
    """Number of fully sampled centre columns, ``round(W · center_fraction)`` (as fastMRI,
    Python's round-half-to-even)."""
    return int(round(_check_width(width) * check_center_fraction(center_fraction)))


def center_columns(width: int, center_fraction: float) -> slice:
    """The slice of centre columns every mask samples (contains the DC column ``W // 2``)."""
    num_low = num_center_columns(width, center_fraction)
    start = (width - num_low + 1) // 2
    return slice(start, start + num_low)


def _monai_mask(
    transform_cls: type[KspaceMask],
    width: int,
    acceleration: float,
    center_fraction: float,
    seed: MaskSeed,
) -> torch.Tensor:
    width = _check_width(width)
    acceleration = check_acceleration(acceleration)
    center_fraction = check_center_fraction(center_fraction)
    seed = check_seed(seed)
    num_low = num_center_columns(width, center_fraction)
    if acceleration == 1.0:
        # Fully sampled. (fastMRI's equispaced lines stop at column W - 2 and would miss
        # the last column.)
        return torch.ones(width, dtype=torch.bool)
    if num_low >= width / acceleration:
        # The centre alone already meets the target; fastMRI's formulas would divide by
        # zero (equispaced, or random with center_fraction = 1) or give a negative spacing.
        mask = torch.zeros(width, dtype=torch.bool)
        mask[center_columns(width, center_fraction)] = True
        return mask
    transform = transform_cls([center_fraction], [acceleration], spatial_dims=1, is_complex=True)
    # fastMRI reseeds its RandomState with the seed before each draw; a fresh one is the same.
    transform.set_random_state(state=np.random.RandomState(seed))
    # MONAI builds the mask while masking a k-space; a zero (1, W) complex dummy is enough.
    transform(torch.zeros(1, width, 2))
    return transform.mask.reshape(width) > 0.5


def random_column_mask(
    width: int, acceleration: float, center_fraction: float, seed: MaskSeed = 0
) -> torch.Tensor:
    """fastMRI ``RandomMaskFunc`` column mask.

    Args:
        width: number of k-space columns ``W``.
        acceleration: target undersampling factor ``>= 1``; ``E[#sampled] = W / acc``.
        center_fraction: fraction in ``(0, 1]`` of fully sampled centre columns.
        seed: int or sequence of ints (e.g. :func:`seed_from_filename`).

    Returns:
        Bool tensor ``(W,)``, True where a column is sampled.
    """
    return _monai_mask(RandomKspaceMask, width, acceleration, center_fraction, seed)


def equispaced_column_mask(
    width: int, acceleration: float, center_fraction: float, seed: MaskSeed = 0
) -> torch.Tensor:
    """fastMRI ``EquiSpacedMaskFunc`` column mask (spacing adjusted for the centre).

    Arguments and result as :func:`random_column_mask`; only the offset of the equispaced
    lines is random, so the number of sampled columns is ``≈ W / acc`` for every seed.
    """
    return _monai_mask(EquispacedKspaceMask, width, acceleration, center_fraction, seed)


def column_mask(
    mask_type: str,
    width: int,
    acceleration: float,
    center_fraction: float,
    seed: MaskSeed = 0,
) -> torch.Tensor:
    """Dispatch on ``mask_type`` (``"random"`` or ``"equispaced"``); returns bool ``(W,)``."""
    if mask_type == "random":
        return random_column_mask(width, acceleration, center_fraction, seed)
    if mask_type == "equispaced":
        return equispaced_column_mask(width, acceleration, center_fraction, seed)
    raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")


class MaskFunc:
    """A seeded column-mask generator with fastMRI ``MaskFunc`` semantics.

    ``mask_func(width, seed)`` returns a bool ``(W,)`` mask; the same ``(width, seed)``
    always gives the same mask (fastMRI reseeds its ``RandomState`` per call), so seeding
    from :func:`seed_from_filename` gives every slice of a file the same mask.

    Args:
        center_fraction: fully sampled centre fraction in ``(0, 1]``.
        acceleration: target undersampling factor ``>= 1``.
    """

    mask_type: str = ""

    def __init__(self, center_fraction: float, acceleration: float) -> None:
        self.center_fraction = check_center_fraction(center_fraction)
        self.acceleration = check_acceleration(acceleration)

    def __call__(self, width: int, seed: MaskSeed = 0) -> torch.Tensor:
        return column_mask(self.mask_type, width, self.acceleration, self.center_fraction, seed)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(center_fraction={self.center_fraction}, "
            f"acceleration={self.acceleration})"
        )


class RandomMaskFunc(MaskFunc):
    """fastMRI ``RandomMaskFunc``: outer columns drawn independently (see module doc)."""

    mask_type = "random"


class EquiSpacedMaskFunc(MaskFunc):
    """fastMRI ``EquiSpacedMaskFunc``: equispaced outer lines at a random offset."""

    mask_type = "equispaced"


def mask_func(mask_type: str, center_fraction: float, acceleration: float) -> MaskFunc:
    """The :class:`MaskFunc` of ``mask_type`` (``"random"`` or ``"equispaced"``)."""
    classes = {"random": RandomMaskFunc, "equispaced": EquiSpacedMaskFunc}
    if mask_type not in classes:
        raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
    return classes[mask_type](center_fraction, acceleration)
