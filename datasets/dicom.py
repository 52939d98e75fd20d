"""CT DICOM series in Hounsfield units: read, write, and simulate sparse-view sinograms.

Geometry follows DICOM PS3.3 C.7.6.2 (Image Plane module):

* ``ImageOrientationPatient`` (IOP) holds two unit vectors ``r`` (direction of increasing
  column index ``j``) and ``c`` (direction of increasing row index ``i``); the slice normal
  is ``n = r × c``.
* ``ImagePositionPatient`` (IPP) is the centre of the first pixel of a slice; slices are
  sorted by ``s_k = <IPP_k, n>`` (ascending), and the slice spacing is the step of ``s_k``.
* ``PixelSpacing`` is (row spacing, column spacing) = (distance between rows, distance
  between columns) in mm, so voxel ``(k, i, j)`` lies at
  ``IPP_k + i · Δrow · c + j · Δcol · r``.

HU come from the Modality LUT (``HU = stored · RescaleSlope + RescaleIntercept``), applied
by :func:`pydicom.pixels.apply_modality_lut`. Compressed transfer syntaxes decode through
pydicom's pixel plugins (JPEG lossless / JPEG-LS via ``pylibjpeg-libjpeg``, RLE built in).

The attenuation convention used to simulate sinograms lives in :func:`hu_to_attenuation`
and :func:`attenuation_to_hu` (and nowhere else).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from .atomic import OutputExistsError, atomic_directory

if TYPE_CHECKING:  # only for annotations: importing operators at load time is not needed
    from idm_med.operators import Operator

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

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

#: Type-2 attributes (present, possibly empty) written empty when the reference lacks them.
_TYPE2_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "KVP",
)

#: Tolerances (mm, or unit-vector components) for "same geometry" checks.
_ORIENTATION_TOL = 1e-4
_POSITION_TOL = 1e-3
_UINT16_MAX = 65535
_SLICE_NAME = re.compile(r"slice_\d{4,}\.dcm")


# ------------------------------------------------------------------------------------------
# The volume
# ------------------------------------------------------------------------------------------
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

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(S, R, C)``."""
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal ``r × c`` (3,)."""
        return _normal(self.orientation)

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
        arr = _as_volume(hu, "hu")
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


# ------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------
def read_dicom_series(
    path_or_files: PathLike | Iterable[PathLike], series_uid: str | None = None
) -> CTVolume:
    """Read one DICOM series (a folder, one file, or a list of files) as a HU volume.

    Args:
        path_or_files: a folder (its files are scanned, non-recursively; non-DICOM files
            are skipped), a single file, or an iterable of files (each must be DICOM).
        series_uid: the ``SeriesInstanceUID`` to read when the files hold several series.

    Returns:
        A :class:`CTVolume`; ``hu`` is float32 ``(S, R, C)`` sorted along the slice normal.

    Raises:
        ValueError: naming the file and the problem, for an empty folder, no DICOM files,
            several series without ``series_uid``, missing pixel data or geometry, missing
            ``RescaleSlope``/``RescaleIntercept`` on CT, inconsistent slice size /
            orientation / spacing, duplicate slice positions or undecodable pixel data.
    """
    headers = _read_headers(path_or_files)
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    for path, ds in headers:
        uid = ds.get("SeriesInstanceUID")
        if not uid:
            raise ValueError(f"{path}: DICOM file has no SeriesInstanceUID")
        groups.setdefault(str(uid), []).append((path, ds))

    if series_uid is None:
        if len(groups) > 1:
            raise ValueError(
                f"{_describe_source(path_or_files)} holds {len(groups)} series; pass "
                f"series_uid= one of:\n{_list_series(groups)}"
            )
        series_uid = next(iter(groups))
    elif series_uid not in groups:
        raise ValueError(
            f"series {series_uid!r} not found in {_describe_source(path_or_files)}; "
            f"available:\n{_list_series(groups)}"
        )
    return _read_series([p for p, _ in groups[series_uid]], series_uid)


def _read_headers(path_or_files: PathLike | Iterable[PathLike]) -> list[tuple[Path, Dataset]]:
    """Headers (no pixel data) of every DICOM file named by ``path_or_files``."""
    if isinstance(path_or_files, (str, os.PathLike)):
        root = Path(path_or_files)
        if not root.exists():
            raise ValueError(f"{root}: no such file or folder")
        if root.is_dir():
            files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
            if not files:
                raise ValueError(f"{root}: folder is empty (subfolders are not searched)")
            headers = []
            for f in files:
                try:
                    ds = _dcmread(f, stop_before_pixels=True)
                except InvalidDicomError:
                    logger.debug("skipping non-DICOM file %s", f)
                    continue
                sop_class = getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID")
                if sop_class == MediaStorageDirectoryStorage:  # a DICOMDIR index, no image
                    logger.debug("skipping DICOMDIR %s", f)
                    continue
                headers.append((f, ds))
            if not headers:
                raise ValueError(
                    f"{root}: no DICOM files among {len(files)} file(s) "
                    f"(e.g. {', '.join(p.name for p in files[:3])})"
                )
            return headers
        files = [root]
    else:
        files = [Path(p) for p in path_or_files]
        if not files:
            raise ValueError("path_or_files: empty list of files")
    headers = []
    for f in files:
        try:
            headers.append((f, _dcmread(f, stop_before_pixels=True)))
        except InvalidDicomError as exc:
            raise ValueError(f"{f}: not a DICOM file ({exc})") from exc
    return headers


def _dcmread(path: Path, stop_before_pixels: bool = False) -> Dataset:
    """``pydicom.dcmread`` with errors other than "not DICOM" turned into ValueError."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        raise
    except Exception as exc:  # truncated or corrupt files raise many different types
        raise ValueError(f"{path}: cannot parse DICOM file ({type(exc).__name__}: {exc})") from exc


def _describe_source(path_or_files: PathLike | Iterable[PathLike]) -> str:
    if isinstance(path_or_files, (str, os.PathLike)):
        return str(path_or_files)
    return "the given files"


def _list_series(groups: dict[str, list[tuple[Path, Dataset]]]) -> str:
    lines = []
    for uid, members in groups.items():
        ds = members[0][1]
        lines.append(
            f"  {uid}  ({ds.get('Modality', '?')}, {len(members)} file(s), "
            f"description {str(ds.get('SeriesDescription', ''))!r})"
        )
    return "\n".join(lines)


def _read_series(files: Sequence[Path], series_uid: str) -> CTVolume:
    """Read, validate and sort the slices of one series."""
    slices: list[tuple[Path, Dataset]] = [(f, _dcmread(f)) for f in files]
    first_path, first = slices[0]
    modality = str(first.get("Modality", ""))
    shape0 = (first.get("Rows"), first.get("Columns"))

    images, positions, orientations, spacings = [], [], [], []
    warned_rescale = False
    for path, ds in slices:
        if "PixelData" not in ds:
            raise ValueError(f"{path}: no PixelData element (a DICOM file without an image)")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise ValueError(f"{path}: multi-frame images are not supported (one slice per file)")
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise ValueError(f"{path}: SamplesPerPixel={ds.SamplesPerPixel}; expected grayscale")
        shape = (ds.get("Rows"), ds.get("Columns"))
        if shape != shape0:
            raise ValueError(
                f"{path}: inconsistent slice size {shape[0]}x{shape[1]} "
                f"(first slice {first_path.name} is {shape0[0]}x{shape0[1]})"
            )
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if ds.get(keyword) is None:
                raise ValueError(f"{path}: missing {keyword}; slice geometry is unknown")
        if ds.get("RescaleSlope") is None or ds.get("RescaleIntercept") is None:
            if modality == "CT":
                raise ValueError(
                    f"{path}: CT image without RescaleSlope/RescaleIntercept; HU are undefined"
                )
            if not warned_rescale and "ModalityLUTSequence" not in ds:
                logger.warning(
                    "%s: no RescaleSlope/RescaleIntercept (Modality %r): using slope 1, "
                    "intercept 0",
                    path,
                    modality,
                )
                warned_rescale = True
        try:
            stored = ds.pixel_array
        except Exception as exc:  # a missing decoder plugin or corrupt compressed data
            syntax = ds.file_meta.get("TransferSyntaxUID", "unknown transfer syntax")
            name = getattr(syntax, "name", str(syntax))
            raise ValueError(f"{path}: cannot decode pixel data ({name}): {exc}") from exc
        images.append(np.asarray(apply_modality_lut(stored, ds), dtype=np.float32))
        positions.append([float(v) for v in ds.ImagePositionPatient])
        orientations.append([float(v) for v in ds.ImageOrientationPatient])
        spacings.append([float(v) for v in ds.PixelSpacing])

    orientation = np.asarray(orientations[0], dtype=np.float64)
    for (path, _), o, s in zip(slices, orientations, spacings, strict=True):
        if not np.allclose(o, orientation, atol=_ORIENTATION_TOL):
            raise ValueError(f"{path}: ImageOrientationPatient {o} differs from {orientation}")
        if not np.allclose(s, spacings[0], atol=_POSITION_TOL):
            raise ValueError(f"{path}: PixelSpacing {s} differs from {spacings[0]}")

    normal = _normal(orientation, source=first_path)
    pos = np.asarray(positions, dtype=np.float64)
    order = np.argsort(pos @ normal, kind="stable")
    pos = pos[order]
    sorted_files = tuple(slices[k][0] for k in order)
    slice_spacing = _slice_spacing(pos, normal, sorted_files, first)

    thickness = first.get("SliceThickness")
    tags = {kw: first.get(kw) for kw in KEY_TAGS if first.get(kw) is not None}
    volume = CTVolume(
        hu=np.stack([images[k] for k in order]),
        spacing=(slice_spacing, spacings[0][0], spacings[0][1]),
        positions=pos,
        orientation=orientation,
        tags=tags,
        series_uid=series_uid,
        modality=modality,
        slice_thickness=float(thickness) if thickness not in (None, "") else None,
        series_description=str(first.get("SeriesDescription", "")),
        files=sorted_files,
    )
    logger.info(
        "read series %s: %d slice(s) of %dx%d, spacing %s mm",
        series_uid,
        *volume.shape,
        tuple(round(s, 4) for s in volume.spacing),
    )
    return volume


def _normal(orientation: np.ndarray, source: Path | None = None) -> np.ndarray:
    r, c = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    n = np.cross(r, c)
    norm = np.linalg.norm(n)
    if norm < 1e-6:
        where = f"{source}: " if source else ""
        raise ValueError(f"{where}ImageOrientationPatient {list(orientation)} is degenerate")
    return n / norm


def _slice_spacing(
    positions: np.ndarray, normal: np.ndarray, files: Sequence[Path], first: Dataset
) -> float:
    """Spacing along the normal from sorted positions (one slice: header or 1 mm)."""
    if len(positions) == 1:
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            value = first.get(keyword)
            if value not in (None, "") and float(value) > 0:
                return float(value)
        return 1.0
    steps = np.diff(positions @ normal)
    k = int(np.argmin(steps))
    if steps[k] < _POSITION_TOL:
        raise ValueError(
            f"{files[k + 1]}: same slice position as {files[k]} "
            f"({positions[k].tolist()}); duplicate slices in one series"
        )
    spacing = float(np.median(steps))
    if np.max(np.abs(steps - spacing)) > max(0.01 * spacing, _POSITION_TOL):
        logger.warning(
            "%s: non-uniform slice spacing (%.4g to %.4g mm); using the median %.4g mm",
            files[0].parent,
            steps.min(),
            steps.max(),
            spacing,
        )
    return spacing


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------
def hu_rescale(volume_hu: np.ndarray, step: float | None = None) -> tuple[float, float]:
    """``(RescaleSlope, RescaleIntercept)`` to store ``volume_hu`` as uint16 without clipping.

    The stored value is ``q = round((HU − intercept) / slope)`` in ``[0, 65535]``, so the
    quantisation error is at most ``slope / 2`` HU:

    * ``step`` given: ``slope = step`` (ValueError if the range needs more than 65536 levels);
    * integer-valued volumes (e.g. re-writing an original series): ``slope = 1``, exact;
    * otherwise the range is spread over the 16 bits: ``slope = (max − min) / 65534``
      (0.061 HU for a 4000 HU range).

    Both numbers are rounded to what a DICOM DS string holds, so the returned values are the
    ones a reader will use.
    """
    lo, hi = float(np.min(volume_hu)), float(np.max(volume_hu))
    if step is not None:
        if not step > 0:
            raise ValueError(f"step must be positive, got {step}")
        slope = float(step)
    elif np.array_equal(volume_hu, np.round(volume_hu)) and hi - lo <= _UINT16_MAX:
        slope = 1.0
    else:
        # One level of margin so rounding the DS strings cannot push the max past 65535.
        slope = max(hi - lo, 1e-6) / (_UINT16_MAX - 1)
    slope = float(format_number_as_ds(slope))
    intercept = float(format_number_as_ds(lo))
    if (hi - intercept) / slope > _UINT16_MAX + 0.5:
        raise ValueError(
            f"step {slope} HU cannot cover the HU range [{lo}, {hi}] in 16 bits; "
            f"use step >= {(hi - lo) / _UINT16_MAX:.6g}"
        )
    return slope, intercept


def write_dicom_series(
    volume_hu: np.ndarray | torch.Tensor,
    reference: CTVolume,
    out_dir: PathLike,
    description: str = "idm-med reconstruction",
    *,
    quantisation_step: float | None = None,
    series_number: int = 1000,
    uid_entropy: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``volume_hu`` as a new DICOM series with the geometry of ``reference``.

    Each slice becomes ``out_dir/slice_NNNN.dcm`` (Explicit VR Little Endian, CT Image
    Storage) with a new ``SeriesInstanceUID`` and ``SOPInstanceUID``s, ``ImageType``
    ``DERIVED\\SECONDARY``, the reference's positions, orientation and spacing, and its
    patient/study tags (:data:`KEY_TAGS`). HU are stored as uint16 with the
    ``RescaleSlope``/``RescaleIntercept`` of :func:`hu_rescale`: reading back gives the
    same HU to within ``slope / 2`` (1 HU steps for integer data, about 0.06 HU for a
    4000 HU float range, or ``quantisation_step``).

    The series is written into a temporary folder beside ``out_dir`` that is renamed onto
    it at the end, so a failure never leaves a partial series.

    Args:
        volume_hu: ``(S, R, C)`` or ``(S, 1, R, C)`` HU, the shape of ``reference.hu``
            (use :meth:`CTVolume.with_hu` first for a different in-plane size).
        reference: source geometry and tags.
        out_dir: output folder; must not exist or be empty unless ``overwrite``.
        description: ``SeriesDescription`` (LO: 64 characters at most).
        quantisation_step: fixed HU step (RescaleSlope) instead of the automatic one.
        series_number: ``SeriesNumber`` of the new series.
        uid_entropy: when given, UIDs are derived from it deterministically
            (``generate_uid(entropy_srcs=...)``) for reproducible files; random otherwise.
        overwrite: replace an existing non-empty ``out_dir`` — only one that holds
            nothing but ``slice_NNNN.dcm`` files (a series this writer wrote); a folder
            with any other file is never replaced.

    Returns:
        ``out_dir`` as a Path.
    """
    out_dir = Path(out_dir)
    hu = _as_volume(volume_hu, "volume_hu")
    if hu.shape != reference.hu.shape:
        raise ValueError(
            f"volume_hu must have the reference's shape {reference.shape}, got {hu.shape}; "
            "use reference.with_hu(volume) for a different in-plane size"
        )
    if len(description) > 64:
        raise ValueError(f"description must be at most 64 characters, got {len(description)}")
    _check_series_folder(out_dir, overwrite)

    slope, intercept = hu_rescale(hu, quantisation_step)
    stored = np.clip(np.round((hu.astype(np.float64) - intercept) / slope), 0, _UINT16_MAX)
    stored = stored.astype("<u2")
    logger.info("writing %d slice(s) to %s, quantisation step %g HU", len(hu), out_dir, slope)

    def uid(*parts: object) -> str:
        if uid_entropy is None:
            return generate_uid()
        return generate_uid(entropy_srcs=[uid_entropy, *map(str, parts)])

    series_uid = uid("series")
    # Used only where the reference lacks them; the same for every slice of the series.
    shared = {"StudyInstanceUID": uid("study"), "FrameOfReferenceUID": uid("frame")}

    with atomic_directory(out_dir, overwrite=overwrite) as tmp_dir:
        for k in range(hu.shape[0]):
            ds = _slice_dataset(
                stored[k], reference, k, uid("instance", k), series_uid, series_number, shared
            )
            ds.SeriesDescription = description
            ds.DerivationDescription = f"{description}; HU quantisation step {slope:g}"[:1024]
            ds.RescaleSlope = format_number_as_ds(slope)
            ds.RescaleIntercept = format_number_as_ds(intercept)
            pydicom.dcmwrite(tmp_dir / f"slice_{k + 1:04d}.dcm", ds, enforce_file_format=True)
    return out_dir


def _check_series_folder(out_dir: Path, overwrite: bool) -> None:
    """A series folder may be replaced only with ``overwrite`` and only when it holds
    nothing but the ``slice_NNNN.dcm`` files this writer writes (never a user's files)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir}: exists and is not a folder")
    entries = list(out_dir.iterdir())
    if entries and not overwrite:
        raise OutputExistsError(f"{out_dir}: exists and is not empty (use --overwrite)")
    foreign = [e.name for e in entries if not _SLICE_NAME.fullmatch(e.name)]
    if foreign:
        raise OutputExistsError(
            f"{out_dir}: holds files idm-med did not write ({', '.join(sorted(foreign)[:3])}); "
            "choose another output folder"
        )


def _slice_dataset(
    pixels: np.ndarray,
    reference: CTVolume,
    k: int,
    sop_uid: str,
    series_uid: str,
    series_number: int,
    shared_uids: dict[str, str],
) -> Dataset:
    """The dataset of slice ``k`` (everything but description and rescale)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    for keyword, value in reference.tags.items():
        setattr(ds, keyword, value)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = reference.modality or "CT"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.Manufacturer = "idm-med"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.InstanceNumber = k + 1
    ds.AcquisitionNumber = None  # type 2: present, empty
    for keyword, value in shared_uids.items():
        if keyword not in ds:  # type 1 in the CT IOD: one new UID rather than an invalid file
            setattr(ds, keyword, value)
    for keyword in _TYPE2_KEYWORDS:
        if keyword not in ds:  # type 2: present, possibly empty
            setattr(ds, keyword, None)

    ds.ImagePositionPatient = [format_number_as_ds(float(v)) for v in reference.positions[k]]
    ds.ImageOrientationPatient = [format_number_as_ds(float(v)) for v in reference.orientation]
    ds.PixelSpacing = [format_number_as_ds(float(v)) for v in reference.spacing[1:]]
    thickness = reference.slice_thickness or reference.spacing[0]
    ds.SliceThickness = format_number_as_ds(float(thickness))
    # Not part of the CT IOD but widely read; keeps the spacing of a one-slice series.
    ds.SpacingBetweenSlices = format_number_as_ds(float(reference.spacing[0]))
    ds.SliceLocation = format_number_as_ds(float(reference.positions[k] @ reference.normal))

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleType = "HU"
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    return ds


def _as_volume(volume: np.ndarray | torch.Tensor, argument: str) -> np.ndarray:
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


# ------------------------------------------------------------------------------------------
# Attenuation convention and sparse-view simulation
# ------------------------------------------------------------------------------------------
#: HU mapped to 0 (air) and to 1 by :func:`hu_to_attenuation`.
HU_AIR = -1000.0
HU_ONE = 3000.0


def hu_to_attenuation(hu: np.ndarray | torch.Tensor, clip: bool = True):
    """HU → normalised attenuation ``x = (HU + 1000) / 4000`` (clipped to [0, 1]).

    This is both a [0, 1] intensity window for the networks and a linear attenuation map:
    since ``μ = μ_water (1 + HU / 1000)``, ``x = μ / (4 μ_water)`` — air 0, water 0.25,
    dense bone (+3000 HU) 1. Values below air (e.g. padding at −2000 HU or lower) clip to
    0; metal above +3000 HU clips to 1 when ``clip``. Sinograms of ``x`` are line integrals
    of ``μ / (4 μ_water)`` in pixel units.
    """
    x = (hu - HU_AIR) / (HU_ONE - HU_AIR)
    if clip:
        x = x.clip(0.0, 1.0)
    return x


def attenuation_to_hu(x: np.ndarray | torch.Tensor):
    """Inverse of :func:`hu_to_attenuation` (without the clipping): ``HU = 4000 x − 1000``."""
    return x * (HU_ONE - HU_AIR) + HU_AIR


@dataclass
class SparseViewSimulation:
    """Result of :func:`simulate_sparse_view`.

    Attributes:
        image: ground-truth normalised attenuation (:func:`hu_to_attenuation`), ``(S, 1, N, N)``.
        sinogram: ``operator.A(image)`` plus optional noise, ``(S, 1, V, N)`` for the CT operator.
        operator: the operator used (rebuild with ``make_operator(**operator.config)``).
        pixel_size_mm: in-plane pixel size of ``image`` in mm (``None`` for a bare array).
    """

    image: torch.Tensor
    sinogram: torch.Tensor
    operator: Any
    pixel_size_mm: float | None = None


def simulate_sparse_view(
    volume_hu: CTVolume | np.ndarray | torch.Tensor,
    n_views: int,
    *,
    image_size: int | None = None,
    operator: Operator | None = None,
    noise_level: float = 0.0,
    seed: int = 0,
    batch_size: int = 16,
    dtype: torch.dtype = torch.float32,
) -> SparseViewSimulation:
    """Per-slice sparse-view sinograms of a HU volume.

    Each slice is mapped to normalised attenuation ``x = hu_to_attenuation(HU)`` (the
    project's single HU convention), resized to ``image_size`` if given (bilinear with
    anti-aliasing; the slices must be square otherwise) and projected by
    ``make_operator("ct", image_size=N, n_views=n_views)``: ``(S, 1, N, N) → (S, 1, V, N)``.

    Args:
        volume_hu: a :class:`CTVolume` or a HU array ``(S, R, C)`` / ``(S, 1, R, C)``.
        n_views: number of projection angles ``V``.
        image_size: reconstruction grid ``N`` (default: the slice size).
        operator: use this operator instead of building the CT one (its ``image_shape``
            must be ``(1, N, N)``).
        noise_level: std of added white Gaussian noise relative to the RMS of the clean
            sinogram (0: noise free).
        seed: seeds the noise.
        batch_size: slices projected at once (bounds memory).
        dtype: float dtype of the tensors.
    """
    spacing = None
    if isinstance(volume_hu, CTVolume):
        spacing = volume_hu.spacing
        volume_hu = volume_hu.hu
    hu = torch.as_tensor(_as_volume(volume_hu, "volume_hu"), dtype=dtype)
    rows, cols = hu.shape[1:]
    if image_size is None:
        if rows != cols:
            raise ValueError(f"slices are {rows}x{cols}: pass image_size= for a square grid")
        image_size = rows
    x = hu_to_attenuation(hu)[:, None]
    if (rows, cols) != (image_size, image_size):
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
        ).clamp(0.0, 1.0)
    if operator is None:
        from idm_med.operators import make_operator  # lazy: readers need no operators

        operator = make_operator("ct", image_size=image_size, n_views=n_views)
    shape = tuple(getattr(operator, "image_shape", (1, image_size, image_size)))
    if shape != (1, image_size, image_size):
        raise ValueError(
            f"operator image_shape must be (1, {image_size}, {image_size}), got {shape}"
        )

    with torch.no_grad():
        sino = torch.cat([operator.A(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    if noise_level > 0:
        gen = torch.Generator().manual_seed(seed)
        rms = sino.pow(2).mean().sqrt()
        sino = sino + noise_level * rms * torch.randn(sino.shape, generator=gen, dtype=sino.dtype)
    pixel = None
    if spacing is not None:
        pixel = spacing[1] * rows / image_size
        if abs(spacing[1] * rows - spacing[2] * cols) > 1e-3 * spacing[1] * rows:
            logger.warning("non-square field of view resampled to a square grid")
    return SparseViewSimulation(image=x, sinogram=sino, operator=operator, pixel_size_mm=pixel)
