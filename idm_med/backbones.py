"""IDM's noise estimator: a diffusers UNet without a timestep, traversed by hand.

IDM's noise estimator maps an image batch ``(B, c_img, H, W)`` to a noise estimate ``ε`` of
the same shape and receives **no timestep** (the noise level lives only in the learned
schedule ᾱ). It is built from diffusers' own blocks (resnets, attentions, down/upsamplers
are diffusers modules; only the traversal is ours) in one of two layouts,
:func:`sd_layout_config` (the paper's trimmed SD v1.5 UNet) or :func:`small_unet_config`
(a small CPU UNet); :mod:`idm_med.backbone_layout` describes both, how the time/text
conditioning is removed and where the injectors sit. :func:`idm_med.sd_unet.load_sd_unet`
fills the SD layout from a local Stable Diffusion checkpoint.

Our traversal (``conv_in → down blocks (collecting skips) → up blocks → conv_out``) lets
:mod:`idm_med.injectors` hook in, and implements IDM's level-2 invertibility: with
``invertible_blocks=True`` each layer's run of same-shape modules (a resnet whose input and
output channels agree, injector, attention, injector) forms one coupling group
(:class:`idm_med.reversible.ReversibleBlockGroup`); in ``level2_mode="reversible"`` those groups
run reversibly and shape-changing parts (resnets that change channels, down/upsamplers) under
``torch.utils.checkpoint``. Groups end at every skip connection, so skip tensors are the group
outputs and stay in memory.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from diffusers.models.resnet import ResnetBlock2D
from torch import nn
from torch.utils.checkpoint import checkpoint

from .backbone_layout import (
    Layer,
    jsonable,
    plan_block,
    sd_layout_config,
    small_unet_config,
    strip_conditioning,
)
from .channel_adapters import adapt_channels as _adapt_channels  # noqa: F401 (old name)
from .injectors import InjectionSite, InjectorContext
from .reversible import ReversibleBlockGroup
from .windowed_attention import set_attention_window

__all__ = ["LEVEL2_MODES", "NoiseEstimator", "sd_layout_config", "small_unet_config"]

logger = logging.getLogger(__name__)

LEVEL2_MODES = ("autograd", "reversible")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad ``(B, C, H, W)`` at the bottom/right so ``H`` and ``W`` are multiples of
    ``multiple`` (a UNet downsamples), so any image size can go through a backbone."""
    pad_h, pad_w = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


def crop_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Crop ``x`` to the spatial size of ``like`` (the inverse of :func:`pad_to_multiple`)."""
    return x[..., : like.shape[-2], : like.shape[-1]]


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
        self.config = {"kind": kind, "unet": jsonable(unet_kwargs)}
        cls = UNet2DConditionModel if kind == "sd" else UNet2DModel
        unet = cls(**unet_kwargs)
        strip_conditioning(unet)

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
        s, n = self.unshuffle, len(self.up_blocks)
        #: image size / feature size of each down and up block
        self._factors = [s * 2**level for level in range(n)] + [
            s * 2 ** (n - 1 - i) for i in range(n)
        ]
        self._down = [
            plan_block(b, self._factors[level], False, self._add_site)
            for level, b in enumerate(self.down_blocks)
        ]
        self._up = [
            plan_block(b, self._factors[n + i], True, self._add_site)
            for i, b in enumerate(self.up_blocks)
        ]
        self.groups = nn.ModuleList()
        if invertible_blocks:
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
    def _add_site(self, channels: int, factor: int) -> int:
        if channels % (factor * factor):
            raise ValueError(
                f"feature channels {channels} at factor {factor} are not divisible by "
                f"{factor}²: injectors need C/r² channels at full resolution"
            )
        self.sites.append(InjectionSite(channels, factor))
        return len(self.sites) - 1

    def _layers(self) -> list[Layer]:
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
        layer: Layer,
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

    def set_attention_window(self, pixels: int | None) -> None:
        """Attend within windows of ``pixels`` image pixels (each attention layer's token
        window is ``ceil(pixels / its downsampling factor)``), or globally for ``None``;
        see :mod:`idm_med.windowed_attention` (plain ``Attention`` layers only)."""
        if pixels is not None and (isinstance(pixels, bool) or int(pixels) != pixels or pixels < 1):
            raise ValueError(f"attention window must be a positive integer or None, got {pixels!r}")
        for plan, factor in zip(self._down + self._up, self._factors, strict=True):
            for layer in plan.layers:
                if layer.attention is not None and not layer.transformer:
                    window = None if pixels is None else math.ceil(pixels / factor)
                    set_attention_window(layer.attention, window)

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
