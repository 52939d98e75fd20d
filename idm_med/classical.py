"""Classical, training-free reconstruction used as a baseline and by the demo.

``tv_rnd_reconstruct`` alternates a total-variation denoiser with the range–null-space
projection that DDNM and IDM use, ``x ← x − A†(A x − y)``: every iterate agrees exactly
with the measurements while TV fills in the null space. It needs only the operator
contract, so it works for every operator.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from skimage.restoration import denoise_tv_chambolle
from tqdm.auto import tqdm

from .operators import Operator, range_null_space_projection

logger = logging.getLogger(__name__)


def tv_denoise(x: torch.Tensor, weight: float, complex_channels: bool = False) -> torch.Tensor:
    """Chambolle TV denoising of every image of a ``(B, C, H, W)`` batch.

    With ``complex_channels`` the two channels are treated as one vector-valued image, so
    real and imaginary parts share edges.
    """
    out = np.empty(x.shape, dtype=np.float64)
    arr = x.detach().cpu().double().numpy()
    for b in range(arr.shape[0]):
        if complex_channels:
            out[b] = denoise_tv_chambolle(arr[b], weight=weight, channel_axis=0)
        else:
            for c in range(arr.shape[1]):
                out[b, c] = denoise_tv_chambolle(arr[b, c], weight=weight)
    return torch.from_numpy(out).to(x)


@torch.no_grad()
def tv_rnd_reconstruct(
    y: torch.Tensor,
    operator: Operator,
    weight: float = 0.02,
    n_iter: int = 30,
    decay: float = 0.93,
    complex_channels: bool = False,
    progress: bool = True,
) -> torch.Tensor:
    """Reconstruct ``x`` from ``y = A x`` by TV denoising + range–null-space projection.

    Args:
        y: measurements ``(B, *operator.measurement_shape)``.
        operator: any operator honouring the contract.
        weight: initial TV weight, relative to the image's dynamic range.
        n_iter: iterations; the weight decays geometrically by ``decay`` per iteration.
        complex_channels: denoise 2-channel complex images jointly.
        progress: show a progress bar.

    Returns:
        ``(B, *operator.image_shape)``, starting from ``A† y``.
    """
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    x = operator.A_pinv(y)
    scale = float(x.abs().amax()) or 1.0
    for k in tqdm(range(n_iter), desc="TV-RND", disable=not progress, leave=False):
        x = tv_denoise(x, weight * scale * decay**k, complex_channels)
        x = range_null_space_projection(x, y, operator)
    return x
