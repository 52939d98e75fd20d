"""The diffusion family on held-out natural images: ``python -m benchmarks diffusion``.

A†y, DDNM (100 DDIM steps, η = 0.85) on the shipped prior (``prior_gray``), IDM (T = 3)
fine-tuned from that prior (``idm_cs``: one model for CS ratios 0.1 / 0.3 / 0.5, trained
in stages that ``idm-med models`` lists), its first stage alone (600 iterations,
``ablation_models/idm_cs_stage1``) and the same recipe trained from scratch for those 600 iterations
(``ablation_models/idm_cs_scratch``), on
block Gaussian CS, 90 % inpainting and ×4 super-resolution of the corpus' test images
(cameraman, barbara, monarch). The same UNet architecture serves DDNM and IDM, so the
seconds-per-slice column gives the speed-up of 3 unrolled steps over 100 sampling steps.
Models: ``scripts/train_prior.py``, ``scripts/train_idm.py``.
"""

from __future__ import annotations

from benchmarks import learned, natural
from benchmarks.main import suite_main
from benchmarks.suite import Setting, Suite
from idm_med.operators import make_operator

learned.register_diffusion()


def _cs(ratio: float) -> Setting:
    def build(size: int):
        return make_operator("gaussian_cs", image_size=size, ratio=ratio, block_size=32)

    return Setting(f"CS ratio {ratio:g}", build, ratio, "block Gaussian CS")


def _inpaint(size: int):
    return make_operator("inpainting", image_size=size, missing_ratio=0.9, seed=0)


def _superres(size: int):
    return make_operator("superres", image_size=size, factor=4)


SUITE = Suite(
    name="diffusion",
    title="The diffusion family (DDNM, IDM from the prior, IDM from scratch) on held-out "
    "natural images",
    modality="natural",
    settings=(
        *(_cs(r) for r in (0.1, 0.3, 0.5)),
        Setting("inpainting 90% random", _inpaint, 0.1, "inpainting"),
        Setting("superres x4", _superres, 1 / 16, "average pooling"),
    ),
    methods=("pinv", "ddnm", "idm", "idm_stage1", "idm_scratch"),
    encode=natural.encode,
    decode=natural.decode,
    score=natural.score,
    columns=natural.COLUMNS,
    notes=natural.NOTES,
)


def main(argv: list[str] | None = None) -> None:
    suite_main(SUITE, argv)
