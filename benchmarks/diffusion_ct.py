"""The diffusion family on held-out real CT: ``python -m benchmarks diffusion_ct``.

Parallel-beam 30 and 90 views on the CT suite's test section: FBP, A†y (least squares)
and DDNM (100 DDIM steps, η = 0.85) on the shipped grayscale prior, which saw CT
patches in pretraining. Scored like the CT suite.
"""

from __future__ import annotations

from dataclasses import replace

from benchmarks import ct, learned
from benchmarks.main import suite_main

learned.register_diffusion()

SUITE = replace(
    ct.SUITE,
    name="diffusion_ct",
    title="DDNM on held-out real CT (parallel beam)",
    settings=(ct._setting(30), ct._setting(90)),
    methods=("fbp", "pinv", "ddnm"),
)


def main(argv: list[str] | None = None) -> None:
    suite_main(SUITE, argv)
