"""Tiny diffusion priors for the tests: a seeded patch sampler and a few-step pretraining."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from idm_med import patches, prior, train_loop


def random_sampler(channels: int = 1) -> patches.PatchSampler:
    """16² patches of three seeded random "natural" images."""
    rng = np.random.default_rng(0)
    images = {"natural": [rng.random((40, 50)).astype(np.float32) for _ in range(3)]}
    return patches.PatchSampler(images, {"natural": 1.0}, size=16, channels=channels)


def pretrain_tiny(
    root: Path,
    name: str,
    iterations: int,
    unet: dict[str, Any],
    backbone: str = "small",
    resume: bool = False,
    channels: int = 1,
    init: str | Path | None = None,
):
    """Pretrain a prior of layout ``unet`` for ``iterations`` steps into ``root / name``."""
    cfg = prior.PretrainConfig(
        image_channels=channels,
        backbone=backbone,
        patch_size=16,
        batch_size=2,
        modalities={"natural": 1.0},
        unet=unet,
        init=init,
        loop=train_loop.LoopConfig(iterations=iterations, checkpoint_every=2, warmup=2),
    )
    return prior.pretrain(
        cfg, root / name, sampler=random_sampler(channels), resume=resume, progress=False
    )
