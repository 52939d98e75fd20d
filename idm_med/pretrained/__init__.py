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
    """Directory of the shipped diffusion prior (``prior_gray`` for 1-channel images,
    ``prior_complex`` for 2-channel complex MRI when it ships, else the gray one, which
    serves complex images channel by channel)."""
    names = ["prior_complex", "prior_gray"] if image_channels == 2 else ["prior_gray"]
    for name in names:
        if (PRETRAINED_DIR / name / "diffusion_pytorch_model.safetensors").is_file():
            return PRETRAINED_DIR / name
    raise ValueError(f"no shipped prior in {PRETRAINED_DIR} (train one: scripts/train_prior.py)")


def pretrained_path(name: str = "mri_4x") -> Path:
    """Directory of a shipped checkpoint, for ``IDM.from_pretrained``."""
    path = PRETRAINED_DIR / name
    if not (path / "config.json").is_file():
        raise ValueError(f"no shipped checkpoint {name!r}; available: {list_pretrained()}")
    return path
