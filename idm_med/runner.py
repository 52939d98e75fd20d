"""``idm-med reconstruct`` over one or many inputs: expanding folders and globs, choosing
the method and the pipeline per input, writing the metrics JSON and the preview, and the
summary table of a batch."""

from __future__ import annotations

import argparse
import glob
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .acquisition import MeasurementSettings

logger = logging.getLogger(__name__)

OPERATOR_FAMILY = {"fastmri": "mri", "nifti": "mri", "dicom": "ct"}


def format_metrics(name: str, values: dict[str, float]) -> str:
    """One line of PSNR / SSIM / NMSE."""
    return (
        f"{name:>12s}: PSNR {values['psnr']:6.2f} dB  SSIM {values['ssim']:.4f}  "
        f"NMSE {values['nmse']:.4f}"
    )


# -- ---------------------------------------------------------------------------
def expand_inputs(items: list[str]) -> list[Path]:
    """Files, DICOM series folders, folders of inputs (one level) and glob patterns →
    the list of volumes to reconstruct, in order."""
    from .datasets.readers import DicomReader, find_reader, select_reader

    out: list[Path] = []
    for item in items:
        if glob.has_magic(item):
            matches = sorted(Path(m) for m in glob.glob(item))
            if not matches:
                raise ValueError(f"{item}: no file matches")
            out += matches
            continue
        path = Path(item)
        if path.is_dir() and not DicomReader().verify_suffix(path):  # a folder of inputs
            found = [p for p in sorted(path.iterdir()) if find_reader(p) is not None]
            if not found:
                raise ValueError(f"{path}: no fastMRI, NIfTI, image file or DICOM series in it")
            out += found
            continue
        select_reader(path)  # a clear message for a missing or unknown input
        out.append(path)
    return out


def process_share(inputs: list[Path]) -> list[Path]:
    """This process's inputs when launched several times (``accelerate launch`` /
    ``torchrun`` set ``RANK`` and ``WORLD_SIZE``): volumes are dealt round-robin, so each
    is reconstructed by exactly one process."""
    import os

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        logger.info(
            "process %d of %d: %d of %d inputs", rank, world, len(inputs[rank::world]), len(inputs)
        )
    return inputs[rank::world]


def _method_for(fmt: str, args: argparse.Namespace, device: str, cache: dict):
    """The method object for one input (IDM models are loaded once per checkpoint)."""
    from . import methods
    from .checkpoints import default_checkpoint

    checkpoint = args.checkpoint
    if args.method == "idm" and checkpoint is None:
        checkpoint = default_checkpoint(OPERATOR_FAMILY.get(fmt, args.operator))
    key = (args.method, str(checkpoint))
    if key not in cache:
        # Iterative methods show their iterations inside each slice (seconds to minutes).
        extra = {"progress": True} if args.method in ("tv", "ddnm", "sr3") else {}
        if args.method == "idm":
            extra = {
                "precision": args.precision,
                "attention_window": args.attention_window,
                "noise_sigma": args.noise_sigma,
            }
        cache[key] = methods.make_method(
            args.method,
            checkpoint=checkpoint,
            device=device,
            allow_mismatch=args.allow_mismatch,
            **extra,
        )
    return cache[key]


def measurement_settings(args: argparse.Namespace) -> MeasurementSettings:
    """The measurement options of ``idm-med reconstruct`` (every input kind reads the
    ones it needs)."""
    from .acquisition import MeasurementSettings

    # None: the settings' default cutoff for measured multi-coil data
    sense = {} if args.sense_rtol is None else {"sense_rtol": args.sense_rtol}
    return MeasurementSettings(
        acceleration=args.acceleration,
        center_fraction=args.center_fraction,
        mask_type=args.mask_type,
        calib_width=args.calib_width,
        n_views=args.n_views,
        seed=args.seed,
        axis=args.axis,
        operator=args.operator,
        operator_kwargs=operator_kwargs(args, args.operator),
        ct_geometry=args.ct_geometry,
        source_distance_mm=args.source_distance,
        detector_distance_mm=args.detector_distance,
        detector=args.detector,
        **sense,
    )


def operator_kwargs(args: argparse.Namespace, name: str) -> dict:
    """Operator arguments (besides the image size) of an image operator from the
    measurement options."""
    return {
        "gaussian_cs": {"ratio": args.ratio},
        "inpainting": {"missing_ratio": args.ratio},
        "superres": {"factor": args.factor},
    }[name]


def _preview_path(args: argparse.Namespace, path: Path, many: bool) -> Path | None:
    if not args.preview:
        return None
    preview = Path(args.preview)
    return preview.with_name(f"{preview.stem}_{path.name}{preview.suffix}") if many else preview


def reconstruct_one(path: Path, args: argparse.Namespace, device: str, cache: dict, many: bool):
    """Reconstruct one input; write the result, ``<output>.metrics.json`` and the preview.
    Returns the summary row."""
    from .datasets.atomic import atomic_write_text, check_output
    from .datasets.readers import select_reader
    from .figures import save_preview
    from .pipeline import reconstruct
    from .reconstruction import default_output

    fmt = select_reader(path).name
    target = default_output(path, args.output, args.method)
    report = target.with_name(target.name + ".metrics.json")
    preview = _preview_path(args, path, many)
    for out in (target, report, preview):  # all refused before the (long) run
        if out is not None:
            check_output(out, [path], args.overwrite)
    existed = target.exists()
    method = _method_for(fmt, args, device, cache)
    result = reconstruct(
        path,
        target,
        method,
        measurement_settings(args),
        batch_size=args.batch_size,
        device=device,
        overwrite=args.overwrite,
    )
    try:
        payload = {
            "input": str(path),
            "output": str(result.output),
            "method": args.method,
            "checkpoint": str(getattr(getattr(method, "info", None), "path", "")) or None,
            "metrics": result.metrics,
            "pinv_metrics": result.pinv_metrics,
        }
        atomic_write_text(report, json.dumps(payload, indent=2))
        if preview is not None:
            save_preview(preview, result, args.method, title=path.name)
    except BaseException:
        if not existed:  # this run created it: a failure leaves nothing behind
            _remove(result.output)
            report.unlink(missing_ok=True)
        raise
    if result.metrics:
        print(format_metrics("A_pinv", result.pinv_metrics))
        print(format_metrics(args.method, result.metrics))
    print(f"wrote {result.output}")
    return {"input": path.name, "output": str(result.output), **result.metrics}


def _remove(path: Path) -> None:
    """Remove an output this run created (a file or a series folder)."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def summary_table(rows: list[dict]) -> str:
    lines = [f"{'input':<32s} {'PSNR':>7s} {'SSIM':>7s} {'NMSE':>8s}  output"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['input']:<32s} failed: {r['error']}")
            continue
        nums = f"{r['psnr']:7.2f} {r['ssim']:7.4f} {r['nmse']:8.4f}" if "psnr" in r else " " * 24
        lines.append(f"{r['input']:<32s} {nums}  {r['output']}")
    return "\n".join(lines)
