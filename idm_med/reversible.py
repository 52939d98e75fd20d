r"""Reversible additive couplings: IDM's level-1 (across steps) and level-2 (inside blocks).

Forward
-------
Given functions :math:`f_0, \dots, f_{K-1}` that map a tensor to a tensor of the same shape,
coupling weights :math:`v \in (0, 1)^K` with :math:`u_i = 1 - v_i`, and two streams
:math:`x_0, h_0`, one coupled step is

.. math::

    x_{i+1} = u_i\, f_i(x_i) + v_i\, h_i, \qquad h_{i+1} = x_i ,

and :func:`coupled_sequence` returns :math:`(x_K, h_K)`. In IDM, level 1 uses the sampling
steps :math:`F_t` as the :math:`f_i`; level 2 uses the same-shape modules of a UNet block
(resnet, injector, attention, injector), with both streams started from the block input.

Inverse
-------
Each step is invertible whatever :math:`f_i` is:

.. math::

    x_i = h_{i+1}, \qquad h_i = \bigl(x_{i+1} - u_i\, f_i(x_i)\bigr) / v_i .

The division by :math:`v_i` amplifies round-off: an error :math:`\delta` in
:math:`(x_{i+1}, x_i)` becomes roughly :math:`(1 + u_i \lVert J_{f_i} \rVert)\,\delta / v_i` in
:math:`h_i`, and the errors compound over the K steps (about :math:`v^{-K}` in the worst
case). Hence :math:`v` is validated to lie strictly in :math:`(0, 1)` and
:class:`ReversibleBlockGroup` keeps it in :math:`[v_{min}, 1 - v_{min}]`.
:func:`invert_sequence` / :func:`inverse_reconstruction_error` measure this error.

Why
---
Ordinary autograd stores every activation of every :math:`f_i`, so training memory grows
linearly in K. In ``mode="reversible"`` the forward pass runs without a graph and keeps
only :math:`(x_K, h_K)`; the backward pass walks the steps in reverse, rebuilds
:math:`(x_i, h_i)` with the inverse above, recomputes :math:`f_i(x_i)` with grad enabled and
back-propagates one step at a time, so activation memory is O(1) in K (one step's graph at
a time) for about one extra forward pass of compute. ``mode="checkpoint"`` stores the K
step inputs instead (O(K) tensors, no round-off); ``mode="autograd"`` stores everything.

The gradient formulas and the assumptions of the reversible mode (deterministic
functions, every tensor requiring grad listed in ``params``) are in
:mod:`idm_med.reversible_function`, which holds its autograd Function.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .reversible_function import ReversibleCoupling, TensorFn, apply_step

logger = logging.getLogger(__name__)

MODES = ("autograd", "checkpoint", "reversible")

__all__ = [
    "MODES",
    "ReversibleBlockGroup",
    "constrained_unit_interval",
    "constrained_unit_interval_inverse",
    "coupled_sequence",
    "forward_states",
    "invert_sequence",
    "inverse_reconstruction_error",
]


# --------------------------------------------------------------------------------------
# Constrained parameterisation
# --------------------------------------------------------------------------------------
def constrained_unit_interval(raw: torch.Tensor, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    r"""Maps an unconstrained tensor into ``[lo, hi]``: :math:`lo + (hi - lo)\,\sigma(raw)`.

    Used for the coupling weights :math:`v_t \in [v_{min}, 1 - v_{min}]` and the learnable
    schedule :math:`\alpha_t \in (0, 1)`. Elementwise; the output has the shape of ``raw``.
    """
    _check_bounds(lo, hi)
    return lo + (hi - lo) * torch.sigmoid(raw)


def constrained_unit_interval_inverse(
    value: torch.Tensor | float, lo: float = 0.0, hi: float = 1.0
) -> torch.Tensor:
    r"""Inverse of :func:`constrained_unit_interval`: :math:`\mathrm{logit}((value-lo)/(hi-lo))`.

    For initialisation, e.g. ``v = 0.5`` in ``[0.05, 0.95]`` gives ``raw = 0``. ``value``
    must lie strictly inside ``(lo, hi)`` (ValueError otherwise), since the ends map to
    :math:`\pm\infty`. Returns a tensor of the shape of ``value`` (float64 for a Python float).
    """
    _check_bounds(lo, hi)
    value = torch.as_tensor(value, dtype=None if torch.is_tensor(value) else torch.float64)
    if not bool(((value > lo) & (value < hi)).all()):
        raise ValueError(f"value must lie strictly inside ({lo}, {hi}), got {value}")
    return torch.logit((value - lo) / (hi - lo))


def _check_bounds(lo: float, hi: float) -> None:
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"need finite lo < hi, got lo={lo}, hi={hi}")


# --------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------
def _validate(
    functions: Sequence[TensorFn], v: torch.Tensor, x: torch.Tensor, h: torch.Tensor, mode: str
) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if len(functions) == 0:
        raise ValueError("functions must hold at least one step (K >= 1)")
    if not torch.is_tensor(v) or v.shape != (len(functions),):
        shape = tuple(v.shape) if torch.is_tensor(v) else type(v).__name__
        raise ValueError(f"v must be a tensor of shape (K,) = ({len(functions)},), got {shape}")
    with torch.no_grad():
        inside = bool(((v > 0) & (v < 1)).all())  # False for NaN as well
    if not inside:
        raise ValueError(
            f"v must lie strictly in (0, 1) (the inverse divides by v), got {v.tolist()}"
        )
    if x.shape != h.shape:
        raise ValueError(f"h must have the shape of x {tuple(x.shape)}, got {tuple(h.shape)}")


def _unique_params(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Drops repeated tensors: each slot of ``Function.apply`` would receive the full grad."""
    seen: set[int] = set()
    out: list[torch.Tensor] = []
    for p in params:
        if not torch.is_tensor(p):
            raise TypeError(f"params must be tensors, got {type(p).__name__}")
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _plain_loop(
    functions: Sequence[TensorFn], v: torch.Tensor, x: torch.Tensor, h: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    for i, f in enumerate(functions):
        x, h = (1 - v[i]) * apply_step(f, x, i) + v[i] * h, x
    return x, h


# --------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------
def coupled_sequence(
    functions: Sequence[TensorFn],
    v: torch.Tensor,
    x: torch.Tensor,
    h: torch.Tensor,
    params: Sequence[torch.Tensor] = (),
    mode: str = "reversible",
    *,
    preserve_rng_state: bool = True,
    check_recompute: bool = False,
    check_rtol: float = 1e-4,
    accumulate_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Runs K coupled steps and returns :math:`(x_K, h_K)`.

    For :math:`i = 0, \dots, K-1`: :math:`x_{i+1} = (1 - v_i) f_i(x_i) + v_i h_i`,
    :math:`h_{i+1} = x_i`.

    Args:
        functions: K callables, each mapping a tensor to one of the same shape.
        v: ``(K,)`` coupling weights, each strictly in ``(0, 1)``; ``u = 1 - v``.
        x: first stream, any shape ``S`` (e.g. ``(B, C, H, W)``).
        h: second (auxiliary) stream, shape ``S``.
        params: every tensor requiring grad that the functions use (module parameters,
            schedule tensors, ...), not ``v``. Only ``mode="reversible"`` reads it; other
            captured tensors are constants there.
        mode: ``"autograd"`` (store everything), ``"checkpoint"`` (each step under
            ``torch.utils.checkpoint``, stores the K step inputs) or ``"reversible"``
            (stores only the outputs; O(1) activation memory in K).
        preserve_rng_state: reversible mode: record/restore the RNG state per step so that
            recomputation draws the same random numbers (also passed to checkpoint).
        check_recompute: reversible mode: warn if a recomputed ``f_i(x_i)`` differs from the
            forward pass by more than ``check_rtol`` (relative, in norm).
        check_rtol: tolerance of ``check_recompute``.
        accumulate_grad: reversible mode: add the gradients of ``params`` (which must all
            be leaves) straight into their ``.grad`` during the backward, instead of
            returning them through autograd. This avoids holding a full copy of the
            parameter gradients (the dominant memory for large backbones at small image
            sizes), but the gradients then only reach ``.grad``: use ``loss.backward()``,
            not ``torch.autograd.grad(loss, params)``.

    Returns:
        ``(x_K, h_K)``, each of shape ``S``.

    Raises:
        ValueError: unknown mode, empty ``functions``, ``v`` of the wrong shape or outside
            ``(0, 1)``, ``h`` not shaped like ``x``, or an ``f_i`` that changes the shape.

    With grad disabled (``torch.no_grad()``, inference) every mode is a plain loop that
    stores nothing.
    """
    _validate(functions, v, x, h, mode)
    if not torch.is_grad_enabled():
        return _plain_loop(functions, v, x, h)

    if mode == "autograd":
        return _plain_loop(functions, v, x, h)

    if mode == "checkpoint":

        def step(
            f: TensorFn, i: int, x_i: torch.Tensor, h_i: torch.Tensor, v_i: torch.Tensor
        ) -> torch.Tensor:
            return (1 - v_i) * apply_step(f, x_i, i) + v_i * h_i

        for i, f in enumerate(functions):
            x_new = checkpoint(
                step, f, i, x, h, v[i], use_reentrant=False, preserve_rng_state=preserve_rng_state
            )
            x, h = x_new, x
        return x, h

    uniq = _unique_params(params)
    if not (x.requires_grad or h.requires_grad or v.requires_grad) and not any(
        p.requires_grad for p in uniq
    ):
        # Nothing to differentiate through the Function; a plain loop still lets autograd
        # track any tensor the caller forgot to list.
        logger.debug("reversible mode: no input requires grad, running a plain loop")
        return _plain_loop(functions, v, x, h)
    if accumulate_grad and not all(p.is_leaf for p in uniq):
        raise ValueError("accumulate_grad=True needs every tensor in params to be a leaf")
    options = {
        "preserve_rng_state": preserve_rng_state,
        "check_recompute": check_recompute,
        "check_rtol": check_rtol,
        "accumulate_grad": accumulate_grad,
    }
    return ReversibleCoupling.apply(list(functions), options, x, h, v, *uniq)


# --------------------------------------------------------------------------------------
# Inverse pass (measurement of round-off)
# --------------------------------------------------------------------------------------
@torch.no_grad()
def forward_states(
    functions: Sequence[TensorFn], v: torch.Tensor, x: torch.Tensor, h: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """All states ``[(x_0, h_0), ..., (x_K, h_K)]`` of the forward pass (no grad)."""
    _validate(functions, v, x, h, "autograd")
    states = [(x, h)]
    for i, f in enumerate(functions):
        x, h = (1 - v[i]) * apply_step(f, x, i) + v[i] * h, x
        states.append((x, h))
    return states


@torch.no_grad()
def invert_sequence(
    functions: Sequence[TensorFn], v: torch.Tensor, x_K: torch.Tensor, h_K: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    r"""Rebuilds ``[(x_0, h_0), ..., (x_K, h_K)]`` from the outputs alone (no grad).

    :math:`x_i = h_{i+1}`, :math:`h_i = (x_{i+1} - (1 - v_i) f_i(x_i)) / v_i`; the same
    recursion the reversible backward pass uses, so its error against
    :func:`forward_states` is the error of the states the gradients are computed at.
    """
    _validate(functions, v, x_K, h_K, "autograd")
    states = [(x_K, h_K)]
    x_next, h_next = x_K, h_K
    for i in reversed(range(len(functions))):
        x_i = h_next
        h_i = (x_next - (1 - v[i]) * apply_step(functions[i], x_i, i)) / v[i]
        states.append((x_i, h_i))
        x_next, h_next = x_i, h_i
    return states[::-1]


@torch.no_grad()
def inverse_reconstruction_error(
    functions: Sequence[TensorFn], v: torch.Tensor, x: torch.Tensor, h: torch.Tensor
) -> float:
    r"""Max over states of the relative error of the inverse pass.

    Runs :func:`forward_states`, inverts from :math:`(x_K, h_K)` with
    :func:`invert_sequence` and returns
    :math:`\max_i \max(\lVert\tilde x_i - x_i\rVert/\lVert x_i\rVert,
    \lVert\tilde h_i - h_i\rVert/\lVert h_i\rVert)` (norms over the whole tensor).
    """
    fwd = forward_states(functions, v, x, h)
    inv = invert_sequence(functions, v, *fwd[-1])
    worst = 0.0
    for (xf, hf), (xi, hi) in zip(fwd, inv, strict=True):
        for ref, rec in ((xf, xi), (hf, hi)):
            num = torch.linalg.vector_norm((rec - ref).double())
            den = torch.linalg.vector_norm(ref.double()).clamp_min(1e-300)
            worst = max(worst, float(num / den))
    return worst


# --------------------------------------------------------------------------------------
# Level-2 wrapper
# --------------------------------------------------------------------------------------
class ReversibleBlockGroup(nn.Module):
    r"""A reversible group of same-shape modules inside a UNet block (IDM level 2).

    The block input is duplicated into both streams, the K modules are coupled with
    learnable weights :math:`v = v_{min} + (1 - 2 v_{min})\,\sigma(\rho)` (so
    :math:`v \in [v_{min}, 1 - v_{min}]`), and the streams are merged with a learnable
    scalar :math:`m` (init 0):

    .. math:: (x_K, h_K) = \mathrm{coupled}(f, v, x, x), \qquad y = x_K + m\, h_K .

    Args:
        modules: K callables mapping ``(B, C, H, W)`` (any shape ``S``) to the same shape.
            ``nn.Module`` entries are registered as submodules (their parameters belong to
            this group); plain closures are kept as is.
        v_init: initial value of every :math:`v_i`, strictly inside ``(v_min, 1 - v_min)``.
        v_min: lower bound of :math:`v` (keeps the inverse's :math:`1/v` amplification
            bounded by :math:`1/v_{min}` per step).
        params: extra tensors the closures use that require grad and are not parameters of
            a registered module (they must be passed to the reversible mode explicitly).
    """

    def __init__(
        self,
        modules: Sequence[TensorFn],
        v_init: float = 0.5,
        v_min: float = 0.05,
        params: Sequence[torch.Tensor] = (),
    ) -> None:
        super().__init__()
        if len(modules) == 0:
            raise ValueError("modules must hold at least one callable")
        if not 0.0 < v_min < 0.5:
            raise ValueError(f"v_min must lie in (0, 0.5), got {v_min}")
        if not v_min < v_init < 1.0 - v_min:
            raise ValueError(
                f"v_init must lie strictly inside ({v_min}, {1 - v_min}), got {v_init}"
            )
        self.v_min = float(v_min)
        self.functions: list[TensorFn] = list(modules)
        # Registering modules makes .to(), state_dict() and .parameters() see them.
        self.blocks = nn.ModuleList([f for f in modules if isinstance(f, nn.Module)])
        self.extra_params: list[torch.Tensor] = list(params)
        raw = constrained_unit_interval_inverse(v_init, self.v_min, 1.0 - self.v_min)
        self.v_raw = nn.Parameter(torch.full((len(modules),), float(raw)))
        self.m = nn.Parameter(torch.zeros(()))

    @property
    def v(self) -> torch.Tensor:
        """The ``(K,)`` coupling weights in ``[v_min, 1 - v_min]``."""
        return constrained_unit_interval(self.v_raw, self.v_min, 1.0 - self.v_min)

    def coupling_params(self, extra: Sequence[torch.Tensor] = ()) -> list[torch.Tensor]:
        """Tensors the wrapped functions use: module parameters, ``params`` and ``extra``."""
        return [*self.blocks.parameters(), *self.extra_params, *extra]

    def forward(
        self,
        x: torch.Tensor,
        mode: str = "reversible",
        functions: Sequence[TensorFn] | None = None,
        extra_params: Sequence[torch.Tensor] = (),
        accumulate_grad: bool = False,
    ) -> torch.Tensor:
        """``x`` of shape ``S`` -> ``x_K + m h_K`` of shape ``S``.

        ``functions`` replaces the stored callables for this call (e.g. closures over the
        current batch's measurement); it must hold K entries. ``extra_params`` adds tensors
        those closures use that require grad. ``accumulate_grad``: see
        :func:`coupled_sequence`.
        """
        fns = self.functions if functions is None else list(functions)
        if len(fns) != self.v_raw.numel():
            raise ValueError(f"functions must hold K = {self.v_raw.numel()} callables")
        x_k, h_k = coupled_sequence(
            fns,
            self.v,
            x,
            x,
            params=self.coupling_params(extra_params),
            mode=mode,
            accumulate_grad=accumulate_grad,
        )
        return x_k + self.m * h_k

    def extra_repr(self) -> str:
        return f"K={self.v_raw.numel()}, v_min={self.v_min}"
