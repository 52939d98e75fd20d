"""The training and diffusion subcommands of ``idm-med``: ``pretrain``, ``sample``, ``train``
and ``sr3`` (train / sample an SR3 model). ``idm_med.cli`` registers them through
:func:`add_training_commands`; each is one ``cmd_*`` function and one parser block."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cli_config import PARSERS as _PARSERS
from .cli_config import apply_config_file, save_resolved_config

logger = logging.getLogger(__name__)

OPERATORS = ("mri", "gaussian_cs", "inpainting", "superres", "ct")
#: Corpus modality each operator's model learns from by default.
DEFAULT_DATA = {
    "mri": "mri",
    "ct": "ct",
    "gaussian_cs": "natural",
    "inpainting": "natural",
    "superres": "natural",
}


def _choices(values: list[Any]) -> Any:
    """One value stays a value; several become per-batch choices."""
    return values[0] if len(values) == 1 else list(values)


def operator_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The training operator spec (``make_operator`` arguments; lists drawn per batch)."""
    spec: dict[str, Any] = {"name": args.operator}
    if args.operator == "mri":
        spec.update(
            acceleration=_choices(args.acceleration),
            mask_type=_choices(args.mask_type),
            center_fraction=args.center_fraction,
        )
    elif args.operator == "gaussian_cs":
        spec.update(ratio=_choices(args.ratio), block_size=args.block_size)
    elif args.operator == "inpainting":
        spec.update(missing_ratio=_choices(args.ratio), mask_type=_choices(args.mask_type_inp))
    elif args.operator == "superres":
        spec.update(factor=_choices(args.factor))
    else:
        spec.update(n_views=_choices(args.n_views))
    return spec


def _data_weights(items: list[str]) -> dict[str, float]:
    """``["mri", "natural=0.5"]`` → ``{"mri": 1.0, "natural": 0.5}``."""
    out = {}
    for item in items:
        name, _, weight = item.partition("=")
        out[name] = float(weight or 1.0)
    return out


def _parse_exclude(items: list[str]) -> dict[str, list[int]]:
    """``["brain.nii.gz:60,75"]`` → ``{"brain.nii.gz": [60, 75]}``."""
    out: dict[str, list[int]] = {}
    for item in items:
        name, _, indices = item.rpartition(":")
        if not name or not indices:
            raise ValueError(f"--exclude expects FILE:i,j,... got {item!r}")
        out.setdefault(name, []).extend(int(i) for i in indices.split(","))
    return out


def _loop_config(args: argparse.Namespace, ema: float) -> Any:
    from .train_loop import LoopConfig

    return LoopConfig(
        iterations=args.iterations,
        learning_rate=args.lr,
        warmup=args.warmup,
        halve_lr_every=args.halve_lr_every,
        ema_decay=ema,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
    )


# -- commands ---------------------------------------------------------------------------------
def _unet_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.unet_channels:
        out["block_out_channels"] = tuple(args.unet_channels)
    if args.norm_groups:
        out["norm_num_groups"] = args.norm_groups
    return out


def _file_sampler(args: argparse.Namespace, size: int, channels: int) -> Any:
    """Patches of the user's files (``--files``) instead of the corpus, or ``None``."""
    if not args.files:
        return None
    from .patches import PatchSampler
    from .training import load_training_images

    data = load_training_images(args.files)
    return PatchSampler({"files": data}, {"files": 1.0}, size, channels, {"files": (0.5, 1.0)})


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .prior import PretrainConfig, pretrain

    args = apply_config_file(args, "pretrain")
    config = PretrainConfig(
        image_channels=args.image_channels,
        backbone=args.backbone,
        patch_size=args.patch_size,
        batch_size=args.batch_size,
        modalities=_data_weights(args.data),
        init=args.init,
        unet=_unet_overrides(args),
        loop=_loop_config(args, args.ema),
    )
    sampler = _file_sampler(args, args.patch_size, args.image_channels)
    pretrain(config, args.output, sampler=sampler, resume=args.resume)
    save_resolved_config(args)
    print(f"wrote prior {args.output}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from .prior import load_prior
    from .sampling import image_channels_of, sample, save_grid

    unet, scheduler, _ = load_prior(args.prior)
    c = image_channels_of(unet)
    x = sample(
        unet,
        scheduler,
        (args.n, c, args.size, args.size),
        steps=args.steps,
        kind=args.sampler,
        seed=args.seed,
        progress=True,
    )
    images = (x.norm(dim=1) if c > 1 else x[:, 0]).clamp(0, 1).numpy()
    title = f"{Path(args.prior).name}: {args.sampler.upper()}, {args.steps} steps, seed {args.seed}"
    save_grid(Path(args.output), images, title)
    if args.save_tensor:
        torch.save(x, Path(args.output).with_suffix(".pt"))
    print(f"wrote {args.output}")
    return 0


def _init_channels(init: str | None) -> int | None:
    """Image channels of an IDM checkpoint given to ``--init`` (None for a prior: a gray
    prior also starts 2-channel models)."""
    import json

    if not init or not (Path(init) / "config.json").is_file():
        return None
    config = json.loads((Path(init) / "config.json").read_text())
    return config.get("image_channels")


def cmd_train(args: argparse.Namespace) -> int:
    from .backbones import small_unet_config
    from .training import TrainingConfig, load_training_images, train

    args = apply_config_file(args, "train")
    channels = (
        args.image_channels or _init_channels(args.init) or (2 if args.operator == "mri" else 1)
    )
    backbone: Any = args.backbone
    if _unet_overrides(args) and backbone == "small":
        backbone = small_unet_config(**_unet_overrides(args))
    config = TrainingConfig(
        operator=operator_spec(args),
        image_size=args.image_size,
        image_channels=channels,
        backbone=backbone,
        init=args.init,
        steps=args.steps,
        memory_mode=args.memory_mode,
        final_projection=not args.no_final_projection,
        start=args.start,
        skull_strip=args.skull_strip,
        measurement_noise=args.measurement_noise,
        noise_probability=args.noise_probability,
        batch_size=args.batch_size,
        data=_data_weights(args.corpus or [DEFAULT_DATA[args.operator]]),
        loop=_loop_config(args, 0.0),
    )
    data = None
    if args.files:
        data = load_training_images(
            args.files, axis=args.axis, exclude_slices=_parse_exclude(args.exclude)
        )
        logger.info("training on %d images from files", len(data))
    result = train(config, args.output, data=data, resume=args.resume)
    save_resolved_config(args)
    tail = result.losses[-50:] or [float("nan")]
    print(f"wrote {args.output} (final loss {sum(tail) / len(tail):.4f})")
    return 0


def cmd_sr3(args: argparse.Namespace) -> int:
    from .sr3 import SR3Config, train_sr3

    args = apply_config_file(args, "sr3")
    config = SR3Config(
        operator=operator_spec(args),
        image_size=args.image_size,
        image_channels=args.image_channels or (2 if args.operator == "mri" else 1),
        batch_size=args.batch_size,
        init=args.init,
        unet=_unet_overrides(args),
        data=_data_weights(args.corpus or [DEFAULT_DATA[args.operator]]),
        prediction_type=args.prediction_type,
        loop=_loop_config(args, args.ema),
    )
    sampler = _file_sampler(args, config.image_size, config.image_channels)
    train_sr3(config, args.output, sampler=sampler, resume=args.resume)
    save_resolved_config(args)
    print(f"wrote SR3 model {args.output}")
    return 0


# -- parsers ----------------------------------------------------------------------------------
def _loop_args(p: argparse.ArgumentParser, iterations: int, lr: float, batch: int) -> None:
    p.add_argument(
        "--config",
        help="YAML file of options (command-line options win); the "
        "resolved options are written to OUTPUT/config.yaml",
    )
    p.add_argument("--files", nargs="+", help="train on these images/volumes, not the corpus")
    p.add_argument("--unet-channels", type=int, nargs="+", help="UNet block widths")
    p.add_argument("--norm-groups", type=int, help="GroupNorm groups of the UNet")
    p.add_argument("--output", help="model directory to write (required)")
    p.add_argument("--iterations", type=int, default=iterations, help="optimiser steps")
    p.add_argument("--batch-size", type=int, default=batch, help="images per step (global)")
    p.add_argument("--lr", type=float, default=lr, help="Adam learning rate")
    p.add_argument("--warmup", type=int, default=100, help="linear learning-rate warm-up steps")
    p.add_argument(
        "--halve-lr-every", type=int, default=0, help="steps between halvings (0: never)"
    )
    p.add_argument("--checkpoint-every", type=int, default=250, help="steps between checkpoints")
    p.add_argument(
        "--mixed-precision",
        choices=["no", "bf16", "fp16"],
        default="no",
        help="autocast precision (bf16: ~1.6x faster on AVX-512 BF16 CPUs)",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint")
    p.add_argument("--seed", type=int, default=0, help="data, noise and initialisation seed")


def _measurement_choices(p: argparse.ArgumentParser) -> None:
    """Measurement settings; several values are drawn per batch (one model for all)."""
    p.add_argument("--operator", choices=OPERATORS, default="mri", help="forward operator")
    p.add_argument("--acceleration", type=float, nargs="+", default=[4.0], help="MRI factors")
    p.add_argument("--center-fraction", type=float, default=0.08, help="MRI centre fraction")
    p.add_argument(
        "--mask-type",
        nargs="+",
        choices=["random", "equispaced"],
        default=["random"],
        help="MRI column masks",
    )
    p.add_argument(
        "--ratio",
        type=float,
        nargs="+",
        default=[0.25],
        help="CS sampling ratios / inpainting missing ratios",
    )
    p.add_argument("--block-size", type=int, default=32, help="CS block size")
    p.add_argument(
        "--mask-type-inp",
        nargs="+",
        choices=["random", "box"],
        default=["random"],
        help="inpainting masks",
    )
    p.add_argument("--factor", type=int, nargs="+", default=[4], help="super-resolution factors")
    p.add_argument("--n-views", type=int, nargs="+", default=[60], help="CT view counts")
    p.add_argument("--image-size", type=int, default=96, help="training patch size")
    p.add_argument("--image-channels", type=int, help="default: 2 for mri, else 1")
    p.add_argument(
        "--corpus",
        nargs="+",
        metavar="MODALITY[=WEIGHT]",
        help="corpus training images (default: the operator's modality)",
    )
    p.add_argument(
        "--init",
        help="a prior (idm-med pretrain) or IDM checkpoint (idm-med "
        "init / train) to start from; default image channels follow it",
    )


def add_training_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``pretrain``, ``sample``, ``train`` and ``sr3`` with ``add(name, **kw)``."""
    pre = add(
        "pretrain",
        help="pretrain a diffusion prior (DDPM) on the corpus",
        description="DDPM ε-prediction training of a diffusers UNet (small: UNet2DModel; "
        "sd: the trimmed SD v1.5 UNet2DConditionModel, unconditional) on random patches "
        "of the corpus' training images; the result is a diffusers directory "
        "(from_pretrained) usable by DDNM, `sample` and `train --init` (SR3: small only).",
    )
    pre.add_argument(
        "--backbone",
        choices=["small", "sd"],
        default="small",
        help="small: IDM's CPU UNet layout; sd: the paper's trimmed SD v1.5 layout "
        "(pixel-unshuffled, null text context), no SD weights needed",
    )
    pre.add_argument(
        "--data",
        nargs="+",
        default=["natural=0.4", "mri=0.4", "ct=0.2"],
        metavar="MODALITY[=WEIGHT]",
        help="corpus modalities and weights",
    )
    pre.add_argument("--image-channels", type=int, default=1, help="1, or 2 for complex MRI")
    pre.add_argument("--patch-size", type=int, default=64, help="training patch size")
    pre.add_argument("--init", help="prior to start from (e.g. gray → complex)")
    pre.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights")
    _loop_args(pre, 3000, 2e-4, 16)
    pre.set_defaults(func=cmd_pretrain)
    _PARSERS["pretrain"] = pre

    smp = add("sample", help="draw images from a prior (DDPM or DDIM)")
    smp.add_argument("prior", help="prior directory")
    smp.add_argument(
        "--sampler",
        choices=["ddpm", "ddim"],
        default="ddim",
        help="ddpm: ancestral; ddim: deterministic (η = 0)",
    )
    smp.add_argument("--steps", type=int, default=100, help="sampling steps")
    smp.add_argument("--n", type=int, default=8, help="number of images")
    smp.add_argument("--size", type=int, default=64, help="image side in pixels")
    smp.add_argument("--seed", type=int, default=0, help="noise seed")
    smp.add_argument("--output", default="samples.png", help="PNG grid to write")
    smp.add_argument("--save-tensor", action="store_true", help="also save the samples (.pt)")
    smp.set_defaults(func=cmd_sample)

    tr = add(
        "train",
        help="train an IDM model end to end on simulated measurements",
        description="Draw augmented patches (corpus training split, or --data files), "
        "measure them with the operator (masks redrawn and settings drawn per batch) "
        "and fine-tune the whole IDM with an L1 loss, from a prior (--init) or from "
        "scratch. Runs under accelerate launch / torchrun in every memory mode.",
    )
    tr.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="FILE:i,j",
        help="held-out slices of a --files volume (repeatable)",
    )
    tr.add_argument("--axis", type=int, default=2, help="NIfTI slice axis of --files volumes")
    _measurement_choices(tr)
    tr.add_argument("--backbone", default="small", help="small | sd | LOCAL_SD_UNET_DIR")
    tr.add_argument("--steps", type=int, default=3, help="unrolled steps T")
    tr.add_argument(
        "--memory-mode",
        default="level1+2",
        choices=["autograd", "checkpoint", "level1", "level1+2"],
        help="how gradients are computed (same values)",
    )
    tr.add_argument(
        "--no-final-projection",
        action="store_true",
        help="end without the range-null-space step (the paper's network)",
    )
    tr.add_argument(
        "--start",
        choices=["pinv", "noisy"],
        default="pinv",
        help="x_T = sqrt(abar_T) A+y (pinv, default) or that plus sqrt(1-abar_T) noise (ablation)",
    )
    tr.add_argument(
        "--skull-strip",
        type=float,
        default=0.0,
        metavar="P",
        help="probability that a training head (corpus MRI, or --files) is drawn "
        "skull-stripped: its brain on a zero background, as many users' scans are (default 0)",
    )
    add_noise_arguments(tr)
    _loop_args(tr, 1000, 5e-4, 4)
    tr.set_defaults(func=cmd_train)
    _PARSERS["train"] = tr

    sr3 = add("sr3", help="train an SR3 conditional diffusion model on [x_t, A†y]")
    _measurement_choices(sr3)
    sr3.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights")
    sr3.add_argument(
        "--prediction-type",
        choices=["v_prediction", "epsilon"],
        default="v_prediction",
        help="what the UNet predicts: v (default; uses the condition at high noise levels) "
        "or ε (the prior's and SR3's original target)",
    )
    _loop_args(sr3, 2000, 2e-4, 8)
    sr3.set_defaults(func=cmd_sr3)
    _PARSERS["sr3"] = sr3


def add_noise_arguments(parser: argparse.ArgumentParser) -> None:
    """``--measurement-noise`` / ``--noise-probability`` (:class:`TrainingConfig`'s
    ``measurement_noise`` / ``noise_probability``), shared by ``idm-med train`` and
    ``scripts/train_idm.py``."""
    parser.add_argument(
        "--measurement-noise",
        type=float,
        default=0.0,
        metavar="SIGMA",
        help="largest measurement noise σ of training (per real measurement component, e.g. "
        "σ/√2 for complex k-space noise of E|n|² = σ²): noisy batch items draw σ ~ U(0, "
        "SIGMA) and an IDM model becomes noise-aware (reconstruct with --noise-sigma); "
        "default 0, noiseless",
    )
    parser.add_argument(
        "--noise-probability",
        type=float,
        default=0.5,
        metavar="P",
        help="probability that a training batch item is noisy when --measurement-noise is set "
        "(default 0.5)",
    )
