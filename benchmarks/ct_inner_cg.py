"""How many CG iterations IDM's inner solves need on sparse-view CT, chosen on validation
images: ``python -m benchmarks ct_inner_cg [--quick]``.

At clinical sizes the CT ``A_pinv`` is CG (:mod:`idm_med.operators.sparse_view_ct`), and
IDM pays one solve per injector and per unrolled step. The inner solves feed a network
that was trained on exact ones, so a capped CG is an approximation whose cost in quality
is measured here: for each view count of the CT suite and each cap, the shipped CT model
reconstructs the suite's *validation* sections (``IDMMethod.inner_cg_max_iter = cap``;
the final range–null-space step keeps the operator's 200 iterations, so the output stays
consistent with ``y``). Writes ``results/ct_inner_cg.md`` / ``.json`` with PSNR (HU
window and [0, 1]), the data residual ``‖A x̂ − y‖ / ‖y‖`` and seconds per slice. The
default :data:`idm_med.methods.INNER_CG_MAX_ITER` is read from this table; the test
sections are never seen.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from benchmarks import ct, data
from benchmarks.machine import report_header
from benchmarks.options import run_scan
from benchmarks.tune import MAX_VAL_SLICES, validation_cases

logger = logging.getLogger(__name__)

#: ``None``: no cap (the operator's own CG setting, the reference).
CAPS = (None, 30, 20, 10)


def scan(size: int, max_slices: int, caps: tuple[int | None, ...] = CAPS) -> dict:
    """``{setting: {cap: {psnr_hu, psnr, residual, seconds}}}`` over the CT settings."""
    from idm_med.methods import IDMMethod
    from idm_med.pretrained import pretrained_path

    val = data.images("ct", "val", size, max_slices=max_slices)
    method = IDMMethod(pretrained_path("idm_ct"))
    out: dict = {}
    for setting in ct.SUITE.settings:
        op = setting.make_operator(size)
        cases = validation_cases(ct.SUITE, setting, op, val)
        rows = {}
        for cap in caps:
            method.inner_cg_max_iter = cap
            scores, residuals, seconds = [], [], []
            for y, _op, gt in cases:
                t0 = time.perf_counter()
                rec = method(y, op)
                seconds.append(time.perf_counter() - t0)
                scores.append(ct.SUITE.score(gt[None], ct.SUITE.decode(rec)[None]))
                residuals.append(float((op.A(rec) - y).norm() / y.norm()))
            rows[str(cap)] = {
                "psnr_hu": float(np.mean([s["psnr_hu"] for s in scores])),
                "psnr": float(np.mean([s["psnr"] for s in scores])),
                "residual": float(np.max(residuals)),
                "seconds": float(np.mean(seconds)),
            }
            logger.info("%s | cap %s: %s", setting.name, cap, rows[str(cap)])
        out[setting.name] = rows
    return {
        "settings": out,
        "validation": {k: len(v) for k, v in val.items()},
        "size": size,
        "operator_cg_max_iter": op.cg_max_iter,
    }


def to_markdown(result: dict, command: str) -> str:
    val = ", ".join(f"{name} ({n} slices)" for name, n in result["validation"].items())
    lines = [
        *report_header(
            "CG iterations of IDM's inner solves on sparse-view CT", command, result["machine"]
        ),
        "",
        f"The shipped `idm_ct` on the CT suite's validation sections ({result['size']}², "
        f"{val}); the inner solves (A†y, the unrolled steps' range–null-space steps, the "
        "injectors' A†A) stop after at most *cap* CG iterations, the final "
        f"range–null-space step runs the operator's {result['operator_cg_max_iter']}. "
        "Residual: the largest ‖A x̂ − y‖ / ‖y‖ over the slices.",
        "",
        "| setting | cap | PSNR HU win (dB) | PSNR [0,1] (dB) | residual | s / slice |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in result["settings"].items():
        for cap, r in rows.items():
            label = "none" if cap == "None" else cap
            lines.append(
                f"| {name} | {label} | {r['psnr_hu']:.2f} | {r['psnr']:.2f} | "
                f"{r['residual']:.1e} | {r['seconds']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    def run(quick: bool) -> dict:
        return scan(*((64, 1) if quick else (256, MAX_VAL_SLICES)))

    run_scan("ct_inner_cg", argv, __doc__, run, to_markdown)
