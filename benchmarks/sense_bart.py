"""Multi-coil MRI end to end against BART: ``python -m benchmarks sense_bart``.

One slice of the bundled multi-coil fastMRI brain file, undersampled with equispaced
columns (4× and 8×, 8 % fully sampled centre), reconstructed the two ways a user would:

- idm-med: ESPIRiT coil maps (:func:`idm_med.acquisition.mri.slice_coil_maps`, sigpy),
  the SENSE operator with the pseudo-inverse for measured data (singular values above
  :data:`~idm_med.acquisition.mri.MEASURED_SENSE_RTOL` of the largest; the factor is built
  on the first ``A_pinv``, :mod:`idm_med.operators.sense`), and ``A†y``; the PSNR of the
  exact pseudo-inverse (the operator's default cutoff, 1e-6) is given beside it, untimed;
- BART: ``bart ecalib -m 1`` then ``bart pics`` (l1-wavelet, 100 iterations).

Both run on the same number of threads. The table gives the seconds of each stage, the
end-to-end ratio and PSNR / SSIM of the magnitude against the file's RSS reference
(fastMRI conventions). Skipped with a notice when ``bart`` is not on PATH.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.machine import describe_machine, report_header
from idm_med import metrics
from idm_med.acquisition.mri import MEASURED_SENSE_RTOL, iter_volume, slice_coil_maps
from idm_med.baselines.bart import bart_available, bart_ecalib_pics
from idm_med.datasets import fastmri
from idm_med.datasets.atomic import atomic_write_text
from idm_med.operators import make_operator

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
SAMPLE = Path(__file__).resolve().parents[1] / "datasets" / "samples" / "fastmri_multicoil_brain.h5"
CENTER_FRACTION = 0.08


def _complex(measurement: torch.Tensor) -> torch.Tensor:
    """``(1, C, 2, H, W)`` → ``(C, H, W)`` complex."""
    m = measurement[0].double()
    return torch.complex(m[:, 0], m[:, 1])


def _image(x: torch.Tensor) -> np.ndarray:
    """``(1, 2, H, W)`` → complex ``(H, W)`` numpy."""
    z = x[0].detach().double().numpy()
    return z[0] + 1j * z[1]


def measure(acceleration: float, index: int, threads: int, bart_lam: float) -> dict:
    """One row: both pipelines on slice ``index`` at ``acceleration``."""
    volume = fastmri.FastMRIVolume(SAMPLE)
    item = next(iter_volume(volume, acceleration, CENTER_FRACTION, "equispaced", slices=[index]))
    reference = item.target.numpy()
    kspace = _complex(item.measurement)
    crop = volume.info.crop_size

    def score(image: np.ndarray) -> dict[str, float]:
        return metrics.evaluate(reference[None], fastmri.center_crop(np.abs(image), crop)[None])

    t0 = time.perf_counter()
    maps = slice_coil_maps(kspace.to(torch.complex64), item.mask, None, SAMPLE)
    t_maps = time.perf_counter() - t0
    t0 = time.perf_counter()
    op = make_operator(**{**item.operator_config, "coil_maps": maps})
    x = op.A_pinv(item.measurement)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    op.A_pinv(item.measurement)
    t_cached = time.perf_counter() - t0
    exact = make_operator(**{**item.operator_config, "coil_maps": maps, "pinv_rtol": 1e-6})
    ours, ours_exact = (_image(z) for z in (x, exact.A_pinv(item.measurement)))
    row = {
        "acceleration": acceleration,
        "slice": index,
        "idm_med": {
            "espirit_s": t_maps,
            "operator_and_first_pinv_s": t_first,
            "pinv_cached_s": t_cached,
            "total_s": t_maps + t_first,
            **score(ours),
            "pinv_rtol": item.operator_config["pinv_rtol"],
            "exact_pinv": score(ours_exact),
        },
    }
    if bart_available():
        image, seconds = bart_ecalib_pics(
            kspace.numpy(), lam=bart_lam, regulariser="l1", threads=threads
        )
        row["bart"] = {**{f"{k}_s": v for k, v in seconds.items()}, **score(image)}
        row["bart"]["total_s"] = sum(seconds.values())
        row["ratio"] = row["idm_med"]["total_s"] / row["bart"]["total_s"]
    logger.info("%g×: %s", acceleration, json.dumps(row))
    return row


def to_markdown(rows: list[dict], command: str, threads: int, bart_lam: float) -> str:
    lines = [
        *report_header(
            "Multi-coil MRI end to end: idm-med SENSE A†y against BART ecalib + pics",
            command,
            f"{describe_machine()}; {threads} thread(s) for both.",
        ),
        "",
        f"Slice of `{SAMPLE.name}` (8 coils, 256²), equispaced columns, "
        f"{CENTER_FRACTION:.0%} centre. idm-med: ESPIRiT (sigpy) + SENSE operator with the "
        f"pseudo-inverse keeping singular values above {MEASURED_SENSE_RTOL:g} σ_max "
        "(`MEASURED_SENSE_RTOL`; factor built on the first call) + A†y; *exact A†y* is "
        "the operator's default cutoff 1e-6 (untimed), which amplifies the data's noise at "
        "8×. BART: `ecalib -m 1 "
        f"-r 24` + `pics -l1 -r {bart_lam:g} -i 100` (files included). PSNR / SSIM of the "
        "magnitude against the file's RSS reference.",
        "",
        "| accel. | ESPIRiT (s) | operator + first A† (s) | A† cached (s) | idm-med total (s) "
        "| BART ecalib (s) | BART pics (s) | BART total (s) | idm-med / BART | PSNR A†y | "
        "PSNR exact A†y | PSNR BART |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours, bart = r["idm_med"], r.get("bart")
        b = (
            [f"{bart['ecalib_s']:.2f}", f"{bart['pics_s']:.2f}", f"{bart['total_s']:.2f}",
             f"{r['ratio']:.2f}×"]
            if bart else ["–"] * 4
        )  # fmt: skip
        lines.append(
            f"| {r['acceleration']:g}× | {ours['espirit_s']:.2f} | "
            f"{ours['operator_and_first_pinv_s']:.2f} | {ours['pinv_cached_s']:.3f} | "
            f"{ours['total_s']:.2f} | "
            + " | ".join(b)
            + f" | {ours['psnr']:.2f} | {ours['exact_pinv']['psnr']:.2f} | "
            + (f"{bart['psnr']:.2f} |" if bart else "– |")
        )
    if not any("bart" in r for r in rows):
        lines += ["", "`bart` was not on PATH: only the idm-med side was measured."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks sense_bart", description=__doc__)
    parser.add_argument("--accelerations", type=float, nargs="+", default=[4.0, 8.0])
    parser.add_argument("--slice", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bart-lam", type=float, default=1e-3, help="pics -r (l1 weight)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not bart_available():
        logger.warning("bart is not on PATH (apt-get install bart): BART columns skipped")
    rows = [measure(a, args.slice, args.threads, args.bart_lam) for a in args.accelerations]
    command = " ".join(["python -m benchmarks sense_bart", *(argv or [])])
    args.output_dir.mkdir(parents=True, exist_ok=True)
    payload = {"rows": rows, "machine": describe_machine(), "threads": args.threads}
    atomic_write_text(args.output_dir / "sense_bart.json", json.dumps(payload, indent=1))
    md = to_markdown(rows, command, args.threads, args.bart_lam)
    atomic_write_text(args.output_dir / "sense_bart.md", md)
    logger.info("wrote %s", args.output_dir / "sense_bart.md")
