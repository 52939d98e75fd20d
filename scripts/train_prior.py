"""Train the shipped diffusion priors (``idm_med/pretrained/prior_gray``, ``prior_complex``).

The grayscale prior learns natural, MRI and CT patches together (DDPM ε-prediction, see
:mod:`idm_med.prior`); the complex prior starts from it and learns MRI-like complex images
(magnitude × random smooth phase, as (real, imag)). Both run on 2 CPU cores with bf16
autocast; under ``accelerate launch`` the same script trains on GPUs (raise ``--batch-size``
and ``--iterations``).

    python scripts/train_prior.py gray    --output idm_med/pretrained/prior_gray
    python scripts/train_prior.py complex --output idm_med/pretrained/prior_complex \
        --init idm_med/pretrained/prior_gray

Interrupted runs continue with ``--resume`` (same command plus the flag).
"""

from __future__ import annotations

import argparse
import logging

import torch

from idm_med import prior, train_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=("gray", "complex"))
    parser.add_argument("--output", required=True, help="prior directory to write")
    parser.add_argument("--init", default=None, help="prior to start from (complex variant)")
    parser.add_argument("--iterations", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch)")
    parser.add_argument("--mixed-precision", default="bf16", choices=("no", "bf16", "fp16"))
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    complex_ = args.variant == "complex"
    config = prior.PretrainConfig(
        image_channels=2 if complex_ else 1,
        patch_size=args.patch_size,
        batch_size=args.batch_size,
        modalities={"mri": 1.0} if complex_ else {"natural": 0.4, "mri": 0.4, "ct": 0.2},
        init=args.init,
        loop=train_loop.LoopConfig(
            iterations=args.iterations,
            learning_rate=args.learning_rate,
            warmup=200,
            halve_lr_every=args.iterations // 2,
            ema_decay=0.999,
            checkpoint_every=250,
            seed=0,
            mixed_precision=args.mixed_precision,
        ),
    )
    prior.pretrain(config, args.output, resume=args.resume)


if __name__ == "__main__":
    main()
