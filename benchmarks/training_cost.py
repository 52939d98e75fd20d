"""What one IDM training step costs on this machine, per choice: ``python -m benchmarks
training_cost``.

The CPU budget of the shipped models (``scripts/train_idm.py``) is spent by the choices
timed here, one changed at a time from the recipe (``idm_med.recipes``: the small UNet of
the shipped prior, 96² patches, batch 4, T = 3, fp32, plain autograd): patch size, batch,
T, model width (from scratch: the prior fixes the width), bf16 autocast, channels-last
memory format, ``torch.compile`` and the memory modes. Each row is the median time of
``--repeats`` full steps (forward, L1 loss, backward, AdamW step) on block Gaussian CS
(ratio 0.3) after ``--warmup`` untimed ones; throughput is training pixels per second
(batch × patch²), the figure a budget is planned with. What the choices buy in quality is
measured where it is trained: T and the prior in ``ablation.md``, the shipped models'
validation in their model cards.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.machine import describe_machine, report_header
from benchmarks.options import base_parser
from idm_med.backbones import small_unet_config
from idm_med.datasets.atomic import atomic_path
from idm_med.recipes import recipe

logger = logging.getLogger(__name__)
COMMAND = "python -m benchmarks training_cost"

#: name -> (recipe overrides, step options); each changes one thing from the baseline,
#: except the bf16 + channels-last pair.
CHOICES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "baseline (96², batch 4, T=3, fp32)": ({}, {}),
    "patch 64²": ({"image_size": 64}, {}),
    "patch 128²": ({"image_size": 128}, {}),
    "batch 8": ({"batch_size": 8}, {}),
    "T=1": ({"steps": 1}, {}),
    "T=5": ({"steps": 5}, {}),
    "width ×0.5 (16, 32, 32), scratch": (
        {"from_scratch": True, "backbone": small_unet_config(block_out_channels=(16, 32, 32))},
        {},
    ),
    "width ×1 (32, 64, 64), scratch": ({"from_scratch": True}, {}),
    "width ×2 (64, 128, 128), scratch": (
        {
            "from_scratch": True,
            "backbone": small_unet_config(block_out_channels=(64, 128, 128)),
        },
        {},
    ),
    "bf16 autocast": ({}, {"bf16": True}),
    "channels-last": ({}, {"channels_last": True}),
    # The one combination: on CPUs with AMX, bf16 convolutions may prefer the NHWC layout.
    "bf16 autocast + channels-last": ({}, {"bf16": True, "channels_last": True}),
    "torch.compile": ({}, {"compile": True}),
    # The whole model traces the operators and the couplings too; the backbone alone, at
    # the one patch shape of training, is the part worth compiling.
    "torch.compile (backbone, static shapes)": ({}, {"compile_backbone": True}),
    "memory mode level1+2": ({"memory_mode": "level1+2"}, {}),
}
QUICK = ("baseline (96², batch 4, T=3, fp32)", "patch 64²", "bf16 autocast")


def time_choice(
    overrides: dict[str, Any], options: dict[str, Any], warmup: int, repeats: int
) -> dict[str, float]:
    """Median seconds of one training step of the ``cs`` recipe changed by ``overrides``."""
    config = recipe("cs", operator={"ratio": 0.3}, **overrides)
    torch.manual_seed(0)
    model = config.make_model()
    model.set_memory_mode(config.memory_mode)
    op = config_operator(config)
    x = torch.rand(config.batch_size, 1, config.image_size, config.image_size)
    if options.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    net = torch.compile(model) if options.get("compile") else model
    if options.get("compile_backbone"):
        model.backbone = torch.compile(model.backbone, dynamic=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    with torch.no_grad():
        y = op.A(x)
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(options.get("bf16"))):
            loss = (net(y, op) - x).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    pixels = config.batch_size * config.image_size**2
    return {"seconds": seconds, "pixels_per_second": pixels / seconds}


def config_operator(config):
    from idm_med.training import OperatorPool

    return OperatorPool(config.operator, config.image_size)(torch.Generator().manual_seed(0))


def to_markdown(rows: list[dict], payload: dict) -> str:
    base = rows[0]["seconds"]
    lines = [
        *report_header(
            "Cost of one IDM training step per choice",
            payload["command"],
            f"{payload['machine']}; median of {payload['repeats']} steps after "
            f"{payload['warmup']} warm-up steps. Other jobs may have shared the machine: "
            "compare rows within one run.",
        ),
        "",
        "| choice | s / step | × baseline | pixels / s |",
        "|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            error = r["error"].strip().splitlines()[0].replace("|", "/")  # one table cell
            lines.append(f"| {r['choice']} | failed: {error} | | |")
            continue
        lines.append(
            f"| {r['choice']} | {r['seconds']:.2f} | {r['seconds'] / base:.2f} | "
            f"{r['pixels_per_second']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(COMMAND, __doc__.split("\n")[0], "three choices, one timed step each")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=sorted(CHOICES), default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.only or (list(QUICK) if args.quick else list(CHOICES))
    warmup, repeats = (1, 1) if args.quick else (args.warmup, args.repeats)
    rows = []
    for name in names:
        overrides, options = CHOICES[name]
        try:
            row = {"choice": name, **time_choice(overrides, options, warmup, repeats)}
            logger.info("%s: %.2f s / step", name, row["seconds"])
        except Exception as err:  # e.g. torch.compile without a C++ compiler
            logger.warning("%s failed: %s", name, err)
            row = {"choice": name, "error": f"{type(err).__name__}: {str(err)[:80]}"}
        rows.append(row)
    payload = {
        "command": " ".join([COMMAND, *(argv or [])]),
        "machine": describe_machine(),
        "warmup": warmup,
        "repeats": repeats,
        "rows": rows,
    }
    out: Path = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "training_cost.json") as tmp:
        tmp.write_text(json.dumps(payload, indent=1))
    with atomic_path(out / "training_cost.md") as tmp:
        tmp.write_text(to_markdown(rows, payload))
    logger.info("wrote %s", out / "training_cost.md")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
