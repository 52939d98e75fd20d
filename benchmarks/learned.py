"""Learned methods the suites compare when their checkpoints ship with the package.

Registering a learned method is one :func:`idm_med.baselines.register` call with the same
``(y, operator) -> x̂`` interface as the baselines; nothing is loaded until it runs.
"""

from __future__ import annotations

from functools import cache

import torch

from idm_med import baselines
from idm_med.operators import Operator


@cache
def _idm(name: str):
    from idm_med.pretrained import pretrained_path
    from idm_med.reconstruction import make_method

    return make_method("idm", checkpoint=pretrained_path(name))


def _shipped(name: str) -> bool:
    from idm_med.pretrained import list_pretrained

    return name in list_pretrained()


def _run_mri_4x(y: torch.Tensor, operator: Operator) -> torch.Tensor:
    return _idm("mri_4x")(y, operator)


def register_shipped() -> None:
    """Register the shipped IDM checkpoints (idempotent)."""
    if "idm_mri_4x" not in baselines.METHODS:
        baselines.register(
            baselines.MethodSpec(
                "idm_mri_4x",
                _run_mri_4x,
                applies=lambda op: op.name == "mri",
                available=lambda: _shipped("mri_4x"),
                label="IDM mri_4x (T=3)",
            )
        )
