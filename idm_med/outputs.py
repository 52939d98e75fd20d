"""How a reconstruction is written back in its input's format.

One small class per reader (:mod:`idm_med.datasets.readers`), all with the same four
members, and :data:`OUTPUTS` keyed by the reader's ``name``:

* ``target(out, input)`` — the path the pipeline writes for ``out`` (a file of the format,
  or ``out/<input name>``; a DICOM series: the folder ``out``);
* ``output_name(input, method)`` — the name ``idm-med reconstruct`` uses inside ``--output``;
* ``image(x, measured, data)`` — one slice of the method's output ``(1, C, H, W)`` in output
  units ``(H', W')`` (applied to ``A†y`` alike, so the two are compared on one scale);
* ``write(target, recon, data, settings, overwrite)`` — the file(s), atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .acquisition import (
    MeasuredSlice,
    MeasurementSettings,
    attenuation_to_hu,
    with_fan_distances,
)
from .datasets import dicom, fastmri, images, nifti


def magnitude(x: torch.Tensor) -> np.ndarray:
    """``(B, 2, H, W)`` real/imag → ``(B, H, W)`` magnitude."""
    return torch.linalg.vector_norm(x.detach(), dim=1).cpu().numpy()


def _with_method(path: Path, method: str) -> str:
    """``brain.nii.gz`` → ``brain_<method>.nii.gz``."""
    n = 7 if path.name.lower().endswith(".nii.gz") else len(path.suffix)
    stem, suffix = path.name[: len(path.name) - n], path.name[len(path.name) - n :]
    return f"{stem}_{method}{suffix}"


class _FileOutput:
    """Shared by the single-file formats: ``out`` itself when it names a file of the
    format, else ``out/<input name>``; the method joins the file name."""

    suffixes: tuple[str, ...] = ()
    squeeze = False  # results keep their slice axis

    def target(self, out: str | Path, input_path: str | Path) -> Path:
        out = Path(out)
        return out if out.name.lower().endswith(self.suffixes) else out / Path(input_path).name

    def output_name(self, input_path: Path, method: str) -> str:
        return _with_method(input_path, method)


class FastMRIOutput(_FileOutput):
    """fastMRI submission: magnitude, centre-cropped to the header's recon size."""

    suffixes = (".h5", ".hdf5")

    def output_name(self, input_path: Path, method: str) -> str:
        return f"{method}/{input_path.name}"  # fastMRI's evaluation matches file names

    def image(self, x: torch.Tensor, sl: MeasuredSlice, data: fastmri.FastMRIVolume):
        return fastmri.center_crop(magnitude(x)[0], data.info.crop_size)

    def write(self, target: Path, recon: np.ndarray, data: Any, s: MeasurementSettings, _):
        attrs = {"acceleration": float(s.acceleration or 0), "center_fraction": s.center_fraction}
        return fastmri.write_reconstruction(target, recon, attrs=attrs)


class NiftiOutput(_FileOutput):
    """NIfTI with the input's affine and header; slices not reconstructed are copied."""

    suffixes = (".nii", ".nii.gz")

    def image(self, x: torch.Tensor, sl: MeasuredSlice, data: nifti.NiftiVolume):
        return magnitude(x)[0] * sl.scale

    def write(self, target: Path, recon: np.ndarray, data: nifti.NiftiVolume, s, _):
        out = nifti.extract_slices(data.data, axis=s.axis)
        indices = range(len(out)) if s.slices is None else s.slices
        for k, i in enumerate(indices):
            out[i] = recon[k]
        header = data.header.copy()
        header.set_data_dtype(np.float32)  # reconstructions are not integer-valued
        return nifti.write_nifti(target, nifti.stack_slices(out, axis=s.axis), data.affine, header)


class ImageOutput(_FileOutput):
    """An image in the format of the target's suffix, clipped to [0, 1]."""

    suffixes = images.IMAGE_SUFFIXES
    squeeze = True  # one image: results are (H, W)

    def image(self, x: torch.Tensor, sl: MeasuredSlice, data: torch.Tensor):
        return x[0, 0].clamp(0.0, 1.0).numpy()

    def write(self, target: Path, recon: np.ndarray, data: torch.Tensor, s, _):
        return images.write_image(target, torch.from_numpy(recon))


class DicomOutput:
    """A new DICOM series (HU) with the source's geometry and patient/study tags."""

    squeeze = False

    def target(self, out: str | Path, input_path: str | Path) -> Path:
        return Path(out)

    def output_name(self, input_path: Path, method: str) -> str:
        return f"{input_path.name if input_path.is_dir() else input_path.parent.name}_{method}"

    def image(self, x: torch.Tensor, sl: MeasuredSlice, data: dicom.CTVolume):
        return x[0, 0].numpy()

    def write(self, target: Path, recon: np.ndarray, data: dicom.CTVolume, s, overwrite: bool):
        hu = attenuation_to_hu(recon.clip(0.0, 1.0))
        geometry = "" if s.ct_geometry == "parallel" else f" {s.ct_geometry}-beam"
        if s.ct_geometry == "fan":
            data = with_fan_distances(data, s.source_distance_mm, s.detector_distance_mm)
        description = f"idm-med sparse-view{geometry} {s.n_views} views"
        return dicom.write_dicom_series(
            hu, data, target, description=description, overwrite=overwrite
        )


#: Reader name → how its reconstructions are written.
OUTPUTS: dict[str, Any] = {
    "fastmri": FastMRIOutput(),
    "nifti": NiftiOutput(),
    "image": ImageOutput(),
    "dicom": DicomOutput(),
}
