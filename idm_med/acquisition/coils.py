"""Coil tools for multi-coil MRI: centred FFTs, root-sum-of-squares, sensitivity maps.

Conventions (fastMRI): k-space and images are complex tensors whose last two axes are
``(H, W)``; the Fourier transform is the centred orthonormal 2-D DFT
``k = fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))`` of
:mod:`idm_med.operators.mri` (re-exported here), so ``ifft2c(fft2c(x)) == x``. Coil axes
come before ``(H, W)``.
Sensitivity maps ``S`` of shape ``(C, H, W)`` are normalised so that ``sum_c |S_c|² = 1``
wherever the object has signal; then the coil images of ``x`` are ``S_c · x``, their
root-sum-of-squares is ``|x|`` and ``sum_c conj(S_c) · (S_c · x) = x``.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.apps.reconstruction.mri_utils import root_sum_of_squares

from ..operators.mri import fft2c, ifft2c

__all__ = [
    "coil_combine",
    "estimate_coil_maps",
    "fft2c",
    "ifft2c",
    "normalise_maps",
    "rss",
    "synthetic_coil_maps",
    "zero_filled_maps",
]

ArrayLike = np.ndarray | torch.Tensor


def _as_complex_tensor(x: ArrayLike, argument: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if not t.is_complex():
        raise ValueError(f"{argument} must be complex, got dtype {t.dtype}")
    if t.dim() < 2:
        raise ValueError(f"{argument} must have at least 2 dims (..., H, W), got {tuple(t.shape)}")
    return t


def rss(coil_images: ArrayLike, dim: int = 0) -> ArrayLike:
    """Root-sum-of-squares coil combination ``sqrt(sum_c |x_c|²)`` along ``dim``.

    Accepts complex or real numpy arrays / torch tensors and returns a real array of the
    same kind with ``dim`` removed, e.g. ``(C, H, W) -> (H, W)``.
    """
    mag = coil_images.abs() if isinstance(coil_images, torch.Tensor) else np.abs(coil_images)
    return root_sum_of_squares(mag, spatial_dim=dim)


def normalise_maps(maps: ArrayLike, eps: float = 1e-12) -> ArrayLike:
    """Scale ``(C, H, W)`` maps so that ``sum_c |S_c|² = 1`` at every pixel with signal.

    Pixels where all maps vanish (below ``eps``) stay zero.
    """
    norm = rss(maps, dim=0)
    if isinstance(maps, torch.Tensor):
        scale = torch.where(norm > eps, 1.0 / norm.clamp_min(eps), torch.zeros_like(norm))
        return maps * scale.to(maps.dtype)
    scale = np.where(norm > eps, 1.0 / np.maximum(norm, eps), 0.0)
    return (maps * scale).astype(maps.dtype)


def synthetic_coil_maps(
    num_coils: int, shape: tuple[int, int], radius: float = 1.5
) -> torch.Tensor:
    """Smooth, normalised birdcage sensitivity maps ``(num_coils, H, W)`` complex64.

    ``num_coils`` coils sit on a ring of relative ``radius`` around the field of view
    (``sigpy.mri.birdcage_maps``, a Biot–Savart model); the maps are then normalised
    with :func:`normalise_maps` so that ``sum_c |S_c|² = 1`` everywhere.
    """
    import sigpy.mri  # lazy: sigpy is only needed for coil simulation / calibration

    if num_coils < 1:
        raise ValueError(f"num_coils must be >= 1, got {num_coils}")
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (H, W) with positive sizes, got {shape!r}")
    # nzz = num_coils puts all coils on one ring (a 2-D birdcage).
    maps = sigpy.mri.birdcage_maps((num_coils, *shape), r=radius, nzz=num_coils)
    maps = normalise_maps(np.asarray(maps, dtype=np.complex128))
    return torch.from_numpy(maps.astype(np.complex64))


def estimate_coil_maps(
    kspace: ArrayLike,
    calib_width: int = 24,
    threshold: float = 0.02,
    kernel_width: int = 6,
    crop: float = 0.95,
    max_iter: int = 100,
) -> torch.Tensor:
    """ESPIRiT sensitivity maps from the fully sampled k-space centre (CPU, via sigpy).

    Args:
        kspace: ``(C, H, W)`` complex multi-coil k-space of one slice (fastMRI centring);
            only the central ``calib_width`` × ``calib_width`` lines are used, so
            undersampled k-space works as long as its centre is fully sampled.
        calib_width: side of the calibration region (autocalibration lines).
        threshold: singular-value threshold of the calibration matrix (relative).
        kernel_width: ESPIRiT kernel size.
        crop: eigenvalue crop; pixels with a smaller eigenvalue (outside the object)
            get zero maps.
        max_iter: power iterations of the per-pixel eigenproblem.

    Returns:
        ``(C, H, W)`` complex64 maps with ``sum_c |S_c|² = 1`` inside the object. Like any
        sensitivity estimate they are defined only up to one common phase per pixel.
    """
    import sigpy
    import sigpy.mri

    k = _as_complex_tensor(kspace, "kspace")
    if k.dim() != 3:
        raise ValueError(f"kspace must have shape (C, H, W), got {tuple(k.shape)}")
    if calib_width > min(k.shape[-2:]):
        raise ValueError(
            f"calib_width {calib_width} exceeds the k-space size {tuple(k.shape[-2:])}"
        )
    app = sigpy.mri.app.EspiritCalib(
        k.detach().cpu().numpy().astype(np.complex128),
        calib_width=calib_width,
        thresh=threshold,
        kernel_width=kernel_width,
        crop=crop,
        max_iter=max_iter,
        device=sigpy.cpu_device,
        show_pbar=False,
    )
    maps = np.asarray(app.run())
    return torch.from_numpy(maps.astype(np.complex64))


def coil_combine(coil_images: ArrayLike, maps: ArrayLike, dim: int = 0) -> torch.Tensor:
    """Sensitivity-weighted combination ``x = sum_c conj(S_c) · x_c`` (the adjoint of ``S``).

    With maps normalised to ``sum_c |S_c|² = 1`` this is the least-squares image, and it
    keeps the phase that RSS discards. Shapes: ``(C, H, W)`` and ``(C, H, W)`` → ``(H, W)``.
    """
    x = _as_complex_tensor(coil_images, "coil_images")
    s = _as_complex_tensor(maps, "maps").to(x.dtype)
    if x.shape != s.shape:
        raise ValueError(
            f"maps must have the shape of coil_images {tuple(x.shape)}, got {tuple(s.shape)}"
        )
    return (s.conj() * x).sum(dim)


def zero_filled_maps(kspace: ArrayLike, eps: float = 1e-12) -> torch.Tensor:
    """Maps ``S_c = x_c / RSS(x)`` from the zero-filled coil images ``x_c = F⁻¹ k_c``.

    The safe coil combination when no fully sampled calibration region exists: with these
    maps the SENSE pseudo-inverse of the same (undersampled) ``kspace`` is exactly the
    zero-filled RSS image, so a SENSE reconstruction starts from what RSS gives instead of
    from maps biased by an undersampled calibration. Shapes: ``(C, H, W)`` → ``(C, H, W)``
    complex64.
    """
    k = _as_complex_tensor(kspace, "kspace")
    if k.dim() != 3:
        raise ValueError(f"kspace must have shape (C, H, W), got {tuple(k.shape)}")
    return normalise_maps(ifft2c(k), eps=eps).to(torch.complex64)
