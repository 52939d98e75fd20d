"""IDM checkpoints shipped with idm-med (``save_pretrained`` directories).

Each was trained by a script in ``scripts/`` on data that ships inside PyPI packages; its
``training.json`` records the configuration.
"""

from __future__ import annotations

from pathlib import Path

PRETRAINED_DIR = Path(__file__).resolve().parent


def list_pretrained() -> list[str]:
    """Names of the shipped checkpoints."""
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / "config.json").is_file())


def pretrained_path(name: str = "mri_4x") -> Path:
    """Directory of a shipped checkpoint, for ``IDM.from_pretrained``."""
    path = PRETRAINED_DIR / name
    if not (path / "config.json").is_file():
        raise ValueError(f"no shipped checkpoint {name!r}; available: {list_pretrained()}")
    return path
