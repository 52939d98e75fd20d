"""Small instances of every registered operator, shared by the tests."""

from __future__ import annotations

import pytest
import torch

from idm_med.operators import available_operators, make_operator

# Small, fast configurations per registry name. An operator registered without an entry
# here makes the contract tests fail (see test_every_operator_has_a_test_case).
OPERATOR_CASES: dict[str, list[dict]] = {
    "gaussian_cs": [
        dict(image_size=32, ratio=0.25, block_size=16),
        dict(image_size=(32, 16), ratio=0.5, block_size=16, permute=True, seed=3),
    ],
    "inpainting": [
        dict(image_size=24, missing_ratio=0.6, seed=1),
        dict(image_size=(24, 32), missing_ratio=0.3, mask_type="box", channels=2),
    ],
    "superres": [dict(image_size=24, factor=4), dict(image_size=(16, 32), factor=2, channels=3)],
    "mri": [
        dict(image_size=(32, 24), acceleration=4, center_fraction=0.125),
        dict(image_size=32, acceleration=3, center_fraction=0.1, mask_type="equispaced", seed=5),
    ],
    "ct": [dict(image_size=32, n_views=12)],
}

# Operators whose pseudo-inverse is computed iteratively (conjugate gradients).
ITERATIVE_PINV = {"ct"}


def operator_cases() -> list:
    """pytest params ``(name, kwargs)`` for every registered operator and case."""
    params = []
    for name in available_operators():
        for i, kwargs in enumerate(OPERATOR_CASES.get(name, [])):
            params.append(pytest.param(name, kwargs, id=f"{name}-{i}"))
    return params


def build(name: str, kwargs: dict, dtype: torch.dtype = torch.float64):
    return make_operator(name, **kwargs).to(dtype)
