"""Writer of CT DICOM series (HU as uint16 with a rescale), atomic per series."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from .atomic import OutputExistsError, atomic_directory
from .dicom_volume import CTVolume, as_volume

logger = logging.getLogger(__name__)

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

_UINT16_MAX = 65535
_SLICE_NAME = re.compile(r"slice_\d{4,}\.dcm")


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
    out_dir: str | Path,
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
    hu = as_volume(volume_hu, "volume_hu")
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
    # The scan's fan-beam geometry, so the derived series can be measured the same way.
    for keyword, value in (
        ("DistanceSourceToDetector", reference.distance_source_to_detector),
        ("DistanceSourceToPatient", reference.distance_source_to_patient),
    ):
        if value is not None:
            setattr(ds, keyword, format_number_as_ds(float(value)))

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
