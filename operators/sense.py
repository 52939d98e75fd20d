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
precision, and ``rtol`` bounds the noise amplification by ``1 / rtol``. The default
(1e-6) makes ``A†`` exact; on measured, noisy k-space at 8× it amplifies the noise past the
image, so the fastMRI pipeline uses a larger cutoff
(:data:`idm_med.acquisition.mri.MEASURED_SENSE_RTOL`). ``A†A`` is an exact orthogonal
projection at any cutoff.

Cost: the factor ``(H, W, N_c K)`` complex128 (``16 H W N_c K`` bytes, ~570 MB at 256²,
8 coils, 4×) is built once per mask and coil maps (``H`` SVDs of ``N_c K × n_h``, with
``n_h ≤ W`` the columns of row ``h`` where some coil is sensitive: 13 s instead of 72 s on
one core for a 256² ESPIRiT slice at 4×, whose maps vanish outside the head); each
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


def _supports(maps: torch.Tensor) -> list[torch.Tensor]:
    """Per image row, the columns where some coil is sensitive: elsewhere ``x[h, w]`` is
    in the null space of ``A`` (ESPIRiT maps are zero outside the object)."""
    covered = (maps.abs() > 0).any(dim=0)  # (H, W)
    return [torch.nonzero(row).flatten() for row in covered]


def restricted_systems(
    maps: torch.Tensor, columns: torch.Tensor, rows: list[int], index: torch.Tensor
) -> torch.Tensor:
    """The blocks ``E_h`` of ``rows`` restricted to the image columns ``index`` ``(R, n)``
    (one row of indices per block; index ``W`` is a zero column, for padding):
    ``(R, N_c K, n)``, ``E_h[(c, k), j] = F_W[v_k, index_j] S_c[h, index_j]``."""
    n_coils, _, width = maps.shape
    zero = maps.new_zeros(n_coils, len(rows), 1)
    sub = torch.cat([maps[:, rows], zero], -1)  # (N_c, R, W + 1)
    sub = torch.gather(sub, 2, index[None].expand(n_coils, -1, -1))  # (N_c, R, n)
    fk = centred_dft_matrix(width, maps.dtype).to(maps.device)[columns]  # (K, W)
    fk = torch.cat([fk, fk.new_zeros(len(columns), 1)], -1)[:, index]  # (K, R, n)
    blocks = fk.permute(1, 0, 2)[:, None] * sub.permute(1, 0, 2)[:, :, None, :]  # (R, N_c, K, n)
    return blocks.reshape(len(rows), n_coils * len(columns), index.shape[1])


def sense_pinv_factor(maps: torch.Tensor, mask: torch.Tensor, rtol: float) -> torch.Tensor:
    """``E_h^†`` for every row, ``(H, W, N_c K)`` complex128 (see the module docstring).

    Each row's system is restricted to its support (:func:`_supports`), so the SVD cost
    falls with the square of the object's width. Rows are factorised in chunks of similar
    support, zero-padded to the chunk's widest (a zero column only adds a zero singular
    value, which the cutoff drops).

    Args:
        maps: coil sensitivities ``(N_c, H, W)`` complex.
        mask: bool ``(W,)`` sampled columns.
        rtol: singular values ``<= rtol · σ_max`` (over all rows) are treated as zero.
    """
    maps = maps.to(torch.complex128)
    columns = torch.nonzero(mask.to(maps.device)).flatten()
    n_coils, height, width = maps.shape
    factor = maps.new_zeros(height, width, n_coils * len(columns))
    supports = _supports(maps)
    rows = sorted((h for h in range(height) if len(supports[h])), key=lambda h: len(supports[h]))
    if len(columns) == 0 or not rows:
        return factor
    # Chunks of rows, so a large factorisation (seconds at 256² on a CPU) shows progress.
    chunks = [rows[i : i + 16] for i in range(0, len(rows), 16)]
    parts = []
    for chunk in tqdm(chunks, desc="SENSE factor", leave=False, disable=len(chunks) < 8):
        index = torch.full((len(chunk), len(supports[chunk[-1]])), width, device=maps.device)
        for i, h in enumerate(chunk):
            index[i, : len(supports[h])] = supports[h]
        systems = restricted_systems(maps, columns, chunk, index)
        parts.append((chunk, torch.linalg.svd(systems, full_matrices=False)))
    cutoff = rtol * max(float(svd[1].max()) for _, svd in parts)
    kept = 0
    for chunk, (u, s, vh) in parts:
        inverse = torch.where(s > cutoff, 1.0 / s.clamp_min(torch.finfo(s.dtype).tiny), 0.0)
        kept += int((s > cutoff).sum())
        block = (vh.mH * inverse.to(vh.dtype)[:, None, :]) @ u.mH  # (R, n, N_c K)
        for i, h in enumerate(chunk):
            factor[h, supports[h]] = block[i, : len(supports[h])]
    logger.debug("SENSE factor: %d rows with support of %d, %d σ kept", len(rows), height, kept)
    return factor


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
