"""CT acquisition: the HU ↔ attenuation convention and sparse-view sinograms of HU volumes.

The attenuation convention lives in :func:`hu_to_attenuation` and
:func:`attenuation_to_hu` (and nowhere else): the DICOM reader returns HU
(:mod:`idm_med.datasets.dicom`), the networks and the CT operator work on normalised
attenuation in ``[0, 1]``.

The scan geometry is parallel beam by default; :func:`fan_beam_operator` builds the
fan-beam operator of a series from its DICOM distances (mm, the tags preferred over
explicit values) converted to the reconstruction grid's pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..datasets.dicom import CTVolume, as_volume
from ..operators import Operator, make_operator
from ..operators.fan_beam import DETECTORS, fan_geometry_from_dicom

logger = logging.getLogger(__name__)

#: HU mapped to 0 (air) and to 1 by :func:`hu_to_attenuation`.
HU_AIR = -1000.0
HU_ONE = 3000.0

#: Scan geometries of :func:`check_ct_geometry` / :func:`fan_beam_operator`.
CT_GEOMETRIES = ("parallel", "fan")

#: What a fan-beam distance is called: DICOM tag, reader attribute, option, meaning.
_FAN_DISTANCES = {
    "source": (
        "DistanceSourceToPatient (0018,1111)",
        "distance_source_to_patient",
        "--source-distance",
        "source–isocentre",
    ),
    "detector": (
        "DistanceSourceToDetector (0018,1110)",
        "distance_source_to_detector",
        "--detector-distance",
        "source–detector",
    ),
}


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
    operator: Operator
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
    hu = torch.as_tensor(as_volume(volume_hu, "volume_hu"), dtype=dtype)
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


# -- scan geometry -------------------------------------------------------------------------
def check_ct_geometry(
    geometry: str,
    source_distance_mm: float | None = None,
    detector_distance_mm: float | None = None,
    detector: str = "arc",
) -> None:
    """Validate the CT scan settings: a known geometry and detector, and the fan-beam
    options (distances, a flat detector) only with ``geometry="fan"``."""
    if geometry not in CT_GEOMETRIES:
        raise ValueError(f"--ct-geometry must be one of {CT_GEOMETRIES}, got {geometry!r}")
    if detector not in DETECTORS:
        raise ValueError(f"--detector must be one of {DETECTORS}, got {detector!r}")
    fan_only = {
        "--source-distance": source_distance_mm is not None,
        "--detector-distance": detector_distance_mm is not None,
        "--detector flat": detector != "arc",
    }
    given = [name for name, used in fan_only.items() if used]
    if geometry != "fan" and given:
        raise ValueError(f"{', '.join(given)} apply to --ct-geometry fan only")


def _series_label(volume: CTVolume) -> str:
    if volume.files:
        return str(Path(volume.files[0]).parent)
    return f"series {volume.series_uid or '(no SeriesInstanceUID)'}"


def with_fan_distances(
    volume: CTVolume, source_distance_mm: float | None, detector_distance_mm: float | None
) -> CTVolume:
    """``volume`` carrying the fan-beam distances a reconstruction used (its tags where
    present, the options otherwise, as :func:`fan_beam_operator` resolves them), so a
    series written from it records the geometry in (0018,1111) / (0018,1110)."""

    def resolved(tag_mm: float | None, option_mm: float | None) -> float | None:
        return tag_mm if tag_mm is not None else option_mm

    return replace(
        volume,
        distance_source_to_patient=resolved(volume.distance_source_to_patient, source_distance_mm),
        distance_source_to_detector=resolved(
            volume.distance_source_to_detector, detector_distance_mm
        ),
    )


def _fan_distance(volume: CTVolume, which: str, option_mm: float | None) -> float:
    """One fan-beam distance in mm: the series' tag, else the option, else a clear error."""
    tag, attribute, option, meaning = _FAN_DISTANCES[which]
    from_tag = getattr(volume, attribute)
    if from_tag is None:
        if option_mm is None:
            raise ValueError(
                f"{_series_label(volume)}: the fan-beam geometry needs the {meaning} "
                f"distance, but the series has no {tag} tag; pass {option} MM"
            )
        return float(option_mm)
    if option_mm is not None and abs(float(option_mm) - from_tag) > 1e-6 * from_tag:
        logger.warning(
            "%s: using %s = %g mm from the series, not %s %g",
            _series_label(volume),
            tag,
            from_tag,
            option,
            option_mm,
        )
    return float(from_tag)


def fan_beam_operator(
    volume: CTVolume,
    n_views: int,
    *,
    image_size: int | None = None,
    source_distance_mm: float | None = None,
    detector_distance_mm: float | None = None,
    detector: str = "arc",
) -> Operator:
    """The fan-beam CT operator of a series on an ``image_size`` grid (default: the slice
    size; the slices must be square then), as :func:`simulate_sparse_view` resamples it.

    The source–isocentre and source–detector distances are the series' tags
    ``DistanceSourceToPatient`` (0018,1111) and ``DistanceSourceToDetector`` (0018,1110)
    when present, otherwise ``source_distance_mm`` / ``detector_distance_mm``; a distance
    known from neither raises naming the tag and the option. They are converted to pixels
    of the grid (``PixelSpacing · R / N``: the field of view is kept) by
    :func:`~idm_med.operators.fan_beam.fan_geometry_from_dicom`.
    """
    check_ct_geometry("fan", source_distance_mm, detector_distance_mm, detector)
    rows, cols = volume.shape[1:]
    if image_size is None:
        if rows != cols:
            raise ValueError(f"slices are {rows}x{cols}: pass image_size= for a square grid")
        image_size = rows
    source = _fan_distance(volume, "source", source_distance_mm)
    det = _fan_distance(volume, "detector", detector_distance_mm)
    pixel = (volume.spacing[1] * rows / image_size, volume.spacing[2] * cols / image_size)
    try:
        fan = fan_geometry_from_dicom(det, source, pixel, detector=detector)
        return make_operator("ct", image_size=image_size, n_views=n_views, geometry="fan", **fan)
    except ValueError as exc:
        raise ValueError(
            f"{_series_label(volume)}: fan beam with source–isocentre {source:g} mm, "
            f"source–detector {det:g} mm and {pixel[0]:g} x {pixel[1]:g} mm pixels: {exc}"
        ) from None
