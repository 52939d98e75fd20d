"""The option parser every benchmark suite starts from."""

from __future__ import annotations

import argparse
from pathlib import Path

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
