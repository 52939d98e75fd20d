r"""Exact pseudo-inverse of Cartesian multi-coil SENSE by separable least squares.

SENSE measures ``y_c = M F (S_c ⊙ x)`` with ``F = F_H ⊗ F_W`` the centred orthonormal
2-D DFT and ``M`` a mask of whole phase-encode columns (the same for every row). The
inverse DFT along the readout (``H``, unmasked) is unitary and commutes with ``M``, so

.. math::

    (F_H^{-1} y_c)[h, v_k] = \sum_w F_W[v_k, w]\, S_c[h, w]\, x[h, w]
    \quad\Longleftrightarrow\quad b_h = E_h\, x[h, :],\qquad
    E_h[(c, k), w] = F_W[v_k, w]\, S_c[h, w]

for the ``K`` sampled columns ``v_k``: ``A`` is, up to unitary maps, block diagonal with
one ``(N_c K) × W`` block per image row ``h``. Its pseudo-inverse is therefore exact row by
row: ``x[h, :] = E_h^\dagger b_h`` with ``E_h^\dagger = V_r \Sigma_r^{-1} U_r^H`` from a
batched SVD in float64, keeping the singular values above ``rtol · σ_max(A)`` (the same
relative cutoff as ``numpy.linalg.pinv`` on the dense matrix, whose singular values are
the union of the blocks'). Smooth coil maps make SENSE badly conditioned (singular values
down to ~1e-10 σ_max at 8×), so the solve is done in float64 whatever the input
precision, and ``rtol`` bounds the noise amplification by ``1 / rtol``.

Cost: the factor ``(H, W, N_c K)`` complex128 (``16 H W N_c K`` bytes, ~570 MB at 256²,
8 coils, 4×) is built once per mask and coil maps (``H`` SVDs of ``N_c K × W``); each
application is one FFT along ``H`` and one batched matrix–vector product. The map is
linear, so autograd differentiates it exactly.
"""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


def centred_dft_matrix(n: int, dtype: torch.dtype = torch.complex128) -> torch.Tensor:
    """``F[v, w]`` of the centred orthonormal 1-D DFT (``fftshift ∘ fft(norm="ortho") ∘
    ifftshift``), ``(n, n)``, so ``F @ z`` equals the transform of a vector ``z``."""
    eye = torch.eye(n, dtype=dtype)
    spectrum = torch.fft.fft(torch.fft.ifftshift(eye, dim=0), dim=0, norm="ortho")
    return torch.fft.fftshift(spectrum, dim=0)


def row_systems(maps: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """The blocks ``E_h``: ``(H, N_c K, W)`` complex from maps ``(N_c, H, W)`` complex and
    the ``K`` sampled column indices ``columns``; row index ``c·K + k``."""
    n_coils, height, width = maps.shape
    fk = centred_dft_matrix(width, maps.dtype).to(maps.device)[columns]  # (K, W)
    blocks = fk[None, None] * maps.permute(1, 0, 2)[:, :, None, :]  # (H, N_c, K, W)
    return blocks.reshape(height, n_coils * len(columns), width)


def sense_pinv_factor(maps: torch.Tensor, mask: torch.Tensor, rtol: float) -> torch.Tensor:
    """``E_h^†`` for every row, ``(H, W, N_c K)`` complex128 (see the module docstring).

    Args:
        maps: coil sensitivities ``(N_c, H, W)`` complex.
        mask: bool ``(W,)`` sampled columns.
        rtol: singular values ``<= rtol · σ_max`` (over all rows) are treated as zero.
    """
    columns = torch.nonzero(mask.to(maps.device)).flatten()
    height, width = maps.shape[1:]
    if len(columns) == 0:
        return maps.new_zeros(height, width, 0, dtype=torch.complex128)
    systems = row_systems(maps.to(torch.complex128), columns)
    # Rows in chunks, so a large factorisation (a minute at 256² on a CPU) shows progress.
    chunks = torch.split(systems, 16)
    parts = [
        torch.linalg.svd(c, full_matrices=False)
        for c in tqdm(chunks, desc="SENSE factor", leave=False, disable=len(chunks) < 8)
    ]
    u, s, vh = (torch.cat(t) for t in zip(*parts, strict=True))
    cutoff = rtol * s.max()
    inverse = torch.where(s > cutoff, 1.0 / s.clamp_min(torch.finfo(s.dtype).tiny), 0.0)
    logger.debug(
        "SENSE factor: %d rows, %d×%d blocks, %d of %d singular values kept",
        height,
        systems.shape[1],
        width,
        int((s > cutoff).sum()),
        s.numel(),
    )
    return (vh.mH * inverse.to(vh.dtype)[:, None, :]) @ u.mH


def apply_sense_pinv(k: torch.Tensor, factor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``A† y`` for zero-filled multi-coil k-space ``k`` ``(B, N_c, H, W)`` complex128
    given :func:`sense_pinv_factor`; returns ``(B, H, W)`` complex128. Entries of ``k`` in
    unsampled columns are ignored (they are orthogonal to the range of ``A``)."""
    batch, n_coils, height, _ = k.shape
    k = torch.fft.ifftshift(k, dim=-2)
    k = torch.fft.ifft(k, dim=-2, norm="ortho")
    k = torch.fft.fftshift(k, dim=-2)
    b = k[..., mask.to(k.device)]  # (B, N_c, H, K)
    b = b.permute(0, 2, 1, 3).reshape(batch, height, -1)  # (B, H, N_c K)
    return torch.einsum("hwm,bhm->bhw", factor, b)
