"""IDM's SD-layout noise estimator from a local Stable Diffusion UNet directory.

A full SD UNet (any number of resolutions) is trimmed to its first two: down blocks 0–1,
the last two up blocks, conv_in / conv_norm_out / conv_out; time embedding, mid block and
text cross-attention are dropped (:mod:`idm_med.backbone_layout`). Nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from .backbone_layout import sd_layout_config
from .backbones import NoiseEstimator
from .channel_adapters import adapt_channels

logger = logging.getLogger(__name__)

# Keys of an SD UNet config that carry over to the trimmed layout unchanged.
_KEPT_KEYS = (
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


def trimmed_unet_config(source: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """The diffusers kwargs of the trimmed layout for an SD UNet ``config.json``."""
    n_down = len(source["block_out_channels"])
    n_keep = min(2, n_down)
    unet_cfg = {k: source[k] for k in _KEPT_KEYS if k in source}
    unet_cfg.update(
        block_out_channels=tuple(source["block_out_channels"][:n_keep]),
        down_block_types=tuple(source["down_block_types"][:n_keep]),
        up_block_types=tuple(source["up_block_types"][n_down - n_keep :]),
        **overrides,
    )
    return unet_cfg


def _match_state_dict(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], n_dropped_up: int
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Source tensors renamed to the trimmed layout (up blocks shifted by ``n_dropped_up``)
    and channel-adapted, with the load report (see :func:`load_sd_unet`)."""
    renamed: dict[str, torch.Tensor] = {}
    report: dict[str, list[str]] = {"loaded": [], "dropped": [], "mismatched": [], "missing": []}
    for key, value in source.items():
        parts = key.split(".")
        new = key
        if parts[0] == "up_blocks":
            idx = int(parts[1]) - n_dropped_up
            new = ".".join(["up_blocks", str(idx), *parts[2:]]) if idx >= 0 else ""
        if not new or new not in target:
            report["dropped"].append(key)
            continue
        if key.startswith("conv_in.weight"):
            value = adapt_channels(value, 1, target[new].shape[1])
        elif key.startswith("conv_out."):
            value = adapt_channels(value, 0, target[new].shape[0])
        if value is None or value.shape != target[new].shape:
            report["mismatched"].append(key)
            continue
        renamed[new] = value
        report["loaded"].append(new)
    report["missing"] = [k for k in target if k not in renamed]
    return renamed, report


def load_sd_unet(
    path: str | Path,
    image_channels: int = 1,
    invertible_blocks: bool = False,
    **overrides: Any,
) -> tuple[NoiseEstimator, dict[str, list[str]]]:
    """Build the trimmed SD backbone from a local diffusers UNet directory.

    ``path`` holds ``config.json`` and ``diffusion_pytorch_model.safetensors`` of either a full
    SD UNet (any number of resolutions; only down blocks 0–1 and the last two up blocks are
    used) or an already trimmed one (or a pipeline directory with a ``unet/`` folder).
    Weights are loaded where names and shapes match (conv_in / conv_out adapted for
    2-channel images, see :func:`idm_med.channel_adapters.adapt_channels`).

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
    unet_cfg = trimmed_unet_config(src_cfg, **overrides)
    model = NoiseEstimator(sd_layout_config(**unet_cfg), image_channels, invertible_blocks)
    n_down = len(src_cfg["block_out_channels"])
    n_dropped_up = n_down - min(2, n_down)
    renamed, report = _match_state_dict(
        _read_state_dict(directory), model.state_dict(), n_dropped_up
    )
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
