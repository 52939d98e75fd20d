"""The two noise-estimator layouts of IDM and how a diffusers UNet is planned for them.

IDM's noise estimator (:class:`idm_med.backbones.NoiseEstimator`) maps ``(B, c_img, H, W)``
to a noise estimate of the same shape and receives **no timestep**. Two layouts, both
diffusers configs:

* :func:`sd_layout_config` – the paper's backbone: Stable Diffusion v1.5's
  ``UNet2DConditionModel`` trimmed to its first two resolutions (320 and 640 channels,
  down blocks 0–1, the matching up blocks, conv_in / conv_norm_out / conv_out), with no
  time embedding, no mid block and no text cross-attention. Images are pixel-unshuffled by
  2 (1 channel → SD's 4 input channels, 2 channels → 8) and the output shuffled back.
* :func:`small_unet_config` – a small ``UNet2DModel`` (32, 64, 64 channels, attention at the
  lowest resolution) for CPU, run at full resolution.

How the time/text conditioning is removed (identically for both layouts,
:func:`strip_conditioning`):

* ``time_proj`` / ``time_embedding`` are not kept and every ``ResnetBlock2D.time_emb_proj``
  is set to ``None``; diffusers' resnet then skips the ``+ temb`` term and runs with
  ``temb=None`` (only ``resnet_time_scale_shift="default"`` allows that).
* In every ``BasicTransformerBlock`` the cross-attention ``attn2`` and its ``norm2`` are set
  to ``None``; diffusers skips that branch, leaving self-attention (``attn1``) and the
  feed-forward. The transformers are called with ``encoder_hidden_states=None``.
* The mid block is dropped (configs use ``mid_block_type=None``).

:func:`plan_block` lists each block's layers with their injection sites and level-2
coupling groups. Injector placement: one injector before and one after every attention; in
blocks without attention (the small UNet's high-resolution blocks) one injector after the
block's resnet group (after its last resnet, before the down/upsampler).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

# Stable Diffusion v1.5 UNet (diffusers config) restricted to its first two resolutions.
_SD15_TRIMMED: dict[str, Any] = dict(
    sample_size=None,
    block_out_channels=(320, 640),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    mid_block_type=None,
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
    norm_num_groups=32,
    norm_eps=1e-5,
    downsample_padding=1,
    act_fn="silu",
)

_SMALL: dict[str, Any] = dict(
    sample_size=None,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    mid_block_type=None,
    layers_per_block=1,
    attention_head_dim=8,
    norm_num_groups=8,
    norm_eps=1e-5,
    act_fn="silu",
)


def sd_layout_config(**overrides: Any) -> dict[str, Any]:
    """Backbone config of the paper's trimmed SD v1.5 UNet (``overrides`` go to diffusers).

    At full size: 111,150,404 parameters for 1-channel images (111,173,448 for 2 channels),
    plus 43 level-2 coupling scalars with ``invertible_blocks=True``.

    Tests use e.g. ``sd_layout_config(block_out_channels=(32, 64), norm_num_groups=8)``.
    """
    return {"kind": "sd", "unet": {**_SD15_TRIMMED, **overrides}}


def small_unet_config(**overrides: Any) -> dict[str, Any]:
    """Backbone config of the small CPU ``UNet2DModel`` (``overrides`` go to diffusers).

    Default: channels (32, 64, 64), one resnet per down block (two per up block), attention
    (8-channel heads) only at the lowest resolution (1/4), no mid block, GroupNorm with 8
    groups: 848,641 parameters for 1-channel images (849,218 for 2 channels), plus 22
    level-2 coupling scalars with ``invertible_blocks=True``.
    """
    return {"kind": "small", "unet": {**_SMALL, **overrides}}


def jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


@dataclass
class Layer:
    """One (resnet, attention?) layer of a block, with its injection sites and group."""

    resnet: ResnetBlock2D
    attention: nn.Module | None
    transformer: bool  # Transformer2DModel (SD) vs plain diffusers Attention (UNet2DModel)
    site_pre: int | None = None  # injector before the attention
    site_post: int | None = None  # injector after the attention / after the resnet group
    same_shape: bool = False  # resnet input channels == output channels (can be coupled)
    group: int | None = None  # index into NoiseEstimator.groups
    n_coupled: int = 0  # modules in the coupling group


@dataclass
class Block:
    """The planned layers of one down/up block and its down/upsampler (if any)."""

    layers: list[Layer] = field(default_factory=list)
    sampler: nn.Module | None = None


def strip_conditioning(module: nn.Module) -> None:
    """Remove time embeddings and text cross-attention from diffusers blocks in place."""
    for m in module.modules():
        if isinstance(m, ResnetBlock2D):
            if m.time_embedding_norm != "default":
                raise ValueError(
                    "resnets need resnet_time_scale_shift='default' to run without a timestep, "
                    f"got {m.time_embedding_norm!r}"
                )
            m.time_emb_proj = None
        elif isinstance(m, BasicTransformerBlock):
            # attn2 is text cross-attention (keys/values from the 768-d text embedding).
            m.attn2 = None
            m.norm2 = None
            m.only_cross_attention = False


def plan_block(
    block: nn.Module, factor: int, up: bool, add_site: Callable[[int, int], int]
) -> Block:
    """The layers of one diffusers down/up ``block`` whose features are ``factor`` times
    smaller than the image; ``add_site(channels, factor)`` registers an injection site and
    returns its index."""
    resnets = list(block.resnets)
    attentions = list(getattr(block, "attentions", None) or [None] * len(resnets))
    plan = Block()
    for i, (resnet, attn) in enumerate(zip(resnets, attentions, strict=True)):
        layer = Layer(
            resnet=resnet,
            attention=attn,
            transformer=attn is not None and hasattr(attn, "transformer_blocks"),
            # Up-block resnets take [h, skip] concatenated, so they always change shape.
            same_shape=not up and resnet.in_channels == resnet.out_channels,
        )
        channels = resnet.out_channels
        if attn is not None:
            layer.site_pre = add_site(channels, factor)
            layer.site_post = add_site(channels, factor)
        elif i == len(resnets) - 1:
            layer.site_post = add_site(channels, factor)
        layer.n_coupled = (
            int(layer.same_shape)
            + int(attn is not None)
            + int(layer.site_pre is not None)
            + int(layer.site_post is not None)
        )
        plan.layers.append(layer)
    samplers = getattr(block, "downsamplers" if not up else "upsamplers", None)
    if samplers is not None:
        if len(samplers) != 1 or not isinstance(samplers[0], Downsample2D | Upsample2D):
            raise ValueError("only conv Downsample2D/Upsample2D samplers are supported")
        plan.sampler = samplers[0]
    return plan
