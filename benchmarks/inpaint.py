"""Inpainting suite: ``python -m benchmarks inpaint [--quick]``.

90 % of the pixels missing at random, and one missing box covering 25 % of the image,
on the corpus's test images: A†y, tuned TV (least squares and alternated with the
range–null-space step), DDNM (100 steps) on the shipped prior and the shipped IDM model
(``idm_inpainting``, when it ships).
"""

from __future__ import annotations

from benchmarks import learned, natural
from benchmarks.main import suite_main
from benchmarks.suite import Setting, Suite
from idm_med.operators import make_operator


def _setting(name: str, missing: float, mask_type: str) -> Setting:
    def build(size: int):
        return make_operator(
            "inpainting", image_size=size, missing_ratio=missing, mask_type=mask_type, seed=0
        )

    return Setting(name, build, 1.0 - missing, mask_type)


learned.register_diffusion()
SUITE = Suite(
    name="inpaint",
    title="Inpainting on held-out natural images",
    modality="natural",
    settings=(_setting("90% random pixels", 0.9, "random"), _setting("box 25%", 0.25, "box")),
    methods=("pinv", "tv", "tv_rnd", "ddnm", "unet", "idm"),
    encode=natural.encode,
    decode=natural.decode,
    score=natural.score,
    columns=natural.COLUMNS,
    notes=natural.NOTES + " A†y leaves missing pixels at 0.",
)


def main(argv: list[str] | None = None) -> None:
    suite_main(SUITE, argv)
