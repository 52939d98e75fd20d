"""Forward operators (installed as ``idm_med.operators``).

Every operator honours the contract in :mod:`idm_med.operators.base` and is built by
name through :func:`make_operator`.
"""

from .base import (
    Operator,
    ScaledAdjointOperator,
    check_finite,
    noise_aware_projection,
    range_null_space_projection,
)
from .registry import OPERATORS, available_operators, make_operator, register_operator

# Importing the modules registers their operators.
from . import gaussian_cs, inpainting, mri, sparse_view_ct, super_resolution  # noqa: E402,F401  isort: skip

from .inpainting import PixelMaskFunc  # noqa: E402
from .mri_masks import EquiSpacedMaskFunc, MaskFunc, RandomMaskFunc, seed_from_filename  # noqa: E402

__all__ = [
    "OPERATORS",
    "EquiSpacedMaskFunc",
    "MaskFunc",
    "Operator",
    "PixelMaskFunc",
    "RandomMaskFunc",
    "ScaledAdjointOperator",
    "available_operators",
    "check_finite",
    "make_operator",
    "noise_aware_projection",
    "range_null_space_projection",
    "register_operator",
    "seed_from_filename",
]
