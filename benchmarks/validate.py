"""Score an IDM checkpoint on a suite's validation images, against the tuned baselines:
``python -m benchmarks validate SUITE --checkpoint DIR [--write-card]``.

The cases are exactly those the baselines were tuned on (:func:`benchmarks.tune.
validation_cases`: the corpus's *validation* split, never the test images), so the
model's PSNR per setting stands beside the best tuned baseline's validation PSNR from
``benchmarks/results/tuning.json``. ``--write-card`` records the scores in the
checkpoint's ``model_card.json`` (``validation``), which ``idm-med models`` lists. Settings
the model refuses (another coil mode, say) are skipped and named.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import data
from benchmarks.machine import describe_machine
from benchmarks.options import base_parser
from benchmarks.suite import TUNING
from benchmarks.tune import MAX_VAL_SLICES, QUALITY_SUITES, TUNE_SIZE, validation_cases
from idm_med.baselines.tuning import load_tuning
from idm_med.checkpoints import ModelMismatchError
from idm_med.datasets.atomic import atomic_write_text
from idm_med.reconstruction import make_method

logger = logging.getLogger(__name__)


def best_tuned(tuning: dict, suite: str, setting: str) -> tuple[str, float] | None:
    """``(method, validation PSNR)`` of the best tuned baseline of a setting, if tuned."""
    records = tuning.get(suite, {}).get(setting, {})
    if not records:
        return None
    method = max(records, key=lambda m: records[m]["best_score"])
    return method, float(records[method]["best_score"])


def validate(suite_name: str, checkpoint: Path, size: int, max_slices: int) -> dict[str, Any]:
    """``{"per_setting": {setting: {...}}, "psnr": mean, ...}`` of ``checkpoint``."""
    suite = importlib.import_module(f"benchmarks.{suite_name}").SUITE
    tuning = load_tuning(TUNING)
    methods: dict[float, Any] = {}  # one per noise level a setting tells IDM
    val = data.images(suite.modality, "val", size, max_slices=max_slices)
    per_setting: dict[str, Any] = {}
    for setting in suite.settings:
        op = setting.make_operator(size)
        cases = validation_cases(suite, setting, op, val)
        sigma = setting.noise_sigma
        if sigma not in methods:
            methods[sigma] = make_method("idm", checkpoint=checkpoint, noise_sigma=sigma)
        method = methods[sigma]
        scores, t0 = [], time.perf_counter()
        try:
            with torch.no_grad():
                for y, _op, gt in cases:
                    rec = suite.decode(method(y, op))
                    scores.append(suite.score(gt[None], rec[None])["psnr"])
        except ModelMismatchError as err:
            logger.info("%s: skipped (%s)", setting.name, err)
            continue
        row: dict[str, Any] = {
            "psnr": float(np.mean(scores)),
            "seconds": (time.perf_counter() - t0) / len(cases),
        }
        tuned = best_tuned(tuning, suite.name, setting.name)
        if tuned is not None:
            row["best_tuned_baseline"], row["baseline_psnr"] = tuned
        per_setting[setting.name] = row
        logger.info(
            "%s | %s: IDM %.2f dB, best tuned %s", suite.name, setting.name, row["psnr"], tuned
        )
    if not per_setting:
        raise ValueError(f"{checkpoint} fits no setting of the {suite_name} suite")
    return {
        "suite": suite_name,
        "psnr": float(np.mean([r["psnr"] for r in per_setting.values()])),
        # None until every setting has a tuned baseline to compare with
        "beats_tuned_baselines": (
            all(r["psnr"] > r["baseline_psnr"] for r in per_setting.values())
            if all("baseline_psnr" in r for r in per_setting.values())
            else None
        ),
        "per_setting": per_setting,
        "images": {k: len(v) for k, v in val.items()},
        "image_size": size,
    }


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(
        "python -m benchmarks validate", __doc__, "64², 1 validation slice per source"
    )
    parser.add_argument("suite", choices=QUALITY_SUITES)
    parser.add_argument("--checkpoint", type=Path, required=True, help="IDM checkpoint folder")
    parser.add_argument("--max-slices", type=int, default=MAX_VAL_SLICES)
    parser.add_argument(
        "--write-card", action="store_true", help="record the scores in model_card.json"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    size, slices = (64, 1) if args.quick else (TUNE_SIZE, args.max_slices)
    result = validate(args.suite, args.checkpoint, size, slices)
    result["command"] = "python -m benchmarks validate " + " ".join(argv or [])
    result["machine"] = describe_machine()
    print(json.dumps(result, indent=1))
    if args.write_card:
        card_path = args.checkpoint / "model_card.json"
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        card["validation"] = result
        atomic_write_text(card_path, json.dumps(card, indent=1) + "\n")
        logger.info("wrote %s", card_path)
