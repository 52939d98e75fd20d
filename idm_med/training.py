"""End-to-end training of IDM on simulated measurements (``idm-med train``).

Ground-truth images come from files (NIfTI volumes, fastMRI ``.h5`` volumes, PNG / TIFF /
NumPy images); each step crops and augments a batch, measures it with a fresh operator
(MRI masks and inpainting masks are redrawn every step, as the IDM authors redraw their CS
permutation), and minimises the L1 distance between ``IDM(y, A)`` and the ground truth.

One code path runs on a 2-core laptop and under ``accelerate launch`` on a cluster
(Hugging Face Accelerate). Checkpoints are ``save_pretrained`` directories plus the
optimiser state, written atomically every ``checkpoint_every`` steps; ``resume=True``
continues from the last one bit-for-bit in the data order.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .backbones import sd_layout_config, small_unet_config
from .datasets import fastmri, images, nifti
from .model import IDM
from .operators import Operator, make_operator

logger = logging.getLogger(__name__)

SEEDED_OPERATORS = ("mri", "inpainting")


# -- data --------------------------------------------------------------------------------
def load_training_images(
    paths: list[str | Path],
    axis: int = 2,
    exclude_slices: dict[str, list[int]] | None = None,
    min_foreground: float = 0.15,
) -> list[np.ndarray]:
    """2-D ground truths from files, as float32 (real) or complex64 arrays.

    NIfTI volumes give their slices along ``axis`` whose foreground (pixels above 10 % of
    the volume maximum) covers at least ``min_foreground`` of the slice; fastMRI files give
    ``ifft2c(kspace)`` of single-coil slices; images give themselves (luma).
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
                    out.append(sl.astype(np.float32))
        elif name.endswith((".h5", ".hdf5")):
            volume = fastmri.FastMRIVolume(path)
            if volume.info.multicoil:
                raise ValueError(f"{path}: training on multi-coil files is not supported yet")
            for sl in volume:
                if sl.slice_index not in skip:
                    out.append(ifft2c(sl.kspace).numpy().astype(np.complex64))
        else:
            out.append(images.read_image(path)[0].numpy())
    if not out:
        raise ValueError(f"no training images found in {[str(p) for p in paths]}")
    return out


def random_smooth_phase(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """A smooth random phase map ``exp(iφ)``, ``φ`` a random plane plus offset in [-π, π]
    (simulates the slowly varying phase of real MR images)."""
    h, w = shape
    a, b, c = (torch.rand(3, generator=generator) * 2 - 1) * math.pi
    yy, xx = torch.meshgrid(
        torch.linspace(-0.5, 0.5, h), torch.linspace(-0.5, 0.5, w), indexing="ij"
    )
    return torch.polar(torch.ones(h, w), a * xx + b * yy + c)


class TrainingImageDataset(Dataset):
    """Random ``size × size`` crops of 2-D images with the 8 flips/rotations, scaled so the
    magnitude maximum is 1; ``channels=2`` returns complex images as (real, imag), giving
    real inputs a random smooth phase.

    Items are ``(channels, size, size)`` float32. Randomness comes from a generator seeded
    by ``(seed, index, epoch)`` so an epoch is reproducible whatever the worker layout.
    """

    def __init__(self, data: list[np.ndarray], size: int, channels: int = 1, seed: int = 0):
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {channels}")
        self.data, self.size, self.channels, self.seed = data, int(size), channels, int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(hash((self.seed, index, self.epoch)) % 2**63)
        img = torch.from_numpy(np.asarray(self.data[index]))
        if not img.is_complex() and self.channels == 2:
            img = img.to(torch.complex64) * random_smooth_phase(tuple(img.shape), gen)
        # Pad small images, then crop.
        h, w = img.shape
        ph, pw = max(0, self.size - h), max(0, self.size - w)
        if ph or pw:
            pad = torch.nn.functional.pad
            img = (
                torch.complex(
                    pad(img.real[None], (0, pw, 0, ph))[0], pad(img.imag[None], (0, pw, 0, ph))[0]
                )
                if img.is_complex()
                else pad(img[None], (0, pw, 0, ph))[0]
            )
            h, w = img.shape
        top = int(torch.randint(0, h - self.size + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - self.size + 1, (1,), generator=gen))
        img = img[top : top + self.size, left : left + self.size]
        k = int(torch.randint(0, 4, (1,), generator=gen))
        img = torch.rot90(img, k, dims=(0, 1))
        if bool(torch.randint(0, 2, (1,), generator=gen)):
            img = torch.flip(img, dims=(1,))
        img = img / img.abs().max().clamp_min(1e-8)
        if self.channels == 2:
            return torch.view_as_real(img.to(torch.complex64)).permute(2, 0, 1).contiguous()
        return img.abs()[None].float() if img.is_complex() else img[None].float()


# -- configuration -----------------------------------------------------------------------
@dataclass
class TrainingConfig:
    """Everything a training run depends on (saved as ``training.json``)."""

    operator: dict[str, Any] = field(
        default_factory=lambda: {"name": "mri", "acceleration": 4, "center_fraction": 0.08}
    )
    image_size: int = 128
    image_channels: int = 2
    # "small", "sd", a local diffusers SD UNet directory, or a backbone config dict
    backbone: str | dict[str, Any] = "small"
    steps: int = 3
    memory_mode: str = "level1+2"
    batch_size: int = 4
    iterations: int = 1000
    learning_rate: float = 5e-4
    halve_lr_every: int = 400
    checkpoint_every: int = 100
    seed: int = 0

    def make_operator(self, iteration: int) -> Operator:
        """The operator of one step; seeded operators draw a new mask per step."""
        kwargs = dict(self.operator)
        name = kwargs.pop("name")
        if name in SEEDED_OPERATORS:
            kwargs["seed"] = self.seed * 1_000_003 + iteration
        return make_operator(name, image_size=self.image_size, **kwargs)

    def make_model(self) -> IDM:
        kwargs = dict(image_channels=self.image_channels, steps=self.steps)
        if isinstance(self.backbone, dict):
            return IDM(backbone=self.backbone, **kwargs)
        if self.backbone == "small":
            return IDM(backbone=small_unet_config(), **kwargs)
        if self.backbone == "sd":
            return IDM(backbone=sd_layout_config(), **kwargs)
        model, report = IDM.from_sd_unet(self.backbone, **kwargs)
        logger.info(
            "loaded backbone from %s: %s", self.backbone, {k: len(v) for k, v in report.items()}
        )
        return model


# -- loop ----------------------------------------------------------------------------------
def _save_checkpoint(directory: Path, model: IDM, state: dict[str, Any], config: TrainingConfig):
    """Write ``directory`` atomically: build it beside, then swap it in."""
    tmp = directory.with_name(directory.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, operator=config.make_operator(0))
    torch.save(state, tmp / "training_state.pt")
    (tmp / "training.json").write_text(json.dumps(asdict(config), indent=2))
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def train(
    config: TrainingConfig,
    data: list[np.ndarray],
    output: str | Path,
    resume: bool = False,
    progress: bool = True,
) -> list[float]:
    """Train and write the final model to ``output`` (``save_pretrained`` layout, with the
    operator config and ``training.json``); intermediate checkpoints go to
    ``output/checkpoint``. Returns the per-step losses of this run."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    output = Path(output)
    accelerator = Accelerator()
    set_seed(config.seed)
    model = config.make_model()
    model.set_memory_mode(config.memory_mode)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, config.halve_lr_every, gamma=0.5)
    start, losses = 0, []
    ckpt = output / "checkpoint"
    if resume and (ckpt / "training_state.pt").is_file():
        state = torch.load(ckpt / "training_state.pt", weights_only=False)
        model.load_state_dict(IDM.from_pretrained(ckpt).state_dict())
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, losses = state["iteration"], state["losses"]
        logger.info("resumed from %s at step %d", ckpt, start)
    dataset = TrainingImageDataset(data, config.image_size, config.image_channels, config.seed)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)

    def batches():
        # Epoch-seeded order, so resuming at step k sees the batches an unbroken run would.
        per_epoch = math.ceil(len(dataset) / config.batch_size)
        epoch = start // per_epoch
        skip = start - epoch * per_epoch
        while True:
            dataset.epoch = epoch
            order = torch.randperm(
                len(dataset), generator=torch.Generator().manual_seed(config.seed + epoch)
            )
            for b in range(skip, per_epoch):
                idx = order[b * config.batch_size : (b + 1) * config.batch_size]
                # Each process of a multi-process run takes its share of the batch.
                idx = idx[accelerator.process_index :: accelerator.num_processes]
                yield torch.stack([dataset[int(i)] for i in idx])
            skip, epoch = 0, epoch + 1

    stream = batches()
    # Operators without a random mask are built once (e.g. Gaussian CS costs an SVD).
    fixed_op = None if config.operator["name"] in SEEDED_OPERATORS else config.make_operator(0)
    bar = tqdm(
        range(start, config.iterations),
        desc="train",
        disable=not progress,
        initial=start,
        total=config.iterations,
    )
    for it in bar:
        x = next(stream).to(accelerator.device)
        op = (fixed_op or config.make_operator(it)).to(accelerator.device)
        with torch.no_grad():
            y = op.A(x)
        loss = (model(y, op) - x).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{scheduler.get_last_lr()[0]:.1e}")
        if (it + 1) % config.checkpoint_every == 0 and accelerator.is_main_process:
            state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "iteration": it + 1,
                "losses": losses,
            }
            _save_checkpoint(ckpt, raw_model, state, config)
            logger.info("step %d: loss %.4f (checkpoint saved)", it + 1, np.mean(losses[-50:]))
    if accelerator.is_main_process:
        raw_model.save_pretrained(output, operator=config.make_operator(0))
        (output / "training.json").write_text(
            json.dumps(
                {**asdict(config), "final_loss": float(np.mean(losses[-50:] or [np.nan]))}, indent=2
            )
        )
    return losses
