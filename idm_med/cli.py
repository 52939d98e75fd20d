"""Command-line interface: ``idm-med demo | reconstruct | models | init | train | ...``.

Each subcommand is one ``cmd_<name>`` function plus one ``add_parser`` block: here in
:func:`build_parser`, in :mod:`idm_med.cli_reconstruct` (``demo``, ``reconstruct``) and in
:mod:`idm_med.cli_training`. Every error a user can cause ends in one line naming the file and the
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
from .cli_reconstruct import add_reconstruction_commands, resolve_device
from .cli_training import add_training_commands

logger = logging.getLogger("idm_med")

__all__ = ["build_parser", "main", "resolve_device"]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` once, and only for defaults that mean something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        if not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


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

    add_reconstruction_commands(add)

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
        "diffusion_pytorch_model.safetensors). With --pretrained, the backbone is Stable "
        "Diffusion v1.5's UNet trimmed as in the paper, loaded from a local diffusers "
        "directory (nothing is "
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
