"""l1-wavelet compressed sensing by FISTA (Beck & Teboulle 2009), the CS-MRI classic.

Solves ``x̂ = argmin_x ½‖Ã x − ỹ‖² + λ ‖W x‖₁`` with ``Ã = A/‖A‖``, ``ỹ = y/‖A‖`` (as in
:mod:`.tv`, so ``λ`` does not depend on the operator's scaling) and ``W`` an orthogonal
2-D wavelet transform (PyWavelets, periodised, so ``Wᵀ W = I``); the approximation band is
not penalised. Since ``W`` is orthogonal, the proximal map of ``λ‖W·‖₁`` is
``Wᵀ soft_λ(W x)``. A 2-channel (real, imaginary) image is transformed as one complex
image and thresholded on the modulus, ``c · max(0, 1 − λ/|c|)``; other channels are
transformed one by one.

With ``cycle_spin`` the image is circularly shifted by a seeded random offset before each
thresholding (and shifted back), which removes the blocky artefacts of a fixed wavelet
grid at the price of a per-iteration change of basis.
"""

from __future__ import annotations

import numpy as np
import pywt
import torch

from ..operators import Operator
from .tv import initial_estimate, operator_norm


def _soft(c: np.ndarray, thresh: float) -> np.ndarray:
    """Soft thresholding on the modulus (real or complex)."""
    mag = np.abs(c)
    return c * np.maximum(0.0, 1.0 - thresh / np.maximum(mag, 1e-30))


def wavelet_shrink(
    image: np.ndarray, thresh: float, wavelet: str = "db4", level: int = 4
) -> np.ndarray:
    """``Wᵀ soft(W image)`` for a 2-D real or complex array; the coarse band is kept.
    ``level`` is capped at PyWavelets' maximum useful level for the image size."""
    level = min(level, pywt.dwt_max_level(min(image.shape), pywt.Wavelet(wavelet).dec_len))
    coeffs = pywt.wavedec2(image, wavelet, mode="periodization", level=level)
    arr, slices = pywt.coeffs_to_array(coeffs)
    approx = slices[0]
    kept = arr[approx].copy()
    arr = _soft(arr, thresh)
    arr[approx] = kept
    rec = pywt.waverec2(
        pywt.array_to_coeffs(arr, slices, output_format="wavedec2"), wavelet, mode="periodization"
    )
    return rec[: image.shape[0], : image.shape[1]]


def _prox(x: torch.Tensor, thresh: float, wavelet: str, level: int, shift) -> torch.Tensor:
    arr = x.detach().cpu().double().numpy()
    out = np.empty_like(arr)
    complex_image = arr.shape[1] == 2
    for b in range(arr.shape[0]):
        planes = [arr[b, 0] + 1j * arr[b, 1]] if complex_image else list(arr[b])
        for c, plane in enumerate(planes):
            rolled = np.roll(plane, shift, axis=(0, 1))
            rec = np.roll(
                wavelet_shrink(rolled, thresh, wavelet, level), (-shift[0], -shift[1]), (0, 1)
            )
            if complex_image:
                out[b, 0], out[b, 1] = rec.real, rec.imag
            else:
                out[b, c] = rec
    return torch.from_numpy(out).to(x)


@torch.no_grad()
def l1_wavelet(
    y: torch.Tensor,
    operator: Operator,
    lam: float = 1e-3,
    n_iter: int = 200,
    wavelet: str = "db4",
    level: int = 4,
    cycle_spin: bool = True,
    seed: int = 0,
) -> torch.Tensor:
    """FISTA for ½‖Ãx − ỹ‖² + λ‖Wx‖₁ (see the module docstring).

    Args:
        y: measurements ``(B, *operator.measurement_shape)``.
        operator: any operator of the contract; images ``H, W`` divisible by ``2**level``.
        lam: l1 weight of the normalised problem.
        n_iter: FISTA iterations (step ``1/‖Ã‖² = 1``).
        wavelet, level: PyWavelets wavelet name and decomposition depth.
        cycle_spin: random circular shifts per iteration (seeded by ``seed``).

    Returns:
        ``(B, *operator.image_shape)``.
    """
    if lam < 0 or n_iter < 0:
        raise ValueError(f"lam and n_iter must be >= 0, got {lam} and {n_iter}")
    s = operator_norm(operator)
    rng = np.random.default_rng(seed)
    x = initial_estimate(y, operator)
    z, t = x.clone(), 1.0
    for _ in range(n_iter):
        grad = operator.At(operator.A(z) - y) / s**2
        shift = tuple(int(v) for v in rng.integers(0, 2**level, 2)) if cycle_spin else (0, 0)
        x_new = _prox(z - grad, lam, wavelet, level, shift)
        t_new = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
        z = x_new + ((t - 1.0) / t_new) * (x_new - x)
        x, t = x_new, t_new
    return x
