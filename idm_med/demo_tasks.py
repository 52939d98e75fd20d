"""The demo's tasks after the MRI slice (``idm-med demo``): one held-out image per task,
measured by the task's operator and reconstructed by ``A†y`` and by the shipped IDM model
of the task; a task whose model does not ship is skipped with a notice.

* Natural images (CS, inpainting, super-resolution): scikit-image's cameraman, kept out of
  training by the corpus (``datasets/corpus.py``); PSNR / SSIM on [0, 1].
* Sparse-view CT: the corpus's held-out real CT section (``bad_sequence`` of
  pydicom-data, a spine), as normalised attenuation; shown and scored in the soft-tissue
  HU window :data:`idm_med.metrics.CT_WINDOW`.

Measurements are noiseless.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import metrics
from .figures import save_comparison_png

logger = logging.getLogger(__name__)


def _resample(image: np.ndarray, size: int) -> torch.Tensor:
    """The centre square of a 2-D image, area-resampled to ``(1, 1, size, size)``."""
    h, w = image.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = torch.from_numpy(np.asarray(image[top : top + side, left : left + side]))
    return torch.nn.functional.interpolate(square.float()[None, None], size=size, mode="area")


def cameraman(size: int) -> torch.Tensor:
    """The cameraman, ``(1, 1, size, size)`` in [0, 1] (area-resampled from 512²)."""
    from .datasets import corpus

    return _resample(corpus.load("natural", "test", ["camera"])[0], size)


def held_out_ct(size: int) -> torch.Tensor:
    """The held-out CT section, ``(1, 1, size, size)`` normalised attenuation."""
    from .datasets import corpus

    return _resample(corpus.load("ct", "test", ["bad_sequence"])[0], size)


def hu_window(image: np.ndarray) -> np.ndarray:
    """Normalised attenuation -> [0, 1] over the HU window :data:`metrics.CT_WINDOW` (what a
    reader of a CT image sees). PSNR on it equals :func:`metrics.ct_metrics`' ``psnr_hu``;
    SSIM differs slightly from ``ssim_hu``, which is computed on unshifted HU."""
    from .acquisition.ct import attenuation_to_hu

    lo, hi = metrics.CT_WINDOW
    return (attenuation_to_hu(image).clip(lo, hi) - lo) / (hi - lo)


def _unit(image: np.ndarray) -> np.ndarray:
    return image.clip(0.0, 1.0)


@dataclass(frozen=True)
class DemoTask:
    label: str
    operator: str
    options: dict[str, Any]
    model: str
    image: Callable[[int], torch.Tensor] = cameraman
    image_name: str = "cameraman"
    #: image -> what is shown and scored, in [0, 1]
    display: Callable[[np.ndarray], np.ndarray] = _unit


TASKS = (
    DemoTask("CS ratio 0.3", "gaussian_cs", {"ratio": 0.3, "block_size": 32}, "idm_cs"),
    DemoTask("inpainting 90%", "inpainting", {"missing_ratio": 0.9, "seed": 0}, "idm_inpainting"),
    DemoTask("superres x4", "superres", {"factor": 4}, "idm_superres"),
    DemoTask(
        f"CT 60 views, HU window {metrics.CT_WINDOW[0]:g} to {metrics.CT_WINDOW[1]:g}",
        "ct",
        {"n_views": 60},
        "idm_ct",
        image=held_out_ct,
        image_name="CT spine section",
        display=hu_window,
    ),
)


def run_demo_tasks(
    out_dir: Path, size: int = 256, ct_size: int = 128
) -> list[tuple[str, dict, dict]]:
    """Reconstruct every task; writes ``out_dir/demo_<operator>.png`` per task and returns
    ``[(label, A†y metrics, IDM metrics)]``. CT runs at ``ct_size`` (its pseudo-inverse is
    an iterative solve, seconds per call at 256²)."""
    from .operators import make_operator
    from .pretrained import list_pretrained, pretrained_path
    from .reconstruction import make_method

    shipped = set(list_pretrained())
    results = []
    for task in TASKS:
        if task.model not in shipped:
            logger.info("%s: no shipped model %s, skipped", task.label, task.model)
            continue
        n = ct_size if task.operator == "ct" else size
        x = task.image(n)
        reference = task.display(x[0, 0].double().numpy())
        op = make_operator(task.operator, image_size=n, **task.options)
        y = op.A(x)
        with torch.no_grad():
            pinv = task.display(op.A_pinv(y)[0, 0].double().numpy())
            idm = make_method("idm", checkpoint=pretrained_path(task.model))(y, op)
        idm = task.display(idm[0, 0].double().numpy())
        save_comparison_png(
            out_dir / f"demo_{task.operator}.png",
            {"A†y": pinv, f"IDM ({task.model})": idm},
            reference=reference,
            title=f"{task.image_name} (held out), {task.label}",
        )
        results.append(
            (
                task.label,
                metrics.evaluate(reference, pinv, data_range=1.0),
                metrics.evaluate(reference, idm, data_range=1.0),
            )
        )
    return results
