"""The acquisition layer: what joins the readers (:mod:`idm_med.datasets`) and the
operators (:mod:`idm_med.operators`).

A reader returns what is in a file; the acquisition code turns it into a measurement:
MRI column masks applied to k-space and coil maps (:mod:`.mri`, :mod:`.coils`), the
HU ↔ attenuation convention and sparse-view sinograms (:mod:`.ct`), seeded noise
(:mod:`.noise`), and one ``measure(data, settings)`` per input kind that yields
``(operator, y)`` per slice (:mod:`.measure`).
"""

from .coils import (
    coil_combine,
    estimate_coil_maps,
    normalise_maps,
    rss,
    synthetic_coil_maps,
    zero_filled_maps,
)
from .ct import (
    HU_AIR,
    HU_ONE,
    SparseViewSimulation,
    attenuation_to_hu,
    fan_beam_operator,
    hu_to_attenuation,
    simulate_sparse_view,
    with_fan_distances,
)
from .measure import MEASUREMENTS, MeasuredSlice, MeasurementSettings, count_slices
from .mri import (
    ReconstructionSlice,
    iter_volume,
    sampled_centre_width,
    simulate_targets,
    slice_coil_maps,
    to_channels,
)
from .noise import NoiseRecord, add_kspace_noise, add_poisson_noise

__all__ = [
    "HU_AIR",
    "HU_ONE",
    "MEASUREMENTS",
    "MeasuredSlice",
    "MeasurementSettings",
    "NoiseRecord",
    "ReconstructionSlice",
    "SparseViewSimulation",
    "add_kspace_noise",
    "add_poisson_noise",
    "attenuation_to_hu",
    "fan_beam_operator",
    "coil_combine",
    "count_slices",
    "estimate_coil_maps",
    "hu_to_attenuation",
    "iter_volume",
    "normalise_maps",
    "rss",
    "sampled_centre_width",
    "simulate_sparse_view",
    "with_fan_distances",
    "simulate_targets",
    "slice_coil_maps",
    "synthetic_coil_maps",
    "to_channels",
    "zero_filled_maps",
]
