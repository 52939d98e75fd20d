"""Batched conjugate gradients for symmetric positive semi-definite linear maps.

Used where an operator has no closed-form pseudo-inverse (multi-coil SENSE MRI,
sparse-view CT): ``A† y`` is the minimum-norm solution of the normal equations
``AᵀA x = Aᵀ y``, which CG reaches when it starts in the range of ``Aᵀ`` (zero, or a warm
start of the form ``Aᵀ z``) and its preconditioner maps that range into itself, because
every iterate then stays in the range of ``Aᵀ``.

:class:`CGPseudoInverse` is the one place that owns the CG settings of an operator
(tolerance, iteration cap, float64 policy, preconditioner, warm start), so every
CG-based operator solves the same way.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

LinearMap = Callable[[torch.Tensor], torch.Tensor]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product, shaped (B, 1, ..., 1) for broadcasting."""
    return (a * b).flatten(1).sum(1).view(-1, *([1] * (a.dim() - 1)))


def conjugate_gradient(
    normal_op: LinearMap,
    rhs: torch.Tensor,
    tol: float = 1e-6,
    max_iter: int = 200,
    x0: torch.Tensor | None = None,
    preconditioner: LinearMap | None = None,
) -> torch.Tensor:
    """Solve ``normal_op(x) = rhs`` for every sample of the batch independently.

    Args:
        normal_op: symmetric positive semi-definite map on tensors shaped like ``rhs``.
        rhs: right-hand side ``(B, ...)``.
        tol: stop when every sample's residual norm is below ``tol`` times its ``‖rhs‖``.
        max_iter: iteration cap.
        x0: starting point (default zero).
        preconditioner: symmetric positive (semi-)definite ``M ≈ normal_op⁻¹``; CG then
            minimises in the ``M``-preconditioned Krylov space (default: identity).

    Returns:
        ``x`` shaped like ``rhs``. Each sample uses its own step sizes, so a sample's
        solution never depends on the rest of the batch.
    """
    apply_m = preconditioner or (lambda v: v)
    if x0 is None:
        x, r = torch.zeros_like(rhs), rhs.clone()
    else:
        x, r = x0.clone(), rhs - normal_op(x0)
    h = apply_m(r)
    p = h.clone()
    rh = _dot(r, h)
    rr = _dot(r, r)
    threshold = (tol**2) * _dot(rhs, rhs)
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
        active = (rr > threshold) & (pAp > tiny) & (rh > tiny)
        alpha = torch.where(active, rh / pAp.clamp_min(tiny), torch.zeros_like(rh))
        x = x + alpha * p
        r = r - alpha * Ap
        h = apply_m(r)
        rh_new = _dot(r, h)
        beta = torch.where(active, rh_new / rh.clamp_min(tiny), torch.zeros_like(rh))
        p = h + beta * p
        rh = torch.where(active, rh_new, rh)
        rr = torch.where(active, _dot(r, r), rr)
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
    def forward(ctx, y, A, At, tol, max_iter, x0, preconditioner):
        ctx.A, ctx.At, ctx.tol, ctx.max_iter = A, At, tol, max_iter
        with torch.no_grad():
            return conjugate_gradient(lambda v: At(A(v)), At(y), tol, max_iter, x0, preconditioner)

    @staticmethod
    def backward(ctx, grad_x):
        A, At = ctx.A, ctx.At
        with torch.no_grad():
            grad_y = conjugate_gradient(lambda w: A(At(w)), A(grad_x), ctx.tol, ctx.max_iter)
        return grad_y, None, None, None, None, None, None


def pinv_by_cg(
    y: torch.Tensor,
    A: LinearMap,
    At: LinearMap,
    tol: float = 1e-6,
    max_iter: int = 200,
    x0: torch.Tensor | None = None,
    preconditioner: LinearMap | None = None,
) -> torch.Tensor:
    """Differentiable Moore–Penrose pseudo-inverse ``A† y`` of a linear map given by
    ``A`` and its exact adjoint ``At`` (gradients flow to ``y``; the maps are fixed).

    ``x0`` (a warm start) and ``preconditioner`` (for ``AᵀA``) keep the result the
    minimum-norm solution only if ``x0`` lies in the range of ``Aᵀ`` and the
    preconditioner maps that range into itself. Neither is used by the backward, whose
    consistent system ``A Aᵀ w = A g`` starts from zero."""
    if x0 is not None:
        x0 = x0.detach()
    return _PseudoInverseCG.apply(y, A, At, tol, max_iter, x0, preconditioner)


class CGPseudoInverse:
    """Mixin for operators whose ``A_pinv`` is CG on the normal equations.

    The operator calls :meth:`_init_cg` in its constructor and :meth:`_cg_pinv` from its
    ``_A_pinv``; it may override :meth:`_cg_maps` (the pair ``(A, Aᵀ)`` computing in a
    given dtype), :meth:`_cg_warm_start` (a start in the range of ``Aᵀ``) and
    :meth:`_cg_preconditioner` (an SPD map of ``AᵀA``'s domain that keeps the range of
    ``Aᵀ``). With ``cg_float64`` the solve runs in float64 whatever the input dtype (low
    precision CG stalls on ill-conditioned systems) and returns in the input's dtype.
    """

    cg_tol: float
    cg_max_iter: int
    cg_float64: bool

    def _init_cg(self, tol: float, max_iter: int, float64: bool = True) -> dict[str, Any]:
        """Validate and store the settings; returns them for the operator's config."""
        if not 0.0 < float(tol) < 1.0:
            raise ValueError(f"cg_tol must lie in (0, 1), got {tol!r}")
        if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 1:
            raise ValueError(f"cg_max_iter must be a positive integer, got {max_iter!r}")
        self.cg_tol, self.cg_max_iter, self.cg_float64 = float(tol), int(max_iter), bool(float64)
        return {"cg_tol": self.cg_tol, "cg_max_iter": self.cg_max_iter}

    def with_cg_max_iter(self, max_iter: int) -> CGPseudoInverse:
        """A view of this operator whose CG stops after at most ``max_iter`` iterations:
        a cheaper, approximate ``A_pinv`` / ``AtA`` (``A`` and ``At`` unchanged) for
        solves whose accuracy matters less than their cost, such as IDM's inner steps
        (:meth:`idm_med.model.IDM.forward`, ``inner_operator``). The view shares this
        operator's buffers, so it follows later ``update`` / ``resample`` calls; its
        ``config`` states the cap."""
        if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
        view = copy.copy(self)  # a new __dict__; parameters, buffers, submodules shared
        view.cg_max_iter = int(max_iter)
        config = getattr(self, "_config", None)
        if isinstance(config, dict):
            view._config = {**config, "cg_max_iter": int(max_iter)}
        return view

    def _cg_maps(self, dtype: torch.dtype) -> tuple[LinearMap, LinearMap]:
        return self._A, self._At  # type: ignore[attr-defined]

    def _cg_warm_start(self, y: torch.Tensor, A: LinearMap, At: LinearMap) -> torch.Tensor | None:
        return None

    def _cg_preconditioner(self, dtype: torch.dtype) -> LinearMap | None:
        return None

    def _cg_pinv(self, y: torch.Tensor) -> torch.Tensor:
        """``A† y`` by (preconditioned, warm-started) CG; differentiable in ``y``."""
        work = torch.float64 if self.cg_float64 else y.dtype
        A, At = self._cg_maps(work)
        yw = y.to(work)
        with torch.no_grad():
            x0 = self._cg_warm_start(yw.detach(), A, At)
        x = pinv_by_cg(yw, A, At, self.cg_tol, self.cg_max_iter, x0, self._cg_preconditioner(work))
        return x.to(y.dtype)
