"""SART for sparse-view CT through ``skimage.transform.iradon_sart``.

The operator's sinogram ``(B, 1, V, D)`` (views, detector bins) is skimage's
``radon(image, theta=degrees(angles))`` transposed: with ``D = N`` (the ``circle=True``
geometry) skimage reconstructs the ``N × N`` image directly; with more bins than image
columns (``circle=False``: the image zero-padded to its diagonal) skimage reconstructs the
padded ``D × D`` square and the image is the centre crop at skimage's padding offset.
Each iteration is one SART sweep over all views (relaxation ``relaxation``), warm-started
from the previous one; values are clipped to ``[0, ∞)`` (attenuation).
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.transform import iradon_sart

from ..operators import Operator


def is_parallel_beam_ct(operator: Operator) -> bool:
    """Whether SART applies: skimage's SART models parallel-beam projections only."""
    return operator.name == "ct" and operator.config.get("geometry", "parallel") == "parallel"


def _crop_offset(n: int, d: int) -> int:
    """Row/column of the image's origin inside skimage's ``circle=False`` padded square."""
    if d == n:
        return 0
    pad = d - n
    return (n + pad) // 2 - n // 2


@torch.no_grad()
def sart(
    y: torch.Tensor, operator: Operator, n_iter: int = 3, relaxation: float = 0.15
) -> torch.Tensor:
    """SART reconstruction ``(B, 1, V, D) -> (B, 1, N, N)`` for a CT operator.

    Args:
        y: sinograms of ``operator`` (which needs an ``angles`` attribute, radians).
        operator: a parallel-beam CT operator.
        n_iter: SART sweeps over all views.
        relaxation: skimage's relaxation parameter.
    """
    angles = getattr(operator, "angles", None)
    if angles is None:
        raise ValueError("SART needs a CT operator with view angles (operator.angles)")
    if not is_parallel_beam_ct(operator):
        raise ValueError(
            f"SART (skimage) models parallel-beam projections only; this operator's geometry "
            f"is {operator.config.get('geometry')!r} (use tv or fbp)"
        )
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    theta = np.degrees(angles.detach().cpu().double().numpy())
    n = operator.image_shape[-1]
    sinos = y.detach().cpu().double().numpy()[:, 0]  # (B, V, D)
    off = _crop_offset(n, sinos.shape[-1])
    out = np.empty((len(sinos), 1, n, n))
    for b, sino in enumerate(sinos):
        image = None
        for _ in range(n_iter):
            image = iradon_sart(
                sino.T, theta=theta, image=image, relaxation=relaxation, clip=(0.0, np.inf)
            )
        out[b, 0] = image[off : off + n, off : off + n]
    return torch.from_numpy(out).to(y)
