"""End-to-end training of IDM on simulated measurements (``idm-med train``).

Each step draws a batch of augmented patches (:mod:`idm_med.patches`: from the corpus'
training split or from the user's files), draws the measurement setting of the batch
(every operator option given as a list is a choice: e.g. MRI accelerations ``[4, 8]`` and
both mask types, CS ratios, inpainting ratios, CT view counts), measures the batch with an
operator of that setting (MRI and inpainting masks redrawn every step) and minimises the L1
distance between ``IDM(y, A)`` and the ground truth (the paper's loss).

The model starts from a diffusion prior (``init``: the paper's recipe, see
:func:`idm_from_prior`; a small or an SD-layout prior), from a local Stable Diffusion
UNet (``backbone`` = its directory) or from scratch. The loop is
:func:`idm_med.train_loop.run` (Accelerate, atomic checkpoints, exact and settings-checked
resume, CSV log); multi-process runs average gradients explicitly, so every memory mode
(reversible ones included) trains the same under ``accelerate launch`` / ``torchrun``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import train_loop
from .backbones import sd_layout_config, small_unet_config
from .datasets import fastmri, images, nifti
from .datasets.atomic import atomic_write_text
from .model import IDM, full_precision
from .model_io import is_idm_checkpoint, saved_class_name
from .operators import Operator, make_operator
from .patches import PatchSampler, corpus_sampler
from .postprocessing_unet import PostProcessingUNet

logger = logging.getLogger(__name__)

#: Operators whose mask is redrawn every step (a seed drawn from the step's generator; the
#: others draw nothing, so their batch stream does not depend on this list's members).
_RANDOM_MASKS = ("mri", "inpainting")
#: What ``TrainingConfig.architecture`` builds: IDM, or the supervised U-Net baseline.
ARCHITECTURES = ("idm", "postprocessing_unet")


# -- data --------------------------------------------------------------------------------
def load_training_images(
    paths: list[str | Path],
    axis: int = 2,
    exclude_slices: dict[str, list[int]] | None = None,
    min_foreground: float = 0.15,
) -> list[np.ndarray]:
    """2-D ground truths from files, as float32 arrays (magnitude in [0, 1]).

    NIfTI volumes give their slices along ``axis`` whose foreground (pixels above 10 % of
    the volume maximum) covers at least ``min_foreground`` of the slice; single-coil fastMRI
    files give ``|ifft2c(kspace)|`` of their slices; images give themselves (luma).
    ``exclude_slices`` maps a file name to slice indices kept out (held-out data).
    """
    from .operators.mri import ifft2c

    exclude_slices = exclude_slices or {}
    out: list[np.ndarray] = []
    for path in map(Path, paths):
        skip = set(exclude_slices.get(path.name, []))
        name = path.name.lower()
        if name.endswith((".nii", ".nii.gz")):
            data = nifti.extract_slices(nifti.read_nifti(path).data, axis=axis)
            threshold = 0.1 * float(np.abs(data).max())
            for i, sl in enumerate(data):
                if i not in skip and (np.abs(sl) > threshold).mean() >= min_foreground:
                    out.append(np.abs(sl).astype(np.float32))
        elif name.endswith((".h5", ".hdf5")):
            volume = fastmri.FastMRIVolume(path)
            if volume.info.multicoil:
                raise ValueError(f"{path}: training on multi-coil files is not supported yet")
            for sl in volume:
                if sl.slice_index not in skip:
                    out.append(np.abs(ifft2c(sl.kspace).numpy()).astype(np.float32))
        else:
            out.append(images.read_image(path)[0].numpy())
    if not out:
        raise ValueError(f"no training images found in {[str(p) for p in paths]}")
    return [a / max(float(a.max()), 1e-8) for a in out]


# -- configuration -----------------------------------------------------------------------
@dataclass
class TrainingConfig:
    """Everything a training run depends on (saved as ``training.json``).

    ``operator`` holds ``make_operator`` arguments; a list value is a set of choices drawn
    per batch (the model then covers every setting). ``data`` weights the corpus
    modalities patches are drawn from when no files are given.
    """

    operator: dict[str, Any] = field(
        default_factory=lambda: {"name": "mri", "acceleration": 4, "center_fraction": 0.08}
    )
    image_size: int = 96
    image_channels: int = 2
    # "small", "sd", a local diffusers SD UNet directory, or a backbone config dict
    backbone: str | dict[str, Any] = "small"
    # a prior (idm-med pretrain) or an IDM checkpoint (idm-med init / train) to start from
    init: str | None = None
    steps: int = 3
    memory_mode: str = "level1+2"
    final_projection: bool = True
    injectors: bool = True  # False: the ablation without measurement injectors
    start: str = "pinv"  # "noisy": the ablation "A†y vs noise initialisation" (IDM.start)
    # "postprocessing_unet": the supervised U-Net on A†y baseline, trained from scratch
    architecture: str = "idm"
    batch_size: int = 4
    data: dict[str, float] = field(default_factory=lambda: {"mri": 1.0})
    # probability that an MRI head (corpus, or the files trained on) is drawn skull-stripped
    skull_strip: float = 0.0
    # measurement noise: a batch item is noisy with probability noise_probability, with σ
    # (per real measurement component) drawn uniformly from [0, measurement_noise]; an
    # IDM model is then made noise-aware (IDM.noise_aware) and told each item's σ
    measurement_noise: float = 0.0
    noise_probability: float = 0.5
    loop: train_loop.LoopConfig = field(
        default_factory=lambda: train_loop.LoopConfig(learning_rate=5e-4, ema_decay=0.0)
    )

    def settings(self) -> dict[str, list[Any]]:
        """``{option: choices}`` of the operator options drawn per batch."""
        return {k: v for k, v in self.operator.items() if isinstance(v, list)}

    def make_model(self) -> IDM | PostProcessingUNet:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}"
            )
        if self.architecture == "postprocessing_unet":
            if self.init:
                return _unet_from_checkpoint(self.init, self.image_channels)
            backbone = self.backbone if isinstance(self.backbone, dict) else None
            if backbone is None and self.backbone != "small":
                raise ValueError("the post-processing U-Net takes backbone 'small' or a dict")
            return PostProcessingUNet(backbone=backbone, image_channels=self.image_channels)
        kwargs = dict(
            image_channels=self.image_channels,
            steps=self.steps,
            final_projection=self.final_projection,
            injectors=self.injectors,
            start=self.start,
        )
        model = self._make_idm(kwargs)
        return model.enable_noise_awareness() if self.measurement_noise > 0 else model

    def _make_idm(self, kwargs: dict[str, Any]) -> IDM:
        if self.init and is_idm_checkpoint(self.init):
            return _idm_from_checkpoint(self.init, **kwargs)
        if self.init:
            return idm_from_prior(self.init, **kwargs)
        if isinstance(self.backbone, dict):
            return IDM(backbone=self.backbone, **kwargs)
        if self.backbone in ("small", "sd"):
            config = small_unet_config() if self.backbone == "small" else sd_layout_config()
            return IDM(backbone=config, **kwargs)
        model, report = IDM.from_sd_unet(self.backbone, **kwargs)
        logger.info("backbone from %s: %s", self.backbone, {k: len(v) for k, v in report.items()})
        return model

    def validate(self) -> None:
        """Refuse settings no run can use (raised before any data is loaded)."""
        if not (math.isfinite(self.measurement_noise) and self.measurement_noise >= 0):
            raise ValueError(f"measurement_noise must be >= 0, got {self.measurement_noise}")
        if not 0.0 <= self.noise_probability <= 1.0:
            raise ValueError(f"noise_probability must lie in [0, 1], got {self.noise_probability}")


class OperatorPool:
    """The operator of each step for an operator spec (``make_operator`` arguments, lists
    are per-batch choices): built once per setting (a Gaussian CS matrix costs an SVD, a CT
    system matrix a sparse build) and reseeded per step where masks are random."""

    def __init__(self, spec: dict[str, Any], image_size: int) -> None:
        self.spec, self.image_size = dict(spec), int(image_size)
        self._cache: dict[str, Operator] = {}

    def kwargs(self, generator: torch.Generator | None = None) -> dict[str, Any]:
        """One setting: every list option replaced by a choice drawn with ``generator``
        (the first choice without one)."""
        out = {}
        for key, value in self.spec.items():
            if isinstance(value, list):
                i = int(torch.randint(len(value), (1,), generator=generator)) if generator else 0
                value = value[i]
            out[key] = value
        return out

    def __call__(self, generator: torch.Generator | None) -> Operator:
        """The operator of the step whose generator is ``generator`` (``None``: the first
        setting with seed 0, e.g. the one stored with a checkpoint): one operator per
        setting, whose random mask is redrawn in place (``op.resample``) every step."""
        kwargs = self.kwargs(generator)
        key = json.dumps(kwargs, sort_keys=True)
        if key not in self._cache:
            name = kwargs.pop("name")
            self._cache[key] = make_operator(name, image_size=self.image_size, **kwargs)
        op = self._cache[key]
        if op.name in _RANDOM_MASKS:
            seed = int(torch.randint(2**31 - 1, (1,), generator=generator)) if generator else 0
            op.resample(seed)
        return op


# -- starting points ---------------------------------------------------------------------
def _idm_from_checkpoint(directory: str, **kwargs: Any) -> IDM:
    """Continue from an IDM checkpoint (``idm-med init`` or an earlier ``train``); its
    architecture must match the requested channels and steps."""
    model = IDM.from_pretrained(directory).float()
    for key in ("image_channels", "steps", "injectors"):
        if model.config[key] != kwargs[key]:
            raise ValueError(
                f"{directory}: checkpoint has {key}={model.config[key]}, training asks for "
                f"{kwargs[key]} (pass --image-channels / --steps to match)"
            )
    # Neither option changes the weights: both are taken from the request.
    model.final_projection, model.start = kwargs["final_projection"], kwargs["start"]
    model.register_to_config(final_projection=kwargs["final_projection"], start=kwargs["start"])
    return model


def _unet_from_checkpoint(directory: str, image_channels: int) -> PostProcessingUNet:
    """Continue an earlier post-processing U-Net training (a later stage of the baseline,
    matching a later stage of the IDM model it is compared with); never a prior or an IDM
    checkpoint, which would make it another method."""
    if saved_class_name(directory) != "PostProcessingUNet":
        raise ValueError(
            f"{directory}: the post-processing U-Net starts from scratch or continues a "
            "post-processing U-Net checkpoint, not a prior or an IDM model"
        )
    model = PostProcessingUNet.from_pretrained(directory).float()
    if model.image_channels != image_channels:
        raise ValueError(
            f"{directory}: checkpoint has image_channels={model.image_channels}, training "
            f"asks for {image_channels}"
        )
    return model


def _fold_time_embedding(prior_unet: nn.Module, t: int) -> dict[str, torch.Tensor]:
    """The prior's weights with its time embedding at timestep ``t`` folded into the bias
    of every resnet's first convolution (diffusers adds ``time_emb_proj(silu(emb))`` right
    after ``conv1``), so the time-free network equals the prior at ``t`` exactly.

    An SD-layout prior's cross-attentions (which IDM drops) see the one-token null context
    (:func:`idm_med.sampling.null_context`), so each adds a constant right after its
    block's self-attention: that constant is folded into the self-attention's output bias,
    keeping the equality exact."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D

    from .sampling import null_context

    state = {k: v.clone() for k, v in prior_unet.state_dict().items()}
    dropped: list[str] = []
    with torch.no_grad():
        tt = torch.tensor([t])
        emb = prior_unet.time_embedding(prior_unet.time_proj(tt).to(prior_unet.dtype))
        for name, module in prior_unet.named_modules():
            if isinstance(module, ResnetBlock2D) and module.time_emb_proj is not None:
                shift = module.time_emb_proj(module.nonlinearity(emb))[0]
                state[f"{name}.conv1.bias"] += shift
            elif isinstance(module, BasicTransformerBlock) and module.attn2 is not None:
                if module.norm_type != "layer_norm" or module.only_cross_attention:
                    raise ValueError(f"{name}: only SD's layer-norm transformer blocks fold")
                query = torch.zeros(1, 1, module.attn2.query_dim, dtype=prior_unet.dtype)
                context = null_context(prior_unet, 1, query)
                const = module.attn2(query, encoder_hidden_states=context)[0, 0]
                state[f"{name}.attn1.to_out.0.bias"] += const
                dropped += [f"{name}.attn2.", f"{name}.norm2."]
    return {
        k: v
        for k, v in state.items()
        if "time_emb" not in k and "time_proj" not in k and not k.startswith(tuple(dropped))
    }


def idm_from_prior(directory: str | Path, image_channels: int = 1, **kwargs: Any) -> IDM:
    """IDM whose noise estimator starts from a diffusion prior (``idm-med pretrain``).

    The paper removes the time embedding of its pretrained UNet; here it is *folded* at the
    DDPM timestep whose ᾱ matches the middle unrolled step's initial ᾱ (the schedule starts
    at α = 0.5, so ᾱ = 0.25 for T = 3), so the fine-tuning starts from the prior's own
    denoiser at that noise level rather than from a network with its bias terms removed.
    A 1-channel prior serves 2-channel images (conv_in / conv_out shared by the real and
    imaginary parts).

    A small prior gives the small backbone; an SD-layout prior (``pretrain --backbone sd``)
    gives the SD backbone with the prior's layout
    (:func:`idm_med.sd_unet.trimmed_unet_config`), its time embedding folded the same way
    and its null-context cross-attention folded too (:func:`_fold_time_embedding`), so at
    initialisation IDM's estimator equals the prior at that timestep. (``--backbone DIR``
    with a Stable Diffusion UNet instead drops the time embedding, as the paper does.)
    """
    from .backbones import _adapt_channels
    from .prior import layout_of, load_prior
    from .sampling import is_sd_prior
    from .sd_unet import trimmed_unet_config

    unet, scheduler, _ = load_prior(directory)
    if is_sd_prior(unet):
        backbone = sd_layout_config(**trimmed_unet_config(dict(unet.config)))
    else:
        backbone = small_unet_config(**layout_of(unet))
    model = IDM(backbone=backbone, image_channels=image_channels, **kwargs)
    alpha0 = float(model.alphas_cumprod().detach()[(model.steps + 1) // 2])
    t = int(torch.argmin((scheduler.alphas_cumprod - alpha0).abs()))
    state = _fold_time_embedding(unet, t)
    target = model.backbone.state_dict()
    state["conv_in.weight"] = _adapt_channels(
        state["conv_in.weight"], 1, target["conv_in.weight"].shape[1]
    )
    for key in ("conv_out.weight", "conv_out.bias"):
        state[key] = _adapt_channels(state[key], 0, target[key].shape[0])
    missing, unexpected = model.backbone.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("groups.") for k in missing):
        raise ValueError(
            f"{directory}: prior does not fit IDM's {backbone['kind']} backbone "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    logger.info(
        "IDM from prior %s (time embedding folded at t = %d, ᾱ = %.3f)", directory, t, alpha0
    )
    return model


# -- loop ----------------------------------------------------------------------------------
#: Options left out of ``training.json`` at these defaults, so that runs (and shipped
#: models) from before the option existed still resume and compare equal.
_OMITTED_AT_DEFAULT = {
    "injectors": True,
    "start": "pinv",
    "architecture": "idm",
    "skull_strip": 0.0,
    "measurement_noise": 0.0,
}


def training_record(config: TrainingConfig) -> dict[str, Any]:
    """The settings of ``config`` saved in ``training.json`` (without ``loop``)."""
    record = {k: v for k, v in asdict(config).items() if k != "loop"}
    for key, default in _OMITTED_AT_DEFAULT.items():
        if record[key] == default:
            del record[key]
    if "measurement_noise" not in record:  # without noise its probability means nothing
        del record["noise_probability"]
    return record


def add_measurement_noise(
    y: torch.Tensor, sigma_max: float, probability: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training noise: each batch item of ``y`` ``(B, …)`` is noisy with ``probability``,
    with σ ~ U(0, ``sigma_max``) per real component, drawn with ``generator``. Entries that
    are exactly zero (unmeasured k-space columns) stay zero. Returns ``(noisy y, σ (B,))``.
    """
    batch = y.shape[0]
    noisy = torch.rand(batch, generator=generator) < probability
    sigma = torch.rand(batch, generator=generator) * sigma_max * noisy
    noise = torch.randn(y.shape, generator=generator, dtype=torch.float64).to(y)
    sigma = sigma.to(y)
    scale = sigma.reshape(-1, *([1] * (y.dim() - 1)))
    return y + noise * scale * (y != 0), sigma


def train(
    config: TrainingConfig,
    output: str | Path,
    data: list[np.ndarray] | None = None,
    sampler: PatchSampler | None = None,
    resume: bool = False,
    progress: bool = True,
) -> train_loop.TrainResult:
    """Train and write the final model to ``output`` (``save_pretrained`` layout with the
    operator config and ``training.json``); checkpoints go to ``output/checkpoint``.

    Patches come from ``sampler``, else from ``data`` (2-D arrays), else from the corpus'
    training split weighted by ``config.data``.
    """
    config.validate()
    output = Path(output)
    if sampler is None:
        if data is not None:
            sampler = PatchSampler(
                {"files": data},
                {"files": 1.0},
                config.image_size,
                config.image_channels,
                {"files": (0.5, 1.0)},
                {"files": config.skull_strip},
            )
        else:
            sampler = corpus_sampler(
                config.image_size, config.image_channels, config.data, config.skull_strip
            )
    torch.manual_seed(config.loop.seed)
    model = config.make_model()
    model.set_memory_mode(config.memory_mode)
    operators = OperatorPool(config.operator, config.image_size)
    record = training_record(config)

    def make_batch(step: int, gen: torch.Generator) -> torch.Tensor:
        return sampler.batch(config.batch_size, gen)

    def loss_fn(net: nn.Module, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        param = next(net.parameters())
        x = x.to(device=param.device, dtype=param.dtype)
        op = operators(gen).to(device=x.device, dtype=x.dtype)
        with torch.no_grad(), full_precision(x):  # CT's sparse A has no bf16 kernels
            y = op.A(x)
        if config.measurement_noise <= 0:
            return (net(y, op) - x).abs().mean()
        y, sigma = add_measurement_noise(y, config.measurement_noise, config.noise_probability, gen)
        # The supervised U-Net sees only A†y; IDM is told each item's noise level.
        unet = config.architecture == "postprocessing_unet"
        out = net(y, op) if unet else net(y, op, None, sigma)
        return (out - x).abs().mean()

    def save(net: nn.Module, directory: Path) -> None:
        net.save_pretrained(directory, operator=operators(None))
        text = json.dumps({**record, "loop": asdict(config.loop)}, indent=2)
        atomic_write_text(Path(directory) / "training.json", text)

    return train_loop.run(
        model,
        make_batch,
        loss_fn,
        save,
        output,
        config.loop,
        settings=record,
        resume=resume,
        progress=progress,
        desc="train",
    )
