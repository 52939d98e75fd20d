"""Plain images (PNG, TIFF, NumPy ``.npy``) as float tensors in [0, 1].

Reading gives a ``(C, H, W)`` tensor: ``C = 1`` for grayscale, and colour images become
their luma (``C = 1``) unless asked to keep RGB (``C = 3``). Luma is ITU-R BT.601 full
range, ``Y = 0.299 R + 0.587 G + 0.114 B`` — the Y of YCbCr on which compressed-sensing
papers (and IDM's code, via OpenCV) evaluate natural images.

Integer pixels are divided by the maximum of their type (``uint8``: 255, ``uint16``:
65535); float pixels are taken as they are and must lie in [0, 1] unless a
``value_range`` maps them there.

Writing (always atomic, via :func:`idm_med.datasets.atomic.atomic_path`):

=========  ===============================  ======================================
suffix     stored as                        round trip
=========  ===============================  ======================================
``.png``   uint8 (or uint16), clipped 0..1  to ``0.5/255`` (``0.5/65535``)
``.tif``   float32                          exact for float32 input
``.npy``   the input's float dtype          exact
=========  ===============================  ======================================

Arrays are stored channel-last (``(H, W)`` or ``(H, W, 3)``), as image tools expect.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
import torch
from PIL import Image

from .atomic import atomic_path

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: ITU-R BT.601 luma weights for (R, G, B).
BT601_LUMA = (0.299, 0.587, 0.114)

PNG_SUFFIXES = (".png",)
TIFF_SUFFIXES = (".tif", ".tiff")
NPY_SUFFIXES = (".npy",)
IMAGE_SUFFIXES = PNG_SUFFIXES + TIFF_SUFFIXES + NPY_SUFFIXES


def rgb_to_luma(rgb: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of an RGB tensor ``(..., 3, H, W)`` → ``(..., 1, H, W)``."""
    if rgb.dim() < 3 or rgb.shape[-3] != 3:
        raise ValueError(f"rgb must have shape (..., 3, H, W), got {tuple(rgb.shape)}")
    weights = torch.tensor(BT601_LUMA, dtype=rgb.dtype, device=rgb.device).view(3, 1, 1)
    return (rgb * weights).sum(dim=-3, keepdim=True)


def read_image(
    path: PathLike,
    *,
    color: Literal["luma", "rgb"] = "luma",
    value_range: tuple[float, float] | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Read a PNG, TIFF or ``.npy`` image as a float tensor in [0, 1].

    Args:
        path: ``.png``, ``.tif``/``.tiff`` (single page) or ``.npy`` file. Arrays may be
            ``(H, W)``, channel-last ``(H, W, C)`` or (``.npy``) channel-first ``(C, H, W)``
            with ``C`` in {1, 3, 4}; a 4th (alpha) channel is dropped.
        color: ``"luma"`` turns colour into BT.601 luma ``(1, H, W)``; ``"rgb"`` keeps
            ``(3, H, W)`` (grayscale images stay ``(1, H, W)``).
        value_range: ``(lo, hi)`` mapped linearly to [0, 1] (then clipped), for data that
            are not already in [0, 1] (e.g. signed or float arrays of another scale).
        dtype: float dtype of the result.

    Returns:
        ``(1, H, W)`` or ``(3, H, W)`` tensor with values in [0, 1].

    Raises:
        ValueError: unknown suffix, unreadable file, unsupported shape, or values outside
            [0, 1] without ``value_range``.
    """
    if color not in ("luma", "rgb"):
        raise ValueError(f"color must be 'luma' or 'rgb', got {color!r}")
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        if suffix in PNG_SUFFIXES:
            arr = _read_png(path)
        elif suffix in TIFF_SUFFIXES:
            arr = tifffile.imread(path)
        elif suffix in NPY_SUFFIXES:
            arr = np.load(path, allow_pickle=False)
        else:
            raise ValueError(f"{path}: unsupported image suffix; expected one of {IMAGE_SUFFIXES}")
    except ValueError:
        raise
    except Exception as exc:  # corrupt files raise many exception types
        raise ValueError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc

    chw = _to_chw(np.asarray(arr), path)
    img = _to_unit(chw, path, value_range)
    tensor = torch.from_numpy(img).to(dtype)
    if tensor.shape[0] == 4:
        if not torch.all(tensor[3] == 1):
            logger.warning("%s: alpha channel dropped", path)
        tensor = tensor[:3]
    if tensor.shape[0] == 3 and color == "luma":
        tensor = rgb_to_luma(tensor)
    return tensor


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode in ("P", "PA"):
            im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
        elif im.mode in ("1", "LA"):
            im = im.convert("L")
        elif im.mode == "I":  # 16-bit grayscale decoded as int32 by some Pillow versions
            return np.asarray(im).astype(np.uint16)
        return np.asarray(im)


def _to_chw(arr: np.ndarray, path: Path) -> np.ndarray:
    """``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` → ``(C, H, W)``."""
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim == 3:
        if arr.shape[-1] in (1, 3, 4):
            return np.moveaxis(arr, -1, 0)
        if arr.shape[0] in (1, 3, 4):
            return arr
    raise ValueError(
        f"{path}: unsupported image array shape {arr.shape}; expected (H, W), (H, W, C) or "
        "(C, H, W) with C in {1, 3, 4} (multi-page TIFFs are not images)"
    )


def _to_unit(arr: np.ndarray, path: Path, value_range: tuple[float, float] | None) -> np.ndarray:
    """Scale to [0, 1]; float64 for floats (no precision lost), float32 for integers."""
    if value_range is not None:
        lo, hi = map(float, value_range)
        if not hi > lo:
            raise ValueError(f"value_range must satisfy lo < hi, got {value_range}")
        return np.clip((arr.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype in (np.uint8, np.uint16):
        return arr.astype(np.float32) / np.iinfo(arr.dtype).max
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"{path}: image contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{path}: float values span [{lo:.6g}, {hi:.6g}], outside [0, 1]; "
                "pass value_range=(lo, hi)"
            )
        return arr
    raise ValueError(
        f"{path}: pixel dtype {arr.dtype} has no implied [0, 1] scale; pass value_range=(lo, hi)"
    )


def write_image(
    path: PathLike, image: torch.Tensor | np.ndarray, *, bit_depth: Literal[8, 16] = 8
) -> Path:
    """Write an image atomically; the format follows the suffix (see the module table).

    Args:
        path: ``.png``, ``.tif``/``.tiff`` or ``.npy``.
        image: ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)`` values in [0, 1] (a tensor or
            array). PNG clips to [0, 1] (with a warning when it changes values); TIFF and
            ``.npy`` store any finite float values.
        bit_depth: PNG only: 8 or 16 (16-bit is grayscale only).

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3):
        arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    elif arr.ndim != 2:
        raise ValueError(f"image must have shape (H, W), (1, H, W) or (3, H, W), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"image must be a float array in [0, 1], got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError("image contains NaN or infinite values")

    if suffix in PNG_SUFFIXES:
        data = _png_array(arr, bit_depth, path)
        with atomic_path(path) as tmp:
            Image.fromarray(data).save(tmp, format="PNG")
    elif suffix in TIFF_SUFFIXES:
        with atomic_path(path) as tmp:
            photometric = "rgb" if arr.ndim == 3 else "minisblack"
            tifffile.imwrite(tmp, arr.astype(np.float32), photometric=photometric)
    elif suffix in NPY_SUFFIXES:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            # A file object, because np.save appends ".npy" to names that lack it.
            np.save(f, arr, allow_pickle=False)
    else:
        raise ValueError(f"{path}: unsupported image suffix; expected one of {IMAGE_SUFFIXES}")
    return path


def _png_array(arr: np.ndarray, bit_depth: int, path: Path) -> np.ndarray:
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    if bit_depth == 16 and arr.ndim == 3:
        raise ValueError(f"{path}: 16-bit PNG is written for grayscale only; use .tif for RGB")
    clipped = np.clip(arr, 0.0, 1.0)
    if not np.array_equal(clipped, arr):
        logger.warning("%s: values outside [0, 1] clipped for PNG", path)
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return np.round(clipped * np.iinfo(dtype).max).astype(dtype)
