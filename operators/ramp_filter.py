"""The ramp filter of filtered back-projection, shared by the parallel and fan geometries.

:func:`fourier_filter` builds the frequency response from the band-limited spatial ramp
kernel (Kak & Slaney eq. 61), optionally apodised, as ``skimage.transform.iradon`` does;
:func:`filter_sinogram` applies it along the detector axis with zero padding.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann")
#: ``kernel_weight(n)`` multiplies the spatial kernel at integer offset ``n`` (a float64
#: tensor of circular distances); the equiangular fan-beam filter uses ``(nΔγ/sin nΔγ)²``.
KernelWeight = Callable[[torch.Tensor], torch.Tensor]


def fourier_filter(
    size: int,
    filter_name: str = "ramp",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    kernel_weight: KernelWeight | None = None,
) -> torch.Tensor:
    """Frequency response ``(size,)`` (FFT order) of the FBP filter, ``size`` even.

    The ramp is the DFT of the band-limited spatial kernel ``h[0] = 1/4``,
    ``h[n] = -1/(π n)²`` for odd ``n`` and 0 for even ``n`` (Kak & Slaney eq. 61), times 2;
    building it in the spatial domain avoids the DC bias of a sampled ``|ω|``. The other
    names multiply the ramp by the usual apodisation windows. ``kernel_weight`` (default
    none) multiplies ``h[n]`` before the DFT.
    """
    if filter_name not in FILTERS:
        raise ValueError(f"filter_name must be one of {FILTERS}, got {filter_name!r}")
    k = torch.arange(size, dtype=torch.float64)
    dist = torch.minimum(k, size - k)  # circular distance from sample 0
    h = torch.zeros(size, dtype=torch.float64)
    h[0] = 0.25
    odd = dist % 2 == 1
    h[odd] = -1.0 / (math.pi * dist[odd]) ** 2
    if kernel_weight is not None:
        h = h * kernel_weight(dist)
    response = 2 * torch.fft.fft(h).real
    freq = torch.fft.fftfreq(size, dtype=torch.float64)  # cycles per sample, [-0.5, 0.5)
    if filter_name == "shepp-logan":
        omega = math.pi * freq
        response = response * torch.where(omega == 0, 1.0, torch.sin(omega) / omega)
    elif filter_name == "cosine":
        response = response * torch.cos(math.pi * freq)
    elif filter_name in ("hamming", "hann"):
        # Symmetric windows of the full length centred on DC, as iradon builds them.
        make = torch.hamming_window if filter_name == "hamming" else torch.hann_window
        window = make(size, periodic=False, dtype=torch.float64)
        response = response * torch.fft.fftshift(window)
    return response.to(dtype=dtype, device=device)


def filter_sinogram(
    sinogram: torch.Tensor,
    filter_name: str = "ramp",
    margin: int = 0,
    circle: bool = False,
    kernel_weight: KernelWeight | None = None,
) -> torch.Tensor:
    """Filter every projection along its last (detector) axis.

    Args:
        sinogram: ``(..., V, D)``.
        filter_name: one of :data:`FILTERS`.
        margin: also return the filtered signal on ``margin`` virtual detectors beyond each
            end (the ramp spreads signal there; FBP interpolates into it as ``iradon``
            does).
        kernel_weight: see :func:`fourier_filter`.

    Returns:
        ``(..., V, D + 2·margin)``, detector ``j`` at index ``j + margin``. The data are
        zero-padded to ``max(64, 2^⌈log2(2·L)⌉)`` samples with ``L = ⌈√2·D⌉`` for
        ``circle=True`` and ``L = D`` otherwise, the lengths ``iradon`` uses, so the
        circular convolution does not wrap onto the detector.
    """
    n_det = sinogram.shape[-1]
    length = math.ceil(math.sqrt(2) * n_det) if circle else n_det
    padded = max(64, 2 ** math.ceil(math.log2(2 * length)))
    response = fourier_filter(padded, filter_name, sinogram.dtype, sinogram.device, kernel_weight)
    # Only the even part of a filter acts on real data (iradon keeps the real part of the
    # inverse FFT); the half-spectrum product below needs it explicitly.
    response = 0.5 * (response + torch.roll(torch.flip(response, [0]), 1))
    spectrum = torch.fft.rfft(sinogram, n=padded, dim=-1)
    filtered = torch.fft.irfft(spectrum * response[: padded // 2 + 1], n=padded, dim=-1)
    # Negative detector indices live at the end of the circular buffer.
    return torch.roll(filtered, margin, dims=-1)[..., : n_det + 2 * margin]
