"""Command-line interface: ``idm-med demo | reconstruct | models | init | train | ...``.

Each subcommand is one ``cmd_<name>`` function plus one ``add_parser`` block in
:func:`build_parser`. Every error a user can cause ends in one line naming the file and the
problem and a non-zero exit status (``--debug`` shows the traceback); Ctrl-C leaves no
half-written file (all writers are atomic).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from . import __version__
from .cli_training import add_training_commands
from .runner import format_metrics

logger = logging.getLogger("idm_med")

DEMO_SAMPLE = "fastmri_singlecoil_brain.h5"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` once, and only for defaults that mean something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        if not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when available (``cuda:LOCAL_RANK`` under ``accelerate launch``),
    else ``cpu``; ``cuda`` must be available."""
    if name == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        import os

        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available (use cpu or auto)")
    return name


def cmd_demo(args: argparse.Namespace) -> int:
    from .datasets.samples import sample_path
    from .figures import save_comparison_png
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


# -- models, init, train -------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from .checkpoints import list_models, user_models_dir

    rows = [m.summary() for m in list_models()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no models (shipped or in {user_models_dir()})")
        return 0
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(r[k].ljust(widths[k]) for k in keys))
    print(f"(user models: {user_models_dir()}; use a name with --checkpoint)")
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


def _common_options() -> argparse.ArgumentParser:
    """``-v`` and ``--debug``, accepted before or after the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
    )
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the full traceback of an error",
    )
    return common


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        import benchmarks.__main__ as bench
    except ImportError:  # console script outside the repository root: use the checkout's
        root = Path(__file__).resolve().parents[1]
        if not (root / "benchmarks" / "__main__.py").is_file():
            raise ValueError("the benchmarks/ folder of an idm-med checkout is needed") from None
        sys.path.insert(0, str(root))
        import benchmarks.__main__ as bench
    bench.run(args.suite, list(args.options))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from .evaluate import evaluate_folder

    result = evaluate_folder(
        args.target_path, args.predictions_path, args.challenge, args.acquisition
    )
    print(result.to_text())
    if args.output:
        payload = {"volumes": result.volumes, "mean": result.mean(), "std": result.std()}
        Path(args.output).write_text(json.dumps(payload, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="idm-med",
        description="Reconstruct MRI, CT and natural images from undersampled measurements "
        "with Invertible Diffusion Models (IDM) or classical baselines.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--version", action="version", version=f"idm-med {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, **kwargs) -> argparse.ArgumentParser:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        return sub.add_parser(name, parents=[common], **kwargs)

    demo = add(
        "demo",
        help="reconstruct a bundled fastMRI brain slice and write a comparison PNG",
        description="Undersample the bundled single-coil fastMRI brain sample (simulated "
        "k-space of the MNI152 template), reconstruct one slice, print PSNR/SSIM against the "
        "fully sampled reference and write demo_mri.png (images, error maps on one scale, "
        "the sampling mask) plus a fastMRI-format .h5 per method.",
    )
    demo.add_argument("--output", default="demo_output", help="output folder")
    demo.add_argument("--acceleration", type=float, default=4.0, help="undersampling factor")
    demo.add_argument("--slice", type=int, default=1, help="slice of the sample volume")
    demo.add_argument(
        "--checkpoint",
        help="IDM checkpoint directory or model name (default: the shipped mri_4x model, "
        "if present)",
    )
    demo.add_argument("--seed", type=int, default=0, help="torch seed")
    demo.set_defaults(func=cmd_demo)

    rec = add(
        "reconstruct",
        help="reconstruct fastMRI .h5, CT DICOM series, NIfTI volumes or images",
        description="The input format is detected from the path (a folder of DICOM files "
        "is a series; a folder of other inputs, or a quoted glob, is a batch processed one "
        "volume after another with a summary table). Fully sampled fastMRI files are "
        "undersampled retrospectively (mask seeded from the file name); CT series are "
        "projected to a sparse-view sinogram; NIfTI slices are undersampled in k-space; "
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
    _add_measurement_args(rec)
    rec.add_argument(
        "--calib-width",
        type=int,
        help="ESPIRiT calibration columns for multi-coil fastMRI (default: the fully "
        "sampled centre, at most 24; RSS-equivalent coil maps when under 16)",
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

    models = add(
        "models",
        help="list the shipped and local IDM models with what they were trained for",
        description="Shipped checkpoints (idm_med/pretrained) and the user's (the folder "
        "$IDM_MED_HOME/models, default ~/.cache/idm-med/models): operator, settings, image "
        "size, training state, data and validation scores (from training.json and "
        "model_card.json). A NAME from this list works as --checkpoint NAME.",
    )
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(func=cmd_models)

    init = add(
        "init",
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

    add_training_commands(add)

    bench = add(
        "bench",
        formatter_class=argparse.HelpFormatter,
        help="run a benchmark suite (mri, ct, cs, inpaint, superres, tune, memory, speed, "
        "operators); results under benchmarks/results/",
        description="Run `python -m benchmarks SUITE [OPTIONS]`: SUITE's options follow it, "
        "e.g. `idm-med bench mri --quick` (a reduced run in a few minutes) or "
        "`idm-med bench ct --help`.",
    )
    bench.add_argument("suite", help="suite name")
    bench.add_argument("options", nargs=argparse.REMAINDER, help="the suite's options")
    bench.set_defaults(func=cmd_bench)

    ev = add(
        "evaluate",
        help="score fastMRI-style reconstructions (per-volume NMSE/PSNR/SSIM, mean ± std)",
        description="Score every TARGET_PATH/<name>.h5 (reconstruction_rss / "
        "reconstruction_esc, or the fully sampled k-space) against "
        "PREDICTIONS_PATH/<name>.h5 ('reconstruction'), as fastMRI's evaluate.py does.",
    )
    ev.add_argument("--target-path", required=True, type=Path, help="folder of target .h5")
    ev.add_argument("--predictions-path", required=True, type=Path, help="folder of predictions")
    ev.add_argument(
        "--challenge",
        choices=["singlecoil", "multicoil"],
        default=None,
        help="target dataset to use (default: by the k-space rank)",
    )
    ev.add_argument("--acquisition", default=None, help="only targets with this acquisition")
    ev.add_argument("--output", default=None, help="also write the scores as JSON here")
    ev.set_defaults(func=cmd_evaluate)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 400 else text[:397] + "..."


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        logger.error("interrupted; no partial output was left behind")
        code = 130
    except (ValueError, OSError) as exc:  # a user error: one clear line, no traceback
        if args.debug:
            raise
        logger.error("%s", _one_line(exc))
        code = 2
    sys.exit(code)
