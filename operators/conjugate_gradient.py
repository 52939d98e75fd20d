"""Batched conjugate gradients for symmetric positive semi-definite linear maps.

Used where an operator has no closed-form pseudo-inverse (multi-coil SENSE MRI,
sparse-view CT): ``A† y`` is the minimum-norm solution of the normal equations
``AᵀA x = Aᵀ y``, which CG started from zero reaches because every iterate stays in the
range of ``Aᵀ``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product, shaped (B, 1, ..., 1) for broadcasting."""
    return (a * b).flatten(1).sum(1).view(-1, *([1] * (a.dim() - 1)))


def conjugate_gradient(
    normal_op: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    tol: float = 1e-6,
    max_iter: int = 200,
) -> torch.Tensor:
    """Solve ``normal_op(x) = rhs`` for every sample of the batch independently.

    Args:
        normal_op: symmetric positive semi-definite map on tensors shaped like ``rhs``.
        rhs: right-hand side ``(B, ...)``.
        tol: stop when every sample's residual norm is below ``tol`` times its ``‖rhs‖``.
        max_iter: iteration cap.

    Returns:
        ``x`` shaped like ``rhs``. Each sample uses its own step sizes, so a sample's
        solution never depends on the rest of the batch.
    """
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rr = _dot(r, r)
    threshold = (tol**2) * rr
    tiny = torch.finfo(rhs.dtype).tiny
    # In low precision the residual can stall and then grow on ill-conditioned systems:
    # return, per sample, the iterate with the smallest residual seen.
    best_x, best_rr = x, rr
    for _ in range(max_iter):
        if bool((rr <= threshold).all()):
            break
        Ap = normal_op(p)
        pAp = _dot(p, Ap)
        # Samples that have converged (or whose rhs is zero) stop moving.
        active = (rr > threshold) & (pAp > tiny)
        alpha = torch.where(active, rr / pAp.clamp_min(tiny), torch.zeros_like(rr))
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = _dot(r, r)
        beta = torch.where(active, rr_new / rr.clamp_min(tiny), torch.zeros_like(rr))
        p = r + beta * p
        rr = torch.where(active, rr_new, rr)
        improved = rr < best_rr
        best_x = torch.where(improved, x, best_x)
        best_rr = torch.where(improved, rr, best_rr)
    return best_x


class _PseudoInverseCG(torch.autograd.Function):
    """``x = A† y`` by CG on the normal equations, differentiated implicitly.

    The backward uses ``(A†)ᵀ = (Aᵀ)† = (A Aᵀ)† A``: the incoming gradient ``g`` is mapped
    by ``A`` into the range of ``A Aᵀ`` and solved there, so both solves are consistent
    systems and no CG iterate is stored for autograd.
    """

    @staticmethod
    def forward(ctx, y, A, At, tol, max_iter):
        ctx.A, ctx.At, ctx.tol, ctx.max_iter = A, At, tol, max_iter
        with torch.no_grad():
            return conjugate_gradient(lambda v: At(A(v)), At(y), tol, max_iter)

    @staticmethod
    def backward(ctx, grad_x):
        A, At = ctx.A, ctx.At
        with torch.no_grad():
            grad_y = conjugate_gradient(lambda w: A(At(w)), A(grad_x), ctx.tol, ctx.max_iter)
        return grad_y, None, None, None, None


def pinv_by_cg(
    y: torch.Tensor,
    A: Callable[[torch.Tensor], torch.Tensor],
    At: Callable[[torch.Tensor], torch.Tensor],
    tol: float = 1e-6,
    max_iter: int = 200,
) -> torch.Tensor:
    """Differentiable Moore–Penrose pseudo-inverse ``A† y`` of a linear map given by
    ``A`` and its exact adjoint ``At`` (gradients flow to ``y``; the maps are fixed)."""
    return _PseudoInverseCG.apply(y, A, At, tol, max_iter)
