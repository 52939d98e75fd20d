"""fastMRI ``.h5`` files: lazy reader, training dataset, volume iterator and writers.

A fastMRI file holds one volume:

==========================  ==============================================================
``kspace``                  complex64, ``(slices, H, W)`` single-coil or
                            ``(slices, coils, H, W)`` multi-coil; centred k-space, columns
                            ``W`` are the phase-encode lines that masks select
``reconstruction_esc``      float32 ``(slices, h, w)``, single-coil target (optional)
``reconstruction_rss``      float32 ``(slices, h, w)``, multi-coil RSS target (optional)
``mask``                    ``(W,)`` sampled columns of prospectively undersampled files
``ismrmrd_header``          ISMRMRD XML; ``encoding/encodedSpace/matrixSize`` ``(x, y, z)``
                            is the k-space grid and ``encoding/reconSpace/matrixSize`` the
                            size ``(h, w) = (x, y)`` targets and submissions are cropped to
attrs                       ``max``, ``norm`` (of the target volume), ``acquisition``,
                            ``patient_id``, ...
==========================  ==============================================================

As in fastMRI, the header's ``x`` is the row (readout, ``H``) axis and ``y`` the column
(phase-encode, ``W``) axis. Nothing here reads a whole volume: every access opens the file
and indexes a single slice, so the readers are cheap and safe in DataLoader workers.
Problems with a file raise :class:`FastMRIFileError` (a ``ValueError``) naming the file.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from monai.utils import FastMRIKeys
from torch.utils.data import Dataset

from ..operators.mri import complex_to_channels
from ..operators.mri_masks import (
    MASK_TYPES,
    check_acceleration,
    check_center_fraction,
    column_mask,
    seed_from_filename,
)
from .atomic import atomic_path
from .coils import coil_combine, estimate_coil_maps, ifft2c, rss, zero_filled_maps

logger = logging.getLogger(__name__)

ISMRMRD_NAMESPACE = "http://www.ismrm.org/ISMRMRD"
KSPACE_KEY = str(FastMRIKeys.KSPACE)
MASK_KEY = str(FastMRIKeys.MASK)
HEADER_KEY = "ismrmrd_header"
ESC_KEY = "reconstruction_esc"
RSS_KEY = str(FastMRIKeys.RECON)
TARGET_KEYS = (ESC_KEY, RSS_KEY)
RECONSTRUCTION_KEY = "reconstruction"

PathLike = str | os.PathLike


class FastMRIFileError(ValueError):
    """A fastMRI file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: PathLike, problem: str) -> None:
        super().__init__(f"{os.fspath(path)}: {problem}")
        self.path = Path(path)
        self.problem = problem


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


# -- ISMRMRD header -------------------------------------------------------------------
def make_ismrmrd_header(
    encoding_size: Sequence[int],
    recon_size: Sequence[int],
    fov_mm: Sequence[float] | None = None,
) -> bytes:
    """A minimal valid ISMRMRD header (XML bytes) with the encoding and recon matrices.

    Args:
        encoding_size: ``(x, y)`` or ``(x, y, z)`` of the k-space grid (``x = H``, ``y = W``).
        recon_size: ``(x, y)`` or ``(x, y, z)`` of the target / submission crop.
        fov_mm: field of view ``(x, y, z)`` in mm of the encoded space; 1 mm pixels if
            omitted. The recon FOV scales with the matrix so the pixel size is shared.
    """
    enc = _size3(encoding_size, "encoding_size")
    rec = _size3(recon_size, "recon_size")
    fov = tuple(float(v) for v in (fov_mm if fov_mm is not None else enc))
    if len(fov) != 3:
        raise ValueError(f"fov_mm must be (x, y, z), got {fov_mm!r}")
    rec_fov = (fov[0] * rec[0] / enc[0], fov[1] * rec[1] / enc[1], fov[2])

    ET.register_namespace("", ISMRMRD_NAMESPACE)

    def sub(parent: ET.Element, tag: str, text: Any = None) -> ET.Element:
        el = ET.SubElement(parent, f"{{{ISMRMRD_NAMESPACE}}}{tag}")
        if text is not None:
            el.text = str(text)
        return el

    def xyz(parent: ET.Element, tag: str, values: Sequence[Any]) -> None:
        el = sub(parent, tag)
        for axis, value in zip("xyz", values, strict=True):
            sub(el, axis, value)

    root = ET.Element(f"{{{ISMRMRD_NAMESPACE}}}ismrmrdHeader")
    encoding = sub(root, "encoding")
    for space, matrix, fov_values in (("encodedSpace", enc, fov), ("reconSpace", rec, rec_fov)):
        el = sub(encoding, space)
        xyz(el, "matrixSize", matrix)
        xyz(el, "fieldOfView_mm", fov_values)
    limits = sub(encoding, "encodingLimits")
    step1 = sub(limits, "kspace_encoding_step_1")
    sub(step1, "minimum", 0)
    sub(step1, "maximum", enc[1] - 1)
    sub(step1, "center", enc[1] // 2)
    sub(encoding, "trajectory", "cartesian")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def parse_ismrmrd_header(xml: bytes | str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(encoding_size, recon_size)``, each ``(x, y, z)``, from an ISMRMRD header.

    Raises ``ValueError`` if the XML is malformed or lacks the matrix sizes. The
    namespace is matched with a wildcard, so headers with or without it parse alike.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ValueError(f"ismrmrd_header is not valid XML ({exc})") from exc

    def matrix(space: str) -> tuple[int, int, int]:
        path = f"{{*}}encoding/{{*}}{space}/{{*}}matrixSize"
        el = root.find(path)
        if el is None:
            raise ValueError(f"ismrmrd_header has no encoding/{space}/matrixSize")
        try:
            return tuple(int(el.find(f"{{*}}{axis}").text) for axis in "xyz")  # type: ignore[union-attr,arg-type,return-value]
        except (AttributeError, TypeError, ValueError) as exc:
            raise ValueError(f"ismrmrd_header {space}/matrixSize needs integer x, y, z") from exc

    return matrix("encodedSpace"), matrix("reconSpace")


def _size3(size: Sequence[int], argument: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in size)
    if len(values) == 2:
        values = (*values, 1)
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"{argument} must be 2 or 3 positive ints, got {size!r}")
    return values  # type: ignore[return-value]


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
    num_slices = int(kspace.shape[0])
    if num_slices < 1 or min(kspace.shape) < 1:
        raise FastMRIFileError(path, f"kspace is empty, shape {kspace.shape}")
    num_coils = int(kspace.shape[1]) if kspace.ndim == 4 else None
    height, width = int(kspace.shape[-2]), int(kspace.shape[-1])

    target_key = next((k for k in TARGET_KEYS if k in f), None)
    target_shape = None
    if target_key is not None:
        shape = f[target_key].shape
        if len(shape) != 3 or shape[0] != num_slices:
            raise FastMRIFileError(
                path, f"{target_key} must have shape ({num_slices}, h, w), got {shape}"
            )
        target_shape = (int(shape[1]), int(shape[2]))

    has_mask = MASK_KEY in f
    if has_mask and tuple(f[MASK_KEY].shape) != (width,):
        raise FastMRIFileError(path, f"mask must have shape ({width},), got {f[MASK_KEY].shape}")

    if HEADER_KEY in f:
        raw = f[HEADER_KEY][()]
        try:
            encoding_size, recon_size = parse_ismrmrd_header(
                raw.tobytes() if isinstance(raw, np.ndarray) else raw
            )
        except ValueError as exc:
            raise FastMRIFileError(path, str(exc)) from exc
    else:
        # Without a header the best guess is fastMRI's own fallback: the target's size.
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


def center_crop(x: torch.Tensor | np.ndarray, size: Sequence[int]) -> torch.Tensor | np.ndarray:
    """Centre crop of the last two axes to ``(h, w)``, fastMRI's convention
    (start ``(H - h) // 2``). Raises ``ValueError`` if ``x`` is smaller than ``size``."""
    h, w = int(size[0]), int(size[1])
    height, width = x.shape[-2], x.shape[-1]
    if not (0 < h <= height and 0 < w <= width):
        raise ValueError(f"cannot centre-crop shape {tuple(x.shape)} to ({h}, {w})")
    top, left = (height - h) // 2, (width - w) // 2
    return x[..., top : top + h, left : left + w]


def _files(root_or_files: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(root_or_files, (str, os.PathLike)):
        root = Path(root_or_files)
        files = sorted(root.glob("*.h5")) if root.is_dir() else [root]
    else:
        files = [Path(p) for p in root_or_files]
    if not files:
        raise ValueError(f"no .h5 files in {root_or_files!r}")
    return files


def _to_channels(z: torch.Tensor) -> torch.Tensor:
    return complex_to_channels(z).to(torch.float32)


# -- training -------------------------------------------------------------------------
class FastMRISliceDataset(Dataset):
    """Slices of fully sampled fastMRI files with retrospective column masks.

    Args:
        root_or_files: a folder (all ``*.h5`` in it, sorted), one file, or a list of files.
        acceleration: target undersampling factor of the masks.
        center_fraction: fully sampled centre fraction.
        mask_type: ``"random"`` or ``"equispaced"`` (fastMRI semantics).
        use_seed: if True the mask of a file is seeded from its name
            (:func:`~idm_med.operators.mri_masks.seed_from_filename`): the same for every
            slice, epoch and run, as fastMRI does for validation. If False a fresh seed is
            drawn from torch's generator per item (reproducible under ``torch.manual_seed``
            and DataLoader worker seeding).
        calib_width: ESPIRiT calibration width for multi-coil files.

    Items are dicts:
        ``image``: ``(2, H, W)`` float32 ground-truth complex image (real, imag);
        single-coil ``ifft2c(kspace)``, multi-coil ``Σ_c conj(S_c) ifft2c(kspace_c)`` with
        ESPIRiT maps ``S`` (about 4 s per 256² slice on CPU).
        ``kspace``: masked k-space, ``(2, H, W)`` or ``(C, 2, H, W)`` (the MRI operator's
        measurement layout); ``mask``: bool ``(W,)``; ``coil_maps``: ``(C, 2, H, W)``
        (multi-coil only); ``max``: the volume's ``max`` attribute (or the slice's image
        maximum); ``crop_size``: long ``(2,)``; ``fname``; ``slice_index``.
    With single-coil data ``make_operator("mri", image_size=(H, W), mask=mask).A(image)``
    equals ``kspace`` to float precision. Batching needs files of one k-space size.
    """

    def __init__(
        self,
        root_or_files: PathLike | Sequence[PathLike],
        acceleration: float = 4.0,
        center_fraction: float = 0.08,
        mask_type: str = "random",
        use_seed: bool = True,
        calib_width: int = 24,
    ) -> None:
        self.acceleration = check_acceleration(acceleration)
        self.center_fraction = check_center_fraction(center_fraction)
        if mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
        self.mask_type = mask_type
        self.use_seed = bool(use_seed)
        self.calib_width = int(calib_width)
        self.volumes = [read_volume_info(p) for p in _files(root_or_files)]
        for info in self.volumes:
            if info.has_mask:
                raise FastMRIFileError(
                    info.path, "prospectively undersampled (has a mask): cannot train on it"
                )
        self._index = [
            (v, s) for v, info in enumerate(self.volumes) for s in range(info.num_slices)
        ]

    def __len__(self) -> int:
        return len(self._index)

    def mask_for(self, info: FastMRIVolumeInfo) -> torch.Tensor:
        """The bool ``(W,)`` column mask of the next item of this file."""
        if self.use_seed:
            seed: Any = seed_from_filename(info.fname)
        else:
            seed = int(torch.randint(0, 2**32 - 1, ()).item())
        width = info.kspace_shape[1]
        return column_mask(self.mask_type, width, self.acceleration, self.center_fraction, seed)

    def __getitem__(self, index: int) -> dict[str, Any]:
        volume, slice_index = self._index[index]
        info = self.volumes[volume]
        data = FastMRIVolume(info)[slice_index]
        mask = self.mask_for(info)
        masked = data.kspace * mask.to(data.kspace.dtype)  # broadcasts over columns W
        item: dict[str, Any] = {
            "kspace": _to_channels(masked),
            "mask": mask,
            "crop_size": torch.tensor(info.crop_size),
            "fname": info.fname,
            "slice_index": slice_index,
        }
        if info.multicoil:
            maps = estimate_coil_maps(data.kspace, calib_width=self.calib_width)
            image = coil_combine(ifft2c(data.kspace), maps)
            item["coil_maps"] = _to_channels(maps)
        else:
            image = ifft2c(data.kspace)
        item["image"] = _to_channels(image)
        item["max"] = float(info.max) if info.max is not None else float(image.abs().max())
        return item


# -- reconstruction -------------------------------------------------------------------
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
    path: PathLike,
    acceleration: float | None = None,
    center_fraction: float = 0.08,
    mask_type: str = "random",
    calib_width: int | None = None,
    slices: Sequence[int] | None = None,
) -> Iterator[ReconstructionSlice]:
    """Walk a fastMRI volume slice by slice for reconstruction.

    Prospectively undersampled files use their own ``mask`` (``acceleration`` is then
    read from the ``acceleration`` attribute or computed as ``W / #sampled``). Fully
    sampled files are undersampled retrospectively with the column mask seeded from the
    file name (the same mask :class:`FastMRISliceDataset` uses with ``use_seed=True``);
    ``acceleration`` is required for them. Multi-coil slices get coil maps from
    :func:`slice_coil_maps` (ESPIRiT on the fully sampled centre, ``calib_width`` columns
    or, by default, as many as the mask samples contiguously up to 24; RSS-equivalent maps
    when that centre is too narrow), computed once per slice of a volume and cached for
    the next pass over the same file.
    ``slices`` restricts the walk to those indices (in that order), so unselected slices
    are neither read nor calibrated.
    """
    volume = FastMRIVolume(path)
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
        yield ReconstructionSlice(
            slice_index=sl.slice_index,
            measurement=_to_channels(kspace).unsqueeze(0),
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
    would be biased, so the safe :func:`~idm_med.datasets.coils.zero_filled_maps` are used
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


# -- writing --------------------------------------------------------------------------
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
