r"""SR3: a conditional diffusion model trained for one task (Saharia et al.), generalised
from super-resolution to any operator by conditioning on ``A†y``.

The network ``ε_θ([x_t, A^\dagger y], t)`` is a diffusers ``UNet2DModel`` with ``2C`` input
channels (the noisy image and the pseudo-inverse of its measurement; SR3 conditions on the
upsampled low-resolution image, which is ``A†y`` for average-pooling super-resolution) and
``C`` outputs, trained with the DDPM loss on ``x_t = \sqrt{\bar\alpha_t}x_0 +
\sqrt{1-\bar\alpha_t}\,\varepsilon``

.. math::

    \| v_t - v_\theta([x_t,\ A^\dagger A x_0],\ t) \|^2, \qquad
    v_t = \sqrt{\bar\alpha_t}\,\varepsilon - \sqrt{1-\bar\alpha_t}\,x_0

(``prediction_type="v_prediction"``, the default) or on ε (``"epsilon"``, as the prior and
the SR3 paper). Why v: with ε-prediction the loss at high noise levels is small whether or
not the network uses the condition (``x_t`` is almost ε), so a briefly trained model ignores
``A†y`` there and its samples drift from the measurement: the 2,000-step ε model of
``scripts/train_sr3.py`` reached a noise MSE of 1e-3 at t = 900 yet sampled images at
9.4 dB (×2) on the held-out test images. ``v`` weights those steps like an
``x_0`` prediction, which needs the condition. The scheduler saved with the model records
the prediction type, so diffusers' DDPM / DDIM steps read the output correctly.

Training runs on the same loop as every idm-med model (:mod:`idm_med.train_loop`), with
measurement settings drawn per batch as in IDM training; sampling uses diffusers' DDPM or
DDIM schedulers.
Starting from a prior (``init``), the prior's weights take the ``x_t`` channels and the
condition channels start at zero, so training begins from the unconditional denoiser.

An SR3 directory is a diffusers model directory plus ``scheduler_config.json`` and
``sr3.json`` (the operator spec it was trained for).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, SchedulerMixin, UNet2DModel
from torch import nn
from tqdm.auto import tqdm

from . import train_loop
from .channel_adapters import adapt_channels
from .patches import corpus_sampler
from .prior import default_scheduler, layout_of, load_prior, prior_unet_config
from .sampling import make_scheduler, timestep

logger = logging.getLogger(__name__)

SR3_INFO = "sr3.json"
PREDICTION_TYPES = ("v_prediction", "epsilon")


@dataclass
class SR3Config:
    """An SR3 training run (saved in ``sr3.json``); ``operator`` as in IDM training."""

    operator: dict[str, Any] = field(default_factory=lambda: {"name": "superres", "factor": [2, 4]})
    image_size: int = 64
    image_channels: int = 1
    batch_size: int = 8
    init: str | None = None  # a prior directory
    data: dict[str, float] = field(default_factory=lambda: {"natural": 1.0})
    unet: dict[str, Any] = field(default_factory=dict)  # overrides of the prior layout
    prediction_type: str = "v_prediction"  # or "epsilon" (see the module docstring)
    loop: train_loop.LoopConfig = field(default_factory=train_loop.LoopConfig)


def make_sr3_unet(config: SR3Config) -> UNet2DModel:
    """The conditional UNet (``2C → C`` channels), started from ``config.init`` if given."""
    c = config.image_channels
    cfg = prior_unet_config(c, **config.unet)
    cfg["in_channels"] = 2 * c
    if config.init:
        prior_unet, _, _ = load_prior(config.init)
        cfg.update(layout_of(prior_unet))
    unet = UNet2DModel(**cfg)
    if config.init:
        state = prior_unet.state_dict()
        # The prior's conv_in (out, c_prior, k, k) takes the x_t channels; the A†y
        # channels start at zero. conv_out is tiled to C channels.
        x_t = adapt_channels(state["conv_in.weight"], 1, c)
        outs = {k: adapt_channels(state[k], 0, c) for k in ("conv_out.weight", "conv_out.bias")}
        if x_t is None or any(v is None for v in outs.values()):
            raise ValueError(f"{config.init}: a prior's channels do not divide {c}")
        state["conv_in.weight"] = torch.zeros_like(unet.conv_in.weight)
        state["conv_in.weight"][:, :c] = x_t
        state.update(outs)
        unet.load_state_dict(state)
    return unet


def sr3_loss(scheduler: SchedulerMixin, operators: Any) -> Any:
    """``loss_fn(unet, x0, generator)``: draw a setting, condition on ``A†A x0``, DDPM loss
    on the target of ``scheduler``'s prediction type (ε or v)."""

    def loss_fn(unet: nn.Module, x0: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        param = next(unet.parameters())
        x0 = x0.to(param.device)
        op = operators(gen).to(device=x0.device, dtype=x0.dtype)
        with torch.no_grad():
            cond = op.A_pinv(op.A(x0))
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=gen)
        t = t.to(x0.device)
        pred = unet(torch.cat([scheduler.add_noise(x0, noise, t), cond], 1), t).sample
        if scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(x0, noise, t)
        else:
            target = noise
        return F.mse_loss(pred.float(), target.float())

    return loss_fn


def train_sr3(
    config: SR3Config,
    output: str | Path,
    sampler: Any = None,
    resume: bool = False,
    progress: bool = True,
) -> UNet2DModel:
    """Train an SR3 model and write it to ``output``."""
    from .training import OperatorPool

    sampler = sampler or corpus_sampler(config.image_size, config.image_channels, config.data)
    torch.manual_seed(config.loop.seed)
    if config.prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type must be one of {PREDICTION_TYPES}, got {config.prediction_type!r}"
        )
    unet = make_sr3_unet(config)
    scheduler = DDPMScheduler.from_config(
        default_scheduler().config, prediction_type=config.prediction_type
    )
    operators = OperatorPool(config.operator, config.image_size)
    record = {k: v for k, v in asdict(config).items() if k != "loop"}

    def save(model: nn.Module, directory: Path) -> None:
        model.save_pretrained(directory, safe_serialization=True)
        scheduler.save_pretrained(directory)
        info = {"kind": "sr3", **record, "loop": asdict(config.loop)}
        (Path(directory) / SR3_INFO).write_text(json.dumps(info, indent=2))

    result = train_loop.run(
        unet,
        lambda step, gen: sampler.batch(config.batch_size, gen),
        sr3_loss(scheduler, operators),
        save,
        output,
        config.loop,
        settings=record,
        resume=resume,
        progress=progress,
        desc="sr3",
    )
    return result.model


def load_sr3(directory: str | Path) -> tuple[UNet2DModel, SchedulerMixin, dict[str, Any]]:
    """``(unet, scheduler, info)`` of an SR3 directory."""
    unet, scheduler, _ = load_prior(directory)
    info_file = Path(directory) / SR3_INFO
    if not info_file.is_file():
        raise FileNotFoundError(f"{directory}: not an SR3 model (no {SR3_INFO})")
    return unet, scheduler, json.loads(info_file.read_text())


@torch.no_grad()
def sr3_sample(
    y: torch.Tensor,
    operator: nn.Module,
    unet: nn.Module,
    scheduler: SchedulerMixin | None = None,
    *,
    steps: int = 100,
    kind: str = "ddim",
    seed: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """Reconstruct ``(B, *operator.image_shape)`` from ``y`` by sampling SR3 conditioned on
    ``A†y`` (DDIM deterministic with η = 0, or DDPM ancestral)."""
    y = operator.check_measurement(y, "y")
    cond = operator.A_pinv(y)
    sched = make_scheduler(kind, scheduler or default_scheduler(), steps)
    gen = torch.Generator(device=y.device).manual_seed(int(seed))
    x = torch.randn(cond.shape, generator=gen, device=y.device, dtype=cond.dtype)
    unet_dtype = next(unet.parameters()).dtype
    for t in tqdm(sched.timesteps, disable=not progress, desc=f"SR3 {kind}"):
        inp = torch.cat([x, cond], 1).to(unet_dtype)
        eps = unet(inp, timestep(t, x.shape[0], x.device)).sample.to(x.dtype)
        kwargs = {"eta": 0.0} if kind == "ddim" else {}
        x = sched.step(eps, t, x, generator=gen, **kwargs).prev_sample
    return x
