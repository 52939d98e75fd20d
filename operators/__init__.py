"""Forward operators (installed as ``idm_med.operators``).

Every operator honours the contract in :mod:`idm_med.operators.base` and is built by
name through :func:`make_operator`.
"""

from .base import Operator, range_null_space_projection
from .registry import OPERATORS, available_operators, make_operator, register_operator

# Importing the modules registers their operators.
from . import gaussian_cs, inpainting, mri, sparse_view_ct, super_resolution  # noqa: E402,F401  isort: skip

__all__ = [
    "OPERATORS",
    "Operator",
    "available_operators",
    "make_operator",
    "range_null_space_projection",
    "register_operator",
]
