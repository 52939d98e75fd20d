"""A fixed sparse CT system matrix applied with torch's CSR products (CPU and GPU).

Shared by the parallel-beam (:mod:`.radon`) and fan-beam (:mod:`.fan_beam`) transforms:
both are a sparse matrix ``R ∈ R^{(V·D) x N²}`` (rays x pixels) built once per geometry.
``R`` and ``Rᵀ`` are stored as two CSR matrices, so the projection and the exact adjoint
(back-projection) each cost one CSR-times-dense product, and autograd flows through both
in any order (:class:`_SparseMatmul`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

LinearMap = Callable[[torch.Tensor], torch.Tensor]


def csr(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, shape: tuple[int, int]):
    """A CSR tensor from buffers that were built valid (no O(nnz) invariant check)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")  # "beta" / "checks" notes
        return torch.sparse_csr_tensor(crow, col, val, shape, check_invariants=False)


def csr_pair(matrix: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(crow, col, val)`` of a CSR matrix ``M`` then of ``Mᵀ`` (int32 indices).

    int32 indices take half the memory of int64 and are at least as fast in the CSR
    kernels; ``Mᵀ`` is stored explicitly (the CSC form of ``M``) because a product with a
    transposed view is ~100x slower than a CSR product.
    """
    matrix = csr(
        matrix.crow_indices().int(), matrix.col_indices().int(), matrix.values(), matrix.shape
    )
    csc = matrix.to_sparse_csc()
    return (
        matrix.crow_indices(),
        matrix.col_indices(),
        matrix.values(),
        csc.ccol_indices(),
        csc.row_indices(),
        csc.values(),
    )


class _SparseMatmul(torch.autograd.Function):
    """``M @ X`` for a fixed CSR matrix ``M`` with its transpose ``Mᵀ`` given separately.

    The backward is the same function with the roles swapped, so gradients of any order
    flow (the back-projection is itself differentiable, with the projection as its
    gradient).
    """

    @staticmethod
    def forward(ctx, dense, matrix, matrix_t):
        ctx.matrix, ctx.matrix_t = matrix, matrix_t
        return torch.sparse.mm(matrix, dense)

    @staticmethod
    def backward(ctx, grad):
        return _SparseMatmul.apply(grad, ctx.matrix_t, ctx.matrix), None, None


class SparseProjector(nn.Module):
    """Projection ``(..., N, N) -> (..., V, D)`` by a fixed sparse matrix, and its adjoint.

    Subclasses build the geometry's matrix and call :meth:`_store` with the six tensors of
    :func:`csr_pair`. The buffers (``crow``/``col`` int32, ``val`` in the module's float
    dtype) follow ``.to()`` / ``.double()`` as for any module; they are not persistent
    (they follow from the geometry, and a 256², 60-view matrix has ~9 M non-zeros).
    """

    image_size: int
    n_views: int
    n_detectors: int

    def _store(self, tensors: tuple[torch.Tensor, ...], dtype: torch.dtype) -> None:
        crow, col, val, crow_t, col_t, val_t = tensors
        self.register_buffer("crow", crow, persistent=False)
        self.register_buffer("col", col, persistent=False)
        self.register_buffer("val", val.to(dtype), persistent=False)
        self.register_buffer("crow_t", crow_t, persistent=False)
        self.register_buffer("col_t", col_t, persistent=False)
        self.register_buffer("val_t", val_t.to(dtype), persistent=False)

    @property
    def nnz(self) -> int:
        """Number of non-zeros of the system matrix."""
        return self.val.numel()

    def _matrices(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # ``.to(dtype)`` is a no-op when the input matches the module's dtype.
        n, rays = self.image_size, self.n_views * self.n_detectors
        fwd = csr(self.crow, self.col, self.val.to(dtype), (rays, n * n))
        bwd = csr(self.crow_t, self.col_t, self.val_t.to(dtype), (n * n, rays))
        return fwd, bwd

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Sinogram ``R x``: ``(..., N, N) -> (..., V, D)`` (views, detectors)."""
        return self._project(x, *self._matrices(x.dtype))

    def backproject(self, sinogram: torch.Tensor) -> torch.Tensor:
        """Exact adjoint ``Rᵀ y``: ``(..., V, D) -> (..., N, N)``."""
        return self._backproject(sinogram, *self._matrices(sinogram.dtype))

    def linear_maps(self, dtype: torch.dtype) -> tuple[LinearMap, LinearMap]:
        """``(project, backproject)`` computing in ``dtype`` with the weights cast once.

        For iterative solvers that apply both maps many times in another precision than
        the module's (e.g. float64 CG for a float32 operator); inputs must have ``dtype``.
        """
        fwd, bwd = self._matrices(dtype)
        return (
            lambda x: self._project(x, fwd, bwd),
            lambda y: self._backproject(y, fwd, bwd),
        )

    def ray_lengths(self) -> torch.Tensor:
        """``(V, D)`` row sums of ``R`` (float64): how much image each ray crosses; zero
        for rays that miss the image."""
        rows = torch.repeat_interleave(torch.diff(self.crow.long().cpu()))
        sums = torch.zeros(self.n_views * self.n_detectors, dtype=torch.float64)
        sums.index_add_(0, rows, self.val.detach().cpu().double())
        return sums.view(self.n_views, self.n_detectors)

    def _project(self, x: torch.Tensor, fwd: torch.Tensor, bwd: torch.Tensor) -> torch.Tensor:
        n = self.image_size
        # (N², batch) column layout: CSR @ dense is the fast sparse kernel.
        cols = x.reshape(-1, n * n).t().contiguous()
        out = _SparseMatmul.apply(cols, fwd, bwd)
        return out.t().reshape(*x.shape[:-2], self.n_views, self.n_detectors)

    def _backproject(self, y: torch.Tensor, fwd: torch.Tensor, bwd: torch.Tensor) -> torch.Tensor:
        n = self.image_size
        cols = y.reshape(-1, self.n_views * self.n_detectors).t().contiguous()
        out = _SparseMatmul.apply(cols, bwd, fwd)
        return out.t().reshape(*y.shape[:-2], n, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(x)
