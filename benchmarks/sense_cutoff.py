"""The SENSE pseudo-inverse cutoff for noisy multi-coil data, chosen on validation images:
``python -m benchmarks sense_cutoff [--quick]``.

``A†`` drops singular values below ``rtol · σ_max`` (:class:`idm_med.operators.mri.MRI`'s
``pinv_rtol``); that bounds how much it amplifies the noise (``≤ 1 / rtol``) at the price
of the image components it drops. For each noisy setting of the MRI suite this scores
``A†y`` (PSNR, fastMRI volume metrics) on the suite's *validation* images, measured with
the setting's noise, for a grid of cutoffs, and writes ``results/sense_cutoff.md`` /
``.json``. The MRI suite's noisy settings share one cutoff chosen from this table
(:data:`benchmarks.mri.NOISY_SENSE_RTOL`); the test images are never seen.
"""

from __future__ import annotations

import logging

import numpy as np

from benchmarks import data, mri
from benchmarks.machine import report_header
from benchmarks.options import run_scan
from benchmarks.tune import MAX_VAL_SLICES, TUNE_SIZE, validation_cases

logger = logging.getLogger(__name__)

GRID = (1e-2, 3e-2, 0.1, 0.2, 0.3, 0.5)


def scan(size: int, max_slices: int, grid: tuple[float, ...] = GRID) -> dict:
    """``{setting: {"psnr": {rtol: mean PSNR}, "best": rtol}}`` over the noisy settings."""
    val = data.images("mri", "val", size, max_slices=max_slices)
    out: dict = {}
    for setting in (s for s in mri.SUITE.settings if s.noise is not None):
        # The cutoff changes A† only: the noisy measurements are drawn once per setting.
        cases = validation_cases(mri.SUITE, setting, setting.make_operator(size), val)
        psnr = {}
        for rtol in grid:
            op = setting.make_operator(size, pinv_rtol=rtol)
            scores = [
                mri.SUITE.score(gt[None], mri.SUITE.decode(op.A_pinv(y))[None])["psnr"]
                for y, _op, gt in cases
            ]
            psnr[rtol] = float(np.mean(scores))
            logger.info("%s | rtol %g: A†y %.2f dB", setting.name, rtol, psnr[rtol])
        out[setting.name] = {"psnr": psnr, "best": max(psnr, key=psnr.get)}
    return {"settings": out, "validation": {k: len(v) for k, v in val.items()}, "size": size}


def to_markdown(result: dict, command: str) -> str:
    grid = list(next(iter(result["settings"].values()))["psnr"])
    val = ", ".join(f"{name} ({n} slices)" for name, n in result["validation"].items())
    lines = [
        *report_header(
            "SENSE pseudo-inverse cutoff on noisy multi-coil data", command, result["machine"]
        ),
        "",
        f"PSNR (dB) of A†y on the MRI suite's validation images ({result['size']}², "
        f"{val}), measured with each setting's noise, for cutoffs "
        "`rtol · σ_max`, the best in bold; the suite's noisy settings share "
        "`benchmarks.mri.NOISY_SENSE_RTOL`.",
        "",
        "| setting | " + " | ".join(f"rtol {r:g}" for r in grid) + " |",
        "|---|" + "---|" * len(grid),
    ]
    for name, rec in result["settings"].items():
        cells = [
            f"**{rec['psnr'][r]:.2f}**" if r == rec["best"] else f"{rec['psnr'][r]:.2f}"
            for r in grid
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    def run(quick: bool) -> dict:
        return scan(*((64, 1) if quick else (TUNE_SIZE, MAX_VAL_SLICES)))

    run_scan("sense_cutoff", argv, __doc__, run, to_markdown)
