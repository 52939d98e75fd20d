"""Training-free and conditional diffusion reconstructors behind the ``(y, operator) -> x̂``
method interface: DDNM on a prior and SR3 sampling (used by ``idm-med reconstruct
--method ddnm|sr3`` and by the benchmark suites)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch

from .operators import Operator

Method = Callable[[torch.Tensor, Operator], torch.Tensor]


@cache
def _prior(directory: str):
    from .prior import load_prior

    return load_prior(directory)


def ddnm_method(
    prior: str | Path | None = None,
    steps: int = 100,
    eta: float = 0.85,
    seed: int = 0,
    progress: bool = False,
) -> Method:
    """DDNM (:func:`idm_med.ddnm.ddnm_sample`) on ``prior`` (default: the shipped prior for
    the operator's image channels)."""
    from .ddnm import ddnm_sample
    from .pretrained import prior_path

    def run(y: torch.Tensor, operator: Operator) -> torch.Tensor:
        directory = prior or prior_path(operator.image_shape[0])
        unet, scheduler, _ = _prior(str(directory))
        unet = unet.to(device=y.device, dtype=y.dtype)
        return ddnm_sample(
            y,
            operator,
            unet,
            steps=steps,
            eta=eta,
            scheduler=scheduler,
            seed=seed,
            progress=progress,
        )

    return run


def sr3_method(
    model: str | Path, steps: int = 100, kind: str = "ddim", seed: int = 0, progress: bool = False
) -> Method:
    """SR3 sampling (:func:`idm_med.sr3.sr3_sample`) with a trained SR3 directory."""
    from .sr3 import load_sr3, sr3_sample

    def run(y: torch.Tensor, operator: Operator) -> torch.Tensor:
        unet, scheduler, _ = load_sr3(model)
        unet = unet.to(device=y.device, dtype=y.dtype)
        return sr3_sample(
            y, operator, unet, scheduler, steps=steps, kind=kind, seed=seed, progress=progress
        )

    return run
