"""Command-line interface: ``idm-med demo`` and ``idm-med reconstruct``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger("idm_med")

DEMO_SAMPLE = "fastmri_singlecoil_brain.h5"


def _format_metrics(name: str, values: dict[str, float]) -> str:
    return (
        f"{name:>12s}: PSNR {values['psnr']:6.2f} dB  SSIM {values['ssim']:.4f}  "
        f"NMSE {values['nmse']:.4f}"
    )


def save_comparison_png(path: Path, panels: dict[str, np.ndarray], title: str) -> Path:
    """One row of grayscale panels (reference, baselines, reconstruction, error)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (label, img) in zip(axes, panels.items(), strict=True):
        vmax = np.percentile(img, 99.5) if "error" not in label else None
        ax.imshow(img, cmap="gray", vmin=0 if vmax else None, vmax=vmax)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def cmd_demo(args: argparse.Namespace) -> int:
    from .datasets.samples import sample_path
    from .pretrained import list_pretrained, pretrained_path
    from .reconstruction import make_method, reconstruct_fastmri

    torch.manual_seed(args.seed)
    out_dir = Path(args.output)
    methods = {"TV-RND": make_method("tv")}
    checkpoint = args.checkpoint
    if checkpoint is None and "mri_4x" in list_pretrained():
        checkpoint = pretrained_path("mri_4x")
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
            sample, out_dir / name, method, acceleration=args.acceleration, slices=[args.slice]
        )
        for name, method in methods.items()
    }
    first = next(iter(results.values()))
    ref, pinv = first.reference[0], first.pinv[0]
    panels = {
        "reference (fully sampled)": ref,
        f"zero-filled A†y\n{first.pinv_metrics['psnr']:.2f} dB": pinv,
    }
    for name, result in results.items():
        panels[f"{name}\n{result.metrics['psnr']:.2f} dB"] = result.reconstruction[0]
    last_name, last = list(results.items())[-1]
    panels[f"|error| ×5 ({last_name})"] = np.abs(last.reconstruction[0] - ref) * 5
    png = save_comparison_png(
        out_dir / "demo_mri.png",
        panels,
        f"{sample.name}, slice {args.slice}, {args.acceleration:g}x random Cartesian mask",
    )
    print(_format_metrics("zero-filled", first.pinv_metrics))
    for name, result in results.items():
        print(_format_metrics(name, result.metrics))
    print(f"wrote {png} and the fastMRI-format reconstructions in {out_dir}/<method>/")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .reconstruction import (
        detect_format,
        make_method,
        reconstruct_dicom,
        reconstruct_fastmri,
        reconstruct_image,
        reconstruct_nifti,
    )

    torch.manual_seed(args.seed)
    method = make_method(args.method, checkpoint=args.checkpoint)
    fmt = detect_format(args.input)
    out = Path(args.output)
    if fmt == "fastmri":
        result = reconstruct_fastmri(
            args.input, out, method, args.acceleration, args.center_fraction, args.mask_type
        )
    elif fmt == "dicom":
        result = reconstruct_dicom(args.input, out, method, n_views=args.n_views, seed=args.seed)
    elif fmt == "nifti":
        name = Path(args.input).name
        target = out / name if out.suffix == "" else out
        result = reconstruct_nifti(
            args.input,
            target,
            method,
            axis=args.axis,
            acceleration=args.acceleration,
            center_fraction=args.center_fraction,
            seed=args.seed,
        )
    else:
        target = out / Path(args.input).name if out.suffix == "" else out
        kwargs = _operator_kwargs(args, args.operator)
        result = reconstruct_image(args.input, target, method, args.operator, **kwargs)
    if result.metrics:
        print(_format_metrics("A_pinv", result.pinv_metrics))
        print(_format_metrics(args.method, result.metrics))
    print(f"wrote {result.output}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from .backbones import sd_layout_config, small_unet_config
    from .model import IDM

    torch.manual_seed(args.seed)
    kwargs = dict(image_channels=args.image_channels, steps=args.steps)
    if args.pretrained:
        model, report = IDM.from_sd_unet(args.pretrained, **kwargs)
        for key, names in report.items():
            logger.info("%s: %d tensors", key, len(names))
    else:
        config = sd_layout_config() if args.backbone == "sd" else small_unet_config()
        model = IDM(backbone=config, **kwargs)
    model.save_pretrained(args.output)
    print(
        f"wrote {args.output}: IDM T={args.steps}, {model.num_parameters():,} parameters "
        f"({model.num_parameters(injectors_only=True):,} in injectors)"
    )
    return 0


def _parse_exclude(items: list[str]) -> dict[str, list[int]]:
    """``["brain.nii.gz:60,75"]`` → ``{"brain.nii.gz": [60, 75]}``."""
    out: dict[str, list[int]] = {}
    for item in items:
        name, _, indices = item.rpartition(":")
        if not name or not indices:
            raise ValueError(f"--exclude expects FILE:i,j,... got {item!r}")
        out.setdefault(name, []).extend(int(i) for i in indices.split(","))
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from .training import TrainingConfig, load_training_images, train

    operator = {"name": args.operator, **_operator_kwargs(args, args.operator)}
    channels = args.image_channels or (2 if args.operator == "mri" else 1)
    config = TrainingConfig(
        operator=operator,
        image_size=args.image_size,
        image_channels=channels,
        backbone=args.backbone,
        steps=args.steps,
        memory_mode=args.memory_mode,
        batch_size=args.batch_size,
        iterations=args.iterations,
        learning_rate=args.lr,
        halve_lr_every=args.halve_lr_every,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
    )
    data = load_training_images(
        args.data, axis=args.axis, exclude_slices=_parse_exclude(args.exclude)
    )
    logger.info("training on %d images", len(data))
    losses = train(config, data, args.output, resume=args.resume)
    print(f"wrote {args.output} (final loss {sum(losses[-50:]) / max(len(losses[-50:]), 1):.4f})")
    return 0


def _operator_kwargs(args: argparse.Namespace, name: str) -> dict:
    """Operator arguments (besides the image size) from the measurement options."""
    return {
        "mri": {
            "acceleration": args.acceleration,
            "center_fraction": args.center_fraction,
            "mask_type": args.mask_type,
        },
        "gaussian_cs": {"ratio": args.ratio},
        "inpainting": {"missing_ratio": args.ratio},
        "superres": {"factor": args.factor},
        "ct": {"n_views": args.n_views},
    }[name]


def _add_measurement_args(parser: argparse.ArgumentParser) -> None:
    """Options that describe how the data are (or are simulated to be) measured."""
    parser.add_argument("--acceleration", type=float, default=4.0, help="MRI undersampling")
    parser.add_argument(
        "--center-fraction", type=float, default=0.08, help="MRI fully sampled centre"
    )
    parser.add_argument("--mask-type", choices=["random", "equispaced"], default="random")
    parser.add_argument("--n-views", type=int, default=60, help="CT projection angles")
    parser.add_argument(
        "--ratio", type=float, default=0.25, help="CS sampling ratio / inpainting missing ratio"
    )
    parser.add_argument("--factor", type=int, default=4, help="super-resolution factor")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="idm-med",
        description="Reconstruct MRI, CT and natural images from undersampled measurements "
        "with Invertible Diffusion Models (IDM) or classical baselines.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="reconstruct a bundled fastMRI brain slice and write a comparison PNG",
        description="Undersample the bundled single-coil fastMRI brain sample (simulated "
        "k-space of the MNI152 template), reconstruct one slice, print PSNR/SSIM against the "
        "fully sampled reference and write demo_mri.png plus a fastMRI-format .h5.",
    )
    demo.add_argument("--output", default="demo_output", help="output folder")
    demo.add_argument("--acceleration", type=float, default=4.0, help="undersampling factor")
    demo.add_argument("--slice", type=int, default=1, help="slice of the sample volume")
    demo.add_argument(
        "--checkpoint",
        help="IDM checkpoint directory (default: the shipped mri_4x model, if present)",
    )
    demo.add_argument("--seed", type=int, default=0, help="torch seed")
    demo.set_defaults(func=cmd_demo)

    rec = sub.add_parser(
        "reconstruct",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="reconstruct a fastMRI .h5, a CT DICOM folder, a NIfTI volume or an image",
        description="The input format is detected from the path. fastMRI files that are "
        "fully sampled are undersampled retrospectively (mask seeded from the file name); "
        "CT series are projected to a sparse-view sinogram; NIfTI slices are undersampled "
        "in k-space; images are measured with --operator. The result is written in the "
        "input's format.",
    )
    rec.add_argument("input", help="fastMRI .h5 | DICOM folder | .nii(.gz) | .png/.tif/.npy")
    rec.add_argument("--output", default="reconstructions", help="output folder or file")
    rec.add_argument(
        "--method",
        choices=["pinv", "tv", "idm"],
        default="tv",
        help="A†y, TV + range-null-space baseline, or an IDM checkpoint",
    )
    rec.add_argument("--checkpoint", help="IDM checkpoint directory (for --method idm)")
    _add_measurement_args(rec)
    rec.add_argument("--axis", type=int, default=2, help="NIfTI slice axis")
    rec.add_argument(
        "--operator",
        choices=["gaussian_cs", "inpainting", "superres"],
        default="gaussian_cs",
        help="image operator",
    )
    rec.add_argument("--seed", type=int, default=0, help="NIfTI mask and CT noise seed")
    rec.set_defaults(func=cmd_reconstruct)

    init = sub.add_parser(
        "init",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="create an (untrained) IDM checkpoint directory, optionally from a local SD UNet",
        description="Build an IDM model and write it with save_pretrained (config.json + "
        "model.safetensors). With --pretrained, the backbone is Stable Diffusion v1.5's UNet "
        "trimmed as in the paper, loaded from a local diffusers directory (nothing is "
        "downloaded); otherwise it is randomly initialised.",
    )
    init.add_argument("output", help="checkpoint directory to write")
    init.add_argument("--pretrained", help="local diffusers UNet directory (SD v1.5 layout)")
    init.add_argument(
        "--backbone",
        choices=["small", "sd"],
        default="small",
        help="architecture when --pretrained is not given",
    )
    init.add_argument("--image-channels", type=int, default=1, help="1, or 2 for complex MRI")
    init.add_argument("--steps", type=int, default=3, help="unrolled steps T")
    init.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    init.set_defaults(func=cmd_init)

    tr = sub.add_parser(
        "train",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="train an IDM model end to end on simulated measurements",
        description="Crop and augment ground-truth images from --data (NIfTI volumes, "
        "single-coil fastMRI .h5, PNG/TIFF/NumPy), measure them with the operator (masks "
        "redrawn every step), and fine-tune the whole IDM with an L1 loss. Checkpoints go to "
        "OUTPUT/checkpoint every --checkpoint-every steps; --resume continues from there. "
        "Runs under `accelerate launch` for multiple GPUs or nodes.",
    )
    tr.add_argument("--data", nargs="+", required=True, help="training files")
    tr.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="FILE:i,j",
        help="held-out slices of a file (repeatable)",
    )
    tr.add_argument("--axis", type=int, default=2, help="NIfTI slice axis")
    tr.add_argument("--output", required=True, help="model directory to write")
    tr.add_argument(
        "--operator", choices=["mri", "gaussian_cs", "inpainting", "superres", "ct"], default="mri"
    )
    _add_measurement_args(tr)
    tr.add_argument("--image-size", type=int, default=128, help="training crop size")
    tr.add_argument("--image-channels", type=int, help="default: 2 for mri, else 1")
    tr.add_argument("--backbone", default="small", help="small | sd | LOCAL_SD_UNET_DIR")
    tr.add_argument("--steps", type=int, default=3, help="unrolled steps T")
    tr.add_argument(
        "--memory-mode",
        default="level1+2",
        choices=["autograd", "checkpoint", "level1", "level1+2"],
    )
    tr.add_argument("--batch-size", type=int, default=4)
    tr.add_argument("--iterations", type=int, default=1000)
    tr.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate")
    tr.add_argument("--halve-lr-every", type=int, default=400)
    tr.add_argument("--checkpoint-every", type=int, default=100)
    tr.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint")
    tr.add_argument("--seed", type=int, default=0)
    tr.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code = args.func(args)
    except (ValueError, FileNotFoundError) as exc:  # bad input: one clear line, no traceback
        logger.error("%s", exc)
        code = 2
    sys.exit(code)
