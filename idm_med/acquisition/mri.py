"""MRI acquisition: retrospective undersampling of fastMRI k-space, coil maps per slice,
fastMRI-style targets, and k-space simulation of magnitude slices.

The fastMRI reader (:mod:`idm_med.datasets.fastmri`) returns the file's k-space, target and
mask; here those become what a method needs: the column mask (the file's own, or one
seeded from the file name as fastMRI does), the zero-filled measurement in the MRI
operator's ``(…, 2, H, W)`` layout, ESPIRiT (or RSS-equivalent) coil maps, and the
``make_operator`` arguments that describe the measurement.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..datasets.fastmri import FastMRIVolume, FastMRIVolumeInfo, PathLike, center_crop
from ..operators.mri import complex_to_channels
from ..operators.mri_masks import MASK_TYPES, check_center_fraction, column_mask, seed_from_filename
from .coils import estimate_coil_maps, ifft2c, rss, zero_filled_maps

logger = logging.getLogger(__name__)

#: ``pinv_rtol`` of the SENSE operators built for measured multi-coil k-space. Measured
#: data are noisy and SENSE at an acceleration close to the number of coils is badly
#: conditioned (g-factor), so the exact pseudo-inverse of the operator's default (1e-6)
#: amplifies that noise up to 10⁶×: on the bundled 8-coil slice at 8× its A†y has
#: PSNR −38 dB. Keeping singular values above 1e-2 σ_max bounds the amplification by 100;
#: chosen on slice 1 of that file over 1e-3…3e-2 (8×: 17.9 / 27.0 / 27.1 / 26.4 dB; 4×:
#: 38.8 / 38.8 / 39.7 / 33.9 dB; ``benchmarks/sense_bart.py`` measures slice 0). ``A†A``
#: stays an exact projection; ``A A† A = A`` then holds only up to the dropped σ.
MEASURED_SENSE_RTOL = 1e-2


def to_channels(z: torch.Tensor) -> torch.Tensor:
    """Complex ``(…, H, W)`` → float32 ``(…, 2, H, W)`` (real, imaginary)."""
    return complex_to_channels(z).to(torch.float32)


def simulate_targets(kspace: torch.Tensor | np.ndarray, crop_size: Sequence[int]) -> np.ndarray:
    """fastMRI targets of fully sampled k-space: ``|ifft2c(k)|`` (single-coil, the
    ``reconstruction_esc`` convention) or RSS over coils (multi-coil,
    ``reconstruction_rss``), centre-cropped to ``crop_size``. Returns float32 ``(S, h, w)``.
    """
    k = torch.as_tensor(kspace)
    if not k.is_complex() or k.dim() not in (3, 4):
        raise ValueError(f"kspace must be complex (S, H, W) or (S, C, H, W), got {tuple(k.shape)}")
    images = ifft2c(k)
    mag = rss(images, dim=1) if k.dim() == 4 else images.abs()
    return np.ascontiguousarray(center_crop(mag, crop_size).numpy().astype(np.float32))


@dataclass
class ReconstructionSlice:
    """Everything the core needs to reconstruct one slice.

    Attributes:
        slice_index: index in the volume.
        measurement: ``(1, 2, H, W)`` or ``(1, C, 2, H, W)`` float32 zero-filled k-space.
        mask: bool ``(W,)`` sampled columns.
        operator_config: keyword arguments of ``make_operator`` (``name="mri"``, image
            size, mask parameters and seed, explicit ``mask`` for prospective files,
            ``coil_maps`` for multi-coil) that build the operator with ``A(x) ≈ measurement``.
        target: ``(h, w)`` float32 reference magnitude from the file, or ``None``.
        info: the volume's metadata (``info.crop_size`` is the size to write).
    """

    slice_index: int
    measurement: torch.Tensor
    mask: torch.Tensor
    operator_config: dict[str, Any]
    target: torch.Tensor | None
    info: FastMRIVolumeInfo


def iter_volume(
    path: PathLike | FastMRIVolume,
    acceleration: float | None = None,
    center_fraction: float = 0.08,
    mask_type: str = "random",
    calib_width: int | None = None,
    slices: Sequence[int] | None = None,
    pinv_rtol: float = MEASURED_SENSE_RTOL,
) -> Iterator[ReconstructionSlice]:
    """Walk a fastMRI volume (a path or an opened :class:`FastMRIVolume`) slice by slice.

    Prospectively undersampled files use their own ``mask`` (``acceleration`` is then
    read from the ``acceleration`` attribute or computed as ``W / #sampled``). Fully
    sampled files are undersampled retrospectively with the column mask seeded from the
    file name (:func:`~idm_med.operators.mri_masks.seed_from_filename`, as fastMRI does for
    validation); ``acceleration`` is required for them. Multi-coil slices get coil maps from
    :func:`slice_coil_maps` (ESPIRiT on the fully sampled centre, ``calib_width`` columns
    or, by default, as many as the mask samples contiguously up to 24; RSS-equivalent maps
    when that centre is too narrow), computed once per slice of a volume and cached for
    the next pass over the same file.
    ``slices`` restricts the walk to those indices (in that order), so unselected slices
    are neither read nor calibrated. ``pinv_rtol`` is the SENSE pseudo-inverse's relative
    singular-value cutoff for multi-coil files (see :data:`MEASURED_SENSE_RTOL`).
    """
    volume = path if isinstance(path, FastMRIVolume) else FastMRIVolume(path)
    info = volume.info
    seed = seed_from_filename(info.fname)
    center_fraction = check_center_fraction(center_fraction)
    if mask_type not in MASK_TYPES:
        raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
    for index in range(len(volume)) if slices is None else slices:
        sl = volume[index]
        explicit = sl.mask is not None
        if explicit:
            mask = sl.mask
            acc = info.attrs.get("acceleration") or mask.numel() / max(int(mask.sum()), 1)
        else:
            if acceleration is None:
                raise ValueError(
                    f"{info.path} is fully sampled: pass acceleration to undersample it"
                )
            acc = acceleration
            mask = column_mask(mask_type, info.kspace_shape[1], acc, center_fraction, seed)
        kspace = sl.kspace * mask.to(sl.kspace.dtype)
        config: dict[str, Any] = {
            "name": "mri",
            "image_size": info.kspace_shape,
            "acceleration": float(acc),
            "center_fraction": center_fraction,
            "mask_type": mask_type,
            "seed": seed,
            "mask": mask.clone() if explicit else None,
            "coil_maps": None,
        }
        if info.multicoil:
            config["coil_maps"] = _cached_coil_maps(info, sl.slice_index, kspace, mask, calib_width)
            config["pinv_rtol"] = float(pinv_rtol)
        yield ReconstructionSlice(
            slice_index=sl.slice_index,
            measurement=to_channels(kspace).unsqueeze(0),
            mask=mask,
            operator_config=config,
            target=sl.target,
            info=info,
        )


MIN_CALIB_WIDTH = 16  # ESPIRiT (kernel 6) needs a calibration block well above the kernel
DEFAULT_CALIB_WIDTH = 24
_MAPS_CACHE: dict[tuple, torch.Tensor] = {}


def sampled_centre_width(mask: torch.Tensor) -> int:
    """Width of the contiguous run of sampled columns through the k-space centre ``W // 2``
    (the autocalibration region of a fastMRI mask). ``mask``: bool ``(W,)``."""
    m = mask.bool().tolist()
    centre = len(m) // 2
    if not m[centre]:
        return 0
    lo, hi = centre, centre
    while lo > 0 and m[lo - 1]:
        lo -= 1
    while hi < len(m) - 1 and m[hi + 1]:
        hi += 1
    return hi - lo + 1


def slice_coil_maps(
    kspace: torch.Tensor, mask: torch.Tensor, calib_width: int | None, source: PathLike
) -> torch.Tensor:
    """Coil maps ``(C, H, W)`` for one undersampled multi-coil slice.

    ESPIRiT on the central ``calib_width`` columns; by default ``calib_width`` is the
    fully sampled centre width of ``mask`` (at most 24). When that centre is narrower
    than :data:`MIN_CALIB_WIDTH` (narrow k-space at a small centre fraction) ESPIRiT maps
    would be biased, so the safe :func:`~idm_med.acquisition.coils.zero_filled_maps` are used
    (A†y is then the zero-filled RSS image) and a warning names ``source``.
    """
    centre = sampled_centre_width(mask)
    width = calib_width if calib_width is not None else min(DEFAULT_CALIB_WIDTH, centre)
    if calib_width is None and width < MIN_CALIB_WIDTH:
        logger.warning(
            "%s: only %d central k-space columns are fully sampled (ESPIRiT needs %d); "
            "using RSS-equivalent coil maps (pass a larger --center-fraction or "
            "--calib-width to calibrate ESPIRiT)",
            source,
            centre,
            MIN_CALIB_WIDTH,
        )
        return zero_filled_maps(kspace)
    if width > centre:
        logger.warning(
            "%s: ESPIRiT calibration width %d exceeds the %d fully sampled central "
            "columns; coil maps may be poor",
            source,
            width,
            centre,
        )
    return estimate_coil_maps(kspace, calib_width=width)


def _cached_coil_maps(
    info: FastMRIVolumeInfo,
    index: int,
    kspace: torch.Tensor,
    mask: torch.Tensor,
    calib_width: int | None,
) -> torch.Tensor:
    """:func:`slice_coil_maps`, cached for the volume read last (a second method on the
    same file, e.g. the demo's baselines, does not recalibrate)."""
    stat = info.path.stat()
    volume_key = (str(info.path.resolve()), stat.st_mtime_ns, stat.st_size)
    key = (*volume_key, index, calib_width, mask.bool().numpy().tobytes())
    if key not in _MAPS_CACHE:
        for old in [k for k in _MAPS_CACHE if k[:3] != volume_key]:
            del _MAPS_CACHE[old]  # one volume's maps at a time
        _MAPS_CACHE[key] = slice_coil_maps(kspace, mask, calib_width, info.path)
    return _MAPS_CACHE[key].clone()
