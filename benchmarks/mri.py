"""MRI reconstruction quality on held-out data: ``python -m benchmarks mri``.

Single-coil, 4× random Cartesian masks (centre fraction 0.08), compared methods:
zero-filled ``A†y``, the TV + range–null-space baseline, and an IDM checkpoint (default:
the shipped ``idm_med/pretrained/mri_4x``, trained by ``scripts/train_default_mri.py``).

Held-out test images (none is used in training):

* the 4 slices of the bundled ``fastmri_singlecoil_brain.h5`` (MNI152 axial slices 60–105,
  excluded from training), masks seeded from the file name as fastMRI does;
* ``s1045.ima.gz`` shipped with matplotlib: a real sagittal head MRI of one subject
  (256², magnitude), a different contrast, orientation and anatomy from the training data.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.machine import describe_machine
from idm_med import metrics
from idm_med.datasets.samples import sample_path
from idm_med.operators import make_operator
from idm_med.reconstruction import make_method, reconstruct_fastmri

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "idm_med" / "pretrained" / "mri_4x"


def load_s1045() -> np.ndarray:
    """matplotlib's sample sagittal head MRI as float64 in [0, 1]."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "s1045.ima.gz"
    with gzip.open(path) as f:
        img = np.frombuffer(f.read(), np.uint16).reshape(256, 256).astype(np.float64)
    return img / img.max()


def evaluate_image(image: np.ndarray, methods: dict, seed: int = 0) -> dict[str, dict]:
    """Simulate 4× single-coil sampling of a magnitude image and reconstruct."""
    op = make_operator(
        "mri", image_size=image.shape, acceleration=4, center_fraction=0.08, seed=seed
    )
    x = torch.zeros(1, 2, *image.shape)
    x[0, 0] = torch.from_numpy(image).float()
    y = op.A(x)
    rows = {}
    for name, method in methods.items():
        start = time.perf_counter()
        rec = method(y, op)
        elapsed = time.perf_counter() - start
        mag = torch.linalg.vector_norm(rec.detach(), dim=1)[0].numpy()
        rows[name] = {**metrics.evaluate(image, mag), "seconds": elapsed}
    return rows


def evaluate_fastmri(methods: dict, out_dir: Path) -> dict[str, dict]:
    path = sample_path("fastmri_singlecoil_brain.h5")
    rows = {}
    for name, method in methods.items():
        start = time.perf_counter()
        result = reconstruct_fastmri(path, out_dir / name, method, acceleration=4)
        elapsed = (time.perf_counter() - start) / len(result.reconstruction)
        rows[name] = {**result.metrics, "seconds": elapsed}
    return rows


def to_markdown(results: dict, checkpoint: Path | None) -> str:
    lines = [
        "# MRI reconstruction on held-out data (single-coil, 4× random Cartesian)",
        "",
        "Regenerate with `python -m benchmarks mri`.",
        "",
        f"Machine: {describe_machine()}",
        "",
        f"IDM checkpoint: `{checkpoint}`" if checkpoint else "IDM checkpoint: none found",
        "",
        "PSNR / SSIM with the reference maximum as data range (fastMRI conventions); seconds",
        "per slice on this CPU.",
        "",
        "| test data | method | PSNR (dB) | SSIM | NMSE | s / slice |",
        "|---|---|---|---|---|---|",
    ]
    for data_name, rows in results.items():
        for method, r in rows.items():
            lines.append(
                f"| {data_name} | {method} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                f"{r['nmse']:.4f} | {r['seconds']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks mri",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    methods = {"zero-filled A†y": make_method("pinv"), "TV-RND": make_method("tv")}
    checkpoint = args.checkpoint if (args.checkpoint / "config.json").is_file() else None
    if checkpoint:
        methods["IDM (T=3)"] = make_method("idm", checkpoint=checkpoint)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        results = {
            "fastmri_singlecoil_brain.h5 (4 slices)": evaluate_fastmri(methods, Path(tmp)),
            "s1045 sagittal head (matplotlib)": evaluate_image(load_s1045(), methods),
        }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "mri.md").write_text(to_markdown(results, checkpoint))
    (args.output_dir / "mri.json").write_text(json.dumps(results, indent=2))
    logger.info("%s", to_markdown(results, checkpoint))
