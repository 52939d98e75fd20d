"""Training-step memory of the IDM memory modes over T: ``python -m benchmarks memory``.

One training step is ``x̂ = IDM(y, A)``, ``loss = mean|x̂ - x|`` (L1), ``loss.backward()`` with
gradient buffers allocated up front and zeroed in place, batch 1, 1-channel images, the Gaussian CS
operator at ratio 0.1. For every backbone, T and memory mode it reports

* ``saved_total``: bytes autograd saved for backward over the whole step, counted with
  :func:`torch.autograd.graph.saved_tensors_hooks` (one storage counted once while alive;
  parameters, buffers and the inputs excluded);
* ``saved_peak``: the peak of the *live* saved bytes of those hooks over the step. In the
  reversible modes the forward saves almost nothing and the backward recomputes one step at
  a time, so this peak (not the forward total) is the honest figure. Blind spot: tensors
  held by ``torch.utils.checkpoint`` are invisible to outer hooks (its own hooks take
  precedence), which under-counts ``checkpoint`` and the checkpointed parts of ``level1+2``;
* ``alloc_peak``: the peak of live tensor bytes allocated during the step (activations,
  temporaries and the gradients), tracked per tensor with a
  :class:`~torch.utils._python_dispatch.TorchDispatchMode` and finalizers. This sees
  everything, checkpoint included: it is the CPU analogue of ``max_memory_allocated``;
* ``rss_peak``: peak process RSS (``ru_maxrss``) of the steps minus the RSS right after
  building the model, measured in a fresh (forked) process per configuration, with glibc's
  mmap threshold fixed so freed tensors are returned to the OS;
* ``cuda_peak``: ``torch.cuda.max_memory_allocated`` of one step on the GPU, when present;
* ``time``: the median step time over ``--repeats`` steps after one warm-up step (the
  warm-up is the metered one, metering slows it down).
"""

from __future__ import annotations

import ctypes
import json
import logging
import multiprocessing as mp
import os
import resource
import statistics
import time
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from benchmarks.machine import describe_machine
from benchmarks.memory_report import plot, targets, to_markdown
from benchmarks.options import base_parser
from idm_med.backbones import sd_layout_config, small_unet_config
from idm_med.model import IDM, MEMORY_MODES
from idm_med.operators import make_operator

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
COMMAND = "python -m benchmarks memory"
BACKBONES = {"sd": sd_layout_config, "small": small_unet_config}
DEFAULT_SIZES = {"sd": 32, "small": 128}
DEFAULT_REPEATS = {"sd": 1, "small": 3}  # timed steps; keeps the default run near 15 min
MB = 2**20


# -- meters -------------------------------------------------------------------------------
def _storage_key(t: torch.Tensor) -> tuple[int, int] | None:
    """``(data_ptr, nbytes)`` of the tensor's storage, or ``None`` for storage-less tensors."""
    try:
        st = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    return (st.data_ptr(), st.nbytes()) if st.nbytes() else None


class _LiveBytes:
    """Reference-counted live bytes per storage, with the running peak."""

    def __init__(self, excluded: set[int]) -> None:
        self.excluded = excluded
        self.refs: dict[int, int] = {}
        self.size: dict[int, int] = {}
        self.current = 0
        self.peak = 0
        self.total = 0  # bytes of every storage that became live (a storage counted once)

    def acquire(self, t: torch.Tensor) -> int | None:
        key = _storage_key(t)
        if key is None or key[0] in self.excluded:
            return None
        ptr, nbytes = key
        if ptr not in self.refs:
            self.refs[ptr], self.size[ptr] = 0, nbytes
            self.current += nbytes
            self.total += nbytes
            self.peak = max(self.peak, self.current)
        self.refs[ptr] += 1
        return ptr

    def release(self, ptr: int) -> None:
        self.refs[ptr] -= 1
        if self.refs[ptr] == 0:
            del self.refs[ptr]
            self.current -= self.size.pop(ptr)


class _Packed:
    """A saved tensor; its lifetime is that of autograd's saved entry (released on ``del``)."""

    __slots__ = ("tensor", "ptr", "meter")

    def __init__(self, tensor: torch.Tensor, ptr: int, meter: _LiveBytes) -> None:
        self.tensor, self.ptr, self.meter = tensor, ptr, meter

    def __del__(self) -> None:
        self.meter.release(self.ptr)


class SavedTensorMeter(torch.autograd.graph.saved_tensors_hooks):
    """Counts what autograd saves for backward: ``total`` bytes and the ``peak`` live bytes.

    Storages whose ``data_ptr`` is in ``excluded`` (parameters, buffers, inputs) are ignored.
    """

    def __init__(self, excluded: set[int]) -> None:
        self.bytes = _LiveBytes(excluded)

        def pack(t: torch.Tensor) -> Any:
            ptr = self.bytes.acquire(t)
            return t if ptr is None else _Packed(t, ptr, self.bytes)

        def unpack(obj: Any) -> torch.Tensor:
            return obj.tensor if isinstance(obj, _Packed) else obj

        super().__init__(pack, unpack)


class AllocationMeter(TorchDispatchMode):
    """Peak live bytes of tensors created while active (every ATen op's outputs).

    A storage is live while any tensor created on it by an op is alive (finalizers on the
    tensors); storages in ``excluded`` are ignored.
    """

    def __init__(self, excluded: set[int]) -> None:
        super().__init__()
        self.bytes = _LiveBytes(excluded)

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                ptr = self.bytes.acquire(t)
                if ptr is not None:
                    weakref.finalize(t, self.bytes.release, ptr)
        return out


# -- one configuration --------------------------------------------------------------------
def build(
    backbone: str, size: int, steps: int, seed: int = 0
) -> tuple[IDM, nn.Module, torch.Tensor, torch.Tensor]:
    """``(model, operator, x, y)`` for one configuration (random weights and image, seeded)."""
    torch.manual_seed(seed)
    model = IDM(backbone=BACKBONES[backbone](), image_channels=1, steps=steps)
    op = make_operator("gaussian_cs", image_size=size, ratio=0.1, block_size=min(32, size))
    x = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(seed))
    return model, op, x, op.A(x)


def train_step(
    model: IDM, op: nn.Module, x: torch.Tensor, y: torch.Tensor, set_to_none: bool = True
) -> float:
    """Forward, L1 loss to ``x``, backward (gradients zeroed first); returns the loss."""
    model.zero_grad(set_to_none=set_to_none)
    loss = (model(y, op) - x).abs().mean()
    loss.backward()
    return float(loss.detach())


def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _fix_mmap_threshold() -> None:
    """Make glibc serve large blocks by mmap (returned on free) so RSS tracks live memory."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except OSError:
        pass


def _cuda_peak(model: IDM, op: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int | None:
    """Bytes above the resting allocation during one GPU step (``None`` without a GPU)."""
    if not torch.cuda.is_available():
        return None
    dev = torch.device("cuda")
    model, op, x, y = model.to(dev), op.to(dev), x.to(dev), y.to(dev)
    train_step(model, op, x, y)  # warm-up (allocates gradients once)
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    train_step(model, op, x, y)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    model.cpu(), op.cpu()
    return int(peak)


def measure(backbone: str, size: int, steps: int, mode: str, repeats: int = 2) -> dict:
    """All figures of one configuration, measured in the current process (see module doc)."""
    model, op, x, y = build(backbone, size, steps)
    model.set_memory_mode(mode)
    rss_built = _current_rss()
    # Gradients are allocated up front (and zeroed in place, not freed, between steps) so
    # the tensor meters see activations and temporaries only; RSS still includes them.
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    tensors = [*model.parameters(), *model.buffers(), *op.buffers(), x, y]
    tensors += [p.grad for p in model.parameters()]
    excluded = {t.untyped_storage().data_ptr() for t in tensors}
    saved, alloc = SavedTensorMeter(excluded), AllocationMeter(excluded)
    with saved, alloc:  # the metered step doubles as the warm-up
        loss = train_step(model, op, x, y, set_to_none=False)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        train_step(model, op, x, y, set_to_none=False)
        times.append(time.perf_counter() - t0)
    rss_peak = _max_rss() - rss_built
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return dict(
        backbone=backbone,
        size=size,
        steps=steps,
        mode=mode,
        loss=loss,
        saved_total=saved.bytes.total,
        saved_peak=saved.bytes.peak,
        alloc_peak=alloc.bytes.peak,
        rss_peak=rss_peak,
        cuda_peak=_cuda_peak(model, op, x, y),
        grad_bytes=grad_bytes,
        parameters=sum(p.numel() for p in model.parameters()),
        time=statistics.median(times) if times else float("nan"),
        times=times,
    )


def _child(conn: Any, kwargs: dict) -> None:
    _fix_mmap_threshold()
    try:
        conn.send(measure(**kwargs))
    except Exception as err:  # report instead of hanging the parent
        conn.send({"error": repr(err)})
    conn.close()


def measure_in_subprocess(**kwargs: Any) -> dict:
    """:func:`measure` in a forked process (fresh ``ru_maxrss``; imports are inherited)."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, kwargs))
    proc.start()
    child.close()
    result = parent.recv()
    proc.join()
    if "error" in result:
        raise RuntimeError(f"measuring {kwargs} failed: {result['error']}")
    return result


def grad_check(backbone: str, size: int, steps: int) -> dict:
    """Gradient and loss agreement of every mode with ``autograd``.

    ``grad_rel`` = max over parameters of ``max|g - g_ref|`` divided by the largest gradient
    entry of the model (per-parameter ratios are meaningless for gradients that are zero in
    exact arithmetic, e.g. attention key biases); ``grad_rel_l2`` = ``‖g - g_ref‖ / ‖g_ref‖``
    over all parameters.
    """
    model, op, x, y = build(backbone, size, steps)
    ref_loss, ref = None, {}
    out = {}
    for mode in MEMORY_MODES:
        loss = train_step(model.set_memory_mode(mode), op, x, y)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        if mode == "autograd":
            ref_loss, ref = loss, grads
            continue
        scale = max(float(g.abs().max()) for g in ref.values())
        diff = torch.cat([(grads[n] - g).flatten() for n, g in ref.items()])
        norm = torch.cat([g.flatten() for g in ref.values()]).norm()
        out[mode] = dict(
            grad_rel=max(float((grads[n] - g).abs().max()) for n, g in ref.items()) / scale,
            grad_rel_l2=float(diff.norm() / norm),
            loss_rel=abs(loss - ref_loss) / abs(ref_loss),
        )
    return dict(backbone=backbone, size=size, steps=steps, modes=out)


# -- the suite ----------------------------------------------------------------------------
def run(
    backbones: list[str],
    sizes: dict[str, int],
    steps: list[int],
    repeats: dict[str, int],
    subprocess: bool = True,
) -> list[dict]:
    rows = []
    for backbone in backbones:
        for T in steps:
            for mode in MEMORY_MODES:
                kw = dict(backbone=backbone, size=sizes[backbone], steps=T, mode=mode)
                kw["repeats"] = repeats[backbone]
                r = measure_in_subprocess(**kw) if subprocess else None
                if r is None:
                    r = measure(**kw)
                    r["rss_peak"] = None  # in-process ru_maxrss is not per-configuration
                logger.info(
                    "%-5s %3d² T=%d %-10s saved %8.1f MB (peak %8.1f)  alloc peak %8.1f MB  "
                    "rss %s  %.2fs  loss %.6f",
                    backbone,
                    r["size"],
                    T,
                    mode,
                    r["saved_total"] / MB,
                    r["saved_peak"] / MB,
                    r["alloc_peak"] / MB,
                    "n/a" if r["rss_peak"] is None else f"{r['rss_peak'] / MB:.1f} MB",
                    r["time"],
                    r["loss"],
                )
                rows.append(r)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(
        COMMAND, __doc__.split("\n")[0], "tiny in-process run (small 16², T 1 2) for tests"
    )
    parser.add_argument("--backbones", nargs="+", choices=sorted(BACKBONES), default=None)
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=None,
        help="image size per backbone, in --backbones order (default: sd 32, small 128)",
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8])
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed steps after the warm-up (default: sd 1, small 3, to fit ~15 min)",
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="only re-render memory.md/png from the numbers in OUTPUT_DIR/memory.json",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        backbones = args.backbones or ["small"]
        sizes = dict.fromkeys(backbones, 16)
        steps, repeats = [1, 2], dict.fromkeys(backbones, 1)
    else:
        backbones = args.backbones or ["sd", "small"]
        sizes = {b: DEFAULT_SIZES[b] for b in backbones}
        steps = args.steps
        repeats = {b: args.repeats or DEFAULT_REPEATS[b] for b in backbones}
    if args.sizes:
        if len(args.sizes) != len(backbones):
            parser.error("--sizes takes one size per backbone")
        sizes = dict(zip(backbones, args.sizes, strict=True))
    t0 = time.perf_counter()
    out = args.output_dir
    if args.render:
        # Re-render the table, targets and plot from the measured numbers of memory.json.
        payload = json.loads((out / "memory.json").read_text())
        rows, gradcheck = payload["rows"], payload["grad_check"]
    else:
        rows = run(backbones, sizes, steps, repeats, subprocess=not args.quick)
        gb = "small" if "small" in backbones else backbones[0]
        gradcheck = grad_check(gb, sizes[gb], 3 if not args.quick else 2)
        payload = dict(
            command=COMMAND + (" " + " ".join(argv) if argv else ""),
            machine=describe_machine(),
            torch_threads=torch.get_num_threads(),
            wall_seconds=time.perf_counter() - t0,
            rows=rows,
            grad_check=gradcheck,
        )
    logger.info(
        "grad check (%s %d², T=%d): %s",
        gradcheck["backbone"],
        gradcheck["size"],
        gradcheck["steps"],
        ", ".join(f"{m} {v['grad_rel']:.2e}" for m, v in gradcheck["modes"].items()),
    )
    checks = [c for b in sorted({r["backbone"] for r in rows}) for c in targets(rows, b)]
    for c in checks:
        logger.info("%s: %s (%s)", c["target"], c["value"], "met" if c["met"] else "NOT met")
    payload["targets"] = checks
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.md").write_text(
        to_markdown(rows, checks, gradcheck, payload["command"], payload["machine"])
    )
    (out / "memory.json").write_text(json.dumps(payload, indent=1))
    plot(rows, out / "memory.png")
    logger.info("wrote %s (%.0f s)", out / "memory.md", time.perf_counter() - t0)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
