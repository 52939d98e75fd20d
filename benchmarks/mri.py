"""MRI suite: ``python -m benchmarks mri [--quick]``.

Settings: 4× and 8× acceleration, fastMRI random and equispaced column masks (centre
fraction 0.08 and 0.04), single-coil and 8-coil SENSE (synthetic birdcage maps). Test
images: the corpus's held-out MRI slices (MNI152 axial test slices, dipy T1 coronal,
matplotlib's s1045 sagittal head), each given a smooth synthetic phase (seeded per slice)
so that the image is complex as in a real scan. Scored on the magnitude with fastMRI's
volume-level NMSE / PSNR / SSIM, one volume per source, averaged over sources.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from benchmarks import learned
from benchmarks.main import suite_main
from benchmarks.suite import Setting, Suite
from idm_med import metrics
from idm_med.operators import make_operator

NUM_COILS = 8
CENTER_FRACTION = {4: 0.08, 8: 0.04}


def smooth_phase(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A smooth random phase map (radians): a seeded quadratic polynomial over the field
    of view with a peak-to-peak of about ±π/2."""
    rng = np.random.default_rng(seed)
    v, u = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    c = rng.uniform(-1, 1, 6) * np.pi / 4
    return c[0] + c[1] * u + c[2] * v + c[3] * u * v + c[4] * u**2 + c[5] * v**2


def encode(image: np.ndarray, index: int) -> torch.Tensor:
    """Magnitude image ``(H, W)`` → complex ``(1, 2, H, W)`` with :func:`smooth_phase`."""
    z = image * np.exp(1j * smooth_phase(image.shape, index))
    return torch.from_numpy(np.stack([z.real, z.imag])[None].astype(np.float32))


def decode(x: torch.Tensor) -> np.ndarray:
    return torch.linalg.vector_norm(x.detach(), dim=1)[0].cpu().double().numpy()


@cache
def _coil_maps(size: int) -> torch.Tensor:
    from idm_med.acquisition.coils import synthetic_coil_maps

    return synthetic_coil_maps(NUM_COILS, (size, size))


def _setting(accel: int, mask: str, coils: str) -> Setting:
    def build(size: int):
        maps = _coil_maps(size) if coils == "multi" else None
        return make_operator(
            "mri",
            image_size=size,
            acceleration=accel,
            center_fraction=CENTER_FRACTION[accel],
            mask_type=mask,
            seed=0,
            coil_maps=maps,
        )

    label = "single-coil" if coils == "single" else f"{NUM_COILS}-coil SENSE"
    return Setting(f"{accel}x {mask} {label}", build, 1.0 / accel, f"{label}, {mask}")


learned.register_shipped()
learned.register_diffusion()
SUITE = Suite(
    name="mri",
    title="MRI reconstruction on held-out slices",
    modality="mri",
    settings=tuple(
        _setting(a, m, c)
        for c in ("single", "multi")
        for m in ("random", "equispaced")
        for a in (4, 8)
    ),
    methods=("pinv", "tv", "wavelet", "bart_tv", "bart_l1", "idm_mri_4x", "idm"),
    encode=encode,
    decode=decode,
    score=metrics.evaluate,
    columns=(("psnr", "PSNR (dB)", ".2f"), ("ssim", "SSIM", ".4f"), ("nmse", "NMSE", ".4f")),
    notes="Magnitude images; fastMRI metrics per source volume (PSNR/SSIM data range = volume "
    "max, SSIM 7×7 per slice), averaged over sources. A†y is the zero-filled image "
    "(single coil) or the exact SENSE pseudo-inverse (multi-coil). BART rows appear "
    "only when the `bart` binary is on PATH.",
)


def main(argv: list[str] | None = None) -> None:
    suite_main(SUITE, argv)
