"""Reconstruction time of IDM (T = 3) against DDNM (100 steps): ``python -m benchmarks speed``.

Both methods reconstruct the same ``gaussian_cs`` (ratio 0.1) measurement of one image
(batch 1, 1 channel) with the same UNet: IDM runs its T = 3 unrolled steps (injectors and
couplings included) and DDNM (:func:`idm_med.ddnm.ddnm_sample`, η = 0.85) calls the IDM
model's noise estimator (``model.backbone`` without injectors, as DDNM has none) 100 times.
Inference only (``torch.no_grad``), random weights (speed does not depend on them). The
two are timed in interleaved repeats (IDM, DDNM, IDM, DDNM, ...) after one warm-up each, so
load changes on a shared machine hit both alike; the figure is the median per image.

Step-count bound of the speed-up: 100 / 3 ≈ 33×; IDM's steps cost more than DDNM's (the
injectors call ``AtA`` on full-resolution images), so the measured ratio stays below that.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.machine import describe_machine, report_header
from benchmarks.memory import BACKBONES
from benchmarks.options import base_parser
from idm_med.ddnm import ddnm_sample
from idm_med.model import IDM
from idm_med.operators import make_operator

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
COMMAND = "python -m benchmarks speed"
DEFAULT_SIZES = {"small": 256, "sd": 64}
DEFAULT_REPEATS = {"small": 3, "sd": 2}  # keeps the default run near 10 min on 1 thread
TARGET = 25.0


def _timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@torch.no_grad()
def compare(backbone: str, size: int, repeats: int, ddnm_steps: int = 100) -> dict:
    """Median seconds per image of IDM (T = 3) and DDNM, interleaved; returns a result row."""
    torch.manual_seed(0)
    model = IDM(backbone=BACKBONES[backbone](), image_channels=1, steps=3).eval()
    op = make_operator("gaussian_cs", image_size=size, ratio=0.1, block_size=min(32, size))
    x = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0))
    y = op.A(x)

    def idm() -> None:
        model(y, op)

    def estimator(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model.backbone(x)  # same network; the timestep does not change its cost

    def ddnm() -> None:
        ddnm_sample(y, op, estimator, steps=ddnm_steps, eta=0.85, seed=0)

    idm()  # warm-up (the UNet is shared, so DDNM needs only a short one)
    ddnm_sample(y, op, estimator, steps=2, eta=0.85, seed=0)
    t_idm, t_ddnm = [], []
    for _ in range(repeats):
        t_idm.append(_timed(idm))
        t_ddnm.append(_timed(ddnm))
    row = dict(
        backbone=backbone,
        size=size,
        idm_steps=3,
        ddnm_steps=ddnm_steps,
        parameters=model.num_parameters(),
        idm=statistics.median(t_idm),
        ddnm=statistics.median(t_ddnm),
        idm_times=t_idm,
        ddnm_times=t_ddnm,
    )
    row["speedup"] = row["ddnm"] / row["idm"]
    logger.info(
        "%-5s %3d²  IDM (T=3) %.3fs  DDNM (%d steps) %.3fs  speed-up %.1f×",
        backbone,
        size,
        row["idm"],
        ddnm_steps,
        row["ddnm"],
        row["speedup"],
    )
    return row


def to_markdown(rows: list[dict], cmd: str, threads: int) -> str:
    lines = [
        *report_header(
            "Reconstruction speed: IDM (T = 3) against DDNM (100 steps)",
            cmd,
            f"{describe_machine()}. torch threads: {threads}. The machine was shared",
        ),
        "with other jobs during the run; IDM and DDNM were timed in interleaved repeats so",
        "load changes affect both alike.",
        "",
        "Seconds per image (batch 1, 1 channel, `gaussian_cs` ratio 0.1, no grad, float32),",
        "median of the repeats after a warm-up; both use the same UNet (DDNM calls the IDM",
        "model's noise estimator without injectors). `sd` = the paper's trimmed SD v1.5",
        "layout (320/640 channels), `small` = the small CPU UNet. Step-count bound 100/3 ≈ 33×;",
        f"target ≥ {TARGET:.0f}×; the paper reports 14.54× (0.63 s vs 9 s, 256², GPU).",
        "",
        "| backbone | size | params (M) | repeats | IDM T=3 (s) | DDNM 100 (s) | speed-up "
        "| target met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {r['size']}² | {r['parameters'] / 1e6:.2f} "
            f"| {len(r['idm_times'])} | {r['idm']:.3f} | {r['ddnm']:.2f} "
            f"| {r['speedup']:.1f}× | {'yes' if r['speedup'] >= TARGET else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(COMMAND, __doc__.split("\n")[0], "tiny run (small 16², 1 repeat)")
    parser.add_argument("--backbones", nargs="+", choices=sorted(BACKBONES), default=None)
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=None, help="per backbone (default small 256, sd 64)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="interleaved timed repeats (small 3, sd 2)"
    )
    parser.add_argument("--ddnm-steps", type=int, default=100)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        backbones = args.backbones or ["small"]
        sizes, repeats = dict.fromkeys(backbones, 16), dict.fromkeys(backbones, 1)
    else:
        backbones = args.backbones or ["small", "sd"]
        sizes = {b: DEFAULT_SIZES[b] for b in backbones}
        repeats = {b: args.repeats or DEFAULT_REPEATS[b] for b in backbones}
    if args.sizes:
        if len(args.sizes) != len(backbones):
            parser.error("--sizes takes one size per backbone")
        sizes = dict(zip(backbones, args.sizes, strict=True))
    t0 = time.perf_counter()
    rows = [compare(b, sizes[b], repeats[b], args.ddnm_steps) for b in backbones]
    cmd = COMMAND + (" " + " ".join(argv) if argv else "")
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.md").write_text(to_markdown(rows, cmd, args.threads))
    payload = dict(
        command=cmd,
        machine=describe_machine(),
        torch_threads=args.threads,
        target=TARGET,
        wall_seconds=time.perf_counter() - t0,
        rows=rows,
    )
    (out / "speed.json").write_text(json.dumps(payload, indent=1))
    logger.info("wrote %s (%.0f s)", out / "speed.md", time.perf_counter() - t0)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
