"""Train the shipped IDM models, one per modality, each covering a range of settings
(drawn per batch), fine-tuned from the shipped diffusion prior (the paper's recipe).

    python scripts/train_idm.py mri --output idm_med/pretrained/idm_mri
    python scripts/train_idm.py cs  --output idm_med/pretrained/idm_cs
    python scripts/train_idm.py cs  --output runs/idm_cs_scratch --from-scratch   # ablation
    python scripts/train_idm.py ct  --output idm_med/pretrained/idm_ct --image-size 64 \
        --iterations 600
    python scripts/train_idm.py inpainting --output runs/more \
        --init idm_med/pretrained/idm_inpainting \
        --seed 1 --learning-rate 1e-4   # train a shipped model further
    python scripts/train_idm.py cs --output benchmarks/ablation_models/postprocessing_unet_cs \
        --architecture postprocessing_unet --iterations 4600   # supervised baseline
    python scripts/train_idm.py ct --output runs/unet_ct_more --architecture \
        postprocessing_unet --init benchmarks/ablation_models/postprocessing_unet_ct \
        --seed 1 --learning-rate 1e-4   # its next stage, beside the IDM model's

Interrupted runs continue with ``--resume``. On 2 CPU cores the presets take 15-30 minutes
each (single thread per run, fp32, plain autograd: the small backbone at 96² needs no
memory saving); on GPUs run the same script under ``accelerate launch`` with a larger
``--batch-size`` / ``--iterations`` (``--backbone sd`` with ``--init`` replaced by a local
SD v1.5 UNet directory).
"""

from __future__ import annotations

import argparse
import json
import logging

import torch

from idm_med.cli_training import add_noise_arguments
from idm_med.recipes import PRESETS, recipe
from idm_med.training import ARCHITECTURES, train


def _option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> ``(KEY, VALUE)``, VALUE parsed as JSON when it is JSON."""
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modality", choices=sorted(PRESETS))
    parser.add_argument("--output", required=True)
    parser.add_argument("--from-scratch", action="store_true", help="no prior (ablation)")
    parser.add_argument(
        "--architecture",
        choices=ARCHITECTURES,
        default="idm",
        help="postprocessing_unet: the supervised U-Net on A†y baseline of the suites, with "
        "the same data and loss (from scratch, or --init an earlier U-Net to train it "
        "further)",
    )
    parser.add_argument(
        "--init",
        help="start from this IDM checkpoint (e.g. a shipped model, to train it further) "
        "instead of the shipped prior; with --architecture postprocessing_unet, an earlier "
        "post-processing U-Net",
    )
    parser.add_argument("--seed", type=int, default=0, help="data order and noise seed")
    parser.add_argument("--iterations", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--memory-mode", default="autograd")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--mixed-precision",
        choices=["no", "bf16", "fp16"],
        default="no",
        help="bf16 autocast (CPUs with AVX-512 BF16, GPUs)",
    )
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument(
        "--operator-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help='update the preset operator, VALUE as JSON (e.g. pinv="direct" for CT at 64²)',
    )
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="MODALITY=WEIGHT",
        help="training data mix over the corpus modalities (natural, mri, ct) instead of "
        "the preset's, e.g. --data ct=0.5 --data mri=0.25 --data natural=0.25",
    )
    parser.add_argument(
        "--skull-strip",
        type=float,
        default=0.0,
        metavar="P",
        help="probability that an MRI training head is drawn skull-stripped (a brain on a "
        "zero background, as many users' data are); default 0",
    )
    add_noise_arguments(parser)
    args = parser.parse_args()
    if args.init and args.from_scratch:
        parser.error("--init and --from-scratch exclude each other")
    baseline = args.architecture == "postprocessing_unet"
    data = {key: float(value) for key, value in map(_option, args.data)}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    config = recipe(
        args.modality,
        iterations=args.iterations,
        batch_size=args.batch_size,
        image_size=args.image_size,
        learning_rate=args.learning_rate,
        memory_mode=args.memory_mode,
        from_scratch=args.from_scratch or baseline,
        architecture=args.architecture,
        mixed_precision=args.mixed_precision,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        operator=dict(_option(text) for text in args.operator_option),
        skull_strip=args.skull_strip,
        measurement_noise=args.measurement_noise,
        noise_probability=args.noise_probability,
        **({"data": data} if data else {}),
        **({"init": args.init} if args.init else {}),
    )
    train(config, args.output, resume=args.resume)


if __name__ == "__main__":
    main()
