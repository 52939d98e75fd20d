"""Sparse-view CT suite: ``python -m benchmarks ct [--quick]``.

Parallel beam, 30, 60 and 90 views over 180°, and fan beam (arc detector, the default
geometry of :class:`operators.fan_beam.FanGeometry`), 60 views over 360°, the geometry of
the scanners whose DICOM users bring, on the corpus's held-out real CT section(s) as
normalised attenuation (``(HU + 1000) / 4000``). The shipped ``idm_ct`` was trained on
parallel beam only, so its fan-beam row measures how it transfers to a geometry it never
saw. Scored in HU over the soft-tissue window [−160, 240] HU and on the [0, 1]
attenuation scale.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks import learned
from benchmarks.main import suite_main
from benchmarks.suite import Setting, Suite
from idm_med import metrics
from idm_med.operators import make_operator

VIEWS = (30, 60, 90)
#: Views of the fan-beam setting (over 360°).
FAN_VIEWS = 60


def encode(image: np.ndarray, index: int) -> torch.Tensor:
    return torch.from_numpy(image[None, None].astype(np.float32))


def decode(x: torch.Tensor) -> np.ndarray:
    return x.detach()[0, 0].cpu().double().numpy()


def _setting(views: int, geometry: str = "parallel") -> Setting:
    def build(size: int):
        return make_operator("ct", image_size=size, n_views=views, geometry=geometry)

    # The parallel-beam names predate the fan-beam setting; tuning.json is keyed by them.
    name = f"{views} views" if geometry == "parallel" else f"{views} views {geometry} beam"
    return Setting(name, build, views / 256, f"{geometry} beam")


learned.register_diffusion()
SUITE = Suite(
    name="ct",
    title="Sparse-view CT on held-out real sections",
    modality="ct",
    settings=(*(_setting(v) for v in VIEWS), _setting(FAN_VIEWS, "fan")),
    methods=("fbp", "pinv", "sart", "tv", "unet", "idm"),
    encode=encode,
    decode=decode,
    score=metrics.ct_metrics,
    columns=(
        ("psnr_hu", "PSNR HU win (dB)", ".2f"),
        ("ssim_hu", "SSIM HU win", ".4f"),
        ("psnr", "PSNR [0,1] (dB)", ".2f"),
        ("ssim", "SSIM [0,1]", ".4f"),
        ("nmse", "NMSE", ".4f"),
    ),
    notes=f"HU window {metrics.CT_WINDOW} (both images clipped, data range its width); "
    "[0, 1] metrics on normalised attenuation with data range 1. The ratio axis of the "
    "figure is views / 256. A†y is the CG least-squares solution.",
    fixed={"tv": {"nonneg": True}},
    # ‖A‖² of the Radon transform grows with the views and the size, so the normalised
    # TV weight that fits is smaller than for the unit-norm operators.
    grids={"tv": {"lam": [1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3]}},
)


def main(argv: list[str] | None = None) -> None:
    suite_main(SUITE, argv)
