"""Training recipes of the shipped IDM models: one preset per modality, each covering a
range of settings drawn per batch, fine-tuned from the shipped diffusion prior (the
paper's recipe). ``scripts/train_idm.py`` and the ablation script build their
:class:`~idm_med.training.TrainingConfig` here, so a shipped model and its ablations
differ only in what they state.
"""

from __future__ import annotations

from typing import Any

from . import train_loop
from .training import TrainingConfig

# The gray prior starts 2-channel models too (conv_in/out shared by the real and imaginary
# parts, see training.idm_from_prior): it measured better than prior_complex for DDNM.
PRIORS = {1: "idm_med/pretrained/prior_gray", 2: "idm_med/pretrained/prior_gray"}

PRESETS: dict[str, dict[str, Any]] = {
    "mri": dict(
        operator={
            "name": "mri",
            "acceleration": [4, 8],
            "mask_type": ["random", "equispaced"],
            "center_fraction": 0.08,
        },
        image_channels=2,
        data={"mri": 1.0},
    ),
    "cs": dict(
        operator={"name": "gaussian_cs", "ratio": [0.1, 0.3, 0.5], "block_size": 32},
        image_channels=1,
        data={"natural": 1.0},
    ),
    "inpainting": dict(
        operator={
            "name": "inpainting",
            "missing_ratio": [0.5, 0.7, 0.9, 0.95],
            "mask_type": ["random", "box"],
        },
        image_channels=1,
        data={"natural": 1.0},
    ),
    "superres": dict(
        operator={"name": "superres", "factor": [2, 4]}, image_channels=1, data={"natural": 1.0}
    ),
    # Views scale with the image: the angular undersampling πN/(2V) of 30-90 views at
    # 256² (or 60-240 at 512²) is that of 8-23 views on the 64² training patches, where
    # 60+ views would already determine the image (more rays than pixels). The dense
    # pseudo-inverse is exact there and costs less than CG (a few SVDs of seconds).
    "ct": dict(
        operator={"name": "ct", "n_views": [6, 8, 11, 15, 19, 23, 30], "pinv": "direct"},
        image_channels=1,
        data={"ct": 1.0},
    ),
}


def recipe(
    modality: str,
    *,
    iterations: int = 800,
    batch_size: int = 4,
    image_size: int = 96,
    learning_rate: float = 2e-4,
    memory_mode: str = "autograd",
    from_scratch: bool = False,
    mixed_precision: str = "no",
    checkpoint_every: int = 100,
    seed: int = 0,
    operator: dict[str, Any] | None = None,
    **overrides: Any,
) -> TrainingConfig:
    """The :class:`TrainingConfig` of ``modality``'s preset (T = 3, warm-up 50, the
    learning rate halved after two thirds of the run, no EMA, seed ``seed``). ``operator``
    updates the preset's operator options; ``overrides`` set other config fields
    (``steps``, ``injectors``, ``final_projection``, ...)."""
    if modality not in PRESETS:
        raise ValueError(f"unknown modality {modality!r}; expected one of {sorted(PRESETS)}")
    preset = dict(PRESETS[modality])
    preset["operator"] = {**preset["operator"], **(operator or {})}
    for key in [k for k in overrides if k in preset]:  # e.g. another data mix
        preset[key] = overrides.pop(key)
    fields = dict(
        image_size=image_size,
        init=None if from_scratch else PRIORS[preset["image_channels"]],
        steps=3,
        memory_mode=memory_mode,
        batch_size=batch_size,
    )
    fields.update(overrides)
    return TrainingConfig(
        **preset,
        **fields,
        loop=train_loop.LoopConfig(
            iterations=iterations,
            learning_rate=learning_rate,
            warmup=50,
            halve_lr_every=max(1, iterations * 2 // 3),
            ema_decay=0.0,
            checkpoint_every=checkpoint_every,
            seed=seed,
            mixed_precision=mixed_precision,
        ),
    )
