"""Figures of the benchmark suites (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Save atomically as PNG (no half-written figure on failure) and close."""
    from idm_med.datasets.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    fig.canvas.figure.clf()
    _plt().close(fig)


def reconstruction_grid(
    panels: dict[str, dict[str, np.ndarray]], title: str, path: Path, max_sources: int = 3
) -> Path:
    """Reference and each method's reconstruction (top row per source) with its absolute
    error map (bottom row). ``panels`` is ``{"reference" | method: {source: (H, W)}}``."""
    plt = _plt()
    refs = panels["reference"]
    sources = list(refs)[:max_sources]
    methods = [m for m in panels if m != "reference"]
    cols = 1 + len(methods)
    fig, axes = plt.subplots(
        2 * len(sources), cols, figsize=(2.2 * cols, 4.4 * len(sources)), squeeze=False
    )
    for i, src in enumerate(sources):
        ref = refs[src]
        vmax = float(np.percentile(ref, 99.5)) or 1.0
        emax = vmax / 4
        for j, name in enumerate(["reference", *methods]):
            img = ref if name == "reference" else panels[name][src]
            top, bottom = axes[2 * i, j], axes[2 * i + 1, j]
            top.imshow(img, cmap="gray", vmin=0, vmax=vmax)
            top.set_title(name if i == 0 else "", fontsize=7)
            if name != "reference":
                bottom.imshow(np.abs(img - ref), cmap="inferno", vmin=0, vmax=emax)
            if j == 0:
                top.set_ylabel(src, fontsize=7)
                bottom.set_ylabel(f"|error| (0–{emax:.2g})", fontsize=7)
            for ax in (top, bottom):
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(ax is top or name != "reference")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return path


def psnr_vs_ratio(
    rows: list[dict], ratios: dict[str, tuple[float, str]], path: Path, title: str
) -> Path:
    """PSNR against the sampling ratio, one line per method, one panel per group."""
    plt = _plt()
    groups = list(dict.fromkeys(ratios[r["setting"]][1] for r in rows))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=True):
        sel = [r for r in rows if ratios[r["setting"]][1] == group]
        for label in dict.fromkeys(r["label"] for r in sel):
            pts = sorted((ratios[r["setting"]][0], r["psnr"]) for r in sel if r["label"] == label)
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
        ax.set_xlabel("sampling ratio (measurements / unknowns)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(group or title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return path
