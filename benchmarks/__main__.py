"""Run a benchmark suite: ``python -m benchmarks {operators,memory,speed,mri} [--help]``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

SUITES = {
    "operators": "time A, At and A_pinv of every operator (results/operators.md)",
    "memory": "training-step memory of the IDM modes over T (results/memory.md)",
    "speed": "reconstruction time of IDM (T=3) against DDNM (100 steps) (results/speed.md)",
    "mri": "MRI quality on held-out data: zero-filled, TV, IDM (results/mri.md)",
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="idm-med benchmark suites; each writes its table under benchmarks/results/.",
        epilog="\n".join(f"  {name:10s} {text}" for name, text in SUITES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("suite", choices=sorted(SUITES), help="which suite to run")
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    module = importlib.import_module(f"benchmarks.{args.suite}")
    module.main(rest)


if __name__ == "__main__":
    main()
