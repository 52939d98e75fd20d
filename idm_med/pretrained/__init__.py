"""Models shipped with idm-med: IDM checkpoints (``save_pretrained`` directories) and
diffusion priors (diffusers ``UNet2DModel`` directories, :mod:`idm_med.prior`).

Each was trained by a script in ``scripts/`` on data that ships inside PyPI packages; its
``training.json`` records the configuration.
"""

from __future__ import annotations

from pathlib import Path

PRETRAINED_DIR = Path(__file__).resolve().parent


def list_pretrained() -> list[str]:
    """Names of the shipped checkpoints."""
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / "config.json").is_file())


def prior_path(image_channels: int = 1) -> Path:
    """Directory of the shipped diffusion prior DDNM uses by default: ``prior_gray`` for
    every image type (on 2-channel complex MRI it runs on the real and imaginary parts;
    that scored 24.99 dB against 24.13 dB for ``prior_complex`` on the held-out 4× MRI
    slices of ``benchmarks/results/diffusion_mri.md``). ``prior_complex`` stays available by
    path."""
    path = PRETRAINED_DIR / "prior_gray"
    if not (path / "diffusion_pytorch_model.safetensors").is_file():
        raise ValueError(
            f"no shipped prior in {PRETRAINED_DIR} (train one: scripts/train_prior.py)"
        )
    return path


def pretrained_path(name: str = "mri_4x") -> Path:
    """Directory of a shipped checkpoint, for ``IDM.from_pretrained``."""
    path = PRETRAINED_DIR / name
    if not (path / "config.json").is_file():
        raise ValueError(f"no shipped checkpoint {name!r}; available: {list_pretrained()}")
    return path
