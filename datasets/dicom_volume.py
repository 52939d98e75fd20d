"""The CT volume of a DICOM series: HU values, patient geometry and source tags.

Geometry follows DICOM PS3.3 C.7.6.2 (Image Plane module):

* ``ImageOrientationPatient`` (IOP) holds two unit vectors ``r`` (direction of increasing
  column index ``j``) and ``c`` (direction of increasing row index ``i``); the slice normal
  is ``n = r × c``.
* ``ImagePositionPatient`` (IPP) is the centre of the first pixel of a slice; slices are
  sorted by ``s_k = <IPP_k, n>`` (ascending), and the slice spacing is the step of ``s_k``.
* ``PixelSpacing`` is (row spacing, column spacing) = (distance between rows, distance
  between columns) in mm, so voxel ``(k, i, j)`` lies at
  ``IPP_k + i · Δrow · c + j · Δcol · r``.

The reader is :mod:`idm_med.datasets.dicom`, the writer :mod:`idm_med.datasets.dicom_write`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Patient, study and frame-of-reference tags copied from a source series into a derived one.
KEY_TAGS: tuple[str, ...] = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientWeight",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "StudyInstanceUID",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "AccessionNumber",
    "ReferringPhysicianName",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "PatientPosition",
    "BodyPartExamined",
    "KVP",
)


@dataclass(frozen=True)
class CTVolume:
    """A CT series in Hounsfield units with its patient geometry.

    Attributes:
        hu: HU volume, float32, shape ``(S, R, C)`` = (slices, rows, columns), slices sorted
            by their position along the slice normal (ascending).
        spacing: voxel spacing ``(slice, row, col)`` in mm; ``row`` is the distance between
            rows (``PixelSpacing[0]``), ``col`` between columns (``PixelSpacing[1]``).
        positions: ``ImagePositionPatient`` of each slice, float64 ``(S, 3)`` mm.
        orientation: ``ImageOrientationPatient``, float64 ``(6,)``: row then column cosines.
        tags: patient/study tags of the source (keyword → pydicom value), see :data:`KEY_TAGS`.
        series_uid: ``SeriesInstanceUID`` of the source series.
        modality: DICOM ``Modality`` (``"CT"`` for CT).
        slice_thickness: ``SliceThickness`` in mm, if the source had it.
        series_description: ``SeriesDescription`` of the source.
        files: source file of each slice, in the sorted order (empty for derived volumes).
        distance_source_to_detector: ``DistanceSourceToDetector`` (0018,1110) in mm of the
            first slice, ``None`` when absent (the fan-beam geometry of the scan).
        distance_source_to_patient: ``DistanceSourceToPatient`` (0018,1111) in mm (source to
            isocentre), ``None`` when absent.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    positions: np.ndarray
    orientation: np.ndarray
    tags: dict[str, Any] = dataclasses.field(default_factory=dict)
    series_uid: str = ""
    modality: str = "CT"
    slice_thickness: float | None = None
    series_description: str = ""
    files: tuple[Path, ...] = ()
    distance_source_to_detector: float | None = None
    distance_source_to_patient: float | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(S, R, C)``."""
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal ``r × c`` (3,)."""
        return slice_normal(self.orientation)

    @property
    def affine(self) -> np.ndarray:
        """4×4 matrix mapping voxel indices ``(k, i, j, 1)`` to patient coordinates (mm).

        Columns: slice step ``Δs · n``, row step ``Δrow · c``, column step ``Δcol · r``,
        and the first slice's ``ImagePositionPatient``.
        """
        r, c = self.orientation[:3], self.orientation[3:]
        aff = np.eye(4)
        aff[:3, 0] = self.spacing[0] * self.normal
        aff[:3, 1] = self.spacing[1] * c
        aff[:3, 2] = self.spacing[2] * r
        aff[:3, 3] = self.positions[0]
        return aff

    def with_hu(self, hu: np.ndarray | torch.Tensor) -> CTVolume:
        """Same series geometry with new HU values (e.g. a reconstruction).

        ``hu`` has shape ``(S, R', C')`` (or ``(S, 1, R', C')``) with the same ``S``. When the
        in-plane size differs, the field of view is kept: the pixel spacing scales by
        ``R/R'`` and ``C/C'`` and the first pixel centre moves by half the change of spacing
        (it sits half a pixel inside the same field-of-view corner).
        """
        arr = as_volume(hu, "hu")
        if arr.shape[0] != self.hu.shape[0]:
            raise ValueError(
                f"hu must have {self.hu.shape[0]} slices like the reference, got shape "
                f"{tuple(arr.shape)}"
            )
        (_, rows, cols), (_, rows1, cols1) = self.hu.shape, arr.shape
        d_row = self.spacing[1] * rows / rows1
        d_col = self.spacing[2] * cols / cols1
        r, c = self.orientation[:3], self.orientation[3:]
        shift = 0.5 * (d_row - self.spacing[1]) * c + 0.5 * (d_col - self.spacing[2]) * r
        return dataclasses.replace(
            self,
            hu=arr,
            spacing=(self.spacing[0], d_row, d_col),
            positions=self.positions + shift[None, :],
            files=(),
        )


def slice_normal(orientation: np.ndarray, source: Path | None = None) -> np.ndarray:
    """Unit normal ``r × c`` (3,) of ``ImageOrientationPatient`` (6,); ValueError (naming
    ``source``) when the two cosines are parallel."""
    r, c = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    n = np.cross(r, c)
    norm = np.linalg.norm(n)
    if norm < 1e-6:
        where = f"{source}: " if source else ""
        raise ValueError(f"{where}ImageOrientationPatient {list(orientation)} is degenerate")
    return n / norm


def as_volume(volume: np.ndarray | torch.Tensor, argument: str) -> np.ndarray:
    """``(S, R, C)`` or ``(S, 1, R, C)`` array/tensor → finite float32 ``(S, R, C)``."""
    if isinstance(volume, torch.Tensor):
        volume = volume.detach().cpu().numpy()
    arr = np.asarray(volume)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise ValueError(f"{argument} must have shape (S, R, C) or (S, 1, R, C), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{argument} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{argument} contains NaN or infinite values")
    return arr
