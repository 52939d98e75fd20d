"""Build the bundled MRI samples in ``datasets/samples/`` from the MNI152 T1 template.

Source: the ICBM 2009a MNI152 T1 template shipped inside nilearn
(``nilearn.datasets.load_mni152_template(resolution=1)``, 197×233×189 at 1 mm, scaled by
nilearn to max 1; loads offline from the package). Outputs:

* ``fastmri_singlecoil_brain.h5``: 4 axial slices, 256×256 complex64 k-space
  ``k = fft2c(m · exp(iφ))`` (``m`` the template slice, ``φ`` a smooth synthetic phase),
  target ``reconstruction_esc = |ifft2c(k)|``.
* ``fastmri_multicoil_brain.h5``: the middle 2 of those slices, 8 birdcage coils
  (normalised so that ``Σ|S_c|² = 1``), k-space ``fft2c(S_c · m · exp(iφ))``, target
  ``reconstruction_rss`` (RSS of the coil images, ``= m`` up to quantisation).
* ``brain_t1.nii.gz``: the template averaged over 2×2×2 blocks to 2 mm, int16, with the
  affine updated so world coordinates are preserved.

k-space is quantised to a power-of-two step (like a scanner's ADC: 14 bits relative to
the k-space maximum, relative error about 0.3 %) so gzip can compress it; the error
is recorded in the attributes (``kspace_quantisation_rel_error``) and the targets are
computed from the stored k-space, so they are exact for it. Every file's attributes say
``simulated=True`` and name the source and the slice indices used (``source_slices``,
axial ``z`` indices of the template), so those slices can be kept out of training.

The script is deterministic (no randomness; HDF5 timestamps and gzip mtime disabled):
``python scripts/make_mri_samples.py [--out DIR]``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from idm_med.acquisition.coils import fft2c, synthetic_coil_maps
from idm_med.acquisition.mri import simulate_targets
from idm_med.datasets.fastmri import write_fastmri_file
from idm_med.datasets.nifti import write_nifti

logger = logging.getLogger("make_mri_samples")

SOURCE = "nilearn.datasets.load_mni152_template(resolution=1) (ICBM 2009a MNI152 T1)"
SIZE = 256
SLICES = (60, 75, 90, 105)  # axial z indices of the 189-slice template
MULTICOIL_SLICES = (75, 90)
NUM_COILS = 8
SINGLECOIL_BITS = 14
MULTICOIL_BITS = 14

NOTICE = """\
MRI sample files in this folder (made by scripts/make_mri_samples.py)
=====================================================================

fastmri_singlecoil_brain.h5, fastmri_multicoil_brain.h5, brain_t1.nii.gz
    Derived from the ICBM 2009a nonlinear symmetric MNI152 T1 template, as shipped in
    the nilearn package (PyPI "nilearn", BSD-3-Clause; file
    nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz), loaded
    with nilearn.datasets.load_mni152_template(resolution=1).
    The .h5 files hold SIMULATED k-space (Fourier transform of template slices with a
    synthetic phase and synthetic birdcage coil sensitivities from sigpy, BSD-3-Clause);
    they are not scanner data. brain_t1.nii.gz is the template downsampled to 2 mm.
    Template licence (McConnell Brain Imaging Centre notice):
      Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal
      Neurological Institute, McGill University. Permission to use, copy, modify, and
      distribute this software and its documentation for any purpose and without fee is
      hereby granted, provided that the above copyright notice appear in all copies. The
      authors and McGill University make no representations about the suitability of
      this software for any purpose. It is provided "as is" without express or implied
      warranty. The authors are not responsible for any data loss, equipment damage,
      property loss, or injury to subjects or patients resulting from the use or misuse
      of this software package.
    Reference: V. Fonov et al., NeuroImage 54(1), 2011; V. Fonov et al., NeuroImage 47,
    S102, 2009; D. L. Collins et al., NeuroImage 1999.
"""


def load_template() -> tuple[np.ndarray, np.ndarray]:
    """The 1 mm MNI152 T1 template ``(197, 233, 189)`` in [0, 1] and its affine."""
    from nilearn.datasets import load_mni152_template

    img = load_mni152_template(resolution=1)
    return np.asarray(img.get_fdata(), dtype=np.float64), np.asarray(img.affine)


def axial_slice(volume: np.ndarray, z: int, size: int) -> np.ndarray:
    """Axial slice ``z`` displayed radiologically-upright (anterior up), zero-padded to
    ``size × size``. Shape ``(size, size)``."""
    image = np.rot90(volume[:, :, z])  # rows: anterior → posterior, columns: x
    pads = [((size - n) // 2, size - n - (size - n) // 2) for n in image.shape]
    return np.pad(image, pads)


def synthetic_phase(size: int, z: int) -> np.ndarray:
    """Smooth phase (radians) ``(size, size)``: a low-order polynomial, as from B0
    inhomogeneity and coil phase, varying gently with the slice."""
    v, u = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    shift = 0.1 * np.sin(z / 10.0)
    return np.pi * (0.3 * u + 0.2 * v + 0.25 * (u**2 - v**2) + 0.1 * u * v + shift)


def quantise(kspace: np.ndarray, bits: int) -> tuple[np.ndarray, float]:
    """Round real and imaginary parts to a power-of-two step ``≈ max|k| · 2^-bits``.

    Returns the complex64 k-space and the relative error ``‖k_q − k‖ / ‖k‖``.
    """
    step = 2.0 ** np.round(np.log2(np.abs(kspace).max() * 2.0**-bits))
    quantised = (np.round(kspace.real / step) + 1j * np.round(kspace.imag / step)) * step
    error = np.linalg.norm(quantised - kspace) / np.linalg.norm(kspace)
    return quantised.astype(np.complex64), float(error)


def common_attrs(slices: tuple[int, ...], bits: int, error: float) -> dict:
    return {
        "simulated": True,
        "source": SOURCE,
        "source_slices": np.asarray(slices, dtype=np.int64),
        "source_axis": "z (axial) of the 197x233x189 template",
        "phase": "synthetic smooth polynomial",
        "kspace_quantisation_bits": bits,
        "kspace_quantisation_rel_error": error,
        "generator": "scripts/make_mri_samples.py",
    }


def make_singlecoil(volume: np.ndarray, out: Path) -> Path:
    images = np.stack(
        [axial_slice(volume, z, SIZE) * np.exp(1j * synthetic_phase(SIZE, z)) for z in SLICES]
    )
    kspace, error = quantise(fft2c(torch.from_numpy(images)).numpy(), SINGLECOIL_BITS)
    target = simulate_targets(kspace, (SIZE, SIZE))
    return write_fastmri_file(
        out / "fastmri_singlecoil_brain.h5",
        kspace,
        target=target,
        acquisition="AXT1",
        patient_id="mni152_2009a_singlecoil",
        attrs=common_attrs(SLICES, SINGLECOIL_BITS, error),
        fov_mm=(SIZE, SIZE, 1.0),
    )


def make_multicoil(volume: np.ndarray, out: Path) -> Path:
    maps = synthetic_coil_maps(NUM_COILS, (SIZE, SIZE)).to(torch.complex128)
    images = torch.from_numpy(
        np.stack(
            [
                axial_slice(volume, z, SIZE) * np.exp(1j * synthetic_phase(SIZE, z))
                for z in MULTICOIL_SLICES
            ]
        )
    )
    coil_images = maps.unsqueeze(0) * images.unsqueeze(1)  # (S, C, H, W)
    kspace, error = quantise(fft2c(coil_images).numpy(), MULTICOIL_BITS)
    target = simulate_targets(kspace, (SIZE, SIZE))
    attrs = common_attrs(MULTICOIL_SLICES, MULTICOIL_BITS, error)
    attrs["coil_maps"] = f"sigpy.mri.birdcage_maps, {NUM_COILS} coils, r=1.5, normalised"
    return write_fastmri_file(
        out / "fastmri_multicoil_brain.h5",
        kspace,
        target=target,
        acquisition="AXT1",
        patient_id="mni152_2009a_multicoil",
        attrs=attrs,
        fov_mm=(SIZE, SIZE, 1.0),
    )


def make_nifti(volume: np.ndarray, affine: np.ndarray, out: Path) -> Path:
    """2 mm version: mean over 2×2×2 blocks (odd edges dropped), int16 in [0, 1000]."""
    shape = [n // 2 * 2 for n in volume.shape]
    cropped = volume[: shape[0], : shape[1], : shape[2]]
    blocks = cropped.reshape(shape[0] // 2, 2, shape[1] // 2, 2, shape[2] // 2, 2)
    small = blocks.mean(axis=(1, 3, 5))
    data = np.round(small / small.max() * 1000.0).astype(np.int16)
    # New voxel (i, j, k) is centred on old voxel (2i + 0.5, 2j + 0.5, 2k + 0.5).
    scale = np.diag([2.0, 2.0, 2.0, 1.0])
    scale[:3, 3] = 0.5
    return write_nifti(out / "brain_t1.nii.gz", data, affine @ scale)


def main(argv: list[str] | None = None) -> None:
    default_out = Path(__file__).resolve().parents[1] / "datasets" / "samples"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_out, help="output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    volume, affine = load_template()
    paths = [
        make_singlecoil(volume, args.out),
        make_multicoil(volume, args.out),
        make_nifti(volume, affine, args.out),
    ]
    (args.out / "NOTICE.mri").write_text(NOTICE)
    for path in paths:
        logger.info("%s: %.2f MB", path.name, path.stat().st_size / 1e6)


if __name__ == "__main__":
    main()
