"""Rewrite IDM checkpoints of the pre-diffusers layout (``model.safetensors``) in the
diffusers layout (``diffusion_pytorch_model.safetensors``), in place and bit-identically.

    python scripts/convert_checkpoints.py runs/my_model ~/.cache/idm-med/models/*

Both layouts load with ``IDM.from_pretrained``; only the diffusers layout takes all of
diffusers' loading options (``device_map``, ``variant``, ...). Directories already in the
diffusers layout are skipped. Each conversion is checked: the rewritten directory must hold
the same tensors, bit for bit (:func:`idm_med.model_io.convert_legacy_checkpoint`).
"""

from __future__ import annotations

import argparse
import logging

from idm_med.model import IDM
from idm_med.model_io import convert_legacy_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directories", nargs="+", help="IDM checkpoint directories")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for directory in args.directories:
        done = convert_legacy_checkpoint(IDM, directory)
        logging.info("%s: %s", directory, "converted" if done else "not the old layout, skipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
