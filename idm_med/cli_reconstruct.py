"""``idm-med demo`` and ``idm-med reconstruct``: the file-to-file commands.

:func:`add_reconstruction_commands` registers both with the ``add`` helper of
:func:`idm_med.cli.build_parser`; the per-input work is :mod:`idm_med.runner`, the
pipeline :mod:`idm_med.pipeline`.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from .runner import format_metrics

logger = logging.getLogger("idm_med")

DEMO_SAMPLE = "fastmri_singlecoil_brain.h5"


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when available (``cuda:LOCAL_RANK`` under ``accelerate launch``),
    else ``cpu``; ``cuda`` must be available."""
    if name == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available (use cpu or auto)")
    return name


def cmd_demo(args: argparse.Namespace) -> int:
    from .checkpoints import CheckpointError, default_checkpoint
    from .datasets.samples import sample_path
    from .figures import save_comparison_png
    from .reconstruction import make_method, reconstruct_fastmri

    torch.manual_seed(args.seed)
    out_dir = Path(args.output)
    methods = {"TV-RND": make_method("tv")}
    checkpoint = args.checkpoint
    if checkpoint is None:
        try:
            checkpoint = default_checkpoint("mri")
        except CheckpointError:
            checkpoint = None  # a source tree without shipped models: the baseline only
    if checkpoint is not None:
        logger.info("IDM checkpoint: %s", checkpoint)
        methods["IDM"] = make_method("idm", checkpoint=checkpoint)
    else:
        logger.info(
            "No IDM checkpoint: reconstructing with the training-free baseline only "
            "(A†y, then TV denoising alternated with the range-null-space projection)."
        )
    sample = sample_path(DEMO_SAMPLE)
    logger.info(
        "Reconstructing slice %d of %s at %gx acceleration",
        args.slice,
        sample.name,
        args.acceleration,
    )
    results = {
        name: reconstruct_fastmri(
            sample,
            out_dir / name,
            method,
            acceleration=args.acceleration,
            slices=[args.slice],
            overwrite=True,  # the demo's own folder
        )
        for name, method in methods.items()
    }
    first = next(iter(results.values()))
    panels = {"zero-filled A†y": first.pinv[0]}
    panels.update({name: result.reconstruction[0] for name, result in results.items()})
    png = save_comparison_png(
        out_dir / "demo_mri.png",
        panels,
        reference=first.reference[0],
        mask=first.mask,
        title=f"{sample.name}, slice {args.slice}, {args.acceleration:g}x random Cartesian mask",
    )
    print(format_metrics("zero-filled", first.pinv_metrics))
    for name, result in results.items():
        print(format_metrics(name, result.metrics))
    print(f"wrote {png} and the fastMRI-format reconstructions in {out_dir}/<method>/")
    if not args.mri_only:
        from .demo_tasks import run_demo_tasks

        for label, pinv_metrics, idm_metrics in run_demo_tasks(out_dir):
            print(f"{label}:")
            print(format_metrics("A†y", pinv_metrics))
            print(format_metrics("IDM", idm_metrics))
        print(f"wrote {out_dir}/demo_<operator>.png per task")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .runner import expand_inputs, process_share, reconstruct_one, summary_table

    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    all_inputs = expand_inputs(args.input)
    many = len(all_inputs) > 1
    inputs = process_share(all_inputs)
    if many and Path(args.output).suffix:
        raise ValueError(f"--output {args.output}: must be a folder for {len(inputs)} inputs")
    cache: dict = {}
    rows = []
    for path in inputs:
        try:
            rows.append(reconstruct_one(path, args, device, cache, many))
        except (ValueError, OSError) as exc:
            if not many or args.debug:
                raise
            logger.error("%s", exc)
            rows.append({"input": path.name, "error": str(exc)})
    if many:
        print(summary_table(rows))
    return 1 if any("error" in r for r in rows) else 0


def _attention_window(text: str) -> int | str:
    """``--attention-window``: a positive number of pixels or ``training``."""
    if text == "training":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'training', got {text!r}")
    return value


def _add_measurement_args(parser: argparse.ArgumentParser) -> None:
    """Options that describe how the data are (or are simulated to be) measured."""
    parser.add_argument("--acceleration", type=float, default=4.0, help="MRI undersampling factor")
    parser.add_argument(
        "--center-fraction",
        type=float,
        default=0.08,
        help="fraction of MRI k-space columns fully sampled at the centre",
    )
    parser.add_argument(
        "--mask-type",
        choices=["random", "equispaced"],
        default="random",
        help="MRI column mask (fastMRI RandomMaskFunc / EquiSpacedMaskFunc)",
    )
    parser.add_argument("--n-views", type=int, default=60, help="CT projection angles")
    parser.add_argument(
        "--ratio", type=float, default=0.25, help="CS sampling ratio / inpainting missing ratio"
    )
    parser.add_argument("--factor", type=int, default=4, help="super-resolution factor")


def _add_ct_geometry_args(parser: argparse.ArgumentParser) -> None:
    """The CT scan geometry of DICOM series (parallel beam unless ``--ct-geometry fan``)."""
    parser.add_argument(
        "--ct-geometry",
        choices=["parallel", "fan"],
        default="parallel",
        help="CT projection geometry (default parallel). fan: a full 360° fan-beam scan with "
        "the series' DistanceSourceToPatient (0018,1111) and DistanceSourceToDetector "
        "(0018,1110), else --source-distance / --detector-distance (IDM models trained on "
        "parallel beam run on it too)",
    )
    parser.add_argument(
        "--source-distance",
        type=float,
        metavar="MM",
        help="fan beam: source-isocentre distance in mm, used only when the series lacks "
        "DistanceSourceToPatient (0018,1111) (the tag is preferred when present)",
    )
    parser.add_argument(
        "--detector-distance",
        type=float,
        metavar="MM",
        help="fan beam: source-detector distance in mm, used only when the series lacks "
        "DistanceSourceToDetector (0018,1110) (the tag is preferred when present)",
    )
    parser.add_argument(
        "--detector",
        choices=["arc", "flat"],
        default="arc",
        help="fan beam: curved detector centred on the source (arc, default; "
        "third-generation scanners) or a flat panel",
    )


def add_reconstruction_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``demo`` and ``reconstruct`` with ``add(name, **kw)``."""
    demo = add(
        "demo",
        help="reconstruct a bundled fastMRI brain slice and write a comparison PNG",
        description="Undersample the bundled single-coil fastMRI brain sample (simulated "
        "k-space of the MNI152 template), reconstruct one slice, print PSNR/SSIM against the "
        "fully sampled reference and write demo_mri.png (images, error maps on one scale, "
        "the sampling mask) plus a fastMRI-format .h5 per method; then, with the shipped "
        "models of the other tasks (CS, inpainting, super-resolution on a held-out natural "
        "image, 60-view CT on a held-out CT section), the same per task "
        "(demo_<operator>.png).",
    )
    demo.add_argument("--output", default="demo_output", help="output folder")
    demo.add_argument("--acceleration", type=float, default=4.0, help="undersampling factor")
    demo.add_argument("--slice", type=int, default=1, help="slice of the sample volume")
    demo.add_argument(
        "--checkpoint",
        help="IDM checkpoint directory or model name (default: the shipped default MRI "
        "model, idm_mri, if present)",
    )
    demo.add_argument("--seed", type=int, default=0, help="torch seed")
    demo.add_argument("--mri-only", action="store_true", help="skip the tasks after the MRI")
    demo.set_defaults(func=cmd_demo)

    rec = add(
        "reconstruct",
        help="reconstruct fastMRI .h5, CT DICOM series, NIfTI volumes or images",
        description="The input format is detected from the path (a folder of DICOM files "
        "is a series; a folder of other inputs, or a quoted glob, is a batch processed one "
        "volume after another with a summary table). Fully sampled fastMRI files are "
        "undersampled retrospectively (mask seeded from the file name); CT series are "
        "projected to a sparse-view sinogram (parallel beam, or fan beam with --ct-geometry "
        "fan); NIfTI slices are undersampled in k-space; "
        "images are measured with --operator. The result is written in the input's format "
        "to OUTPUT/<name>_<method> (fastMRI: OUTPUT/<method>/<name>.h5; DICOM: a new "
        "series folder OUTPUT/<series>_<method>/), with <output>.metrics.json beside it. "
        "Inputs are never overwritten; existing outputs only with --overwrite.",
    )
    rec.add_argument(
        "input",
        nargs="+",
        help="fastMRI .h5 | DICOM folder | .nii(.gz) | .png/.tif/.npy, a folder of them, or a glob",
    )
    rec.add_argument(
        "--output",
        default="reconstructions",
        help="output folder, or the output file for one .h5/.nii/image input",
    )
    rec.add_argument(
        "--method",
        choices=["pinv", "tv", "idm", "ddnm", "sr3"],
        default="tv",
        help="A†y, TV + range-null-space baseline, an IDM model, DDNM (100 steps on the "
        "shipped diffusion prior, training-free) or an SR3 model (--checkpoint)",
    )
    rec.add_argument(
        "--checkpoint",
        help="IDM checkpoint directory or model name from `idm-med models` (default for "
        "--method idm: the shipped model for the input's operator); for ddnm a prior "
        "directory (default: the shipped prior); for sr3 an SR3 directory",
    )
    rec.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="run an IDM model on data it was not trained for (operator, coils, channels)",
    )
    rec.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="--method idm: the UNet in bfloat16 autocast (faster on CPUs with AVX-512 BF16 "
        "or AMX; the data-consistency steps stay fp32; default: fp32)",
    )
    rec.add_argument(
        "--attention-window",
        type=_attention_window,
        default=None,
        help="--method idm: attend within windows of this many pixels, or 'training' (the "
        "model's training patch size), instead of over the whole image (faster on large "
        "images; default: the whole image)",
    )
    rec.add_argument(
        "--noise-sigma",
        type=float,
        default=0.0,
        help="--method idm: the data's measurement noise per real component (σ/√2 for "
        "complex k-space noise of variance σ², e.g. from a noise pre-scan); a noise-aware "
        "model (`idm-med models` says which) then softens its data-consistency steps "
        "instead of copying the noise into the image (default 0: hard steps)",
    )
    _add_measurement_args(rec)
    _add_ct_geometry_args(rec)
    rec.add_argument(
        "--calib-width",
        type=int,
        help="ESPIRiT calibration columns for multi-coil fastMRI (default: the fully "
        "sampled centre, at most 24; RSS-equivalent coil maps when under 16)",
    )
    rec.add_argument(
        "--sense-rtol",
        type=float,
        help="multi-coil fastMRI: the SENSE pseudo-inverse keeps singular values above "
        "this fraction of the largest, which bounds the noise amplification by its "
        "inverse (default: idm_med.acquisition.mri.MEASURED_SENSE_RTOL, 1e-2, chosen on "
        "a validation slice; 1e-6 gives the exact pseudo-inverse)",
    )
    rec.add_argument("--axis", type=int, default=2, help="NIfTI slice axis")
    rec.add_argument(
        "--operator",
        choices=["gaussian_cs", "inpainting", "superres"],
        default="gaussian_cs",
        help="how images (PNG/TIFF/NumPy) are measured",
    )
    rec.add_argument(
        "--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: cuda if present)"
    )
    rec.add_argument("--batch-size", type=int, default=1, help="slices reconstructed at once")
    rec.add_argument(
        "--preview", help="also write a PNG: reference, A†y, result, error map, PSNR/SSIM"
    )
    rec.add_argument(
        "--overwrite", action="store_true", help="replace existing outputs (never inputs)"
    )
    rec.add_argument("--seed", type=int, default=0, help="torch, NIfTI mask and CT noise seed")
    rec.set_defaults(func=cmd_reconstruct)
