"""One small protocol for every input format, in the style of MONAI's ``ImageReader``.

A reader answers three questions:

* :meth:`ImageReader.verify_suffix` — can it read this path? (by suffix, or by content for
  a folder of DICOM files);
* :meth:`ImageReader.read` — the file's object, read lazily where the format allows
  (:class:`~idm_med.datasets.fastmri.FastMRIVolume`,
  :class:`~idm_med.datasets.dicom_volume.CTVolume`,
  :class:`~idm_med.datasets.nifti.NiftiVolume`, an image tensor ``(1, H, W)``);
* :meth:`ImageReader.get_data` — ``(array, metadata)`` of such an object.

:func:`select_reader` picks the first of :data:`READERS` that verifies a path, so a new
format is one class added to that tuple. Readers return what is in the file; measurement
simulation is the acquisition layer's (:mod:`idm_med.acquisition`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from . import dicom, fastmri, images, nifti

PathLike = str | os.PathLike


@runtime_checkable
class ImageReader(Protocol):
    """What the pipeline asks of a reader. ``name`` keys the measurement and output code;
    ``suffixes`` are the file-name endings of the format (empty for a folder format)."""

    name: str
    suffixes: tuple[str, ...]

    def verify_suffix(self, path: Path) -> bool: ...

    def read(self, path: Path) -> Any: ...

    def get_data(self, obj: Any) -> tuple[Any, dict[str, Any]]: ...


class SuffixReader:
    """Base of the single-file formats: a file whose name ends with one of ``suffixes``
    (case-insensitive)."""

    suffixes: tuple[str, ...] = ()

    def verify_suffix(self, path: Path) -> bool:
        path = Path(path)
        return path.is_file() and path.name.lower().endswith(self.suffixes)


class FastMRIReader(SuffixReader):
    """fastMRI ``.h5``: :class:`~idm_med.datasets.fastmri.FastMRIVolume` (lazy)."""

    name = "fastmri"
    suffixes = (".h5", ".hdf5")

    def read(self, path: Path) -> fastmri.FastMRIVolume:
        return fastmri.FastMRIVolume(path)

    def get_data(self, obj: fastmri.FastMRIVolume) -> tuple[fastmri.FastMRIVolume, dict]:
        """The volume itself as the data (``len`` slices, ``vol[i]`` reads slice ``i``
        only, so nothing loads the whole k-space) and its header information."""
        info = obj.info
        meta = {
            "path": info.path,
            "num_slices": info.num_slices,
            "num_coils": info.num_coils,
            "kspace_shape": info.kspace_shape,
            "crop_size": info.crop_size,
            "has_mask": info.has_mask,
            "attrs": dict(info.attrs),
        }
        return obj, meta


class NiftiReader(SuffixReader):
    """NIfTI ``.nii`` / ``.nii.gz``: :class:`~idm_med.datasets.nifti.NiftiVolume`."""

    name = "nifti"
    suffixes = (".nii", ".nii.gz")

    def read(self, path: Path) -> nifti.NiftiVolume:
        return nifti.read_nifti(path)

    def get_data(self, obj: nifti.NiftiVolume) -> tuple[np.ndarray, dict]:
        """``(X, Y, Z)`` data; the affine, header and voxel size."""
        meta = {
            "path": obj.path,
            "affine": obj.affine,
            "header": obj.header,
            "voxel_size": obj.voxel_size,
        }
        return obj.data, meta


class ImageFileReader(SuffixReader):
    """PNG / TIFF / ``.npy``: the luma image ``(1, H, W)`` in [0, 1]."""

    name = "image"
    suffixes = images.IMAGE_SUFFIXES

    def read(self, path: Path) -> torch.Tensor:
        return images.read_image(path)

    def get_data(self, obj: torch.Tensor) -> tuple[np.ndarray, dict]:
        """``(1, H, W)`` float array; the shape."""
        return obj.numpy(), {"shape": tuple(obj.shape)}


class DicomReader:
    """A CT DICOM series (a folder of DICOM files, or one ``.dcm``):
    :class:`~idm_med.datasets.dicom_volume.CTVolume` in HU."""

    name = "dicom"
    suffixes: tuple[str, ...] = ()

    def verify_suffix(self, path: Path) -> bool:
        """A ``.dcm`` file, or a folder whose files are DICOM-like (no suffix, ``.dcm``,
        ``.ima``) and none of another format."""
        path = Path(path)
        if not path.is_dir():
            return path.name.lower().endswith(".dcm")
        files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
        return (
            bool(files)
            and not any(find_reader(p, FILE_READERS) for p in files)
            and any(p.suffix.lower() in ("", ".dcm", ".ima") for p in files)
        )

    def read(self, path: Path) -> dicom.CTVolume:
        return dicom.read_dicom_series(path)

    def get_data(self, obj: dicom.CTVolume) -> tuple[np.ndarray, dict]:
        """``(S, R, C)`` HU; geometry and the fan-beam distances (mm, ``None`` if absent)."""
        meta = {
            "spacing": obj.spacing,
            "positions": obj.positions,
            "orientation": obj.orientation,
            "affine": obj.affine,
            "series_uid": obj.series_uid,
            "modality": obj.modality,
            "distance_source_to_detector": obj.distance_source_to_detector,
            "distance_source_to_patient": obj.distance_source_to_patient,
        }
        return obj.hu, meta


#: Readers of single files, then the folder format; the first that verifies a path wins.
FILE_READERS: tuple[ImageReader, ...] = (FastMRIReader(), NiftiReader(), ImageFileReader())
READERS: tuple[ImageReader, ...] = (*FILE_READERS, DicomReader())


def find_reader(path: PathLike, readers: tuple[ImageReader, ...] = READERS) -> ImageReader | None:
    """The first reader that verifies ``path``, or ``None``."""
    return next((r for r in readers if r.verify_suffix(Path(path))), None)


def select_reader(path: PathLike) -> ImageReader:
    """The reader of an input; ``ValueError`` naming the path when it is missing or of no
    known format."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    reader = find_reader(path)
    if reader is None:
        raise ValueError(
            f"{path}: cannot tell the format; expected a fastMRI .h5, a DICOM folder or .dcm, "
            f"a NIfTI .nii/.nii.gz or an image {images.IMAGE_SUFFIXES}"
        )
    return reader


def reader_for_name(path: PathLike) -> ImageReader | None:
    """The file reader whose suffix ``path``'s name ends with (the path need not exist),
    e.g. to tell whether an output path names a file of the input's format."""
    name = Path(path).name.lower()
    return next((r for r in FILE_READERS if name.endswith(r.suffixes)), None)
