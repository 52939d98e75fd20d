"""The paper's ablations at this machine's scale: ``python -m benchmarks ablation [--quick]``.

Block Gaussian CS (ratios 0.1 / 0.3 / 0.5) on the corpus's test images. Every IDM row is
a model of ``scripts/train_ablations.py`` (the ``cs`` recipe at 64² patches, the same
iterations and seed, one thing changed): T = 1…5 unrolled steps, without injectors,
without the final range–null-space step, from scratch instead of from the prior, started
from noise around A†y instead of A†y (seeded per image), and one model per ratio
(applied to its own ratio only) against one model for all three. The supervised baseline
of the same data and budget is a U-Net post-processing A†y, trained from scratch. Two
training-free rows complete the end-to-end vs noise-estimation-only comparison: the
prior's noise estimator unrolled into the same T = 3 IDM steps without fine-tuning, and
DDNM (100 steps) on that prior. Memory against T is in ``benchmarks/results/memory.md``.
Variants not trained yet are left out of the table (and named in the log).
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

import torch

from benchmarks import learned, natural
from benchmarks.cs import RATIOS, ratio_setting
from benchmarks.main import suite_main
from benchmarks.suite import Suite
from idm_med import baselines
from idm_med.operators import Operator

logger = logging.getLogger(__name__)
MODELS = Path(__file__).parent / "ablation_models" / "ablation"  # scripts/train_ablations.py
PRIOR = "idm_med/pretrained/prior_gray"

#: variant (scripts/train_ablations.py) -> table label
LABELS = {
    "base": "IDM T=3 (all ratios, from prior)",
    "T1": "T=1",
    "T2": "T=2",
    "T4": "T=4",
    "T5": "T=5",
    "no_injectors": "no injectors",
    "no_final_projection": "no final range–null-space step",
    "scratch": "from scratch",
    "noisy_start": "noisy start √ᾱ_T A†y + √(1−ᾱ_T) ε",
    "postprocessing_unet": "supervised U-Net on A†y (from scratch, same budget)",
    "ratio_0.1": "one model per ratio",
    "ratio_0.3": "one model per ratio",
    "ratio_0.5": "one model per ratio",
}


@cache
def _model(name: str):
    from idm_med.checkpoints import load_idm
    from idm_med.postprocessing_unet import PostProcessingUNet

    if name == "postprocessing_unet":
        return PostProcessingUNet.from_pretrained(MODELS / name).eval()
    return load_idm(MODELS / name).eval()


def _trained(name: str) -> bool:
    return (MODELS / name / "config.json").is_file()  # written when the run ends


def _runner(name: str):
    def run(y: torch.Tensor, operator: Operator) -> torch.Tensor:
        variant = f"ratio_{operator.config['ratio']:g}" if name == "per_ratio" else name
        torch.manual_seed(0)  # the noisy-start variant draws its ε from the global generator
        with torch.no_grad():
            return _model(variant)(y, operator)

    return run


@cache
def _untrained_idm():
    from idm_med.training import idm_from_prior

    return idm_from_prior(PRIOR, image_channels=1, steps=3).eval()


def _noise_estimation_only(y: torch.Tensor, operator: Operator) -> torch.Tensor:
    with torch.no_grad():
        return _untrained_idm()(y, operator)


def register() -> list[str]:
    """Register the trained variants as methods; returns their method names."""
    learned.register_diffusion()
    names = []
    variants = [v for v in LABELS if not v.startswith("ratio_")] + ["per_ratio"]
    for variant in variants:
        method = f"ablation_{variant}"
        if variant == "per_ratio":
            ok = all(_trained(f"ratio_{r:g}") for r in RATIOS)
            label = LABELS["ratio_0.1"]
        else:
            ok, label = _trained(variant), LABELS[variant]
        if not ok:
            logger.warning(
                "ablation variant %s not trained: python scripts/train_ablations.py", variant
            )
            continue
        if method not in baselines.METHODS:
            baselines.register(baselines.MethodSpec(method, _runner(variant), label=label))
        names.append(method)
    if "ablation_noise_only" not in baselines.METHODS:
        baselines.register(
            baselines.MethodSpec(
                "ablation_noise_only",
                _noise_estimation_only,
                label="prior's noise estimator, T=3, no fine-tuning",
            )
        )
    return names


SUITE = Suite(
    name="ablation",
    title="Ablations of IDM on block Gaussian CS (held-out natural images)",
    modality="natural",
    settings=tuple(ratio_setting(r) for r in RATIOS),
    methods=("pinv", "ddnm", "ablation_noise_only", *register()),
    encode=natural.encode,
    decode=natural.decode,
    score=natural.score,
    columns=natural.COLUMNS,
    notes=natural.NOTES
    + " Models: `python scripts/train_ablations.py` (64² patches, batch 4, 300 iterations "
    "each, training logs in benchmarks/results/ablation_logs/).",
)


def main(argv: list[str] | None = None) -> None:
    suite_main(SUITE, argv)
