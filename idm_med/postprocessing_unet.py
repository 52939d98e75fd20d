"""A supervised U-Net that post-processes ``A†y``: the "train a CS network from scratch"
baseline that the IDM paper argues against.

.. math:: \\hat x = A^\\dagger y + f_\\theta(A^\\dagger y)

``f_θ`` is the same time-free UNet as IDM's noise estimator (:class:`NoiseEstimator`,
without injectors or level-2 couplings), trained end to end from a random initialisation
with IDM's loss, data and budget (``TrainingConfig(architecture="postprocessing_unet")``).
There is no data-consistency step: this is the plain residual post-processing network of
the deep-learning reconstruction literature. Saved and loaded like IDM
(``save_pretrained`` / ``from_pretrained`` with the stored operator).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.utils.checkpoint import checkpoint

from .backbones import NoiseEstimator, crop_like, pad_to_multiple, small_unet_config
from .model import full_precision
from .model_io import StoredOperatorMixin

MEMORY_MODES = ("autograd", "checkpoint")
__all__ = ["MEMORY_MODES", "PostProcessingUNet"]


class PostProcessingUNet(StoredOperatorMixin, ModelMixin, ConfigMixin):
    """``PostProcessingUNet(...)(y, operator) -> x̂`` of shape ``(B, C, H, W)``.

    Args:
        backbone: UNet config (:func:`idm_med.backbones.small_unet_config`, the default, or
            :func:`~idm_med.backbones.sd_layout_config`).
        image_channels: ``c_img`` (1, or 2 for complex MRI as real/imaginary).
        operator: optional operator config stored with checkpoints, used when ``forward``
            gets no operator (as :class:`idm_med.model.IDM`).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        backbone: dict[str, Any] | None = None,
        image_channels: int = 1,
        operator: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.image_channels = int(image_channels)
        self.unet = NoiseEstimator(backbone or small_unet_config(), self.image_channels)
        self._operator_cache: nn.Module | None = None
        self._operator_state: dict[str, torch.Tensor] | None = None
        self.memory_mode = "autograd"

    def set_memory_mode(self, mode: str) -> PostProcessingUNet:
        """``"autograd"`` or ``"checkpoint"`` (recompute the UNet in the backward)."""
        if mode not in MEMORY_MODES:
            raise ValueError(
                f"memory mode must be one of {MEMORY_MODES} for the post-processing U-Net, "
                f"got {mode!r}"
            )
        self.memory_mode = mode
        return self

    def forward(self, y: torch.Tensor, operator: nn.Module | None = None) -> torch.Tensor:
        """Reconstruct ``x̂`` ``(B, *operator.image_shape)`` from ``y``."""
        operator = self.stored_operator() if operator is None else operator
        operator.check_measurement(y, "y")
        with full_precision(y):  # as IDM's data consistency: a dense A† would run in bf16
            x_pinv = operator.A_pinv(y)
        padded = pad_to_multiple(x_pinv, self.unet.size_multiple)
        if self.memory_mode == "checkpoint" and torch.is_grad_enabled():
            residual = checkpoint(self.unet, padded, use_reentrant=False)
        else:
            residual = self.unet(padded)
        return x_pinv + crop_like(residual, x_pinv)
