"""Noise estimators for IDM: diffusers UNets without a timestep, traversed by hand.

IDM's noise estimator maps an image batch ``(B, c_img, H, W)`` to a noise estimate ``ε`` of
the same shape and receives **no timestep** (the noise level lives only in the learned
schedule ᾱ). Two layouts are provided, both built from diffusers' own blocks (resnets,
attentions, down/upsamplers are diffusers modules; only the traversal is ours):

* :func:`sd_layout_config` – the paper's backbone: Stable Diffusion v1.5's
  ``UNet2DConditionModel`` trimmed to its first two resolutions (320 and 640 channels,
  down blocks 0–1, the matching up blocks, conv_in / conv_norm_out / conv_out), with no
  time embedding, no mid block and no text cross-attention. Images are pixel-unshuffled by
  2 (1 channel → SD's 4 input channels, 2 channels → 8) and the output shuffled back.
* :func:`small_unet_config` – a small ``UNet2DModel`` (32, 64, 64 channels, attention at the
  lowest resolution) for CPU, run at full resolution.

How the time/text conditioning is removed (identically for both layouts):

* ``time_proj`` / ``time_embedding`` are not kept and every ``ResnetBlock2D.time_emb_proj``
  is set to ``None``; diffusers' resnet then skips the ``+ temb`` term and runs with
  ``temb=None`` (only ``resnet_time_scale_shift="default"`` allows that).
* In every ``BasicTransformerBlock`` the cross-attention ``attn2`` and its ``norm2`` are set
  to ``None``; diffusers skips that branch, leaving self-attention (``attn1``) and the
  feed-forward. The transformers are called with ``encoder_hidden_states=None``.
* The mid block is dropped (configs use ``mid_block_type=None``).

Our traversal (``conv_in → down blocks (collecting skips) → up blocks → conv_out``) lets
:mod:`idm_med.injectors` hook in, and implements IDM's level-2 invertibility: with
``invertible_blocks=True`` each layer's run of same-shape modules (a resnet whose input and
output channels agree, injector, attention, injector) forms one coupling group
(:class:`idm_med.reversible.ReversibleBlockGroup`); in ``level2_mode="reversible"`` those groups
run reversibly and shape-changing parts (resnets that change channels, down/upsamplers) under
``torch.utils.checkpoint``. Groups end at every skip connection, so skip tensors are the group
outputs and stay in memory.

Injector placement: one injector before and one after every attention; in blocks without
attention (the small UNet's high-resolution blocks) one injector after the block's resnet
group (after its last resnet, before the down/upsampler).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn
from torch.utils.checkpoint import checkpoint

from .injectors import InjectionSite, InjectorContext

logger = logging.getLogger(__name__)

LEVEL2_MODES = ("autograd", "reversible")

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


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


@dataclass
class _Layer:
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
class _Block:
    layers: list[_Layer] = field(default_factory=list)
    sampler: nn.Module | None = None


def _strip_conditioning(module: nn.Module) -> None:
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


class NoiseEstimator(nn.Module):
    """A diffusers UNet run without timestep, with injection sites and level-2 couplings.

    Args:
        config: ``{"kind": "sd" | "small", "unet": <diffusers config kwargs>}`` as returned by
            :func:`sd_layout_config` / :func:`small_unet_config`. ``in_channels`` and
            ``out_channels`` are derived from ``image_channels``.
        image_channels: ``c_img`` (1, or 2 for real/imaginary MRI).
        invertible_blocks: build level-2 coupling groups (changes the function).
        v_min: lower bound of the coupling weights ``v`` of the level-2 groups.

    ``forward(x)`` maps ``(B, c_img, H, W)`` to ``ε`` of the same shape; ``H`` and ``W`` must be
    divisible by :attr:`size_multiple`.
    """

    def __init__(
        self,
        config: dict[str, Any],
        image_channels: int = 1,
        invertible_blocks: bool = False,
        v_min: float = 0.05,
    ) -> None:
        super().__init__()
        kind = config.get("kind")
        if kind not in ("sd", "small"):
            raise ValueError(f"backbone kind must be 'sd' or 'small', got {kind!r}")
        if image_channels < 1:
            raise ValueError(f"image_channels must be >= 1, got {image_channels}")
        self.kind = kind
        self.image_channels = image_channels
        self.invertible_blocks = invertible_blocks
        # SD works on pixel-unshuffled images (its 4 latent channels ↔ 2×2 pixels).
        self.unshuffle = 2 if kind == "sd" else 1
        unet_kwargs = dict(config["unet"])
        unet_kwargs["in_channels"] = unet_kwargs["out_channels"] = (
            image_channels * self.unshuffle**2
        )
        if unet_kwargs.get("mid_block_type") is not None:
            raise ValueError("IDM backbones have no mid block: set mid_block_type=None")
        self.config = {"kind": kind, "unet": _jsonable(unet_kwargs)}
        cls = UNet2DConditionModel if kind == "sd" else UNet2DModel
        unet = cls(**unet_kwargs)
        _strip_conditioning(unet)

        # Keep only what the traversal uses; names match diffusers' state-dict keys.
        self.conv_in = unet.conv_in
        self.down_blocks = unet.down_blocks
        self.up_blocks = unet.up_blocks
        self.conv_norm_out = unet.conv_norm_out
        self.conv_act = unet.conv_act if unet.conv_norm_out is not None else None
        self.conv_out = unet.conv_out
        self.size_multiple = self.unshuffle * 2 ** (len(self.down_blocks) - 1)
        del unet

        self.sites: list[InjectionSite] = []
        self._down = [
            self._plan_block(b, level, up=False) for level, b in enumerate(self.down_blocks)
        ]
        n = len(self.up_blocks)
        self._up = [self._plan_block(b, n - 1 - i, up=True) for i, b in enumerate(self.up_blocks)]

        self.groups = nn.ModuleList()
        if invertible_blocks:
            from .reversible import ReversibleBlockGroup

            for layer in self._layers():
                if layer.n_coupled:
                    layer.group = len(self.groups)
                    # Placeholder callables: the real functions (closures over this step's
                    # injectors) are passed per call, and the modules stay registered where
                    # diffusers put them (so state-dict names match SD checkpoints).
                    self.groups.append(
                        ReversibleBlockGroup([_identity] * layer.n_coupled, v_min=v_min)
                    )

    # -- construction ----------------------------------------------------------------
    def _plan_block(self, block: nn.Module, level: int, up: bool) -> _Block:
        factor = self.unshuffle * 2**level
        resnets = list(block.resnets)
        attentions = list(getattr(block, "attentions", None) or [None] * len(resnets))
        plan = _Block()
        for i, (resnet, attn) in enumerate(zip(resnets, attentions, strict=True)):
            layer = _Layer(
                resnet=resnet,
                attention=attn,
                transformer=attn is not None and hasattr(attn, "transformer_blocks"),
                # Up-block resnets take [h, skip] concatenated, so they always change shape.
                same_shape=not up and resnet.in_channels == resnet.out_channels,
            )
            channels = resnet.out_channels
            if attn is not None:
                layer.site_pre = self._add_site(channels, factor)
                layer.site_post = self._add_site(channels, factor)
            elif i == len(resnets) - 1:
                layer.site_post = self._add_site(channels, factor)
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

    def _add_site(self, channels: int, factor: int) -> int:
        if channels % (factor * factor):
            raise ValueError(
                f"feature channels {channels} at factor {factor} are not divisible by "
                f"{factor}²: injectors need C/r² channels at full resolution"
            )
        self.sites.append(InjectionSite(channels, factor))
        return len(self.sites) - 1

    def _layers(self) -> list[_Layer]:
        return [layer for b in self._down + self._up for layer in b.layers]

    # -- forward ---------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        injectors: Sequence[nn.Module] | None = None,
        ctx: InjectorContext | None = None,
        level2_mode: str = "autograd",
    ) -> torch.Tensor:
        """Noise estimate ``ε(x)``: ``(B, c_img, H, W) -> (B, c_img, H, W)``.

        Args:
            x: image batch.
            injectors: one module per entry of :attr:`sites` (called as
                ``injector(feature, ctx)``), or ``None`` to skip injection (identity).
            ctx: the injectors' measurement context; required with ``injectors``.
            level2_mode: ``"autograd"`` or ``"reversible"`` (memory-saving gradient of the
                level-2 groups + checkpointed shape-changing parts; same values).
        """
        if level2_mode not in LEVEL2_MODES:
            raise ValueError(f"level2_mode must be one of {LEVEL2_MODES}, got {level2_mode!r}")
        if level2_mode == "reversible" and not self.invertible_blocks:
            raise ValueError("level2_mode='reversible' needs invertible_blocks=True")
        if x.dim() != 4 or x.shape[1] != self.image_channels:
            raise ValueError(
                f"x must have shape (B, {self.image_channels}, H, W), got {tuple(x.shape)}"
            )
        m = self.size_multiple
        if x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(
                f"image height and width must be multiples of {m}, got {tuple(x.shape[-2:])}"
            )
        if injectors is not None:
            if len(injectors) != len(self.sites) or ctx is None:
                raise ValueError(
                    f"expected {len(self.sites)} injectors and a context, got "
                    f"{len(injectors)} and {type(ctx).__name__}"
                )
        reversible = level2_mode == "reversible"
        h = self.conv_in(self.to_unet_channels(x))
        skips = [h]
        for plan in self._down:
            for layer in plan.layers:
                h = self._run_layer(layer, h, None, injectors, ctx, reversible)
                skips.append(h)
            if plan.sampler is not None:
                h = self._maybe_checkpoint(plan.sampler, reversible, h)
                skips.append(h)
        for plan in self._up:
            for layer in plan.layers:
                h = self._run_layer(layer, h, skips.pop(), injectors, ctx, reversible)
            if plan.sampler is not None:
                h = self._maybe_checkpoint(plan.sampler, reversible, h)
        if self.conv_norm_out is not None:
            h = self.conv_act(self.conv_norm_out(h))
        return self.from_unet_channels(self.conv_out(h))

    def to_unet_channels(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel-unshuffle adapter: ``(B, c, H, W) -> (B, c·s², H/s, W/s)`` (s = 2 for SD).

        Channel ``k·s² + j`` holds sub-pixel ``j`` (row-major in the s×s cell) of image
        channel ``k``, so a 2-channel image gives [4 real, 4 imaginary] channels.
        """
        return nn.functional.pixel_unshuffle(x, self.unshuffle) if self.unshuffle > 1 else x

    def from_unet_channels(self, h: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_unet_channels` (pixel shuffle)."""
        return nn.functional.pixel_shuffle(h, self.unshuffle) if self.unshuffle > 1 else h

    @staticmethod
    def _maybe_checkpoint(fn: Callable, use: bool, *args: torch.Tensor) -> torch.Tensor:
        if use and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _run_layer(
        self,
        layer: _Layer,
        h: torch.Tensor,
        skip: torch.Tensor | None,
        injectors: Sequence[nn.Module] | None,
        ctx: InjectorContext | None,
        reversible: bool,
    ) -> torch.Tensor:
        fns: list[Callable[[torch.Tensor], torch.Tensor]] = []
        modules: list[nn.Module] = []
        if skip is not None or not layer.same_shape or not self.invertible_blocks:
            # Shape-changing resnet (or no coupling at all): applied outside any group.
            resnet = layer.resnet
            if skip is not None:
                h = self._maybe_checkpoint(_cat_resnet(resnet), reversible, h, skip)
            elif not layer.same_shape:
                h = self._maybe_checkpoint(partial(resnet, temb=None), reversible, h)
            else:
                h = resnet(h, None)
        else:
            fns.append(partial(layer.resnet, temb=None))
            modules.append(layer.resnet)
        for site, attn in (
            (layer.site_pre, None),
            (None, layer.attention),
            (layer.site_post, None),
        ):
            if site is not None:
                if injectors is None:
                    fns.append(_identity)
                else:
                    fns.append(partial(injectors[site], ctx=ctx))
                    modules.append(injectors[site])
            elif attn is not None:
                fns.append(partial(_call_attention, attn, layer.transformer))
                modules.append(attn)
        if layer.group is None:
            for fn in fns:
                h = fn(h)
            return h
        group = self.groups[layer.group]
        params = [p for mod in modules for p in mod.parameters() if p.requires_grad]
        if ctx is not None and ctx.x_pinv.requires_grad:
            params.append(ctx.x_pinv)
        mode = "reversible" if reversible else "autograd"
        # Gradients of leaf parameters go straight into .grad (no full-model copy).
        leaves = all(p.is_leaf for p in params)
        return group(h, mode=mode, functions=fns, extra_params=params, accumulate_grad=leaves)

    # -- introspection ---------------------------------------------------------------
    def num_parameters(self) -> int:
        """Number of parameters (the level-2 couplings' v and m included)."""
        return sum(p.numel() for p in self.parameters())


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _call_attention(attn: nn.Module, transformer: bool, h: torch.Tensor) -> torch.Tensor:
    if transformer:  # Transformer2DModel: self-attention only, no text
        return attn(h, encoder_hidden_states=None, return_dict=False)[0]
    return attn(h)


def _cat_resnet(resnet: ResnetBlock2D) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def run(h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # The concatenation lives inside the (checkpointed) function so it is not stored.
        return resnet(torch.cat([h, skip], dim=1), None)

    return run


# -- pretrained weights ----------------------------------------------------------------
def _read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (directory / name).is_file():
            return load_file(str(directory / name))
    for name in ("diffusion_pytorch_model.bin", "pytorch_model.bin"):
        if (directory / name).is_file():
            return torch.load(directory / name, map_location="cpu", weights_only=True)
    raise FileNotFoundError(
        f"no diffusion_pytorch_model.safetensors / .bin weights found in {directory}"
    )


def _adapt_channels(weight: torch.Tensor, dim: int, target: int) -> torch.Tensor | None:
    """Adapt SD's 4-channel conv_in (dim=1) / conv_out (dim=0) to ``target`` channels.

    For 2-channel (real, imaginary) images the unshuffled input has 8 channels: the 4
    sub-pixels of the real part then the 4 of the imaginary part. conv_in's input filters
    are copied for both parts and halved (an image with equal parts gives the pretrained
    response); conv_out's output filters (and biases) are copied so each part gets the
    pretrained noise estimate.
    """
    have = weight.shape[dim]
    if have == target:
        return weight
    if target % have:
        return None
    reps = target // have
    out = torch.cat([weight] * reps, dim=dim)
    return out / reps if dim == 1 else out


def load_sd_unet(
    path: str | Path,
    image_channels: int = 1,
    invertible_blocks: bool = False,
    **overrides: Any,
) -> tuple[NoiseEstimator, dict[str, list[str]]]:
    """Build the trimmed SD backbone from a local diffusers UNet directory.

    ``path`` holds ``config.json`` and ``diffusion_pytorch_model.safetensors`` of either a full
    SD UNet (any number of resolutions; only down blocks 0–1 and the last two up blocks are
    used) or an already trimmed one. Nothing is downloaded. Weights are loaded where names
    and shapes match (conv_in / conv_out adapted for 2-channel images, see
    :func:`_adapt_channels`).

    Returns:
        ``(estimator, report)`` where ``report`` has the keys ``loaded``, ``dropped``
        (checkpoint tensors not used: time embedding, mid block, deeper blocks, text
        cross-attention), ``mismatched`` (same name, other shape) and ``missing``
        (estimator tensors left at their initialisation).
    """
    directory = Path(path)
    if (directory / "unet" / "config.json").is_file():
        directory = directory / "unet"
    cfg_file = directory / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} not found: expected a diffusers UNet directory")
    src_cfg = json.loads(cfg_file.read_text())
    n_down = len(src_cfg["block_out_channels"])
    n_keep = min(2, n_down)
    unet_cfg = {
        k: src_cfg[k]
        for k in (
            "use_linear_projection",
            "upcast_attention",
            "layers_per_block",
            "attention_head_dim",
            "cross_attention_dim",
            "norm_num_groups",
            "norm_eps",
            "downsample_padding",
            "act_fn",
        )
        if k in src_cfg
    }
    unet_cfg.update(
        block_out_channels=tuple(src_cfg["block_out_channels"][:n_keep]),
        down_block_types=tuple(src_cfg["down_block_types"][:n_keep]),
        up_block_types=tuple(src_cfg["up_block_types"][n_down - n_keep :]),
        **overrides,
    )
    model = NoiseEstimator(sd_layout_config(**unet_cfg), image_channels, invertible_blocks)

    source = _read_state_dict(directory)
    target = model.state_dict()
    renamed: dict[str, torch.Tensor] = {}
    report: dict[str, list[str]] = {"loaded": [], "dropped": [], "mismatched": [], "missing": []}
    for key, value in source.items():
        parts = key.split(".")
        new = key
        if parts[0] == "up_blocks":
            idx = int(parts[1]) - (n_down - n_keep)
            new = ".".join(["up_blocks", str(idx), *parts[2:]]) if idx >= 0 else ""
        if not new or new not in target:
            report["dropped"].append(key)
            continue
        if key.startswith("conv_in.weight"):
            value = _adapt_channels(value, 1, target[new].shape[1])
        elif key.startswith("conv_out."):
            value = _adapt_channels(value, 0, target[new].shape[0])
        if value is None or value.shape != target[new].shape:
            report["mismatched"].append(key)
            continue
        renamed[new] = value
        report["loaded"].append(new)
    report["missing"] = [k for k in target if k not in renamed]
    model.load_state_dict(renamed, strict=False)
    logger.info(
        "loaded %d tensors from %s; dropped %d, mismatched %d, missing %d",
        len(report["loaded"]),
        directory,
        len(report["dropped"]),
        len(report["mismatched"]),
        len(report["missing"]),
    )
    if report["mismatched"]:
        logger.warning("shape mismatches (left at init): %s", report["mismatched"])
    return model, report
