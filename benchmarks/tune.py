"""Tune every baseline per setting on validation images: ``python -m benchmarks tune``.

For each quality suite, setting and method with a grid (:mod:`idm_med.baselines`), the
grid is searched on the corpus's *validation* images (never the test images) by mean
PSNR, and the grid, every score and the choice are written to
``benchmarks/results/tuning.json``, which the suites read.
"""

from __future__ import annotations

import importlib
import json
import logging
import shlex
import time

import torch

from benchmarks import data
from benchmarks.machine import describe_machine
from benchmarks.options import base_parser
from benchmarks.suite import Setting, Suite
from idm_med import baselines
from idm_med.baselines.tuning import grid_search
from idm_med.datasets.atomic import atomic_path

logger = logging.getLogger(__name__)
QUALITY_SUITES = ("mri", "ct", "cs", "inpaint", "superres")
TUNE_SIZE = 256
MAX_VAL_SLICES = 2  # per validation source


def validation_cases(suite: Suite, setting: Setting, op, val: dict[str, list]) -> list[tuple]:
    """``[(y, op, ground truth)]`` of the validation images ``val`` (``{source: images}``)
    measured by ``op`` in ``setting`` (with its noise); phases, noise and other random
    parts are seeded apart from the test images' so that tuning never sees a test case."""
    images = [im for imgs in val.values() for im in imgs]
    cases = []
    for i, im in enumerate(images):
        x = suite.encode(im, 1000 + i)
        cases.append((setting.measure(op, x, 1000 + i), op, suite.decode(x)))
    return cases


def tune_suite(
    suite: Suite,
    size: int,
    max_slices: int | None,
    settings: list[str] | None = None,
    methods: list[str] | None = None,
) -> dict:
    """``{setting: {method: grid-search record}}`` of one suite on validation images
    (only ``settings`` / ``methods`` when given)."""
    val = data.images(suite.modality, "val", size, max_slices=max_slices)
    out: dict = {}
    for setting in suite.settings:
        if settings is not None and setting.name not in settings:
            continue
        op = setting.make_operator(size)
        cases = validation_cases(suite, setting, op, val)

        def score(ref, rec) -> float:
            return suite.score(ref[None], suite.decode(rec)[None])["psnr"]

        out[setting.name] = {}
        for method in baselines.applicable(op, list(suite.methods)):
            if not baselines.get(method).grid or (methods and method not in methods):
                continue
            fixed = suite.fixed.get(method, {})
            record = grid_search(method, cases, score, suite.grids.get(method), fixed)
            record["validation"] = {k: len(v) for k, v in val.items()}
            out[setting.name][method] = record
            logger.info(
                "%s | %s | %s -> %s (%.2f dB)",
                suite.name,
                setting.name,
                method,
                record["best"],
                record["best_score"],
            )
    return out


def record_run(
    payload: dict, suite: str, result: dict, run: dict, some_settings: bool, some_methods: bool
) -> None:
    """Store one tuning run of ``suite`` in ``payload`` (the contents of tuning.json).

    A run over ``some_methods`` updates a setting's records method by method, keeping the
    others'; a run over every method replaces the records of each setting it tuned, so a
    method that no longer applies to a setting leaves it. A run over some settings or
    methods appends its command to the suite's earlier ones, so ``runs[suite]["command"]``
    regenerates every record of the suite."""
    stored = payload.setdefault("suites", {}).setdefault(suite, {})
    for setting, records in result.items():
        if some_methods:
            stored.setdefault(setting, {}).update(records)
        else:
            stored[setting] = records
    runs = payload.setdefault("runs", {})
    if (some_settings or some_methods) and suite in runs:
        run = {**run, "command": f"{runs[suite]['command']} && {run['command']}"}
    runs[suite] = run


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(
        "python -m benchmarks tune",
        __doc__,
        "tiny run (64², 1 validation slice, first setting) into OUTPUT_DIR",
    )
    parser.add_argument("--suites", nargs="+", choices=QUALITY_SUITES, default=list(QUALITY_SUITES))
    parser.add_argument("--settings", nargs="+", default=None, help="only these settings")
    parser.add_argument("--methods", nargs="+", default=None, help="only these methods")
    parser.add_argument(
        "--max-slices", type=int, default=MAX_VAL_SLICES, help="validation slices per source"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    size, slices = (64, 1) if args.quick else (TUNE_SIZE, args.max_slices)
    path = args.output_dir / "tuning.json"
    t0 = time.perf_counter()
    for name in args.suites:
        suite = importlib.import_module(f"benchmarks.{name}").SUITE
        settings = args.settings or ([suite.settings[0].name] if args.quick else None)
        result = tune_suite(suite, size, slices, settings, args.methods)
        # Re-read and write after every suite: a long run keeps what it finished, and
        # concurrent runs on different suites do not drop each other's records.
        payload = json.loads(path.read_text()) if path.is_file() else {"suites": {}}
        run = {
            "command": shlex.join(["python", "-m", "benchmarks", "tune", *(argv or [])]),
            "machine": describe_machine(),
            "image_size": size,
            "max_validation_slices": slices,
            "wall_seconds": time.perf_counter() - t0,
        }
        record_run(payload, name, result, run, bool(args.settings), bool(args.methods))
        args.output_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(payload, indent=1))
    logger.info("wrote %s (%.0f s)", path, time.perf_counter() - t0)
