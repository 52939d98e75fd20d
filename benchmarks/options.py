"""The option parser every benchmark suite starts from, and the main of one-table scans."""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def base_parser(prog: str, description: str, quick_help: str) -> argparse.ArgumentParser:
    """``--quick``, ``--threads`` and ``--output-dir``, shared by all suites."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared, oversubscribed machine 2 threads spin-wait)",
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    return parser


def run_scan(
    name: str,
    argv: list[str] | None,
    description: str,
    scan: Callable[[bool], dict[str, Any]],
    to_markdown: Callable[[dict[str, Any], str], str],
) -> None:
    """The ``main`` of a one-table benchmark ``name``: parse the base options, run
    ``scan(quick)``, add the machine and the wall time, and write ``results/<name>.json``
    and ``.md`` (atomically) with the command that regenerates them."""
    import torch

    from benchmarks.machine import describe_machine
    from idm_med.datasets.atomic import atomic_write_text

    parser = base_parser(
        f"python -m benchmarks {name}", description, "64², 1 validation slice per source"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = scan(args.quick)
    result["machine"] = describe_machine()
    result["wall_seconds"] = time.perf_counter() - t0
    command = f"python -m benchmarks {name}" + (" " + " ".join(argv) if argv else "")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output_dir / f"{name}.json", json.dumps(result, indent=1))
    atomic_write_text(args.output_dir / f"{name}.md", to_markdown(result, command))
    logging.getLogger(__name__).info("wrote %s", args.output_dir / f"{name}.md")
