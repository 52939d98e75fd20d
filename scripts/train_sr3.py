"""Train the shipped SR3 super-resolution model (``idm_med/pretrained/sr3_superres``).

SR3 (:mod:`idm_med.sr3`) is the conditional-diffusion alternative IDM competes with: a
UNet on ``[x_t, A†y]`` predicting v (``--prediction-type``; an ε model of the same budget
ignored the condition, see :mod:`idm_med.sr3`), started from the shipped gray prior (its
input layer widened to the condition), on 64² natural-image patches, ×2 and ×4 drawn per
batch. This is ``idm-med sr3`` with the options below; 29 minutes on one CPU core
(2,000 steps). Under
``accelerate launch`` the same command trains on GPUs (raise ``--batch-size`` and
``--iterations``).

    python scripts/train_sr3.py --output runs/sr3_superres [--resume]

then copy the run's final files (everything but ``checkpoint/``) to
``idm_med/pretrained/sr3_superres``.
"""

from __future__ import annotations

import argparse

from idm_med.cli import main as idm_med

OPTIONS = [
    "--operator", "superres", "--factor", "2", "4",
    "--init", "idm_med/pretrained/prior_gray", "--corpus", "natural",
    "--image-size", "64", "--batch-size", "8", "--iterations", "2000",
    "--checkpoint-every", "250",
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/sr3_superres")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    idm_med(["sr3", *OPTIONS, "--output", args.output, *(["--resume"] if args.resume else [])])


if __name__ == "__main__":
    main()
