"""Adapting a UNet's first and last convolution to another number of image channels.

Used wherever pretrained weights meet images with more channels than they were trained on:
Stable Diffusion's 4-channel conv_in / conv_out for 2-channel (real, imaginary) MRI
(:mod:`idm_med.sd_unet`), a 1-channel prior started for 2 channels (:mod:`idm_med.prior`,
:func:`idm_med.training.idm_from_prior`) and SR3's conditional UNet (:mod:`idm_med.sr3`).
"""

from __future__ import annotations

import torch


def adapt_channels(weight: torch.Tensor, dim: int, target: int) -> torch.Tensor | None:
    """Repeat a conv_in (``dim=1``) or conv_out (``dim=0``) tensor to ``target`` channels.

    ``weight`` is a convolution weight ``(out, in, k, k)`` or a bias ``(out,)``; the
    channels along ``dim`` are tiled ``target / have`` times, so channel ``k·have + j``
    takes channel ``j``. For 2-channel (real, imaginary) images with SD's pixel-unshuffle
    the 8 input channels are the 4 sub-pixels of the real part then the 4 of the imaginary
    part. Input filters (``dim=1``) are divided by the repeat count, so an image whose
    parts are equal gives the pretrained response; output filters and biases (``dim=0``)
    are copied, so each part gets the pretrained noise estimate.

    Returns ``weight`` itself when it already has ``target`` channels and ``None`` when
    ``target`` is not a multiple of the channels it has.
    """
    have = weight.shape[dim]
    if have == target:
        return weight
    if target % have:
        return None
    reps = target // have
    out = torch.cat([weight] * reps, dim=dim)
    return out / reps if dim == 1 else out
