"""fastMRI ``.h5`` files: lazy reader of the volume metadata and of single slices.

The file layout is described in :mod:`idm_med.datasets.fastmri_format`. Nothing here reads
a whole volume: every access opens the file and indexes a single slice, so the readers are
cheap and safe in DataLoader workers. Problems with a file raise :class:`FastMRIFileError`
(a ``ValueError``) naming the file. The reader returns what is in the file (k-space, target,
mask, header); undersampling, coil maps and operators are the acquisition layer's
(:mod:`idm_med.acquisition.mri`). Writers: :mod:`idm_med.datasets.fastmri_write`
(re-exported here).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from .fastmri_format import (
    ESC_KEY,
    HEADER_KEY,
    ISMRMRD_NAMESPACE,
    KSPACE_KEY,
    MASK_KEY,
    RECONSTRUCTION_KEY,
    RSS_KEY,
    TARGET_KEYS,
    FastMRIFileError,
    PathLike,
    make_ismrmrd_header,
    parse_ismrmrd_header,
)
from .fastmri_write import (
    center_crop,
    reconstruction_path,
    write_fastmri_file,
    write_reconstruction,
)

__all__ = [
    "ESC_KEY",
    "HEADER_KEY",
    "ISMRMRD_NAMESPACE",
    "KSPACE_KEY",
    "MASK_KEY",
    "RECONSTRUCTION_KEY",
    "RSS_KEY",
    "TARGET_KEYS",
    "FastMRIFileError",
    "FastMRISlice",
    "FastMRIVolume",
    "FastMRIVolumeInfo",
    "center_crop",
    "make_ismrmrd_header",
    "parse_ismrmrd_header",
    "read_slice",
    "read_volume_info",
    "reconstruction_path",
    "write_fastmri_file",
    "write_reconstruction",
]

logger = logging.getLogger(__name__)


# -- metadata -------------------------------------------------------------------------
@dataclass(frozen=True)
class FastMRIVolumeInfo:
    """What a fastMRI file holds, read without touching the k-space data.

    Attributes:
        path: the file.
        num_slices: number of slices ``S``.
        num_coils: coils ``C`` of a multi-coil file, ``None`` for single-coil.
        kspace_shape: per-slice k-space grid ``(H, W)``.
        encoding_size: header ``encodedSpace`` matrix ``(x, y, z)``.
        recon_size: header ``reconSpace`` matrix ``(x, y, z)``.
        target_key: ``"reconstruction_esc"`` / ``"reconstruction_rss"`` or ``None``.
        target_shape: per-slice target shape ``(h, w)`` or ``None``.
        has_mask: True for prospectively undersampled files (a ``mask`` dataset).
        acquisition, patient_id, max, norm: the standard fastMRI attributes (or ``None``).
        attrs: every file attribute, converted to plain Python values.
    """

    path: Path
    num_slices: int
    num_coils: int | None
    kspace_shape: tuple[int, int]
    encoding_size: tuple[int, int, int]
    recon_size: tuple[int, int, int]
    target_key: str | None = None
    target_shape: tuple[int, int] | None = None
    has_mask: bool = False
    acquisition: str | None = None
    patient_id: str | None = None
    max: float | None = None
    norm: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def fname(self) -> str:
        """Base name of the file (what fastMRI seeds masks from)."""
        return self.path.name

    @property
    def multicoil(self) -> bool:
        return self.num_coils is not None

    @property
    def crop_size(self) -> tuple[int, int]:
        """``(h, w)`` that targets and submitted reconstructions have: recon ``(x, y)``.

        k-space narrower than the recon width (fastMRI's "FLAIR 203" files) falls back to
        a ``(W, W)`` crop as fastMRI's data transforms do (never larger than ``H``).
        """
        height, width = self.kspace_shape
        if self.narrow:
            side = min(width, height)
            return side, side
        return self.recon_size[0], self.recon_size[1]

    @property
    def narrow(self) -> bool:
        """True when the k-space is narrower than the header's recon width."""
        return self.kspace_shape[1] < self.recon_size[1]


@dataclass
class FastMRISlice:
    """One slice of a fastMRI file.

    Attributes:
        kspace: complex64 ``(H, W)`` single-coil or ``(C, H, W)`` multi-coil.
        target: float32 ``(h, w)`` reference magnitude, or ``None``.
        mask: bool ``(W,)`` sampled columns of a prospectively undersampled file, or ``None``.
        info: the volume's metadata.
        slice_index: index of the slice in the volume.
    """

    kspace: torch.Tensor
    target: torch.Tensor | None
    mask: torch.Tensor | None
    info: FastMRIVolumeInfo
    slice_index: int

    @property
    def fname(self) -> str:
        return self.info.fname


# -- reading --------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """HDF5 attribute → plain Python value (bytes decoded, numpy scalars unwrapped)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise FastMRIFileError(path, "no such file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise FastMRIFileError(
            path, f"not a readable HDF5 file (truncated or corrupt?): {exc}"
        ) from exc


def read_volume_info(path: PathLike) -> FastMRIVolumeInfo:
    """Validate a fastMRI file and read its metadata (no k-space data is read).

    Raises :class:`FastMRIFileError` for an unreadable/corrupt file, a missing
    ``kspace``, k-space of the wrong rank or dtype, targets or mask of the wrong shape, or
    a malformed header.
    """
    path = Path(path)
    with _open(path) as f:
        try:
            return _read_info(f, path)
        except FastMRIFileError:
            raise
        except (OSError, KeyError, RuntimeError) as exc:
            raise FastMRIFileError(path, f"corrupt HDF5 metadata: {exc}") from exc


def _read_info(f: h5py.File, path: Path) -> FastMRIVolumeInfo:
    num_slices, num_coils, (height, width) = _kspace_layout(f, path)
    target_key, target_shape = _target_layout(f, path, num_slices)
    has_mask = MASK_KEY in f
    if has_mask and tuple(f[MASK_KEY].shape) != (width,):
        raise FastMRIFileError(path, f"mask must have shape ({width},), got {f[MASK_KEY].shape}")
    encoding_size, recon_size = _header_sizes(f, path, (height, width), target_shape)
    attrs = {k: _plain(v) for k, v in f.attrs.items()}

    def opt(key: str, kind: type) -> Any:
        return kind(attrs[key]) if key in attrs else None

    return FastMRIVolumeInfo(
        path=path,
        num_slices=num_slices,
        num_coils=num_coils,
        kspace_shape=(height, width),
        encoding_size=encoding_size,
        recon_size=recon_size,
        target_key=target_key,
        target_shape=target_shape,
        has_mask=has_mask,
        acquisition=opt("acquisition", str),
        patient_id=opt("patient_id", str),
        max=opt("max", float),
        norm=opt("norm", float),
        attrs=attrs,
    )


def _kspace_layout(f: h5py.File, path: Path) -> tuple[int, int | None, tuple[int, int]]:
    """``(slices, coils or None, (H, W))`` of the file's ``kspace``, validated."""
    if KSPACE_KEY not in f or not isinstance(f[KSPACE_KEY], h5py.Dataset):
        raise FastMRIFileError(path, f"no 'kspace' dataset (found {sorted(f.keys())})")
    kspace = f[KSPACE_KEY]
    if kspace.ndim not in (3, 4):
        raise FastMRIFileError(
            path,
            "kspace must have rank 3 (slices, H, W) for single-coil or rank 4 "
            f"(slices, coils, H, W) for multi-coil, got shape {kspace.shape}",
        )
    if not np.issubdtype(kspace.dtype, np.complexfloating):
        raise FastMRIFileError(path, f"kspace must be complex, got dtype {kspace.dtype}")
    if int(kspace.shape[0]) < 1 or min(kspace.shape) < 1:
        raise FastMRIFileError(path, f"kspace is empty, shape {kspace.shape}")
    num_coils = int(kspace.shape[1]) if kspace.ndim == 4 else None
    return int(kspace.shape[0]), num_coils, (int(kspace.shape[-2]), int(kspace.shape[-1]))


def _target_layout(
    f: h5py.File, path: Path, num_slices: int
) -> tuple[str | None, tuple[int, int] | None]:
    """``(target dataset name, (h, w))`` or ``(None, None)`` when the file has no target."""
    target_key = next((k for k in TARGET_KEYS if k in f), None)
    if target_key is None:
        return None, None
    shape = f[target_key].shape
    if len(shape) != 3 or shape[0] != num_slices:
        raise FastMRIFileError(
            path, f"{target_key} must have shape ({num_slices}, h, w), got {shape}"
        )
    return target_key, (int(shape[1]), int(shape[2]))


def _header_sizes(
    f: h5py.File,
    path: Path,
    kspace_shape: tuple[int, int],
    target_shape: tuple[int, int] | None,
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(encoding_size, recon_size)`` from the ISMRMRD header (fastMRI's fallback
    without one: the k-space grid and the target's size)."""
    height, width = kspace_shape
    if HEADER_KEY in f:
        raw = f[HEADER_KEY][()]
        try:
            encoding_size, recon_size = parse_ismrmrd_header(
                raw.tobytes() if isinstance(raw, np.ndarray) else raw
            )
        except ValueError as exc:
            raise FastMRIFileError(path, str(exc)) from exc
    else:
        logger.warning("%s has no ismrmrd_header; recon size taken from the data", path)
        encoding_size = (height, width, 1)
        recon_size = (*(target_shape or (height, width)), 1)
    if width < recon_size[1]:
        logger.warning(
            "%s: k-space width %d is narrower than the header's recon size %s; "
            "cropping to (%d, %d) as fastMRI does",
            path,
            width,
            recon_size[:2],
            min(width, height),
            min(width, height),
        )
    return encoding_size, recon_size


class FastMRIVolume:
    """Lazy view of one fastMRI file: ``len(vol)`` slices, ``vol[i]`` reads slice ``i`` only.

    >>> vol = FastMRIVolume("file1000001.h5")
    >>> vol.info.crop_size, vol[3].kspace.shape
    """

    def __init__(self, path: PathLike | FastMRIVolumeInfo) -> None:
        # Passing already validated metadata skips re-reading the header.
        self.info = path if isinstance(path, FastMRIVolumeInfo) else read_volume_info(path)

    @property
    def path(self) -> Path:
        return self.info.path

    def __len__(self) -> int:
        return self.info.num_slices

    def __getitem__(self, index: int) -> FastMRISlice:
        n = self.info.num_slices
        if not -n <= index < n:
            raise IndexError(f"slice index {index} out of range for {n} slices in {self.path}")
        index %= n
        with _open(self.path) as f:
            try:
                # h5py reads only the hyperslab [index]: never the whole volume.
                kspace = torch.from_numpy(np.asarray(f[KSPACE_KEY][index], dtype=np.complex64))
                target = None
                if self.info.target_key is not None:
                    target = torch.from_numpy(
                        np.asarray(f[self.info.target_key][index], dtype=np.float32)
                    )
                mask = None
                if self.info.has_mask:
                    mask = torch.from_numpy(np.asarray(f[MASK_KEY][()]) != 0)
            except (OSError, RuntimeError, ValueError) as exc:
                raise FastMRIFileError(self.path, f"cannot read slice {index}: {exc}") from exc
        return FastMRISlice(kspace, target, mask, self.info, index)

    def __iter__(self) -> Iterator[FastMRISlice]:
        for i in range(len(self)):
            yield self[i]


def read_slice(path: PathLike, index: int) -> FastMRISlice:
    """Read slice ``index`` of a fastMRI file (see :class:`FastMRIVolume`)."""
    return FastMRIVolume(path)[index]
