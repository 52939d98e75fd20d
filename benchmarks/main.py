"""Command-line entry of the quality suites (``python -m benchmarks mri`` etc.)."""

from __future__ import annotations

import logging
import sys

import torch

from benchmarks import suite_merge
from benchmarks.options import base_parser
from benchmarks.suite import RunConfig, Suite, run_suite, write_results

logger = logging.getLogger(__name__)


def suite_main(suite: Suite, argv: list[str] | None = None) -> None:
    """Parse the suite's options, run it and write its results."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = base_parser(
        f"python -m benchmarks {suite.name}",
        suite.title,
        "reduced run (128², 2 test sources, 1 slice each) in a few minutes",
    )
    parser.add_argument("--size", type=int, default=None, help="image size (default 256)")
    parser.add_argument("--settings", nargs="+", default=None, help="only these settings")
    parser.add_argument("--methods", nargs="+", default=None, help="only these methods")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="with --methods / --settings: add those rows to the existing results, keeping "
        "the others "
        "(benchmarks/suite_merge.py)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = RunConfig.quick() if args.quick else RunConfig()
    if args.size:
        config = RunConfig(args.size, config.max_sources, config.max_slices)
    if args.settings:
        config = RunConfig(config.size, config.max_sources, config.max_slices, tuple(args.settings))
    if args.merge and not (args.methods or args.settings):
        parser.error("--merge needs --methods or --settings (what to add)")
    previous = suite_merge.load_previous(args.output_dir, suite.name) if args.merge else None
    methods = suite.methods
    if args.methods:
        from dataclasses import replace

        suite = replace(suite, methods=tuple(args.methods))
    payload = run_suite(suite, config)
    command = " ".join(["python -m benchmarks", suite.name, *argv])
    if previous is not None:
        payload = suite_merge.merge(*previous, payload, methods)
        command = payload.pop("command", command)  # the full-suite command stays
    write_results(suite, payload, args.output_dir, command)
