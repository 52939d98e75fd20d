"""BART ``pics`` (Berkeley Advanced Reconstruction Toolbox) for single- and multi-coil MRI.

BART is an external program (Debian package ``bart``); this module talks to it through
its ``.cfl``/``.hdr`` files: ``.hdr`` holds the dimensions as text, ``.cfl`` the complex64
samples in column-major (Fortran) order. k-space goes in as ``[H, W, 1, coils]``, the
sensitivities as ``[H, W, 1, coils]`` (ones for single coil). BART's centred unitary FFT
matches the operators' ``fft2c``; ``-w 1`` fixes the data scaling to one, so the
regularisation weight ``lam`` is in the units of ``½‖A x − y‖²`` (``‖A‖ = 1`` here).

Regularisers: ``"tv"`` → ``-R T:3:0:lam`` (TV over the two image axes), ``"l1"`` →
``-l1 -r lam`` (l1-wavelet with BART's random cycle spinning).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..operators import Operator

REGULARISERS = ("tv", "l1")


def bart_available() -> bool:
    """Whether the ``bart`` binary is on PATH."""
    return shutil.which("bart") is not None


def write_cfl(stem: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as BART's ``stem.hdr`` + ``stem.cfl`` (complex64, column-major)."""
    array = np.asarray(array, dtype=np.complex64)
    dims = list(array.shape) + [1] * max(0, 16 - array.ndim)
    Path(f"{stem}.hdr").write_text("# Dimensions\n" + " ".join(str(d) for d in dims) + "\n")
    array.ravel(order="F").tofile(f"{stem}.cfl")


def read_cfl(stem: str | Path) -> np.ndarray:
    """Read BART's ``stem.hdr`` + ``stem.cfl`` (trailing singleton dimensions dropped)."""
    lines = Path(f"{stem}.hdr").read_text().splitlines()
    dims = [int(d) for d in lines[1].split()]
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    data = np.fromfile(f"{stem}.cfl", dtype=np.complex64, count=int(np.prod(dims)))
    return data.reshape(dims, order="F")


def _kspace_and_maps(y: np.ndarray, operator: Operator) -> tuple[np.ndarray, np.ndarray]:
    """One measurement (``(2, H, W)`` or ``(C, 2, H, W)``) → BART k-space and maps."""
    if y.ndim == 3:
        k = (y[0] + 1j * y[1])[None]
        maps = np.ones_like(k)
    else:
        k = y[:, 0] + 1j * y[:, 1]
        m = operator.coil_maps.detach().cpu().double().numpy()
        maps = m[:, 0] + 1j * m[:, 1]
    to_bart = lambda a: np.moveaxis(a, 0, -1)[:, :, None, :]  # noqa: E731
    return to_bart(k), to_bart(maps)


@torch.no_grad()
def bart_pics(
    y: torch.Tensor,
    operator: Operator,
    lam: float = 1e-3,
    regulariser: str = "tv",
    n_iter: int = 100,
) -> torch.Tensor:
    """``bart pics`` reconstruction of MRI measurements: ``(B, ...) -> (B, 2, H, W)``.

    Raises ``RuntimeError`` if the binary is missing or fails (its stderr is included).
    """
    if regulariser not in REGULARISERS:
        raise ValueError(f"regulariser must be one of {REGULARISERS}, got {regulariser!r}")
    if not bart_available():
        raise RuntimeError("the `bart` binary is not on PATH (Debian: apt-get install bart)")
    out = []
    with tempfile.TemporaryDirectory(prefix="idm-med-bart-") as tmp:
        for b, yb in enumerate(y.detach().cpu().double().numpy()):
            k, maps = _kspace_and_maps(yb, operator)
            stem = Path(tmp) / str(b)
            write_cfl(f"{stem}_k", k)
            write_cfl(f"{stem}_s", maps)
            _pics(stem, lam, regulariser, n_iter)
            z = read_cfl(f"{stem}_x").reshape(k.shape[:2])
            out.append(np.stack([z.real, z.imag]))
    return torch.from_numpy(np.stack(out)).to(y)


def _run(*args: str, threads: int | None = None) -> None:
    """``bart ARGS``; ``RuntimeError`` with BART's stderr when it fails."""
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(["bart", *args], capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"bart {args[0]} failed ({done.returncode}): {done.stderr.strip()}")


def _pics(stem: Path, lam: float, regulariser: str, n_iter: int, threads: int | None = None):
    """``bart pics`` of ``stem_k`` with maps ``stem_s`` into ``stem_x``."""
    reg = ["-R", f"T:3:0:{lam:g}"] if regulariser == "tv" else ["-l1", "-r", f"{lam:g}"]
    _run("pics", "-d", "0", "-w", "1", "-i", str(n_iter), *reg,
         f"{stem}_k", f"{stem}_s", f"{stem}_x", threads=threads)  # fmt: skip


def bart_ecalib_pics(
    kspace: np.ndarray,
    calib_width: int = 24,
    lam: float = 1e-3,
    regulariser: str = "l1",
    n_iter: int = 100,
    threads: int | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """BART's whole multi-coil pipeline on one zero-filled slice ``(C, H, W)`` complex:
    ``bart ecalib -m 1`` (ESPIRiT maps from the central ``calib_width`` lines) then
    ``bart pics``. Returns the ``(H, W)`` complex image and the seconds of each stage
    (file input/output included, as a user of BART pays it)."""
    if regulariser not in REGULARISERS:
        raise ValueError(f"regulariser must be one of {REGULARISERS}, got {regulariser!r}")
    if not bart_available():
        raise RuntimeError("the `bart` binary is not on PATH (Debian: apt-get install bart)")
    seconds = {}
    with tempfile.TemporaryDirectory(prefix="idm-med-bart-") as tmp:
        stem = Path(tmp) / "slice"
        t0 = time.perf_counter()
        write_cfl(f"{stem}_k", np.moveaxis(np.asarray(kspace), 0, -1)[:, :, None, :])
        _run("ecalib", "-m", "1", "-r", str(calib_width), f"{stem}_k", f"{stem}_s",
             threads=threads)  # fmt: skip
        seconds["ecalib"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _pics(stem, lam, regulariser, n_iter, threads)
        image = read_cfl(f"{stem}_x").reshape(np.shape(kspace)[1:])
        seconds["pics"] = time.perf_counter() - t0
    return image, seconds
