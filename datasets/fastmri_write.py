"""Writers of fastMRI ``.h5`` files (atomic): submissions and input files.

:func:`write_reconstruction` writes what fastMRI's evaluation reads (dataset
``reconstruction``, magnitude, centre-cropped); :func:`write_fastmri_file` writes an input
file in the layout of :mod:`idm_med.datasets.fastmri_format` (e.g. simulated data).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from .atomic import atomic_path
from .fastmri_format import (
    ESC_KEY,
    HEADER_KEY,
    KSPACE_KEY,
    MASK_KEY,
    RECONSTRUCTION_KEY,
    RSS_KEY,
    TARGET_KEYS,
    PathLike,
    make_ismrmrd_header,
)

logger = logging.getLogger(__name__)


def center_crop(x: torch.Tensor | np.ndarray, size: Sequence[int]) -> torch.Tensor | np.ndarray:
    """Centre crop of the last two axes to ``(h, w)``, fastMRI's convention
    (start ``(H - h) // 2``). Raises ``ValueError`` if ``x`` is smaller than ``size``."""
    h, w = int(size[0]), int(size[1])
    height, width = x.shape[-2], x.shape[-1]
    if not (0 < h <= height and 0 < w <= width):
        raise ValueError(f"cannot centre-crop shape {tuple(x.shape)} to ({h}, {w})")
    top, left = (height - h) // 2, (width - w) // 2
    return x[..., top : top + h, left : left + w]


def _magnitude(reconstruction: Any) -> np.ndarray:
    """``(S, H, W)`` complex/real or ``(S, 2, H, W)`` real channels → float32 ``(S, H, W)``."""
    x = reconstruction
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().resolve_conj().numpy()
    x = np.asarray(x)
    shape_ok = x.ndim == 3 or (x.ndim == 4 and x.shape[1] == 2 and not np.iscomplexobj(x))
    if not shape_ok:
        raise ValueError(
            "reconstruction must be (slices, H, W) complex or magnitude, or real "
            f"(slices, 2, H, W) channels, got {x.dtype} {x.shape}"
        )
    if x.ndim == 4:
        return np.sqrt((x.astype(np.float64) ** 2).sum(axis=1)).astype(np.float32)
    return np.abs(x).astype(np.float32)


def reconstruction_path(out_dir: PathLike, input_path: PathLike) -> Path:
    """Where fastMRI's evaluation expects the reconstruction of ``input_path``."""
    return Path(out_dir) / Path(input_path).name


def write_reconstruction(
    path: PathLike,
    reconstruction: torch.Tensor | np.ndarray,
    crop_size: Sequence[int] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write a submission file: dataset ``reconstruction`` float32 ``(S, h, w)``.

    Args:
        path: output ``.h5`` (written atomically: a failure leaves no file behind).
        reconstruction: ``(S, H, W)`` complex or magnitude, or ``(S, 2, H, W)`` real/imag
            channels; the magnitude is stored.
        crop_size: ``(h, w)`` centre crop, normally ``info.crop_size`` (the header's recon
            size, which fastMRI's evaluation compares against). ``None`` keeps ``(H, W)``.
        attrs: extra attributes (acceleration, model, ...); values must be HDF5-storable.
    """
    mag = _magnitude(reconstruction)
    if not np.isfinite(mag).all():
        raise ValueError("reconstruction contains NaN or infinite values")
    if crop_size is not None:
        mag = np.ascontiguousarray(center_crop(mag, crop_size))
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset(RECONSTRUCTION_KEY, data=mag, track_times=False)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
    logger.info("wrote %s %s", path, mag.shape)
    return path


def write_fastmri_file(
    path: PathLike,
    kspace: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray | None = None,
    target_key: str | None = None,
    recon_size: Sequence[int] | None = None,
    mask: torch.Tensor | np.ndarray | None = None,
    acquisition: str | None = None,
    patient_id: str | None = None,
    attrs: Mapping[str, Any] | None = None,
    fov_mm: Sequence[float] | None = None,
    compression: str | None = "gzip",
) -> Path:
    """Write a fastMRI-format input file (atomically), e.g. simulated data.

    Args:
        path: output ``.h5``.
        kspace: complex ``(S, H, W)`` single-coil or ``(S, C, H, W)`` multi-coil; stored
            complex64, one chunk per slice (so readers decode only the slice they index).
        target: optional float ``(S, h, w)`` reference magnitudes; ``max`` and ``norm``
            attributes are computed from it as in fastMRI.
        target_key: dataset name of the target; default ``reconstruction_esc`` for
            single-coil and ``reconstruction_rss`` for multi-coil.
        recon_size: ``(h, w)`` header recon size; default the target's, else ``(H, W)``.
        mask: optional ``(W,)`` sampled columns (a prospectively undersampled file).
        acquisition, patient_id: standard fastMRI attributes.
        attrs: further attributes, e.g. ``{"simulated": True, "source": "..."}``.
        fov_mm: encoded field of view for the header.
        compression: h5py compression filter (``None`` for none).
    """
    k = kspace.detach().cpu().numpy() if isinstance(kspace, torch.Tensor) else np.asarray(kspace)
    if not np.iscomplexobj(k) or k.ndim not in (3, 4):
        raise ValueError(
            "kspace must be complex (slices, H, W) or (slices, coils, H, W), got "
            f"{k.dtype} {k.shape}"
        )
    k = k.astype(np.complex64)
    num_slices, height, width = k.shape[0], k.shape[-2], k.shape[-1]
    if target_key is None:
        target_key = ESC_KEY if k.ndim == 3 else RSS_KEY
    if target_key not in TARGET_KEYS:
        raise ValueError(f"target_key must be one of {TARGET_KEYS}, got {target_key!r}")
    t = None
    if target is not None:
        t = target.detach().cpu().numpy() if isinstance(target, torch.Tensor) else target
        t = np.asarray(t, dtype=np.float32)
        if t.ndim != 3 or t.shape[0] != num_slices:
            raise ValueError(f"target must have shape ({num_slices}, h, w), got {t.shape}")
    if recon_size is None:
        recon_size = t.shape[1:] if t is not None else (height, width)
    header = make_ismrmrd_header((height, width), recon_size, fov_mm)
    m = None
    if mask is not None:
        m = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).astype(np.float32)
        if m.shape != (width,):
            raise ValueError(f"mask must have shape ({width},), got {m.shape}")

    # track_times=False keeps equal inputs byte-identical (HDF5 stamps datasets otherwise).
    options: dict[str, Any] = {"track_times": False}
    if compression is not None:
        options.update(compression=compression, shuffle=True)
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset(KSPACE_KEY, data=k, chunks=(1, *k.shape[1:]), **options)
        if t is not None:
            f.create_dataset(target_key, data=t, chunks=(1, *t.shape[1:]), **options)
            f.attrs["max"] = float(t.max())
            f.attrs["norm"] = float(np.linalg.norm(t.astype(np.float64)))
        if m is not None:
            f.create_dataset(MASK_KEY, data=m, track_times=False)
        f.create_dataset(HEADER_KEY, data=np.bytes_(header), track_times=False)
        if acquisition is not None:
            f.attrs["acquisition"] = acquisition
        if patient_id is not None:
            f.attrs["patient_id"] = patient_id
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
    return path
