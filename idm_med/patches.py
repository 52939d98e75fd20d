"""Random augmented training patches from images of several modalities.

Shared by every trainer (priors, SR3, IDM): a patch is drawn from a modality (with given
probabilities), an image, a scale (zoomed-out patches look like whole slices), a position,
one of the 8 flips/rotations and an intensity scale; MRI heads may be drawn
skull-stripped (:mod:`idm_med.datasets.skull_strip`), as many users' brains are; 2-channel
patches are complex images ``m·e^{iφ}`` with a random smooth phase, as (real, imaginary).
All randomness comes from the generator passed in, so a batch is a function of
``(seed, step)`` only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


def smooth_phase(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """A random smooth phase map ``exp(iφ)`` ``(H, W)``: ``φ`` is an offset, a ramp and a
    low-frequency random field (bicubic upsampling of a 4×4 Gaussian grid), up to ~±π, like
    the slowly varying phase of real MR images (B0 inhomogeneity, coil phase)."""
    h, w = shape
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    a, b, c = (torch.rand(3, generator=generator) * 2 - 1) * math.pi
    coarse = torch.randn(1, 1, 4, 4, generator=generator)
    field_ = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0, 0]
    phi = c + 0.5 * (a * xx + b * yy) + 0.5 * field_
    return torch.polar(torch.ones(h, w), phi)


@dataclass
class PatchSampler:
    """Random augmented patches ``(B, C, size, size)`` from images of several modalities.

    Args:
        images: ``{modality: [2-D arrays in [0, 1]]}``.
        weights: ``{modality: probability}`` of drawing from each modality.
        size: patch side in pixels.
        channels: 1 (magnitude) or 2 (complex as real/imag with a random smooth phase).
        scale_range: ``{modality: (lo, hi)}``: the patch covers ``size / s`` source pixels
            for a scale ``s`` drawn in the range (zoomed out images look like whole slices).
        skull_strip: ``{modality: probability}`` that an image is drawn skull-stripped
            (its brain on an exactly zero background); the masks are computed once here.
    """

    images: dict[str, list[np.ndarray]]
    weights: dict[str, float]
    size: int = 64
    channels: int = 1
    scale_range: dict[str, tuple[float, float]] = field(default_factory=dict)
    skull_strip: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {self.channels}")
        self._mods = [m for m in self.images if self.images[m] and self.weights.get(m, 0) > 0]
        if not self._mods:
            raise ValueError("PatchSampler needs at least one modality with images")
        p = torch.tensor([self.weights[m] for m in self._mods], dtype=torch.float64)
        self._p = p / p.sum()
        self._tensors = {
            m: [torch.from_numpy(np.asarray(a, np.float32)) for a in self.images[m]]
            for m in self._mods
        }
        if any(not 0 <= p <= 1 for p in self.skull_strip.values()):
            raise ValueError(f"skull_strip probabilities must be in [0, 1], got {self.skull_strip}")
        self._stripped: dict[str, list[torch.Tensor]] = {}
        if stripped := [m for m in self._mods if self.skull_strip.get(m, 0) > 0]:
            from .datasets.skull_strip import skull_strip  # scikit-image only when used

            for m in stripped:
                self._stripped[m] = [
                    torch.from_numpy(skull_strip(a.numpy())) for a in self._tensors[m]
                ]

    def patch(self, generator: torch.Generator) -> torch.Tensor:
        """One patch ``(C, size, size)``."""
        g = generator
        mod = self._mods[int(torch.multinomial(self._p, 1, generator=g))]
        pool = self._tensors[mod]
        index = int(torch.randint(len(pool), (1,), generator=g))
        img = pool[index]
        # drawn only where stripping is on, so other samplers keep their random stream
        if mod in self._stripped and float(torch.rand(1, generator=g)) < self.skull_strip[mod]:
            img = self._stripped[mod][index]
        lo, hi = self.scale_range.get(mod, (0.5, 1.0))
        s = lo + (hi - lo) * float(torch.rand(1, generator=g))
        crop = min(int(round(self.size / s)), *img.shape)
        top = int(torch.randint(img.shape[0] - crop + 1, (1,), generator=g))
        left = int(torch.randint(img.shape[1] - crop + 1, (1,), generator=g))
        p = img[top : top + crop, left : left + crop][None, None]
        if crop > self.size:  # zoom out: area averaging, as a scanner's larger pixels would
            p = F.interpolate(p, size=(self.size, self.size), mode="area")[0, 0]
        else:
            p = F.interpolate(p, size=(self.size,) * 2, mode="bilinear", align_corners=False)[0, 0]
        p = torch.rot90(p, int(torch.randint(4, (1,), generator=g)), dims=(0, 1))
        if bool(torch.randint(2, (1,), generator=g)):
            p = p.flip(1)
        p = p.clamp(0, 1) * (0.6 + 0.4 * float(torch.rand(1, generator=g)))
        if self.channels == 1:
            return p[None]
        z = p.to(torch.complex64) * smooth_phase(p.shape, g)
        return torch.view_as_real(z).permute(2, 0, 1).contiguous()

    def batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.stack([self.patch(generator) for _ in range(batch_size)])


def corpus_sampler(
    size: int, channels: int, modalities: dict[str, float], skull_strip: float = 0.0
) -> PatchSampler:
    """A :class:`PatchSampler` over the corpus' *training* split of ``modalities``, its
    MRI heads skull-stripped with probability ``skull_strip``."""
    from .datasets import corpus

    images = {m: corpus.load(m, "train") for m in modalities}
    scales = {"natural": (0.25, 1.0), "mri": (0.5, 1.0), "ct": (0.25, 1.0)}
    return PatchSampler(images, modalities, size, channels, scales, {"mri": skull_strip})
