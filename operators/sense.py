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

Noisy data: the posterior mean of ``x*`` given ``y = A x* + n`` (``n ~ N(0, σ_y² I)``)
and an estimate ``x = x* + e`` (``e ~ N(0, σ_x² I)``) is ``x − A_λ(A x − y)`` with the
damped inverse ``A_λ = V diag(s / (s² + λ)) Uᴴ``, ``λ = σ_y² / σ_x²``: directions the
coils barely see (small ``s``, high g-factor) are trusted less than the estimate, instead
of having their noise amplified by ``1 / s``. The same SVD serves every ``λ``
(:func:`apply_sense_pinv` with ``damping``); ``λ = 0`` is ``A†``.

Cost: the row SVDs are kept, ``U`` ``(H, N_c K, n)`` and ``V`` ``(H, W, n)`` complex128
with ``n ≤ W`` the widest support (~0.6 GB at 256², 8 coils, 4×), built once per mask and
coil maps (``H`` SVDs of ``N_c K × n_h``, with ``n_h ≤ W`` the columns of row ``h`` where
some coil is sensitive: 13 s instead of 72 s on one core for a 256² ESPIRiT slice at 4×,
whose maps vanish outside the head); each application is one FFT along ``H`` and two
batched matrix–vector products. The map is linear, so autograd differentiates it
exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

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


@dataclass(frozen=True)
class SenseRowSVD:
    """The blocks of SENSE row by row, ``E_h = U_h diag(s_h) V_hᴴ`` (zero-padded to the
    widest support ``n``).

    Attributes:
        u: left singular vectors ``(H, N_c K, n)`` complex128.
        s: kept singular values ``(H, n)`` float64; 0 where dropped by the cutoff or padding.
        v: right singular vectors scattered to the image columns, ``(H, W, n)`` complex128.
    """

    u: torch.Tensor
    s: torch.Tensor
    v: torch.Tensor

    def to(self, device: torch.device) -> SenseRowSVD:
        return SenseRowSVD(self.u.to(device), self.s.to(device), self.v.to(device))

    def inverse_gains(self, damping: float | torch.Tensor | None = None) -> torch.Tensor:
        """``s / (s² + λ)`` per kept singular value and 0 elsewhere: ``1 / s`` (``A†``)
        for ``damping`` ``λ`` = ``None`` or 0, ``(H, n)``; ``(B, H, n)`` for a ``(B,)``
        ``λ``. Differentiable in ``λ``."""
        kept = self.s > 0
        s = torch.where(kept, self.s, torch.ones_like(self.s))  # no 0/0 in either branch
        if damping is None:
            return torch.where(kept, 1.0 / s, torch.zeros_like(s))
        damping = torch.as_tensor(damping, dtype=s.dtype, device=s.device).reshape(-1, 1, 1)
        return torch.where(kept, s / (s**2 + damping), torch.zeros_like(s))


def sense_row_svd(maps: torch.Tensor, mask: torch.Tensor, rtol: float) -> SenseRowSVD:
    """The SVD of every row's block (see the module docstring), singular values
    ``<= rtol · σ_max`` (over all rows) set to zero.

    Each row's system is restricted to its support (:func:`_supports`), so the SVD cost
    falls with the square of the object's width. Rows are factorised in chunks of similar
    support, zero-padded to the chunk's widest (a zero column only adds a zero singular
    value, which the cutoff drops).

    Args:
        maps: coil sensitivities ``(N_c, H, W)`` complex.
        mask: bool ``(W,)`` sampled columns.
        rtol: relative cutoff of the kept singular values.
    """
    maps = maps.to(torch.complex128)
    columns = torch.nonzero(mask.to(maps.device)).flatten()
    n_coils, height, width = maps.shape
    supports = _supports(maps)
    rows = sorted((h for h in range(height) if len(supports[h])), key=lambda h: len(supports[h]))
    widest = max((len(supports[h]) for h in rows), default=0)
    rank = min(widest, n_coils * len(columns))
    u = maps.new_zeros(height, n_coils * len(columns), rank)
    s = torch.zeros(height, rank, dtype=torch.float64, device=maps.device)
    v = maps.new_zeros(height, width, rank)
    if rank == 0:
        return SenseRowSVD(u, s, v)
    # Chunks of rows, so a large factorisation (seconds at 256² on a CPU) shows progress.
    chunks = [rows[i : i + 16] for i in range(0, len(rows), 16)]
    for chunk in tqdm(chunks, desc="SENSE factor", leave=False, disable=len(chunks) < 8):
        index = torch.full((len(chunk), len(supports[chunk[-1]])), width, device=maps.device)
        for i, h in enumerate(chunk):
            index[i, : len(supports[h])] = supports[h]
        cu, cs, cvh = torch.linalg.svd(
            restricted_systems(maps, columns, chunk, index), full_matrices=False
        )
        r = cs.shape[-1]
        for i, h in enumerate(chunk):
            u[h, :, :r], s[h, :r] = cu[i], cs[i]
            v[h, supports[h], :r] = cvh[i].mH[: len(supports[h])]
    cutoff = rtol * float(s.max())
    s = torch.where(s > cutoff, s, torch.zeros_like(s))
    logger.debug("SENSE factor: %d rows with support, %d σ kept", len(rows), int((s > 0).sum()))
    return SenseRowSVD(u, s, v)


def apply_sense_pinv(
    k: torch.Tensor,
    svd: SenseRowSVD,
    mask: torch.Tensor,
    damping: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """``A† y`` for zero-filled multi-coil k-space ``k`` ``(B, N_c, H, W)`` complex128
    given :func:`sense_row_svd`, or with ``damping`` ``λ`` (a scalar or ``(B,)`` tensor) the
    damped inverse ``V diag(s / (s² + λ)) Uᴴ`` row by row; returns ``(B, H, W)``
    complex128. Entries of ``k`` in unsampled columns are ignored (they are orthogonal to
    the range of ``A``)."""
    batch, n_coils, height, _ = k.shape
    k = torch.fft.ifftshift(k, dim=-2)
    k = torch.fft.ifft(k, dim=-2, norm="ortho")
    k = torch.fft.fftshift(k, dim=-2)
    b = k[..., mask.to(k.device)]  # (B, N_c, H, K)
    b = b.permute(0, 2, 1, 3).reshape(batch, height, -1)  # (B, H, N_c K)
    coefficients = torch.einsum("hmn,bhm->bhn", svd.u.conj(), b)
    coefficients = coefficients * svd.inverse_gains(damping).to(coefficients.dtype)
    return torch.einsum("hwn,bhn->bhw", svd.v, coefficients)
