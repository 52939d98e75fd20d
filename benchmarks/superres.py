"""Super-resolution suite: ``python -m benchmarks superres [--quick]``.

Average-pooling down-sampling by ×2 and ×4 on the corpus's test images; bicubic
interpolation of the low-resolution image is the classic reference, beside A†y, tuned
TV, DDNM (100 steps) on the shipped prior and the shipped IDM model (``idm_superres``).
"""

from __future__ import annotations

from benchmarks import learned, natural
from benchmarks.main import suite_main
from benchmarks.suite import Setting, Suite
from idm_med.operators import make_operator

FACTORS = (2, 4)


def _setting(factor: int) -> Setting:
    def build(size: int):
        return make_operator("superres", image_size=size, factor=factor)

    return Setting(f"x{factor}", build, 1.0 / factor**2, "average pooling")


learned.register_diffusion()
SUITE = Suite(
    name="superres",
    title="Super-resolution on held-out natural images",
    modality="natural",
    settings=tuple(_setting(f) for f in FACTORS),
    methods=("pinv", "bicubic", "tv", "ddnm", "sr3", "unet", "idm"),
    encode=natural.encode,
    decode=natural.decode,
    score=natural.score,
    columns=natural.COLUMNS,
    notes=natural.NOTES + " A†y replicates each low-resolution pixel.",
)


def main(argv: list[str] | None = None) -> None:
    suite_main(SUITE, argv)
