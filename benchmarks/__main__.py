"""Run a benchmark suite: ``python -m benchmarks SUITE [--quick] [--help]``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

SUITES = {
    "mri": "MRI 4×/8×, random/equispaced, single-coil and SENSE (results/mri.md)",
    "ct": "sparse-view CT, 30/60/90 views (results/ct.md)",
    "cs": "block Gaussian CS, ratios 0.1/0.3/0.5 (results/cs.md)",
    "inpaint": "inpainting, 90% random pixels and a box (results/inpaint.md)",
    "superres": "super-resolution ×2 and ×4 (results/superres.md)",
    "diffusion": "A†y vs DDNM vs IDM from the prior vs from scratch (results/diffusion.md)",
    "diffusion_mri": "A†y vs DDNM vs IDM on held-out MRI (results/diffusion_mri.md)",
    "diffusion_ct": "FBP / A†y vs DDNM on held-out CT (results/diffusion_ct.md)",
    "ablation": "IDM ablations: T, injectors, final step, init, per ratio (results/ablation.md)",
    "tune": "tune the baselines per setting on validation images (results/tuning.json)",
    "validate": "score an IDM checkpoint on the validation images against the tuned baselines",
    "operators": "time A, At and A_pinv of every operator (results/operators.md)",
    "sense_bart": "multi-coil MRI end to end: SENSE A†y against BART ecalib + pics "
    "(results/sense_bart.md)",
    "sense_cutoff": "SENSE A† cutoff for the noisy MRI settings, on validation images "
    "(results/sense_cutoff.md)",
    "ct_inner_cg": "CG iterations of IDM's inner solves on CT, on validation images "
    "(results/ct_inner_cg.md)",
    "inference_options": "IDM's bf16 backbone and windowed attention: PSNR and time on "
    "validation images (results/inference_options.md)",
    "memory": "training-step memory of the IDM modes over T (results/memory.md)",
    "training_cost": "cost of one training step per choice: patch, batch, T, width, bf16, "
    "channels-last, torch.compile (results/training_cost.md)",
    "speed": "reconstruction time of IDM (T=3) against DDNM (100 steps) (results/speed.md)",
}


def run(suite: str, argv: list[str]) -> None:
    """Run ``suite`` with its own options ``argv``."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; expected one of {sorted(SUITES)}")
    importlib.import_module(f"benchmarks.{suite}").main(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="idm-med benchmark suites; each writes its results under benchmarks/results/.",
        epilog="\n".join(f"  {name:10s} {text}" for name, text in SUITES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("suite", choices=list(SUITES), help="which suite to run")
    if not argv or argv[0] not in SUITES:
        parser.parse_args(argv)  # prints the help or the error and exits
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run(argv[0], argv[1:])  # the suite parses its own options (and its own --help)


if __name__ == "__main__":
    main()
