"""From what a reader returned to what a method needs: ``(operator, y)`` per slice.

One function per input kind, all with the signature ``measure(data, settings)`` and all
yielding :class:`MeasuredSlice` items; :data:`MEASUREMENTS` maps a reader's ``name``
(:mod:`idm_med.datasets.readers`) to its function, so the pipeline needs no switch:

* ``fastmri`` — the file's k-space, undersampled with its own mask or one seeded from the
  file name; multi-coil slices get coil maps (:func:`~idm_med.acquisition.mri.iter_volume`);
* ``dicom`` — HU → attenuation, projected to a sparse-view sinogram
  (:func:`~idm_med.acquisition.ct.simulate_sparse_view`), parallel beam or, with
  ``settings.ct_geometry="fan"``, fan beam with the series' distances
  (:func:`~idm_med.acquisition.ct.fan_beam_operator`);
* ``nifti`` — magnitude slices along ``settings.axis``, scaled to a maximum of 1 and
  undersampled in k-space with one seeded single-coil mask;
* ``image`` — an image measured with ``settings.operator``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..datasets.dicom import CTVolume
from ..datasets.fastmri import FastMRIVolume, center_crop
from ..datasets.nifti import NiftiVolume, extract_slices
from ..operators import Operator, make_operator
from .ct import check_ct_geometry, fan_beam_operator, simulate_sparse_view
from .mri import MEASURED_SENSE_RTOL, iter_volume


@dataclass
class MeasurementSettings:
    """How the data are (or are simulated to be) measured; each input kind reads the
    fields it needs. ``slices`` restricts fastMRI / NIfTI inputs to those indices.

    CT: ``ct_geometry`` is ``"parallel"`` or ``"fan"``; for fan beam
    ``source_distance_mm`` / ``detector_distance_mm`` (source–isocentre / source–detector,
    mm) stand in for the series' tags (0018,1111) / (0018,1110) when it lacks them, and
    ``detector`` is ``"arc"`` or ``"flat"``. Multi-coil MRI: ``sense_rtol`` is the SENSE
    pseudo-inverse's singular-value cutoff
    (:data:`~idm_med.acquisition.mri.MEASURED_SENSE_RTOL`)."""

    acceleration: float | None = 4.0
    center_fraction: float = 0.08
    mask_type: str = "random"
    calib_width: int | None = None
    sense_rtol: float = MEASURED_SENSE_RTOL
    n_views: int = 60
    noise_level: float = 0.0
    seed: int = 0
    axis: int = 2
    slices: list[int] | None = None
    operator: str = "gaussian_cs"
    operator_kwargs: dict[str, Any] = field(default_factory=dict)
    ct_geometry: str = "parallel"
    source_distance_mm: float | None = None
    detector_distance_mm: float | None = None
    detector: str = "arc"


@dataclass
class MeasuredSlice:
    """One slice ready for a method.

    Attributes:
        index: the slice's index in the volume (0 for an image).
        operator: the measurement's operator (slices that can share one do).
        y: measurement ``(1, *operator.measurement_shape)``.
        reference: the ground truth ``(H', W')`` in output units (fastMRI: the file's
            target, cropped; CT: normalised attenuation; NIfTI: the slice; image: the
            image), or ``None``.
        scale: factor from the operator's image units to output units (NIfTI).
        mask: bool ``(W,)`` sampled k-space columns (MRI), else ``None``.
    """

    index: int
    operator: Operator
    y: torch.Tensor
    reference: np.ndarray | None = None
    scale: float = 1.0
    mask: torch.Tensor | None = None


def measure_fastmri(volume: FastMRIVolume, s: MeasurementSettings) -> Iterator[MeasuredSlice]:
    """fastMRI slices; slices with the same mask and no coil maps share one operator (so
    they batch)."""
    operators: dict[tuple, Operator] = {}
    crop = volume.info.crop_size
    items = iter_volume(
        volume,
        s.acceleration,
        s.center_fraction,
        s.mask_type,
        s.calib_width,
        s.slices,
        pinv_rtol=s.sense_rtol,
    )
    for item in items:
        config = item.operator_config
        key = None
        if config["coil_maps"] is None:
            key = tuple((k, v) for k, v in config.items() if k != "mask")
            key += (item.mask.numpy().tobytes(),)
        op = operators.get(key) if key is not None else None
        if op is None:
            op = make_operator(**config)
            if key is not None:
                operators[key] = op
        ref = None if item.target is None else center_crop(np.asarray(item.target), crop)
        yield MeasuredSlice(item.slice_index, op, item.measurement, ref, mask=item.mask)


def measure_ct(volume: CTVolume, s: MeasurementSettings) -> Iterator[MeasuredSlice]:
    """Sparse-view sinograms of every slice (``s.n_views`` angles, optional noise), parallel
    or fan beam (``s.ct_geometry``)."""
    check_ct_geometry(s.ct_geometry, s.source_distance_mm, s.detector_distance_mm, s.detector)
    op = None  # parallel beam: simulate_sparse_view's own operator
    if s.ct_geometry == "fan":
        op = fan_beam_operator(
            volume,
            s.n_views,
            source_distance_mm=s.source_distance_mm,
            detector_distance_mm=s.detector_distance_mm,
            detector=s.detector,
        )
    sim = simulate_sparse_view(
        volume, s.n_views, operator=op, noise_level=s.noise_level, seed=s.seed
    )
    for i in range(len(sim.sinogram)):
        yield MeasuredSlice(i, sim.operator, sim.sinogram[i : i + 1], sim.image[i, 0].numpy())


def measure_nifti(volume: NiftiVolume, s: MeasurementSettings) -> Iterator[MeasuredSlice]:
    """Single-coil Cartesian undersampling of the magnitude slices along ``s.axis``."""
    data = extract_slices(volume.data, axis=s.axis)  # (S, H, W)
    scale = float(np.abs(data).max()) or 1.0
    op = make_operator(
        "mri",
        image_size=data.shape[1:],
        acceleration=s.acceleration,
        center_fraction=s.center_fraction,
        seed=s.seed,
    )
    mask = op.mask if hasattr(op, "mask") else None
    for i in range(len(data)) if s.slices is None else s.slices:
        x = torch.zeros(1, 2, *data.shape[1:])
        x[0, 0] = torch.from_numpy(data[i] / scale)
        yield MeasuredSlice(i, op, op.A(x), data[i], scale=scale, mask=mask)


def measure_image(image: torch.Tensor, s: MeasurementSettings) -> Iterator[MeasuredSlice]:
    """An image ``(1, H, W)`` in [0, 1] measured with ``s.operator`` and its arguments."""
    op = make_operator(s.operator, image_size=tuple(image.shape[-2:]), **s.operator_kwargs)
    yield MeasuredSlice(0, op, op.A(image[None]), image[0].numpy())


def count_slices(data: Any, s: MeasurementSettings) -> int:
    """How many slices the measurement of ``data`` yields (for progress bars)."""
    if s.slices is not None:
        return len(s.slices)
    if isinstance(data, NiftiVolume):
        return int(data.data.shape[s.axis])
    if isinstance(data, CTVolume):
        return int(data.shape[0])
    return len(data) if isinstance(data, FastMRIVolume) else 1


#: Reader name → measurement function.
MEASUREMENTS: dict[str, Callable[[Any, MeasurementSettings], Iterator[MeasuredSlice]]] = {
    "fastmri": measure_fastmri,
    "dicom": measure_ct,
    "nifti": measure_nifti,
    "image": measure_image,
}
