"""Time A, At and A_pinv of every operator: ``python -m benchmarks operators``.

The figure that matters for IDM is ``A_pinv / A``: every unrolled step pays one ``A`` and
one ``A_pinv`` in the range–null-space projection, plus ``A`` + ``A_pinv`` (= AtA) per
injector. Each row also records how exact ``A_pinv`` is on the measured data
(``‖A A† y − y‖ / ‖y‖`` for ``y = A x``, and in image space the idempotence
``‖A†A x̂ − x̂‖ / ‖x̂‖`` of ``x̂ = A† y``) and which solver the operator used. Rows are
driven by :func:`benchmark_cases` (label → operator name and kwargs); a "before" row
keeps an earlier default for comparison.
"""

from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

from benchmarks.machine import describe_machine, report_header
from idm_med.operators import available_operators, make_operator

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"


def benchmark_cases(size: int, ct_views: int = 60) -> dict[str, tuple[str, dict]]:
    """Realistic settings per operator at image size ``size``: label → (name, kwargs)."""
    cases = {
        "gaussian_cs": ("gaussian_cs", dict(image_size=size, ratio=0.1, block_size=32)),
        "inpainting": ("inpainting", dict(image_size=size, missing_ratio=0.5)),
        "superres": ("superres", dict(image_size=size, factor=4)),
        "mri": ("mri", dict(image_size=size, acceleration=4, center_fraction=0.08)),
        "mri 8 coils": ("mri", dict(image_size=size, acceleration=4, center_fraction=0.08)),
        "mri 8 coils 8x": ("mri", dict(image_size=size, acceleration=8, center_fraction=0.04)),
        "ct": ("ct", dict(image_size=size, n_views=ct_views)),
        "ct fan (arc, 360°)": ("ct", dict(image_size=size, n_views=ct_views, geometry="fan")),
        # The defaults before the full detector and the exact solvers (issue 8).
        "ct before (circle, CG 1e-5)": (
            "ct",
            dict(
                image_size=size,
                n_views=ct_views,
                circle=True,
                pinv="cg",
                cg_tol=1e-5,
                cg_max_iter=200,
            ),
        ),
    }
    if "mri" in available_operators():
        from idm_med.acquisition.coils import synthetic_coil_maps

        cases["mri 8 coils"][1]["coil_maps"] = synthetic_coil_maps(8, (size, size))
        cases["mri 8 coils 8x"][1]["coil_maps"] = cases["mri 8 coils"][1]["coil_maps"]
    return {label: case for label, case in cases.items() if case[0] in available_operators()}


def time_call(fn, arg, min_run_time: float) -> float:
    """Median seconds per call (torch.utils.benchmark handles warm-up and threads)."""
    timer = Timer(stmt="fn(arg)", globals={"fn": fn, "arg": arg})
    return timer.blocked_autorange(min_run_time=min_run_time).median


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run(
    sizes: list[int],
    batches: list[int],
    min_run_time: float,
    ct_views: int = 60,
    only: list[str] | None = None,
) -> list[dict]:
    rows = []
    for size in sizes:
        for label, (name, kwargs) in benchmark_cases(size, ct_views).items():
            if only and label not in only:
                continue
            op = make_operator(name, **kwargs)
            for batch in batches:
                x = torch.rand(batch, *op.image_shape)
                y = op.A(x)
                with torch.no_grad():
                    times = {
                        m: time_call(getattr(op, m), arg, min_run_time)
                        for m, arg in (("A", x), ("At", y), ("A_pinv", y))
                    }
                    x_pinv = op.A_pinv(y)
                    residual = _relative(op.A(x_pinv), y)
                    idempotence = _relative(op.AtA(x_pinv), x_pinv)
                row = dict(operator=label, size=size, batch=batch, **times)
                row["ratio"] = times["A_pinv"] / times["A"]
                row["residual"] = residual
                row["idempotence"] = idempotence
                row["solver"] = getattr(op, "solver", "closed form")
                views = op.config.get("n_views")
                row["setting"] = f"{views} views" if views else ""
                logger.info(
                    "%-12s %4d² B=%d  A %.4fs  At %.4fs  A_pinv %.4fs  A_pinv/A %.1f  res %.1e",
                    label,
                    size,
                    batch,
                    times["A"],
                    times["At"],
                    times["A_pinv"],
                    row["ratio"],
                    residual,
                )
                rows.append(row)
    return rows


def to_markdown(rows: list[dict], command: str) -> str:
    lines = [
        *report_header("Operator timings", command, describe_machine()),
        "",
        "Median seconds per call (no autograd), float32. `A_pinv / A` is the cost the IDM core",
        "pays per range–null-space step relative to one forward; `‖AA†y−y‖/‖y‖` how exact",
        "`A_pinv` is on `y = A x` (x uniform random), `‖A†Ax̂−x̂‖/‖x̂‖` how far `x̂ = A†y` is",
        "from the row space (both 0 for an exact pseudo-inverse).",
        "",
        "| operator | size | batch | A (s) | At (s) | A_pinv (s) | A_pinv / A "
        "| ‖AA†y−y‖/‖y‖ | ‖A†Ax̂−x̂‖/‖x̂‖ | A_pinv solver | setting |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['operator']} | {r['size']}² | {r['batch']} | {r['A']:.2e} | {r['At']:.2e} "
            f"| {r['A_pinv']:.2e} | {r['ratio']:.1f} | {r['residual']:.1e} "
            f"| {r.get('idempotence', float('nan')):.1e} | {r['solver']} "
            f"| {r['setting']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks operators", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 320])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--min-run-time", type=float, default=0.5, help="seconds of repeated calls per measurement"
    )
    parser.add_argument("--ct-views", type=int, default=60, help="CT projection angles")
    parser.add_argument("--only", nargs="+", metavar="LABEL", help="run only these rows")
    parser.add_argument("--output", type=Path, default=RESULTS / "operators.md")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = run(args.sizes, args.batches, args.min_run_time, args.ct_views, args.only)
    command = "python -m benchmarks operators" + ("" if not argv else " " + shlex.join(argv))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(args.output.suffix + ".tmp")
    tmp.write_text(to_markdown(rows, command))
    tmp.replace(args.output)  # never leave a half-written table
    logger.info("wrote %s", args.output)
