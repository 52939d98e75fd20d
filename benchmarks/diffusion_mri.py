"""The diffusion family on held-out MRI slices: ``python -m benchmarks diffusion_mri``.

Single-coil 4× random and 8× equispaced fastMRI masks on the MRI suite's complex test
slices (smooth synthetic phase): zero-filled A†y, DDNM (100 DDIM steps, η = 0.85) on the
shipped prior (the grayscale prior runs on the real and imaginary parts as two images),
IDM (T = 3) fine-tuned from the prior (``idm_mri``) and the earlier from-scratch model
(``mri_4x``). Scored like the MRI suite (fastMRI volume metrics on the magnitude).
"""

from __future__ import annotations

from dataclasses import replace

from benchmarks import learned, mri
from benchmarks.main import suite_main

learned.register_shipped()
learned.register_diffusion()

SUITE = replace(
    mri.SUITE,
    name="diffusion_mri",
    title="The diffusion family on held-out MRI slices (single coil)",
    settings=(mri._setting(4, "random", "single"), mri._setting(8, "equispaced", "single")),
    methods=("pinv", "ddnm", "idm", "idm_mri_4x"),
)


def main(argv: list[str] | None = None) -> None:
    suite_main(SUITE, argv)
