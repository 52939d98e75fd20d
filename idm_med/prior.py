r"""Diffusion priors: DDPM ε-prediction pretraining of a diffusers UNet.

A prior is the noise estimator ``ε_θ(x_t, t)`` that DDNM samples with and that IDM is
fine-tuned from. It is trained with the DDPM objective

.. math::

    \min_\theta\ \mathbb E_{x_0, t, \varepsilon}\,
    \| \varepsilon - \varepsilon_\theta(\sqrt{\bar\alpha_t}\,x_0
        + \sqrt{1-\bar\alpha_t}\,\varepsilon,\ t) \|^2

on the noise schedule of diffusers' ``DDPMScheduler`` (1000 steps, linear β from 1e-4 to
0.02, the schedule of DDPM and DDNM), on random patches of the corpus' training images
(:mod:`idm_med.datasets.corpus`: natural, MRI and CT together), augmented with rescaling,
flips, 90° rotations and intensity scaling.

**Data range.** Images are in ``[0, 1]`` (1 channel) — the range every idm-med pipeline
hands to a method — so DDNM and IDM use the prior without an affine change of variables
(which would not commute with the operators). The 2-channel MRI variant learns complex
images ``m·e^{iφ}`` with ``|m| ≤ 1`` and a random smooth phase, as (real, imaginary).

**Backbones.** ``backbone="small"`` (the default) trains a ``UNet2DModel`` with the layout
of IDM's small backbone; ``backbone="sd"`` trains a ``UNet2DConditionModel`` with the
layout of IDM's SD backbone (:func:`idm_med.backbone_layout.sd_layout_config`: SD v1.5
trimmed to two resolutions, no mid block), with its time embedding, so that an SD-layout
prior can be made without Stable Diffusion weights. It is trained *unconditionally*, and
run as IDM runs its SD backbone (:func:`idm_med.sampling.unet_eps`): images are
pixel-unshuffled by 2 (1 channel → 4 UNet channels) and the cross-attention always gets
the same *null context*, zeros of shape ``(B, 1, cross_attention_dim)``. With a single
context token every cross-attention outputs a constant (its ``to_out`` bias), which
:func:`idm_med.training.idm_from_prior` folds into the self-attention's output bias when
IDM (which has no cross-attention) is built from the prior.

A prior directory is a plain diffusers model directory (``config.json`` +
``diffusion_pytorch_model.safetensors``, loadable by ``UNet2DModel.from_pretrained``, or
``UNet2DConditionModel.from_pretrained`` for an SD-layout prior) plus
``scheduler_config.json`` (``DDPMScheduler.from_pretrained``) and ``prior.json`` (data range,
channels, backbone, training record).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel
from torch import nn

from . import train_loop
from .backbones import sd_layout_config, small_unet_config
from .patches import PatchSampler, corpus_sampler
from .sampling import SD_UNSHUFFLE, is_sd_prior, unet_eps

logger = logging.getLogger(__name__)

PRIOR_INFO = "prior.json"
BACKBONES = ("small", "sd")
#: The diffusers class of each backbone (the ``_class_name`` of a prior's config.json).
PRIOR_CLASSES = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}


def prior_unet_config(image_channels: int = 1, **overrides: Any) -> dict[str, Any]:
    """``UNet2DModel`` kwargs of a prior with the layout of IDM's small backbone (so its
    weights load into :func:`idm_med.backbones.small_unet_config` by name)."""
    cfg = {**small_unet_config()["unet"], **overrides}
    cfg.update(in_channels=image_channels, out_channels=image_channels)
    return cfg


def sd_prior_unet_config(image_channels: int = 1, **overrides: Any) -> dict[str, Any]:
    """``UNet2DConditionModel`` kwargs of an SD-layout prior: the trimmed SD layout of
    IDM's SD backbone (no mid block; ``overrides`` as for :func:`sd_layout_config`), with
    ``image_channels·4`` input/output channels for the 2×2 pixel-unshuffled images, so
    its weights load into the backbone by name."""
    cfg = dict(sd_layout_config(**overrides)["unet"])
    unet_channels = image_channels * SD_UNSHUFFLE**2
    cfg.update(in_channels=unet_channels, out_channels=unet_channels)
    return cfg


#: The layout keys of a prior's UNet2DModel config (what IDM's small backbone and SR3 copy).
LAYOUT_KEYS = (
    "block_out_channels",
    "down_block_types",
    "up_block_types",
    "layers_per_block",
    "attention_head_dim",
    "norm_num_groups",
    "norm_eps",
    "act_fn",
)


def layout_of(unet: UNet2DModel) -> dict[str, Any]:
    """The layout part of a small prior's config (widths, block types, norms)."""
    if is_sd_prior(unet):
        raise ValueError(
            "an SD-layout prior (UNet2DConditionModel) has no UNet2DModel layout: SR3 and "
            "IDM's small backbone start from a small prior (idm-med pretrain --backbone small)"
        )
    return {k: unet.config[k] for k in LAYOUT_KEYS if k in unet.config}


def default_scheduler() -> DDPMScheduler:
    """DDPM's schedule: 1000 steps, linear β 1e-4 → 0.02, ε-prediction."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type="epsilon",
        clip_sample=False,
    )


# -- saving / loading ------------------------------------------------------------------------
def save_prior(
    unet: UNet2DModel | UNet2DConditionModel, directory: str | Path, info: dict[str, Any]
) -> None:
    """Write a prior directory (diffusers UNet + scheduler config + ``prior.json``)."""
    directory = Path(directory)
    unet.save_pretrained(directory, safe_serialization=True)
    default_scheduler().save_pretrained(directory)
    (directory / PRIOR_INFO).write_text(json.dumps(info, indent=2))


def load_prior(
    directory: str | Path, torch_dtype: torch.dtype | None = None
) -> tuple[UNet2DModel | UNet2DConditionModel, DDPMScheduler, dict[str, Any]]:
    """``(unet, scheduler, info)`` of a prior directory (or of any local diffusers
    ``UNet2DModel`` / ``UNet2DConditionModel`` directory: the scheduler then defaults to
    DDPM's, info to ``{}``). The class is the one config.json's ``_class_name`` names
    (``UNet2DModel`` when it names none)."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory}: not a diffusers model directory (no config.json)")
    name = json.loads((directory / "config.json").read_text()).get("_class_name", "UNet2DModel")
    if name not in PRIOR_CLASSES:
        raise ValueError(
            f"{directory}: a prior is a UNet2DModel or UNet2DConditionModel, "
            f"config.json names {name!r}"
        )
    unet = PRIOR_CLASSES[name].from_pretrained(directory, torch_dtype=torch_dtype).eval()
    if (directory / "scheduler_config.json").is_file():
        scheduler = DDPMScheduler.from_pretrained(directory)
    else:
        scheduler = default_scheduler()
    info_file = directory / PRIOR_INFO
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    return unet, scheduler, info


# -- training ------------------------------------------------------------------------------
@dataclass
class PretrainConfig:
    """A prior's pretraining run (saved in ``prior.json``)."""

    image_channels: int = 1
    backbone: str = "small"  # "small" (UNet2DModel) or "sd" (UNet2DConditionModel)
    patch_size: int = 64
    batch_size: int = 16
    modalities: dict[str, float] = field(
        default_factory=lambda: {"natural": 0.4, "mri": 0.4, "ct": 0.2}
    )
    # overrides of prior_unet_config / sd_prior_unet_config (the chosen backbone's layout)
    unet: dict[str, Any] = field(default_factory=dict)
    init: str | None = None  # a prior directory to start from (e.g. 1-channel → 2-channel)
    loop: train_loop.LoopConfig = field(default_factory=train_loop.LoopConfig)


def _init_from(unet: UNet2DModel, directory: str) -> None:
    """Start from another prior; conv_in / conv_out adapted when the channels differ
    (1 → 2: the magnitude filters are shared by the real and imaginary parts)."""
    from .backbones import _adapt_channels

    src, _, _ = load_prior(directory)
    if type(src) is not type(unet):
        raise ValueError(
            f"{directory}: a {type(src).__name__} prior cannot start a {type(unet).__name__} "
            "one (pretrain --init needs a prior of the same --backbone)"
        )
    target = unet.state_dict()
    state = {}
    for key, value in src.state_dict().items():
        if key == "conv_in.weight":
            value = _adapt_channels(value, 1, target[key].shape[1])
        elif key.startswith("conv_out."):
            value = _adapt_channels(value, 0, target[key].shape[0])
        if value is not None and key in target and value.shape == target[key].shape:
            state[key] = value
    missing = unet.load_state_dict(state, strict=False).missing_keys
    logger.info("initialised from %s (%d tensors; missing %s)", directory, len(state), missing)


def ddpm_loss(scheduler: DDPMScheduler) -> Any:
    """The DDPM ε-prediction loss ``loss_fn(unet, x0, generator)`` on ``scheduler`` (an
    SD-layout prior is called with the null context, :func:`idm_med.sampling.unet_eps`)."""

    def loss_fn(unet: nn.Module, x0: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=gen)
        dev = next(unet.parameters()).device
        x0, noise, t = x0.to(dev), noise.to(dev), t.to(dev)
        pred = unet_eps(unet, scheduler.add_noise(x0, noise, t), t)
        return F.mse_loss(pred.float(), noise)

    return loss_fn


def make_prior_unet(config: PretrainConfig) -> UNet2DModel | UNet2DConditionModel:
    """The freshly initialised UNet of ``config.backbone``."""
    if config.backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {config.backbone!r}")
    if config.backbone == "small":
        return UNet2DModel(**prior_unet_config(config.image_channels, **config.unet))
    unet = UNet2DConditionModel(**sd_prior_unet_config(config.image_channels, **config.unet))
    multiple = SD_UNSHUFFLE * 2 ** (len(unet.down_blocks) - 1)
    if config.patch_size % multiple:
        raise ValueError(f"patch_size must be a multiple of {multiple}, got {config.patch_size}")
    return unet


def pretrain(
    config: PretrainConfig,
    output: str | Path,
    sampler: PatchSampler | None = None,
    resume: bool = False,
    progress: bool = True,
) -> UNet2DModel | UNet2DConditionModel:
    """Pretrain a prior and write it to ``output`` (checkpoints in ``output/checkpoint``)."""
    output = Path(output)
    sampler = sampler or corpus_sampler(config.patch_size, config.image_channels, config.modalities)
    torch.manual_seed(config.loop.seed)
    unet = make_prior_unet(config)
    if config.init and not resume:
        _init_from(unet, config.init)
    scheduler = default_scheduler()
    record = {k: v for k, v in asdict(config).items() if k != "loop"}
    if config.backbone == "small":  # the default: left out so older runs still resume
        del record["backbone"]

    def save(model: nn.Module, directory: Path) -> None:
        info = {
            "kind": "prior",
            "image_channels": config.image_channels,
            "data_range": [0.0, 1.0] if config.image_channels == 1 else "complex, |x| <= 1",
            "pretraining": {**record, "loop": asdict(config.loop)},
        }
        if config.backbone == "sd":
            info.update(backbone="sd", pixel_unshuffle=SD_UNSHUFFLE, context="zeros (B, 1, D)")
        log = output / "log.csv"
        if log.is_file():
            rows = log.read_text().strip().splitlines()[1:]
            if rows:
                last = rows[-1].split(",")
                tail = [float(r.split(",")[1]) for r in rows[-200:]]
                info["record"] = {
                    "steps": int(last[0]),
                    "seconds": float(last[3]),
                    "final_loss_mean_200": float(np.mean(tail)),
                }
        save_prior(model, directory, info)

    def make_batch(step: int, gen: torch.Generator) -> torch.Tensor:
        return sampler.batch(config.batch_size, gen)

    result = train_loop.run(
        unet,
        make_batch,
        ddpm_loss(scheduler),
        save,
        output,
        config.loop,
        settings=record,
        resume=resume,
        progress=progress,
        desc="pretrain",
    )
    return result.model
