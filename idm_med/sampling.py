"""Sampling from diffusion priors with diffusers' schedulers (DDPM ancestral, DDIM η = 0).

``sample(unet, scheduler, shape, steps, kind)`` draws unconditional images from a prior;
``denoiser(unet)`` wraps a timestep-conditioned network (a ``UNet2DModel``, or a
1-channel prior applied to each channel of 2-channel complex images) as ``ε(x, t)``; both
are shared by DDNM (:mod:`idm_med.ddnm`) and SR3 (:mod:`idm_med.sr3`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, SchedulerMixin
from torch import nn
from tqdm.auto import tqdm

SAMPLERS = ("ddpm", "ddim")

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


def denoiser(unet: nn.Module | NoiseFn, channels: int | None = None) -> NoiseFn:
    """``ε(x, t)`` for images with ``channels`` channels from a timestep-conditioned model.

    A diffusers model's output dataclass is unwrapped. A 1-channel model used on
    ``channels > 1`` images runs on each channel as its own image (so a grayscale prior
    serves complex MRI as real and imaginary parts).
    """
    in_channels = getattr(getattr(unet, "config", None), "in_channels", None)

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        split = in_channels == 1 and c > 1
        xin = x.reshape(b * c, 1, *x.shape[2:]) if split else x
        tt = t.expand(xin.shape[0]) if t.ndim == 1 and t.numel() == 1 else t
        if split and tt.numel() == b:
            tt = tt.repeat_interleave(c)
        out = unet(xin, tt)
        out = getattr(out, "sample", out)
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
