r"""The autograd Function behind ``coupled_sequence(..., mode="reversible")``.

The forward pass runs the K coupled steps (:mod:`idm_med.reversible`) without a graph and
keeps only :math:`(x_K, h_K)`; the backward pass walks the steps in reverse, rebuilds
:math:`(x_i, h_i)` with the inverse step, recomputes :math:`f_i(x_i)` with grad enabled and
back-propagates one step at a time.

Gradients
---------
With :math:`g_x, g_h` the gradients of the loss with respect to :math:`(x_{i+1}, h_{i+1})`
and :math:`J_x, J_\theta` the Jacobians of :math:`f_i` with respect to its input and to the
parameters :math:`\theta`:

.. math::

    \partial x_i &= g_h + J_x^\top (u_i\, g_x), \qquad \partial h_i = v_i\, g_x, \\
    \partial v_i &= \langle g_x,\; h_i - f_i(x_i) \rangle, \qquad
    \partial \theta \mathrel{+}= J_\theta^\top (u_i\, g_x) .

Assumptions
-----------
* The functions are deterministic given their input and the RNG state. The RNG state
  (CPU, and CUDA for CUDA inputs) is recorded before every step and restored when the step
  is recomputed, as ``torch.utils.checkpoint`` does with ``preserve_rng_state``, so
  functions that draw random numbers from the global generators still recompute exactly;
  anything else that changes between the passes (module state, batch-norm running
  statistics in training mode, data-dependent non-determinism) gives wrong gradients.
  ``check_recompute=True`` compares a per-step fingerprint and warns on a mismatch.
  The autocast state of the forward pass is re-entered for the recomputation too.
* Every tensor that requires grad and is used by the functions must be in ``params``;
  other captured tensors (e.g. the measurement term ``A† y``) are treated as constants.
* Double backward (``create_graph=True``) is not supported.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.autograd.function import once_differentiable

TensorFn = Callable[[torch.Tensor], torch.Tensor]


def apply_step(f: TensorFn, x: torch.Tensor, i: int) -> torch.Tensor:
    """Calls ``f_i(x)`` and checks the output keeps the shape of ``x``."""
    fx = f(x)
    if fx.shape != x.shape:
        raise ValueError(
            f"functions[{i}] must return the shape of its input {tuple(x.shape)}, "
            f"got {tuple(fx.shape)}"
        )
    return fx


# -- RNG bookkeeping (same idea as torch.utils.checkpoint's preserve_rng_state) ----------
def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _restore_rng(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _fingerprint(t: torch.Tensor) -> torch.Tensor:
    """A cheap per-step summary used by ``check_recompute`` (0-d float64 tensor)."""
    return torch.linalg.vector_norm(t.detach().double())


def _compare_fingerprint(stored: torch.Tensor, f_out: torch.Tensor, i: int, rtol: float) -> None:
    now = _fingerprint(f_out)
    rel = float((now - stored).abs() / stored.abs().clamp_min(1e-300))
    if rel > rtol:
        warnings.warn(
            f"reversible coupling: recomputed functions[{i}] differs from the forward pass "
            f"(relative change {rel:.3g} > {rtol:.3g}); the function is non-deterministic or "
            "the inverse lost precision (v too small); gradients are inaccurate",
            RuntimeWarning,
            stacklevel=3,
        )


def _recompute(ctx: Any, i: int, x_i: torch.Tensor, want_grad: bool) -> torch.Tensor:
    """``f_i(x_i)`` again, under the RNG and autocast state of the forward pass."""
    options = ctx.options
    with torch.random.fork_rng(
        devices=[ctx.device] if ctx.device.type == "cuda" else [],
        enabled=options["preserve_rng_state"],
    ):
        if options["preserve_rng_state"]:
            _restore_rng(ctx.rng_states[i], ctx.device)
        with torch.set_grad_enabled(want_grad), torch.autocast(**ctx.autocast):
            f_out = apply_step(ctx.functions[i], x_i, i)
    if options["check_recompute"]:
        _compare_fingerprint(ctx.fingerprints[i], f_out, i, options["check_rtol"])
    return f_out


def _step_grads(
    ctx: Any,
    f_out: torch.Tensor,
    inputs: list[torch.Tensor],
    grad_out: torch.Tensor,
    want_x: bool,
) -> Sequence[torch.Tensor | None]:
    """Gradients of ``<grad_out, f_out>`` w.r.t. ``inputs`` (or, with ``accumulate_grad``,
    only w.r.t. ``x_i``: the parameters' go straight into their ``.grad``)."""
    if not (inputs and f_out.requires_grad):
        return [None] * len(inputs)
    if ctx.options["accumulate_grad"]:
        # Add each parameter's gradient into its .grad as soon as the engine produces it,
        # instead of collecting a full-model copy per step.
        torch.autograd.backward(f_out, grad_tensors=grad_out, inputs=inputs)
        return [inputs[0].grad] if want_x else []
    return torch.autograd.grad(f_out, inputs, grad_outputs=grad_out, allow_unused=True)


class ReversibleCoupling(torch.autograd.Function):
    """Forward without a graph; backward by inversion and per-step recomputation.

    ``apply(functions, options, x, h, v, *params)``; params are passed through ``apply`` so
    that autograd routes their gradients to whatever produced them (leaf parameters or,
    e.g., a schedule computed from raw parameters). ``options``: ``preserve_rng_state``,
    ``check_recompute``, ``check_rtol``, ``accumulate_grad`` (see
    :func:`idm_med.reversible.coupled_sequence`).
    """

    @staticmethod
    def forward(
        ctx: Any,
        functions: Sequence[TensorFn],
        options: dict[str, Any],
        x: torch.Tensor,
        h: torch.Tensor,
        v: torch.Tensor,
        *params: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        device = x.device
        rng_states = []
        fingerprints = []
        for i, f in enumerate(functions):  # grad is disabled inside Function.forward
            if options["preserve_rng_state"]:
                rng_states.append(_rng_state(device))
            fx = apply_step(f, x, i)
            if options["check_recompute"]:
                fingerprints.append(_fingerprint(fx))
            x, h = (1 - v[i]) * fx + v[i] * h, x
        if len(functions) == 1:  # h_1 would be the input x itself: outputs must be new
            h = h.clone()
        ctx.functions = functions
        ctx.options = options
        ctx.device = device
        # The engine runs backward outside any autocast region: record it for the replay.
        ctx.autocast = {
            "device_type": device.type,
            "enabled": torch.is_autocast_enabled(device.type),
            "dtype": torch.get_autocast_dtype(device.type),
        }
        ctx.rng_states = rng_states
        ctx.fingerprints = fingerprints
        # Inputs (not activations): kept as attributes so saved-tensor hooks count only
        # the two output states, and recomputation uses the very tensors f_i captures.
        ctx.params = params
        ctx.save_for_backward(x, h, v)
        return x, h

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_x: torch.Tensor, g_h: torch.Tensor) -> tuple[Any, ...]:
        x_next, h_next, v = ctx.saved_tensors
        params = ctx.params
        accumulate = ctx.options["accumulate_grad"]
        need_x, need_h, need_v = ctx.needs_input_grad[2:5]
        grad_params: list[torch.Tensor | None] = [None] * len(params)
        grad_v: list[torch.Tensor] = [v.new_zeros(())] * len(ctx.functions)
        # Indices into params whose gradient is wanted; others are skipped in autograd.grad.
        wanted = [j for j, need in enumerate(ctx.needs_input_grad[5:]) if need]

        for i in reversed(range(len(ctx.functions))):
            v_i = v[i]
            u_i = 1 - v_i
            want_x = i > 0 or need_x  # x_0's grad matters only to the caller
            x_i = h_next.detach().requires_grad_(want_x)
            inputs = ([x_i] if want_x else []) + [params[j] for j in wanted]
            f_out = _recompute(ctx, i, x_i, bool(inputs))
            f_val = f_out.detach()
            h_i = (x_next - u_i * f_val) / v_i  # the inverse step
            grads = _step_grads(ctx, f_out, inputs, u_i * g_x, want_x)
            if need_v:
                grad_v[i] = (g_x * (h_i - f_val)).sum()
            offset = 1 if want_x else 0
            if not accumulate:
                for k, j in enumerate(wanted):
                    g = grads[offset + k]
                    if g is not None:
                        grad_params[j] = g if grad_params[j] is None else grad_params[j].add_(g)
            g_fx = grads[0] if want_x else None
            # Chain rule through the coupling (see the module docstring).
            g_x, g_h = (g_h if g_fx is None else g_h + g_fx), v_i * g_x
            x_next, h_next = x_i.detach(), h_i

        out_v = torch.stack(grad_v).to(v.dtype) if need_v else None
        return (
            None,
            None,
            g_x if need_x else None,
            g_h if need_h else None,
            out_v,
            *grad_params,
        )
