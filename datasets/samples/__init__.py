"""Small real samples bundled with idm-med (see NOTICE in this folder for sources).

They are made from data that ships inside PyPI packages by ``scripts/make_*_samples.py``
and load offline.
"""

from __future__ import annotations

from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent


def sample_path(name: str) -> Path:
    """Path of a bundled sample file or folder, e.g. ``sample_path("ct_head")``."""
    path = SAMPLES_DIR / name
    if not path.exists():
        raise ValueError(f"no bundled sample {name!r}; available: {list_samples()}")
    return path


def list_samples() -> list[str]:
    """Names of the bundled samples."""
    skip = ("_", ".", "NOTICE")
    return sorted(p.name for p in SAMPLES_DIR.iterdir() if not p.name.startswith(skip))
