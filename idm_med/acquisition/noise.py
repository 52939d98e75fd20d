r"""Measurement noise, seeded and recorded (the noise part of idm-med's acquisition code).

Two models, each drawn from its own ``torch.Generator`` seeded by the caller, so a run is
reproducible and its record (:meth:`NoiseRecord.as_dict`, JSON-safe) can be stored with
the output:

* **k-space** (MRI): circularly symmetric complex Gaussian noise on every *measured*
  sample, :math:`n = (a + i b)\,\sigma/\sqrt 2` with :math:`a, b \sim N(0, 1)`, so
  :math:`E|n|^2 = \sigma^2`; measurements are the ``(…, 2, H, W)`` real/imaginary layout of
  :class:`~idm_med.operators.mri.MRI`, unmeasured (zero-filled) columns stay zero.
* **CT photon noise** (low dose): a post-log sinogram ``p`` (line integrals of attenuation,
  dimensionless) is turned into detector counts :math:`N \sim \mathrm{Poisson}(I_0 e^{-p})`
  for an incident flux :math:`I_0` photons per bin and logged back,
  :math:`\tilde p = -\log(\max(N, 1) / I_0)`; counts of zero are clamped to one photon
  (the usual convention, which caps :math:`\tilde p` at :math:`\log I_0`). The variance of
  :math:`\tilde p` is about :math:`e^{p} / I_0`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class NoiseRecord:
    """What was added: ``kind`` (``"kspace_gaussian"`` / ``"ct_poisson"``), its level
    (``sigma`` or ``I0``) and the ``seed``."""

    kind: str
    seed: int
    sigma: float | None = None
    I0: float | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return torch.Generator().manual_seed(int(seed))


def add_kspace_noise(
    y: torch.Tensor, sigma: float, seed: int, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, NoiseRecord]:
    """Complex Gaussian k-space noise of standard deviation ``sigma`` (``E|n|² = σ²``).

    Args:
        y: measurements ``(…, 2, H, W)`` (real, imaginary channels), float.
        sigma: noise level ``>= 0`` in the units of ``y``.
        seed: generator seed (recorded).
        mask: optional bool ``(W,)`` of measured columns; noise is added only there
            (default: where ``y`` is not exactly zero in both channels).

    Returns:
        ``(noisy y, record)``; ``y`` itself is not modified.
    """
    if not y.is_floating_point() or y.dim() < 3 or y.shape[-3] != 2:
        raise ValueError(f"y must be real (…, 2, H, W), got {tuple(y.shape)} {y.dtype}")
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    gen = _generator(seed)
    noise = torch.randn(y.shape, generator=gen, dtype=torch.float64) * (sigma / math.sqrt(2))
    noise = noise.to(device=y.device, dtype=y.dtype)
    if mask is not None:
        measured = mask.to(device=y.device, dtype=y.dtype)
    else:
        measured = (y != 0).any(dim=-3, keepdim=True).to(y.dtype)
    return y + noise * measured, NoiseRecord("kspace_gaussian", int(seed), sigma=sigma)


def add_poisson_noise(
    sinogram: torch.Tensor, I0: float, seed: int
) -> tuple[torch.Tensor, NoiseRecord]:
    """Low-dose CT: Poisson photon counts at incident flux ``I0`` on a post-log sinogram.

    Args:
        sinogram: line integrals ``p >= 0`` (dimensionless, any shape), float.
        I0: incident photons per detector bin, ``> 0`` (larger means less noise).
        seed: generator seed (recorded).

    Returns:
        ``(-log(max(N, 1) / I0), record)`` with ``N ~ Poisson(I0 · exp(-p))``, same shape
        and dtype as ``sinogram``.
    """
    if not sinogram.is_floating_point():
        raise ValueError(f"sinogram must be a real float tensor, got {sinogram.dtype}")
    I0 = float(I0)
    if not math.isfinite(I0) or I0 <= 0:
        raise ValueError(f"I0 must be a finite number > 0, got {I0!r}")
    gen = _generator(seed)
    rate = I0 * torch.exp(-sinogram.detach().to(device="cpu", dtype=torch.float64))
    counts = torch.poisson(rate, generator=gen).clamp_min(1.0)
    noisy = -torch.log(counts / I0)
    return noisy.to(device=sinogram.device, dtype=sinogram.dtype), NoiseRecord(
        "ct_poisson", int(seed), I0=I0
    )
