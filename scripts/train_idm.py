"""Train the shipped IDM models, one per modality, each covering a range of settings
(drawn per batch), fine-tuned from the shipped diffusion prior (the paper's recipe).

    python scripts/train_idm.py mri --output idm_med/pretrained/idm_mri
    python scripts/train_idm.py cs  --output idm_med/pretrained/idm_cs
    python scripts/train_idm.py cs  --output runs/idm_cs_scratch --from-scratch   # ablation

Interrupted runs continue with ``--resume``. On 2 CPU cores the presets take 15-30 minutes
each (single thread per run, fp32, plain autograd: the small backbone at 96² needs no
memory saving); on GPUs run the same script under ``accelerate launch`` with a larger
``--batch-size`` / ``--iterations`` (``--backbone sd`` with ``--init`` replaced by a local
SD v1.5 UNet directory).
"""

from __future__ import annotations

import argparse
import logging

import torch

from idm_med import train_loop
from idm_med.training import TrainingConfig, train

# The complex prior is not shipped yet: the gray one starts 2-channel models (conv_in/out
# shared by the real and imaginary parts, see idm_from_prior).
PRIORS = {1: "idm_med/pretrained/prior_gray", 2: "idm_med/pretrained/prior_gray"}
PRESETS = {
    "mri": dict(
        operator={
            "name": "mri",
            "acceleration": [4, 8],
            "mask_type": ["random", "equispaced"],
            "center_fraction": 0.08,
        },
        image_channels=2,
        data={"mri": 1.0},
    ),
    "cs": dict(
        operator={"name": "gaussian_cs", "ratio": [0.1, 0.3, 0.5], "block_size": 32},
        image_channels=1,
        data={"natural": 1.0},
    ),
    "inpainting": dict(
        operator={
            "name": "inpainting",
            "missing_ratio": [0.5, 0.7, 0.9, 0.95],
            "mask_type": ["random", "box"],
        },
        image_channels=1,
        data={"natural": 1.0},
    ),
    "superres": dict(
        operator={"name": "superres", "factor": [2, 4]}, image_channels=1, data={"natural": 1.0}
    ),
    "ct": dict(
        operator={"name": "ct", "n_views": [30, 60, 90, 120]},
        image_channels=1,
        data={"ct": 1.0},
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modality", choices=sorted(PRESETS))
    parser.add_argument("--output", required=True)
    parser.add_argument("--from-scratch", action="store_true", help="no prior (ablation)")
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
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    preset = PRESETS[args.modality]
    config = TrainingConfig(
        **preset,
        image_size=args.image_size,
        init=None if args.from_scratch else PRIORS[preset["image_channels"]],
        steps=3,
        memory_mode=args.memory_mode,
        batch_size=args.batch_size,
        loop=train_loop.LoopConfig(
            iterations=args.iterations,
            learning_rate=args.learning_rate,
            warmup=50,
            halve_lr_every=max(1, args.iterations * 2 // 3),
            ema_decay=0.0,
            checkpoint_every=args.checkpoint_every,
            seed=0,
            mixed_precision=args.mixed_precision,
        ),
    )
    train(config, args.output, resume=args.resume)


if __name__ == "__main__":
    main()
