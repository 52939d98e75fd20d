"""What IDM's inference options cost in quality and buy in time, on validation images:
``python -m benchmarks inference_options [--quick] [--threads N]``.

For each shipped IDM model of the diffusion family (CS, single-coil MRI, inpainting,
super-resolution; :data:`benchmarks.learned.IDM_BY_OPERATOR`) and each setting of its
suite, the model reconstructs the suite's *validation* images (never the test images)
with every combination of

* backbone precision ``fp32`` / ``bf16`` (:meth:`idm_med.model.IDM.set_backbone_precision`:
  the UNet under bfloat16 autocast, the operator in fp32), and
* attention over the whole image / within windows of the model's training patch
  (:meth:`idm_med.model.IDM.set_attention_window`),

and writes PSNR (the suite's metric) and the median seconds per slice to
``results/inference_options.md`` / ``.json``. CT is left out: its reconstruction time is
the CG pseudo-inverse's (results/ct_inner_cg.md), not the UNet's. Multi-coil MRI settings
are left out for the same reason.
"""

from __future__ import annotations

import logging
import statistics
import time

import numpy as np

from benchmarks import cs, data, inpaint, learned, mri, superres
from benchmarks.machine import report_header
from benchmarks.options import run_scan
from benchmarks.tune import MAX_VAL_SLICES, validation_cases

logger = logging.getLogger(__name__)

#: ``(precision, window)``: ``None`` attends over the whole image.
OPTIONS = (("fp32", None), ("bf16", None), ("fp32", "training"), ("bf16", "training"))
SUITES = (cs.SUITE, mri.SUITE, inpaint.SUITE, superres.SUITE)


def _label(precision: str, window: str | None) -> str:
    return f"{precision}, {'training-patch windows' if window else 'global attention'}"


def scan(size: int, max_slices: int) -> dict:
    """``{suite: {setting: {option label: {psnr, seconds}}}}`` plus the models used."""
    from idm_med.methods import IDMMethod
    from idm_med.pretrained import pretrained_path

    out: dict = {}
    models: dict = {}
    for suite in SUITES:
        val = data.images(suite.modality, "val", size, max_slices=max_slices)
        settings = [s for s in suite.settings if "coil SENSE" not in s.name]
        name = learned.IDM_BY_OPERATOR[settings[0].make_operator(size).name]
        path = pretrained_path(name)
        methods = {
            _label(p, w): IDMMethod(path, precision=p, attention_window=w) for p, w in OPTIONS
        }
        window = methods[_label("fp32", "training")].model.attention_window
        models[suite.name] = {"model": name, "window": window}
        out[suite.name] = {}
        for setting in settings:
            op = setting.make_operator(size)
            cases = validation_cases(suite, setting, op, val)
            rows = {}
            for label, method in methods.items():
                method(cases[0][0], op)  # warm-up (first call per operator checks the fit)
                scores, seconds = [], []
                for y, _op, gt in cases:
                    t0 = time.perf_counter()
                    rec = method(y, op)
                    seconds.append(time.perf_counter() - t0)
                    scores.append(suite.score(gt[None], suite.decode(rec)[None])["psnr"])
                rows[label] = {
                    "psnr": float(np.mean(scores)),
                    "seconds": statistics.median(seconds),
                }
                logger.info("%s | %s | %s: %s", suite.name, setting.name, label, rows[label])
            out[suite.name][setting.name] = rows
    return {"suites": out, "models": models, "size": size, "max_slices": max_slices}


def to_markdown(result: dict, command: str) -> str:
    labels = [_label(p, w) for p, w in OPTIONS]
    base = labels[0]
    lines = [
        *report_header(
            "IDM inference options: precision and attention window", command, result["machine"]
        ),
        "",
        f"Validation images of each suite ({result['size']}², at most {result['max_slices']} "
        "slice(s) per source), the shipped model of the modality; PSNR (dB) as in the suite "
        "and the median seconds per slice; Δ against fp32 with global attention. "
        "Training-patch windows: attention within tiles of the model's training patch "
        "size (pixels below). The data-consistency steps run in fp32 in every column.",
        "",
        "| suite (model, window) | setting | " + " | ".join(labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    for suite, settings in result["suites"].items():
        info = result["models"][suite]
        for name, rows in settings.items():
            cells = []
            for label in labels:
                r = rows[label]
                delta = "" if label == base else f" ({r['psnr'] - rows[base]['psnr']:+.2f})"
                cells.append(f"{r['psnr']:.2f}{delta}, {r['seconds']:.2f} s")
            lines.append(
                f"| {suite} ({info['model']}, {info['window']} px) | {name} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    def run(quick: bool) -> dict:
        return scan(*((64, 1) if quick else (256, MAX_VAL_SLICES)))

    run_scan("inference_options", argv, __doc__, run, to_markdown)
