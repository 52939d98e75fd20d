"""Sampling from diffusion priors with diffusers' schedulers (DDPM ancestral, DDIM η = 0).

``sample(unet, scheduler, shape, steps, kind)`` draws unconditional images from a prior;
``denoiser(unet)`` wraps a timestep-conditioned network (a ``UNet2DModel``, an SD-layout
``UNet2DConditionModel`` prior, or a 1-channel prior applied to each channel of 2-channel
complex images) as ``ε(x, t)``; both are shared by DDNM (:mod:`idm_med.ddnm`) and SR3
(:mod:`idm_med.sr3`).

**SD-layout priors** (``idm-med pretrain --backbone sd``) are run as IDM's SD backbone
is (:mod:`idm_med.backbone_layout`): the image is pixel-unshuffled by 2 (1 channel → 4
UNet channels, 2 → 8) and the output shuffled back, and the cross-attention gets a fixed
*null context*, zeros of shape ``(B, 1, cross_attention_dim)`` (:func:`unet_eps`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler, SchedulerMixin, UNet2DConditionModel
from torch import nn
from tqdm.auto import tqdm

SAMPLERS = ("ddpm", "ddim")

#: Pixel-unshuffle factor of SD-layout priors (as IDM's SD backbone: 2×2 pixels ↔ SD's
#: 4 latent channels per image channel).
SD_UNSHUFFLE = 2

NoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_scheduler(kind: str, train_scheduler: SchedulerMixin, steps: int) -> SchedulerMixin:
    """A sampling scheduler of ``kind`` (``ddpm`` or ``ddim``) on the training schedule of
    ``train_scheduler``, set to ``steps`` inference steps (DDIM: ``clip_sample`` off,
    ``set_alpha_to_one`` so the last step lands on ᾱ = 1)."""
    if kind not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {kind!r}")
    cfg = dict(train_scheduler.config)
    if kind == "ddim":
        sched = DDIMScheduler.from_config(cfg, clip_sample=False, set_alpha_to_one=True)
    else:
        sched = DDPMScheduler.from_config(cfg, clip_sample=False)
    n = sched.config.num_train_timesteps
    if not 1 <= steps <= n:
        raise ValueError(f"steps must lie in [1, {n}], got {steps}")
    sched.set_timesteps(steps)
    return sched


def is_sd_prior(unet: object) -> bool:
    """Whether ``unet`` is an SD-layout prior (a diffusers ``UNet2DConditionModel``)."""
    return isinstance(getattr(unet, "module", unet), UNet2DConditionModel)


def image_channels_of(unet: object) -> int | None:
    """Image channels a prior UNet works on (``in_channels``, divided by the 2×2
    pixel-unshuffle for an SD-layout prior); ``None`` for a plain callable."""
    in_channels = getattr(getattr(unet, "config", None), "in_channels", None)
    if in_channels is not None and is_sd_prior(unet):
        return in_channels // SD_UNSHUFFLE**2
    return in_channels


def null_context(unet: nn.Module, batch: int, like: torch.Tensor) -> torch.Tensor:
    """The fixed cross-attention context of an unconditional SD-layout prior: zeros of
    shape ``(batch, 1, cross_attention_dim)``. With one context token the cross-attention
    output is a constant (its ``to_out`` bias), i.e. a learned per-channel bias."""
    dim = getattr(unet, "module", unet).config.cross_attention_dim
    return torch.zeros(batch, 1, dim, device=like.device, dtype=like.dtype)


def unet_eps(unet: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """One evaluation ``ε(x, t)`` of a prior UNet on images ``x`` ``(B, C, H, W)``:
    ``unet(x, t).sample`` for a ``UNet2DModel``; for an SD-layout prior the image is
    pixel-unshuffled, the null context passed and the output shuffled back."""
    if not is_sd_prior(unet):
        out = unet(x, t)
        return getattr(out, "sample", out)
    h = nn.functional.pixel_unshuffle(x, SD_UNSHUFFLE)
    out = unet(h, t, encoder_hidden_states=null_context(unet, x.shape[0], x)).sample
    return nn.functional.pixel_shuffle(out, SD_UNSHUFFLE)


def denoiser(unet: nn.Module | NoiseFn, channels: int | None = None) -> NoiseFn:
    """``ε(x, t)`` for images with ``channels`` channels from a timestep-conditioned model.

    A diffusers model's output dataclass is unwrapped (an SD-layout prior runs through
    :func:`unet_eps`). A 1-channel model used on ``channels > 1`` images runs on each
    channel as its own image (so a grayscale prior serves complex MRI as real and
    imaginary parts).
    """
    in_channels = image_channels_of(unet)

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        split = in_channels == 1 and c > 1
        xin = x.reshape(b * c, 1, *x.shape[2:]) if split else x
        tt = t.expand(xin.shape[0]) if t.ndim == 1 and t.numel() == 1 else t
        if split and tt.numel() == b:
            tt = tt.repeat_interleave(c)
        out = unet_eps(unet, xin, tt)
        return out.reshape(x.shape) if split else out

    if channels is not None and in_channels not in (None, 1, channels):
        raise ValueError(f"prior has {in_channels} channels, the images {channels}")
    return eps


def timestep(t: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
    """A scheduler's timestep as a ``(batch,)`` long tensor."""
    return torch.full((batch,), int(t), device=device, dtype=torch.long)


@torch.no_grad()
def sample(
    unet: nn.Module,
    train_scheduler: SchedulerMixin,
    shape: tuple[int, ...],
    steps: int = 100,
    kind: str = "ddim",
    seed: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """Draw ``shape`` = ``(B, C, H, W)`` images from a prior (DDPM ancestral or DDIM with
    η = 0, deterministic given ``seed``)."""
    param = next(unet.parameters())
    sched = make_scheduler(kind, train_scheduler, steps)
    gen = torch.Generator(device=param.device).manual_seed(int(seed))
    x = torch.randn(shape, generator=gen, device=param.device, dtype=param.dtype)
    eps = denoiser(unet, shape[1])
    for t in tqdm(sched.timesteps, disable=not progress, desc=kind):
        e = eps(x, timestep(t, shape[0], x.device))
        kwargs = {"eta": 0.0} if kind == "ddim" else {}
        x = sched.step(e, t, x, generator=gen, **kwargs).prev_sample
    return x


def save_grid(path: Path, images: Any, title: str, cols: int = 8) -> None:
    """A PNG grid of ``(N, H, W)`` images in [0, 1] (written atomically), e.g. the
    samples of ``idm-med sample``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .datasets.atomic import atomic_path

    n = len(images)
    cols = min(cols, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows + 0.4), squeeze=False)
    for ax, i in zip(axes.flat, range(rows * cols), strict=True):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=1)
    fig.suptitle(title, fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
