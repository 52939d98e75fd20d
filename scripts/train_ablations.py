"""Train the models of the ablation suite (``python -m benchmarks ablation``):

    python scripts/train_ablations.py [--only NAME ...] [--iterations 300]

The paper's ablations at this machine's scale, on its natural-image task (block Gaussian
CS, ratios 0.1 / 0.3 / 0.5): every variant is the ``cs`` recipe of
:mod:`idm_med.recipes` at 64² patches, batch 4, the same iterations and seed, with one
thing changed — the number of unrolled steps T, no injectors, no final range–null-space
step, training from scratch instead of from the prior, a noisy start
``√ᾱ_T A†y + √(1-ᾱ_T) ε`` instead of ``√ᾱ_T A†y``, or one model per ratio instead of one
for all three. One more model is the supervised baseline with the same data and budget: a
U-Net post-processing A†y, trained from scratch (:mod:`idm_med.postprocessing_unet`).
Models go to ``benchmarks/ablation_models/ablation/<name>`` and are committed (weights and
training record, 3.8 MB each; the resumable ``checkpoint/`` beside them is git-ignored), so
the suite can be rerun in a later session without retraining: all 13 take about 140
CPU-minutes, one thread per run. A run that stops resumes from its last checkpoint when
the script is started again, and finished ones are skipped.
Each model's ``log.csv`` and ``training.json`` are copied to
``benchmarks/results/ablation_logs/<name>/``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from idm_med.recipes import recipe
from idm_med.training import train

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "benchmarks" / "ablation_models" / "ablation"
LOGS = ROOT / "benchmarks" / "results" / "ablation_logs"

#: name -> what the variant changes in the ``cs`` recipe
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "T1": {"steps": 1},
    "T2": {"steps": 2},
    "T4": {"steps": 4},
    "T5": {"steps": 5},
    "no_injectors": {"injectors": False},
    "no_final_projection": {"final_projection": False},
    "scratch": {"from_scratch": True},
    "noisy_start": {"start": "noisy"},
    "postprocessing_unet": {"from_scratch": True, "architecture": "postprocessing_unet"},
    "ratio_0.1": {"operator": {"ratio": 0.1}},
    "ratio_0.3": {"operator": {"ratio": 0.3}},
    "ratio_0.5": {"operator": {"ratio": 0.5}},
}


def train_variant(name: str, iterations: int, image_size: int, batch_size: int) -> None:
    """Train (or resume, or skip when finished) one variant and copy its log."""
    out = OUTPUT / name
    if (out / "training.json").is_file() and (out / "config.json").is_file():
        logging.info("%s: finished, skipped", name)
    else:
        config = recipe(
            "cs",
            iterations=iterations,
            image_size=image_size,
            batch_size=batch_size,
            **VARIANTS[name],
        )
        resume = (out / "checkpoint").is_dir()
        logging.info("%s: %s", name, "resuming" if resume else "training")
        train(config, out, resume=resume)
    (LOGS / name).mkdir(parents=True, exist_ok=True)
    for file in ("log.csv", "training.json"):
        shutil.copyfile(out / file, LOGS / name / file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    for name in args.only:
        train_variant(name, args.iterations, args.image_size, args.batch_size)


if __name__ == "__main__":
    main()
