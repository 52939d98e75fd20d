"""The demo's natural-image tasks (``idm-med demo``, after the MRI slice).

One test image the models never saw — scikit-image's cameraman, kept out of training by
the corpus (``datasets/corpus.py``) — is measured by each natural-image operator and
reconstructed by ``A†y`` and by the shipped IDM model of the task; a task whose model does
not ship is skipped with a notice. Noiseless measurements, PSNR / SSIM on [0, 1].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import metrics
from .figures import save_comparison_png

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoTask:
    label: str
    operator: str
    options: dict[str, Any]
    model: str


TASKS = (
    DemoTask("CS ratio 0.3", "gaussian_cs", {"ratio": 0.3, "block_size": 32}, "idm_cs"),
    DemoTask("inpainting 90%", "inpainting", {"missing_ratio": 0.9, "seed": 0}, "idm_inpainting"),
    DemoTask("superres x4", "superres", {"factor": 4}, "idm_superres"),
)


def cameraman(size: int) -> torch.Tensor:
    """The cameraman, ``(1, 1, size, size)`` in [0, 1] (area-resampled from 512²)."""
    from .datasets import corpus

    image = torch.from_numpy(np.asarray(corpus.load("natural", "test", ["camera"])[0]))
    image = image.float()[None, None]
    return torch.nn.functional.interpolate(image, size=(size, size), mode="area")


def run_natural_demo(out_dir: Path, size: int = 256) -> list[tuple[str, dict, dict]]:
    """Reconstruct every task; writes ``out_dir/demo_<operator>.png`` per task and returns
    ``[(label, A†y metrics, IDM metrics)]``."""
    from .operators import make_operator
    from .pretrained import list_pretrained, pretrained_path
    from .reconstruction import make_method

    x = cameraman(size)
    reference = x[0, 0].numpy()
    shipped = set(list_pretrained())
    results = []
    for task in TASKS:
        if task.model not in shipped:
            logger.info("%s: no shipped model %s, skipped", task.label, task.model)
            continue
        op = make_operator(task.operator, image_size=size, **task.options)
        y = op.A(x)
        with torch.no_grad():
            pinv = op.A_pinv(y)[0, 0].clamp(0, 1).numpy()
            idm = make_method("idm", checkpoint=pretrained_path(task.model))(y, op)
        idm = idm[0, 0].clamp(0, 1).numpy()
        save_comparison_png(
            out_dir / f"demo_{task.operator}.png",
            {"A†y": pinv, f"IDM ({task.model})": idm},
            reference=reference,
            title=f"cameraman (held out), {task.label}",
        )
        results.append(
            (
                task.label,
                metrics.evaluate(reference, pinv, data_range=1.0),
                metrics.evaluate(reference, idm, data_range=1.0),
            )
        )
    return results
