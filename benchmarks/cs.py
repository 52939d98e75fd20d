"""Block Gaussian compressed sensing suite: ``python -m benchmarks cs [--quick]``.

Ratios 0.1, 0.3 and 0.5 on 32×32 blocks (the IDM paper's natural-image CS task), on the
corpus's test images (cameraman, barbara, monarch): A†y, tuned TV and l1-wavelet,
DDNM (100 steps) on the shipped prior, the supervised U-Net on A†y (trained from scratch
with ``idm_cs``'s data, loss and iterations) and the shipped IDM model (``idm_cs``).
"""

from __future__ import annotations

from benchmarks import learned, natural
from benchmarks.main import suite_main
from benchmarks.suite import Setting, Suite
from idm_med.operators import make_operator

RATIOS = (0.1, 0.3, 0.5)


def ratio_setting(ratio: float) -> Setting:
    def build(size: int):
        return make_operator("gaussian_cs", image_size=size, ratio=ratio, block_size=32)

    return Setting(f"ratio {ratio:g}", build, ratio, "block Gaussian CS")


learned.register_diffusion()
SUITE = Suite(
    name="cs",
    title="Block Gaussian compressed sensing on held-out natural images",
    modality="natural",
    settings=tuple(ratio_setting(r) for r in RATIOS),
    methods=("pinv", "tv", "wavelet", "ddnm", "idm", "idm_stage1", "idm_scratch", "unet"),
    encode=natural.encode,
    decode=natural.decode,
    score=natural.score,
    columns=natural.COLUMNS,
    notes=natural.NOTES,
    grids={"tv": {"lam": [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2]}},
)


def main(argv: list[str] | None = None) -> None:
    suite_main(SUITE, argv)
