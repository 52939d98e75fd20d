"""Comparison figures: the demo figure and ``idm-med reconstruct --preview``.

Images are shown on one grey scale (0 to the reference's 99.5th percentile); every error
map ``|x − x_ref|`` on one common colour scale with a colour bar, so methods compare at
a glance; PSNR/SSIM are in the panel titles; the sampling mask, when given, is drawn as
its k-space column pattern.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import metrics


def _titled(label: str, image: np.ndarray, reference: np.ndarray | None) -> str:
    if reference is None:
        return label
    return (
        f"{label}\nPSNR {metrics.psnr(reference, image):.2f} dB  "
        f"SSIM {metrics.ssim(reference, image):.3f}"
    )


def save_comparison_png(
    path: str | Path,
    images: dict[str, np.ndarray],
    reference: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """Write a figure: top row the reference (if any), each image in ``images`` and the
    sampling ``mask`` (``(W,)`` columns); bottom row the error map of each image on one
    fixed scale with a colour bar. All images ``(H, W)``. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .datasets.atomic import atomic_path

    columns = list(images.items())
    n = len(columns) + (reference is not None) + (mask is not None)
    rows = 2 if reference is not None else 1
    fig, axes = plt.subplots(
        rows, n, figsize=(3.0 * n, 3.2 * rows), squeeze=False, layout="constrained"
    )
    for ax in axes.ravel():
        ax.axis("off")
    scale_src = reference if reference is not None else next(iter(images.values()))
    vmax = float(np.percentile(scale_src, 99.5)) or 1.0
    col = 0
    if reference is not None:
        axes[0, 0].imshow(reference, cmap="gray", vmin=0, vmax=vmax)
        axes[0, 0].set_title("reference", fontsize=9)
        col = 1
    errors = {k: np.abs(v - reference) for k, v in columns} if reference is not None else {}
    emax = max((float(np.percentile(e, 99.5)) for e in errors.values()), default=1.0) or 1.0
    im = None
    for j, (label, img) in enumerate(columns, start=col):
        axes[0, j].imshow(img, cmap="gray", vmin=0, vmax=vmax)
        axes[0, j].set_title(_titled(label, img, reference), fontsize=8)
        if reference is not None:
            im = axes[1, j].imshow(errors[label], cmap="inferno", vmin=0, vmax=emax)
            axes[1, j].set_title(f"|error| {label.splitlines()[0]}", fontsize=8)
    if mask is not None:
        m = np.asarray(mask, dtype=float).reshape(1, -1)
        axes[0, n - 1].imshow(np.repeat(m, max(8, m.shape[1] // 2), 0), cmap="gray", vmin=0)
        axes[0, n - 1].set(xticks=[], yticks=[], frame_on=True)
        axes[0, n - 1].axis("on")
        axes[0, n - 1].set_title(f"sampling mask\n{m.mean():.0%} of columns", fontsize=8)
    if im is not None:
        fig.colorbar(im, ax=list(axes[1]), shrink=0.8, label="|error| (one scale)")
    fig.suptitle(title, fontsize=10)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def save_preview(path: str | Path, result, method: str, title: str = "", index: int = 0) -> Path:
    """``--preview``: reference (when present), A†y, the result, error maps and mask for
    slice ``index`` of a :class:`~idm_med.reconstruction.ReconstructionResult`."""

    def pick(a: np.ndarray) -> np.ndarray:  # (S, H, W) or one (H, W) image
        return a if a.ndim == 2 else a[min(index, len(a) - 1)]

    ref = None if result.reference is None else pick(result.reference)
    panels = {"A†y": pick(result.pinv), method: pick(result.reconstruction)}
    return save_comparison_png(path, panels, ref, result.mask, title)
