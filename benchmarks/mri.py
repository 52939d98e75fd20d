"""MRI suite: ``python -m benchmarks mri [--quick]``.

Settings: 4× and 8× acceleration, fastMRI random and equispaced column masks (centre
fraction 0.08 and 0.04), single-coil and 8-coil SENSE (synthetic birdcage maps),
noiseless; and 4× / 8× random 8-coil SENSE with complex Gaussian k-space noise of σ =
:data:`NOISE_SIGMA` (1 % of the image maximum per coil, seeded per slice), where the
SENSE pseudo-inverse drops singular values below :data:`NOISY_SENSE_RTOL` · σ_max (the
exact one amplifies the noise; the cutoff is chosen on validation images by
``python -m benchmarks sense_cutoff``). Test
images: the corpus's held-out MRI slices (MNI152 axial test slices, dipy T1 coronal,
matplotlib's s1045 sagittal head), each given a smooth synthetic phase (seeded per slice)
so that the image is complex as in a real scan. Scored on the magnitude with fastMRI's
volume-level NMSE / PSNR / SSIM, one volume per source, averaged over sources.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch

from benchmarks import learned
from benchmarks.main import suite_main
from benchmarks.suite import Setting, Suite
from idm_med import metrics
from idm_med.acquisition.noise import add_kspace_noise
from idm_med.operators import make_operator

NUM_COILS = 8
CENTER_FRACTION = {4: 0.08, 8: 0.04}
#: k-space noise of the noisy settings; images are scaled to [0, 1] and the FFT and the
#: coil maps (Σ|S_c|² = 1) preserve norms, so this is the image-domain noise std too.
NOISE_SIGMA = 0.01
#: SENSE ``pinv_rtol`` of the noisy settings, one for the noise level: on the validation
#: images (results/sense_cutoff.md, grid 1e-2 … 0.5) the best A†y at 8× and within 0.02 dB
#: of the best (0.3) at 4×. The measured-data default 1e-2 (``MEASURED_SENSE_RTOL``, for
#: quantisation-level noise) leaves A†y at 14 dB here.
NOISY_SENSE_RTOL = 0.2


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


def _kspace_noise(y: torch.Tensor, seed: int) -> torch.Tensor:
    return add_kspace_noise(y, NOISE_SIGMA, seed)[0]


def _setting(accel: int, mask: str, coils: str, noisy: bool = False) -> Setting:
    def build(size: int, pinv_rtol: float | None = None):
        maps = _coil_maps(size) if coils == "multi" else None
        if pinv_rtol is None and noisy:
            pinv_rtol = NOISY_SENSE_RTOL
        extra = {} if pinv_rtol is None else {"pinv_rtol": pinv_rtol}
        return make_operator(
            "mri",
            image_size=size,
            acceleration=accel,
            center_fraction=CENTER_FRACTION[accel],
            mask_type=mask,
            seed=0,
            coil_maps=maps,
            **extra,
        )

    label = "single-coil" if coils == "single" else f"{NUM_COILS}-coil SENSE"
    name, group = f"{accel}x {mask} {label}", f"{label}, {mask}"
    if noisy:
        name, group = f"{name} noisy", f"{group}, noisy"
    if not noisy:
        return Setting(name, build, 1.0 / accel, group)
    # IDM is told the level per real component (E|n|² = σ² split over two channels).
    sigma = NOISE_SIGMA / math.sqrt(2)
    return Setting(name, build, 1.0 / accel, group, noise=_kspace_noise, noise_sigma=sigma)


learned.register_shipped()
learned.register_diffusion()
SUITE = Suite(
    name="mri",
    title="MRI reconstruction on held-out slices",
    modality="mri",
    settings=(
        *(
            _setting(a, m, c)
            for c in ("single", "multi")
            for m in ("random", "equispaced")
            for a in (4, 8)
        ),
        *(_setting(a, "random", "multi", noisy=True) for a in (4, 8)),
    ),
    methods=("pinv", "tv", "wavelet", "bart_tv", "bart_l1", "unet", "idm_mri_4x", "idm"),
    encode=encode,
    decode=decode,
    score=metrics.evaluate,
    columns=(("psnr", "PSNR (dB)", ".2f"), ("ssim", "SSIM", ".4f"), ("nmse", "NMSE", ".4f")),
    notes="Magnitude images; fastMRI metrics per source volume (PSNR/SSIM data range = volume "
    "max, SSIM 7×7 per slice), averaged over sources. A†y is the zero-filled image "
    "(single coil) or the exact SENSE pseudo-inverse (multi-coil; in the noisy settings, "
    f"σ = {NOISE_SIGMA:g} complex k-space noise, with the cutoff {NOISY_SENSE_RTOL:g} "
    "σ_max chosen on validation images, results/sense_cutoff.md; IDM is told σ, as a noise "
    "pre-scan would tell it, while the other methods' weights are tuned per setting). "
    "BART rows appear only when the `bart` binary is on PATH.",
)


def main(argv: list[str] | None = None) -> None:
    suite_main(SUITE, argv)
