"""NIfTI volumes (nibabel): read with the affine, write atomically, cut into 2-D slices.

A volume is a 3-D array indexed ``data[i, j, k]`` in voxel coordinates; the 4×4 affine
maps ``(i, j, k, 1)`` to world (scanner, RAS+) millimetres. Slicing along ``axis`` keeps
the other two axes in their original order, so ``extract_slices(data, 2)[k] ==
data[:, :, k]`` and :func:`stack_slices` undoes it exactly.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from .atomic import atomic_path

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


@dataclass
class NiftiVolume:
    """A 3-D NIfTI volume.

    Attributes:
        data: ``(X, Y, Z)`` array (scaling slope/intercept applied).
        affine: ``(4, 4)`` voxel → world (mm) matrix.
        header: the file's NIfTI header (kept so a written result keeps its metadata).
        path: the file read, or ``None``.
    """

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    path: Path | None = None

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Voxel spacing in mm along the three array axes (from the affine's columns)."""
        spacing = np.linalg.norm(self.affine[:3, :3], axis=0)
        return tuple(float(s) for s in spacing)  # type: ignore[return-value]

    def slices(self, axis: int = 2, indices: Sequence[int] | None = None) -> np.ndarray:
        """``(N, A, B)`` 2-D slices along ``axis`` (see :func:`extract_slices`)."""
        return extract_slices(self.data, axis, indices)


def read_nifti(path: PathLike, dtype: np.dtype | type = np.float32) -> NiftiVolume:
    """Read a 3-D NIfTI-1/2 file (``.nii`` or ``.nii.gz``).

    Trailing singleton axes (e.g. a 4-D file with one time point) are dropped. Raises
    ``ValueError`` naming the file if it is missing, unreadable, or not 3-D.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        img = nib.load(path)
        data = np.asarray(img.get_fdata(dtype=np.float64 if dtype == np.float64 else np.float32))
    except Exception as exc:  # nibabel raises many types for bad files; report them as one
        raise ValueError(f"{path}: not a readable NIfTI file ({exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{path}: not a NIfTI image (nibabel read {type(img).__name__})")
    shape = data.shape
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D volume (X, Y, Z), got shape {shape}")
    return NiftiVolume(data.astype(dtype, copy=False), np.asarray(img.affine), img.header, path)


def write_nifti(
    path: PathLike,
    data: np.ndarray,
    affine: np.ndarray,
    header: nib.Nifti1Header | None = None,
) -> Path:
    """Write ``data`` ``(X, Y, Z)`` with ``affine`` (and optionally a template ``header``).

    The file is gzip-compressed when ``path`` ends in ``.gz`` (with a zero timestamp, so
    equal inputs give byte-identical files) and is written atomically: a failure leaves
    no file behind. The sform and qform are both set to ``affine``; the header supplies
    everything else (units, description, intent) and its dtype/shape are updated.
    """
    path = Path(path)
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"data must be a 3-D volume (X, Y, Z), got shape {data.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"affine must be a finite (4, 4) matrix, got shape {affine.shape}")
    if not path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: a NIfTI file name must end in .nii or .nii.gz")
    img = nib.Nifti1Image(data, affine, header=header.copy() if header is not None else None)
    # Codes: keep the template's if set, else 1 ("scanner anatomical").
    img.set_sform(affine, code=int(img.header["sform_code"]) or 1)
    img.set_qform(affine, code=int(img.header["qform_code"]) or 1)
    payload = img.to_bytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=9, mtime=0)
    # nibabel picks the format from the extension, which the temporary file lacks, so
    # the bytes are produced in memory and written through atomic_path.
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    logger.info("wrote %s %s", path, data.shape)
    return path


def _check_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis must lie in [{-ndim}, {ndim}), got {axis}")
    return axis % ndim


def extract_slices(
    volume: np.ndarray, axis: int = 2, indices: Sequence[int] | None = None
) -> np.ndarray:
    """2-D slices of a 3-D ``volume`` along ``axis``: ``(N, A, B)``.

    ``indices`` selects slices (default all); the two remaining axes keep their order.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3-D, got shape {volume.shape}")
    axis = _check_axis(axis, 3)
    moved = np.moveaxis(volume, axis, 0)
    if indices is None:
        return moved.copy()
    idx = np.asarray(indices, dtype=np.int64)
    if idx.ndim != 1 or ((idx < -moved.shape[0]) | (idx >= moved.shape[0])).any():
        raise ValueError(f"indices must be 1-D within [0, {moved.shape[0]}), got {indices!r}")
    return moved[idx].copy()


def stack_slices(slices: np.ndarray, axis: int = 2) -> np.ndarray:
    """Inverse of :func:`extract_slices` (all slices): ``(N, A, B)`` → 3-D volume."""
    slices = np.asarray(slices)
    if slices.ndim != 3:
        raise ValueError(f"slices must be (N, A, B), got shape {slices.shape}")
    return np.moveaxis(slices, 0, _check_axis(axis, 3))
