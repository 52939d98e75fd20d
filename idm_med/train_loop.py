"""One training loop for every model idm-med trains (priors, SR3, IDM).

What a run needs and gets here, whatever the model:

* Hugging Face Accelerate (one code path from a laptop to ``accelerate launch``;
  ``mixed_precision="bf16"`` autocasts on CPUs with AVX-512 BF16 and on GPUs);
* a seeded batch stream: batch ``k`` is drawn from a generator seeded by ``(seed, k)``, so a
  resumed run sees exactly the batches an unbroken run would;
* Adam with linear warm-up and step decay, optional gradient clipping, an exponential
  moving average (EMA) of the weights;
* atomic checkpoints every ``checkpoint_every`` steps (model, EMA, optimiser, schedule,
  step, losses) that ``resume=True`` continues bit-for-bit;
* a progress bar and a CSV log (``log.csv``: step, loss, learning rate, seconds).

The model-specific parts are two callables: ``make_batch(step, generator) -> batch`` and
``loss_fn(model, batch, generator) -> loss``; ``save_fn(model, directory)`` writes the
weights in the model's own format (a diffusers directory for priors).
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .datasets.atomic import atomic_directory, recover_directory

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "training_state.pt"
#: Weights files a checkpoint's ``model/`` and ``ema/`` may hold, in order of preference.
WEIGHTS_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")


@dataclass
class TrainResult:
    """What :func:`run` returns: the model to ship and every step's loss of the run."""

    model: nn.Module
    losses: list[float]


@dataclass
class LoopConfig:
    """Optimisation settings shared by every trainer (saved in each checkpoint)."""

    iterations: int = 1000
    learning_rate: float = 2e-4
    warmup: int = 100
    halve_lr_every: int = 0  # 0: constant after warm-up
    grad_clip: float = 1.0  # 0: off
    ema_decay: float = 0.999  # 0: no EMA
    checkpoint_every: int = 250
    seed: int = 0
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16"

    def lr_factor(self, step: int) -> float:
        """Learning-rate multiplier at ``step`` (linear warm-up, then halvings)."""
        warm = min(1.0, (step + 1) / max(1, self.warmup))
        halvings = step // self.halve_lr_every if self.halve_lr_every else 0
        return warm * 0.5**halvings


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator that draws batch ``step`` of a run seeded with ``seed``."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % 2**63)


class EMA:
    """Exponential moving average of a model's floating-point state (weights and buffers)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # Warm-up so early averages are not dominated by the random initialisation.
        d = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
            if e.dtype.is_floating_point:
                e.lerp_(p.detach(), 1.0 - d)
            else:
                e.copy_(p)


def _write_checkpoint(
    directory: Path, save_fn: Callable, model: nn.Module, ema: EMA | None, state: dict
) -> None:
    with atomic_directory(directory, overwrite=True) as tmp:
        save_fn(model, tmp / "model")
        if ema is not None:
            save_fn(ema.model, tmp / "ema")
        torch.save(state, tmp / STATE_FILE)


def _append_log(path: Path, rows: list[tuple]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(["step", "loss", "lr", "seconds"])
        writer.writerows(rows)


def _prepare(
    accelerator: Any, model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """``accelerator.prepare`` the model and optimiser for one or several processes."""
    if accelerator.num_processes > 1:
        # No DDP wrapper: IDM's reversible backward writes .grad by hand, which DDP's
        # reducer does not expect; gradients are averaged explicitly in train_step.
        return model.to(accelerator.device), accelerator.prepare(optimizer)
    return accelerator.prepare(model, optimizer)


def run(
    model: nn.Module,
    make_batch: Callable[[int, torch.Generator], Any],
    loss_fn: Callable[[nn.Module, Any, torch.Generator], torch.Tensor],
    save_fn: Callable[[nn.Module, Path], None],
    output: str | Path,
    config: LoopConfig,
    *,
    settings: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
    desc: str = "train",
) -> TrainResult:
    """Train ``model`` for ``config.iterations`` steps; returns the model to ship (the EMA
    copy when ``ema_decay > 0``) and the losses. ``settings`` (JSON-safe) describe the run:
    on ``resume`` they must equal the checkpoint's, so a run is never silently continued
    with other settings.

    Writes ``output/checkpoint/`` (atomic), ``output/log.csv`` and, at the end, calls
    ``save_fn(final_model, output)``.
    """
    from accelerate import Accelerator

    output = Path(output)
    if not resume and output.is_dir() and any(output.iterdir()):
        # A fresh run writes config, weights and logs here: never over someone's files.
        raise FileExistsError(
            f"{output} is not empty: pass resume=True (--resume) to continue the run there, "
            "or choose a new output directory"
        )
    settings = {"loop": asdict(config), **(settings or {})}
    ckpt = output / CHECKPOINT_DIR
    if recover_directory(ckpt):
        logger.warning("%s: restored the checkpoint an interrupted write left aside", ckpt)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    torch.manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    ema = EMA(model, config.ema_decay) if config.ema_decay > 0 else None
    start, losses = 0, []
    if resume:
        start, losses = _resume(ckpt, model, ema, optimizer, settings)
    output.mkdir(parents=True, exist_ok=True)  # only once the run can start
    model, optimizer = _prepare(accelerator, model, optimizer)
    raw = accelerator.unwrap_model(model)
    model.train()
    log_rows: list[tuple] = []
    t0 = time.perf_counter()
    bar = tqdm(
        range(start, config.iterations),
        desc=desc,
        disable=not progress,
        initial=start,
        total=config.iterations,
    )
    for step in bar:
        lr = config.learning_rate * config.lr_factor(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        gen = step_generator(config.seed, step)
        loss = train_step(model, make_batch(step, gen), loss_fn, gen, accelerator, config)
        optimizer.step()
        if ema is not None:
            ema.update(raw, step)
        losses.append(loss)
        log_rows.append((step + 1, losses[-1], lr, round(time.perf_counter() - t0, 2)))
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}", lr=f"{lr:.1e}")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.iterations:
            if accelerator.is_main_process:
                state = {
                    "step": step + 1,
                    "losses": losses,
                    "settings": settings,
                    "optimizer": optimizer.state_dict(),
                }
                _write_checkpoint(ckpt, save_fn, raw, ema, state)
                _append_log(output / "log.csv", log_rows)
            log_rows = []
    final = ema.model if ema is not None else raw
    if accelerator.is_main_process:
        save_fn(final, output)
    return TrainResult(final, losses)


def shard(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This process's share of a global batch (equal shares, so averaging the per-process
    gradients of mean losses gives the gradient of the global mean loss)."""
    n = batch.shape[0]
    if n < world or n % world:
        raise ValueError(f"batch size {n} must be a multiple of the number of processes ({world})")
    return batch[rank * (n // world) : (rank + 1) * (n // world)]


def train_step(
    model: nn.Module,
    batch: torch.Tensor,
    loss_fn: Callable[[nn.Module, Any, torch.Generator], torch.Tensor],
    gen: torch.Generator,
    accelerator: Any,
    config: LoopConfig,
) -> float:
    """Gradients of one step in ``.grad`` (averaged over processes, clipped); returns the
    global mean loss. ``batch`` is the global batch; each process takes its share."""
    world = accelerator.num_processes
    local = shard(batch, accelerator.process_index, world) if world > 1 else batch
    with accelerator.autocast():
        loss = loss_fn(model, local, gen)
    for p in model.parameters():
        p.grad = None
    accelerator.backward(loss)
    loss = loss.detach().float()
    if world > 1:
        import torch.distributed as dist

        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= world
        dist.all_reduce(loss, op=dist.ReduceOp.SUM)
        loss /= world
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    return float(loss)


def _resume(
    ckpt: Path, model: nn.Module, ema: EMA | None, optimizer: torch.optim.Optimizer, settings: dict
) -> tuple[int, list[float]]:
    """Load ``ckpt`` into model / EMA / optimiser; refuse a checkpoint of other settings."""
    from safetensors.torch import load_file

    if not (ckpt / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume: no checkpoint in {ckpt}")
    state = torch.load(ckpt / STATE_FILE, weights_only=False)
    saved = json.loads(json.dumps(state["settings"]))
    wanted = json.loads(json.dumps(settings))
    changed = {k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k)}
    loop_changed = {
        k for k in wanted["loop"] if k != "iterations" and saved["loop"].get(k) != wanted["loop"][k]
    }
    if (changed - {"loop"}) or loop_changed:
        raise ValueError(
            f"--resume: {ckpt} was trained with other settings "
            f"({sorted((changed - {'loop'}) | loop_changed)}); start a new output directory"
        )

    def weights(directory: Path) -> dict[str, torch.Tensor]:
        # diffusers' weights file (IDM, priors, SR3), or IDM's before the diffusers layout;
        # never operator.safetensors, which lies beside an IDM's weights.
        for name in WEIGHTS_FILES:
            if (directory / name).is_file():
                return load_file(str(directory / name))
        raise FileNotFoundError(
            f"--resume: no weights ({' or '.join(WEIGHTS_FILES)}) in {directory}"
        )

    model.load_state_dict(weights(ckpt / "model"))
    if ema is not None:
        ema.model.load_state_dict(weights(ckpt / "ema"))
    optimizer.load_state_dict(state["optimizer"])
    logger.info("resumed from %s at step %d", ckpt, state["step"])
    return int(state["step"]), list(state["losses"])
