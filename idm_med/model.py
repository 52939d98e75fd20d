r"""The IDM network: T unrolled DDNM steps with a shared noise estimator, made invertible.

Step :math:`F_t` (:math:`t = T, \dots, 1`), deterministic DDIM with the range–null-space
projection of DDNM, on images ``(B, c_img, H, W)``:

.. math::

    \varepsilon &= \mathrm{UNet}(\hat x_t)\quad\text{(injectors of step t fed with } A^\dagger y,
        A^\dagger A)\\
    x_0 &= (\hat x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon) / \sqrt{\bar\alpha_t}\\
    \bar x_0 &= x_0 - A^\dagger(A x_0 - y)\\
    F_t(\hat x_t) &= \sqrt{\bar\alpha_{t-1}}\,\bar x_0 + \sqrt{1-\bar\alpha_{t-1}}\,\varepsilon

with a learnable schedule :math:`\alpha_t \in (0, 1)` (sigmoid-parameterised, init 0.5),
:math:`\bar\alpha_t = \prod_{s \le t} \alpha_s`, :math:`\bar\alpha_0 = 1`, started from
:math:`\hat x_T = \sqrt{\bar\alpha_T}\,A^\dagger y`.

Level-1 coupling (``coupling=True``): :math:`\hat x_{t-1} = (1-v_t) F_t(\hat x_t) + v_t h_t`,
:math:`h_{t-1} = \hat x_t`, :math:`h_T = w_T \hat x_T`, output
:math:`\hat x = \hat x_0 + w_0 h_0` (:math:`v_t \in [v_{min}, 1-v_{min}]` init 0.5,
:math:`w_T = 1`, :math:`w_0 = 0` at init). ``coupling=False`` is the plain unrolled DDNM
sampler :math:`\hat x = F_1 \circ \dots \circ F_T(\hat x_T)`.

Memory modes (:meth:`IDM.set_memory_mode`) only change how gradients are computed; outputs
are identical:

===============  ===========================================================================
``autograd``     plain autograd, stores every activation
``checkpoint``   each step under ``torch.utils.checkpoint`` (stores the T step inputs)
``level1``       reversible across steps (:func:`idm_med.reversible.coupled_sequence`)
``level1+2``     level 1 plus reversible level-2 groups inside the UNet and checkpointed
                 shape-changing modules (needs ``invertible_blocks=True``)
===============  ===========================================================================

Backbone precision (:meth:`IDM.set_backbone_precision`): ``"bf16"`` runs the noise estimator
under bfloat16 autocast (about 1.6x faster on CPUs with AVX-512 BF16 / AMX) while the
operator (``A†y``, the projections and the injectors' ``A†A``) stays in the input's
precision, so the output still satisfies ``A x̂ = y``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn
from torch.utils.checkpoint import checkpoint

from .backbones import NoiseEstimator, crop_like, pad_to_multiple, small_unet_config
from .injectors import InjectorContext, make_injectors
from .model_io import OPERATOR_WEIGHTS_NAME, WEIGHTS_NAME, StoredOperatorMixin
from .operators import noise_aware_projection, range_null_space_projection
from .operators.base import check_finite
from .reversible import (
    constrained_unit_interval,
    constrained_unit_interval_inverse,
    coupled_sequence,
)

logger = logging.getLogger(__name__)

MEMORY_MODES = ("autograd", "checkpoint", "level1", "level1+2")
#: Precision of the noise estimator (:meth:`IDM.set_backbone_precision`).
BACKBONE_PRECISIONS = ("fp32", "bf16")
#: How ``x̂_T`` is made from ``A†y`` (the ``start`` option of :class:`IDM`).
START_MODES = ("pinv", "noisy")
#: σ_x of a noise-aware model is ``exp(PRIOR_SIGMA_SCALE · log_prior_sigma)``.
PRIOR_SIGMA_SCALE = 10.0
__all__ = ["BACKBONE_PRECISIONS", "IDM", "MEMORY_MODES", "OPERATOR_WEIGHTS_NAME", "WEIGHTS_NAME"]


def full_precision(t: torch.Tensor) -> torch.autocast:
    """Autocast off on ``t``'s device: operator algebra (projections, ``A†A``) keeps the
    input's precision inside a mixed-precision forward, so data consistency is exact."""
    return torch.autocast(t.device.type, enabled=False)


class IDM(StoredOperatorMixin, ModelMixin, ConfigMixin):
    """Invertible Diffusion Model: ``IDM(...)(y, operator) -> x̂`` of shape ``(B, C, H, W)``.

    Args:
        backbone: noise-estimator config (:func:`idm_med.backbones.sd_layout_config` or
            :func:`~idm_med.backbones.small_unet_config`; default: the small UNet).
        image_channels: ``c_img`` (1, or 2 for complex MRI as real/imaginary).
        steps: number of unrolled steps ``T`` (>= 1).
        coupling: level-1 coupling across steps; ``False`` gives the plain DDNM-style sampler.
        invertible_blocks: level-2 coupling groups inside the UNet (part of the architecture).
        injectors: use injectors (separate weights per step).
        injector_kernel_size: kernel of the injector convolutions (1 as in the authors' code).
        alpha_init: initial ``α_t``.
        v_init: initial level-1 ``v_t``.
        v_min: ``v`` (both levels) is kept in ``[v_min, 1 - v_min]``.
        final_projection: end with one range–null-space step, so that ``A x̂ = y`` for
            noiseless data (the last level-1 coupling mixes the unprojected state ``h_0``
            into the output); ``False`` is the paper's network as published.
        start: ``"pinv"``: ``x̂_T = √ᾱ_T A†y``, the expectation of the noisy start (the
            paper's choice); ``"noisy"``: ``x̂_T = √ᾱ_T A†y + √(1-ᾱ_T) ε`` with
            ``ε ~ N(0, I)`` drawn from torch's global generator (the ablation "A†y vs
            noise initialisation"; seed with ``torch.manual_seed`` for repeatable output).
        operator: optional operator config (``op.config``, JSON-safe) stored with
            checkpoints; used when ``forward`` gets no operator. Its tensors (explicit
            masks, coil maps) are saved in ``operator.safetensors``.
        noise_aware: learn one prior σ_x per data-consistency step (the T steps and the
            final one), so that ``forward(..., noise_sigma=σ_y)`` replaces each hard
            projection by :func:`~idm_med.operators.noise_aware_projection` with weight
            ``σ_x² / (σ_x² + σ_y²)``; ``σ_y = 0`` keeps the hard projections (and
            ``A x̂ = y``). Trained with measurement noise (``TrainingConfig.measurement_noise``).
        prior_sigma_init: initial σ_x of a noise-aware model.

    A diffusers model: ``save_pretrained`` / ``from_pretrained(dir, torch_dtype=...)`` read
    and write a diffusers model directory plus the stored operator
    (:mod:`idm_med.model_io`).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        backbone: dict[str, Any] | None = None,
        image_channels: int = 1,
        steps: int = 3,
        coupling: bool = True,
        invertible_blocks: bool = True,
        injectors: bool = True,
        injector_kernel_size: int = 1,
        alpha_init: float = 0.5,
        v_init: float = 0.5,
        v_min: float = 0.05,
        operator: dict[str, Any] | None = None,
        final_projection: bool = True,
        start: str = "pinv",
        noise_aware: bool = False,
        prior_sigma_init: float = 0.02,
    ) -> None:
        super().__init__()
        if start not in START_MODES:
            raise ValueError(f"start must be one of {START_MODES}, got {start!r}")
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps (T) must be an integer >= 1, got {steps}")
        if not 0.0 < v_min < 0.5:
            raise ValueError(f"v_min must lie in (0, 0.5), got {v_min}")
        self.steps = int(steps)
        self.image_channels = int(image_channels)
        self.coupling = bool(coupling)
        self.v_min = float(v_min)
        self.final_projection = bool(final_projection)
        self.start = start
        self.backbone = NoiseEstimator(
            backbone or small_unet_config(), image_channels, invertible_blocks, v_min=v_min
        )
        # Separate injector weights per step; index i = T - t (execution order).
        self.injectors = (
            nn.ModuleList(
                make_injectors(self.backbone.sites, image_channels, injector_kernel_size)
                for _ in range(self.steps)
            )
            if injectors
            else None
        )
        # α_t for t = 1..T (index t-1), sigmoid-parameterised so it stays in (0, 1).
        raw_alpha = constrained_unit_interval_inverse(float(alpha_init), 0.0, 1.0)
        self.alpha_raw = nn.Parameter(torch.full((self.steps,), float(raw_alpha)))
        if self.coupling:
            raw_v = constrained_unit_interval_inverse(float(v_init), v_min, 1.0 - v_min)
            self.v_raw = nn.Parameter(torch.full((self.steps,), float(raw_v)))
            self.w_T = nn.Parameter(torch.ones(()))
            self.w_0 = nn.Parameter(torch.zeros(()))
        if noise_aware:
            self._add_prior_sigma(prior_sigma_init)
        self._operator_cache: nn.Module | None = None
        self._operator_state: dict[str, torch.Tensor] | None = None
        self.memory_mode = "autograd"
        self.backbone_precision = "fp32"
        self.attention_window: int | None = None

    def __getattr__(self, name: str) -> Any:
        # The config keys ``backbone`` and ``injectors`` are also submodule names: the
        # submodules win (diffusers' ModelMixin would answer with the config entry).
        modules = self.__dict__.get("_modules")
        if modules is not None and name in modules:
            return modules[name]
        return super().__getattr__(name)

    # -- noise-aware data consistency ----------------------------------------------------
    def _add_prior_sigma(self, init: float) -> None:
        if not init > 0:
            raise ValueError(f"prior_sigma_init must be > 0, got {init}")
        # log σ_x / PRIOR_SIGMA_SCALE per data-consistency step in execution order, the
        # final step last; the scale lets Adam, at the backbone's learning rate, move σ_x
        # by a useful factor within one fine-tuning stage.
        raw = math.log(init) / PRIOR_SIGMA_SCALE
        self.log_prior_sigma = nn.Parameter(torch.full((self.steps + 1,), raw))

    def enable_noise_awareness(self, prior_sigma_init: float = 0.02) -> IDM:
        """Give a model trained on noiseless data its learnable σ_x (see ``noise_aware``),
        to fine-tune it with measurement noise; its noiseless output is unchanged.
        Returns ``self``."""
        if not self.config.noise_aware:
            self._add_prior_sigma(prior_sigma_init)
            self.log_prior_sigma.data = self.log_prior_sigma.data.to(self.alpha_raw)
            self.register_to_config(noise_aware=True, prior_sigma_init=prior_sigma_init)
        return self

    def prior_sigmas(self) -> torch.Tensor | None:
        """``(T+1,)`` learned σ_x of the steps (execution order) and the final step, or
        ``None`` for a model that is not noise-aware."""
        if not self.config.noise_aware:
            return None
        return (self.log_prior_sigma * PRIOR_SIGMA_SCALE).exp()

    def _consistency(
        self,
        index: int,
        x: torch.Tensor,
        y: torch.Tensor,
        operator: nn.Module,
        noise_sigma: torch.Tensor | None,
    ) -> torch.Tensor:
        """Data-consistency step ``index`` (``T``: the final one) on ``x``: hard, or noise
        aware for a noise-aware model given a noise level."""
        with full_precision(x):
            if noise_sigma is None or not self.config.noise_aware:
                return range_null_space_projection(x, y, operator)
            prior = self.prior_sigmas()[index].to(x.dtype)
            return noise_aware_projection(x, y, operator, noise_sigma, prior)

    def _noise_levels(
        self, noise_sigma: float | torch.Tensor | None, y: torch.Tensor
    ) -> torch.Tensor | None:
        """``noise_sigma`` as a ``(B,)`` tensor, or ``None`` when there is no noise."""
        if noise_sigma is None:
            return None
        sigma = torch.as_tensor(noise_sigma, dtype=y.dtype, device=y.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(y.shape[0])
        if sigma.numel() != y.shape[0] or not bool(torch.isfinite(sigma).all()):
            raise ValueError("noise_sigma must be a finite scalar or one value per batch item")
        if bool((sigma < 0).any()):
            raise ValueError("noise_sigma must be >= 0")
        if not bool((sigma > 0).any()):
            return None
        if not self.config.noise_aware:
            logger.warning(
                "this IDM model was trained without measurement noise (noise_aware=False): "
                "noise_sigma is ignored and every data-consistency step stays hard"
            )
            return None
        return sigma

    # -- schedule & couplings ----------------------------------------------------------
    def alphas(self) -> torch.Tensor:
        """``(T,)`` schedule ``α_t`` for ``t = 1..T``."""
        return constrained_unit_interval(self.alpha_raw, 0.0, 1.0)

    def alphas_cumprod(self) -> torch.Tensor:
        """``(T+1,)`` ``ᾱ_0 = 1, ᾱ_1, ..., ᾱ_T``."""
        a = self.alphas()
        return torch.cat([a.new_ones(1), torch.cumprod(a, 0)])

    def coupling_weights(self) -> torch.Tensor:
        """``(T,)`` level-1 weights ``v`` in execution order (``v_T, ..., v_1``)."""
        if not self.coupling:
            raise ValueError("this model has no level-1 coupling (coupling=False)")
        return constrained_unit_interval(self.v_raw, self.v_min, 1.0 - self.v_min)

    def set_memory_mode(self, mode: str) -> IDM:
        """Choose how gradients are computed (see the module docstring); returns ``self``.

        The ``level1`` modes add parameter gradients directly into ``.grad`` during the
        backward: train with ``loss.backward()`` (``torch.autograd.grad`` w.r.t. the
        parameters sees only the non-reversible part).
        """
        self._check_mode(mode)
        self.memory_mode = mode
        return self

    def set_backbone_precision(self, precision: str) -> IDM:
        """``"fp32"`` (default) or ``"bf16"``: the noise estimator under bfloat16 autocast,
        the operator in full precision (module docstring); returns ``self``."""
        if precision not in BACKBONE_PRECISIONS:
            raise ValueError(
                f"backbone precision must be one of {BACKBONE_PRECISIONS}, got {precision!r}"
            )
        self.backbone_precision = precision
        return self

    def set_attention_window(self, pixels: int | None) -> IDM:
        """Attention within windows of ``pixels`` image pixels (e.g. the training patch
        size) instead of over the whole image, or global for ``None`` (default); see
        :mod:`idm_med.windowed_attention`. Returns ``self``."""
        self.backbone.set_attention_window(pixels)
        self.attention_window = pixels
        return self

    def _check_mode(self, mode: str) -> None:
        if mode not in MEMORY_MODES:
            raise ValueError(f"memory mode must be one of {MEMORY_MODES}, got {mode!r}")
        if not self.coupling and mode in ("level1", "level1+2"):
            raise ValueError(
                f"memory mode {mode!r} needs the level-1 coupling; this model has "
                "coupling=False (plain DDNM sampler): use 'autograd' or 'checkpoint'"
            )
        if mode == "level1+2" and not self.backbone.invertible_blocks:
            raise ValueError(
                "memory mode 'level1+2' needs a model built with invertible_blocks=True"
            )

    # -- the unrolled network ----------------------------------------------------------
    def _step(
        self,
        index: int,
        x: torch.Tensor,
        *,
        y: torch.Tensor,
        operator: nn.Module,
        ctx: InjectorContext | None,
        level2_mode: str,
        noise_sigma: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``F_t(x̂_t)`` for ``t = T - index``: ``(B, C, H, W) -> (B, C, H, W)``."""
        t = self.steps - index
        # Recomputed from the raw parameter on every call so that reversible/checkpointed
        # recomputation rebuilds the graph to alpha_raw.
        abar = self.alphas_cumprod()
        injectors = self.injectors[index] if self.injectors is not None else None
        # "fp32" leaves the caller's autocast state alone: training under bf16 autocast
        # (accelerate's mixed_precision) must keep autocasting the backbone.
        precision = (
            torch.autocast(x.device.type, dtype=torch.bfloat16)
            if self.backbone_precision == "bf16"
            else contextlib.nullcontext()
        )
        with precision:
            eps = self.backbone(self._pad(x), injectors, ctx, level2_mode)
        eps = self._unpad(eps, x).to(x.dtype)
        x0 = (x - torch.sqrt(1 - abar[t]) * eps) / torch.sqrt(abar[t])
        x0 = self._consistency(index, x0, y, operator, noise_sigma)
        if t == 1:  # ᾱ_0 = 1: the output is the projected estimate (avoids d√0 = ∞)
            return x0
        return torch.sqrt(abar[t - 1]) * x0 + torch.sqrt(1 - abar[t - 1]) * eps

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` padded to the backbone's size multiple (:func:`pad_to_multiple`)."""
        return pad_to_multiple(x, self.backbone.size_multiple)

    _unpad = staticmethod(crop_like)

    def _resolve_operator(self, operator: nn.Module | None) -> nn.Module:
        """``operator``, or the stored one (:meth:`stored_operator`)."""
        return self.stored_operator() if operator is None else operator

    def _validate(self, y: torch.Tensor, operator: nn.Module) -> None:
        shape = tuple(operator.image_shape)
        if shape[0] != self.image_channels:
            raise ValueError(
                f"operator {operator.config.get('name')!r} acts on {shape[0]}-channel images "
                f"but this model was built for image_channels={self.image_channels}"
            )
        try:
            operator.check_measurement(y, "y")
            check_finite(y, "y")
        except ValueError as err:
            raise ValueError(
                f"IDM expected y of shape (B, {', '.join(map(str, operator.measurement_shape))})"
                f" for operator {operator.config.get('name')!r}: {err}"
            ) from err

    def coupling_inputs(
        self,
        y: torch.Tensor,
        operator: nn.Module | None = None,
        level2_mode: str = "autograd",
        noise_sigma: torch.Tensor | None = None,
    ) -> tuple[
        list[Callable[[torch.Tensor], torch.Tensor]],
        torch.Tensor | None,
        torch.Tensor,
        torch.Tensor | None,
    ]:
        """The level-1 pieces ``(functions [F_T..F_1], v, x̂_T, h_T)`` for ``y``.

        ``v`` and ``h_T`` are ``None`` for ``coupling=False``. Exposed so the inverse pass
        (:func:`idm_med.reversible.invert_sequence`) can be measured on a real model.
        """
        operator = self._resolve_operator(operator)
        self._validate(y, operator)
        with full_precision(y):
            x_pinv = operator.A_pinv(y)
        ctx = None
        if self.injectors:
            # Injectors work at the backbone's (padded) size; the operator at its own.
            def row_space(f: torch.Tensor) -> torch.Tensor:
                with full_precision(f):  # the operator in the input's precision
                    return self._pad(operator.AtA(self._unpad(f, x_pinv).to(x_pinv.dtype)))

            ctx = InjectorContext(x_pinv=self._pad(x_pinv), AtA=row_space)
        functions = [
            partial(
                self._step,
                i,
                y=y,
                operator=operator,
                ctx=ctx,
                level2_mode=level2_mode,
                noise_sigma=noise_sigma,
            )
            for i in range(self.steps)
        ]
        alpha_bar_T = self.alphas_cumprod()[self.steps]
        x_T = torch.sqrt(alpha_bar_T) * x_pinv
        if self.start == "noisy":
            x_T = x_T + torch.sqrt(1 - alpha_bar_T) * torch.randn_like(x_pinv)
        if not self.coupling:
            return functions, None, x_T, None
        return functions, self.coupling_weights(), x_T, self.w_T * x_T

    def forward(
        self,
        y: torch.Tensor,
        operator: nn.Module | None = None,
        inner_operator: nn.Module | None = None,
        noise_sigma: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Reconstruct ``x̂`` ``(B, *operator.image_shape)`` from ``y`` ``(B, *measurement_shape)``.

        ``operator`` defaults to the one stored in the config. ``inner_operator`` (default
        ``operator``), the same ``A`` with a cheaper approximate ``A_pinv`` (e.g.
        :meth:`~idm_med.operators.conjugate_gradient.CGPseudoInverse.with_cg_max_iter`),
        serves ``A†y``, the unrolled steps and the injectors; the final range–null-space
        step (``final_projection``; without coupling, one after the last step) uses
        ``operator``, so the output stays consistent with ``y``.
        ``noise_sigma`` (a scalar or ``(B,)``, per real measurement component as in
        :func:`~idm_med.operators.noise_aware_projection`) makes the data-consistency steps
        of a noise-aware model soft; other models log a warning and ignore it. Raises
        ``ValueError`` for a measurement of the wrong shape, NaN/inf in ``y`` or
        mismatched image channels.
        """
        mode = self.memory_mode
        self._check_mode(mode)
        level2 = "reversible" if mode == "level1+2" else "autograd"
        inner = operator if inner_operator is None else inner_operator
        sigma = self._noise_levels(noise_sigma, y)
        functions, v, x, h = self.coupling_inputs(y, inner, level2, sigma)
        if not self.coupling:
            for f in functions:
                if mode == "checkpoint" and torch.is_grad_enabled():
                    x = checkpoint(f, x, use_reentrant=False)
                else:
                    x = f(x)
            if inner_operator is not None:  # the last step projected with the cheaper A†
                x = self._consistency(self.steps, x, y, self._resolve_operator(operator), sigma)
            return x
        seq_mode = {"autograd": "autograd", "checkpoint": "checkpoint"}.get(mode, "reversible")
        params = [
            p
            for n, p in self.named_parameters()
            if p.requires_grad and n not in ("v_raw", "w_T", "w_0")
        ]
        # Leaf parameters accumulate straight into .grad in the reversible backward, so no
        # full copy of the parameter gradients is held (train with loss.backward()).
        x0, h0 = coupled_sequence(functions, v, x, h, params, mode=seq_mode, accumulate_grad=True)
        out = x0 + self.w_0 * h0
        if self.final_projection:
            out = self._consistency(self.steps, out, y, self._resolve_operator(operator), sigma)
        return out

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_sd_unet(
        cls, path: str | os.PathLike, image_channels: int = 1, **kwargs: Any
    ) -> tuple[IDM, dict[str, list[str]]]:
        """IDM whose backbone is loaded from a local diffusers (SD) UNet directory.

        See :func:`idm_med.sd_unet.load_sd_unet` (nothing is downloaded); ``kwargs`` go to
        :class:`IDM`. Returns ``(model, load report)``.
        """
        from .sd_unet import load_sd_unet

        invertible = kwargs.get("invertible_blocks", True)
        estimator, report = load_sd_unet(path, image_channels, invertible_blocks=invertible)
        model = cls(backbone=estimator.config, image_channels=image_channels, **kwargs)
        # Level-2 couplings (absent from SD checkpoints) keep their initialisation.
        missing, unexpected = model.backbone.load_state_dict(estimator.state_dict(), strict=False)
        if unexpected or any(not k.startswith("groups.") for k in missing):
            raise RuntimeError(f"backbone mismatch: missing {missing}, unexpected {unexpected}")
        return model, report

    def num_parameters(
        self,
        only_trainable: bool = False,
        exclude_embeddings: bool = False,
        injectors_only: bool = False,
    ) -> int:
        """Parameter count of the whole model (diffusers' arguments), or of its injectors."""
        if not injectors_only:
            return super().num_parameters(only_trainable, exclude_embeddings)
        if self.injectors is None:
            return 0
        params = self.injectors.parameters()
        return sum(p.numel() for p in params if p.requires_grad or not only_trainable)
