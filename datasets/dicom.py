"""CT DICOM series in Hounsfield units: the reader.

The volume and its geometry are :class:`~idm_med.datasets.dicom_volume.CTVolume` (see that
module for the DICOM geometry conventions). HU come from the Modality LUT
(``HU = stored · RescaleSlope + RescaleIntercept``), applied by
:func:`pydicom.pixels.apply_modality_lut`. Compressed transfer syntaxes decode through
pydicom's pixel plugins (JPEG lossless / JPEG-LS via ``pylibjpeg-libjpeg``, RLE built in).
The reader returns what is in the files (HU and geometry, plus the fan-beam distances
``DistanceSourceToDetector`` / ``DistanceSourceToPatient`` when present); the attenuation
convention and sinogram simulation belong to the acquisition layer
(:mod:`idm_med.acquisition.ct`). The writer is :mod:`idm_med.datasets.dicom_write`
(re-exported here).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut
from pydicom.uid import MediaStorageDirectoryStorage

from .dicom_volume import KEY_TAGS, CTVolume, as_volume, slice_normal
from .dicom_write import hu_rescale, write_dicom_series

__all__ = [
    "KEY_TAGS",
    "CTVolume",
    "as_volume",
    "hu_rescale",
    "read_dicom_series",
    "write_dicom_series",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: Tolerances (mm, or unit-vector components) for "same geometry" checks.
_ORIENTATION_TOL = 1e-4
_POSITION_TOL = 1e-3


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
        _check_slice(path, ds, shape0, first_path)
        warned_rescale = _check_rescale(path, ds, modality, warned_rescale)
        images.append(_hu_pixels(path, ds))
        positions.append([float(v) for v in ds.ImagePositionPatient])
        orientations.append([float(v) for v in ds.ImageOrientationPatient])
        spacings.append([float(v) for v in ds.PixelSpacing])

    orientation = np.asarray(orientations[0], dtype=np.float64)
    for (path, _), o, s in zip(slices, orientations, spacings, strict=True):
        if not np.allclose(o, orientation, atol=_ORIENTATION_TOL):
            raise ValueError(f"{path}: ImageOrientationPatient {o} differs from {orientation}")
        if not np.allclose(s, spacings[0], atol=_POSITION_TOL):
            raise ValueError(f"{path}: PixelSpacing {s} differs from {spacings[0]}")

    normal = slice_normal(orientation, source=first_path)
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
        distance_source_to_detector=_optional_mm(first, "DistanceSourceToDetector"),
        distance_source_to_patient=_optional_mm(first, "DistanceSourceToPatient"),
    )
    logger.info(
        "read series %s: %d slice(s) of %dx%d, spacing %s mm",
        series_uid,
        *volume.shape,
        tuple(round(s, 4) for s in volume.spacing),
    )
    return volume


def _optional_mm(ds: Dataset, keyword: str) -> float | None:
    """A DS attribute in mm as a float, ``None`` when absent or empty."""
    value = ds.get(keyword)
    return float(value) if value not in (None, "") else None


def _check_slice(path: Path, ds: Dataset, shape0: tuple, first_path: Path) -> None:
    """One grayscale single-frame image of the series' size, with its geometry."""
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


def _check_rescale(path: Path, ds: Dataset, modality: str, warned: bool) -> bool:
    """CT needs RescaleSlope/Intercept; other modalities default to the identity (one
    warning per series). Returns whether the warning has been given."""
    if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
        return warned
    if modality == "CT":
        raise ValueError(
            f"{path}: CT image without RescaleSlope/RescaleIntercept; HU are undefined"
        )
    if not warned and "ModalityLUTSequence" not in ds:
        logger.warning(
            "%s: no RescaleSlope/RescaleIntercept (Modality %r): using slope 1, intercept 0",
            path,
            modality,
        )
        return True
    return warned


def _hu_pixels(path: Path, ds: Dataset) -> np.ndarray:
    """The slice's HU ``(R, C)`` float32 through the Modality LUT."""
    try:
        stored = ds.pixel_array
    except Exception as exc:  # a missing decoder plugin or corrupt compressed data
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown transfer syntax")
        name = getattr(syntax, "name", str(syntax))
        raise ValueError(f"{path}: cannot decode pixel data ({name}): {exc}") from exc
    return np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)


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
