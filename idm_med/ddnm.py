r"""Training-free DDNM sampler (the baseline IDM starts from), with a pluggable noise estimator.

DDNM (Wang et al., 2023) runs a pretrained diffusion model for ``steps`` DDIM-style steps
and, at every step, replaces the range-space part of the denoised estimate by the
measurement. With ``ᾱ`` from a ``num_train_timesteps``-step linear β schedule and the
time steps ``τ_k = k · num_train_timesteps / steps`` (``k = steps-1, ..., 0``):

.. math::

    x_0 &= (x_\tau - \sqrt{1-\bar\alpha_\tau}\,\varepsilon) / \sqrt{\bar\alpha_\tau}, \qquad
    \bar x_0 = x_0 - A^\dagger(A x_0 - y)\\
    x_{\tau'} &= \sqrt{\bar\alpha_{\tau'}}\,\bar x_0
        + \sqrt{1-\bar\alpha_{\tau'}}\,\bigl(\eta\, z + \sqrt{1-\eta^2}\,\varepsilon\bigr),
        \qquad z \sim \mathcal N(0, I)

with ``τ'`` the next (smaller) time step and ``ᾱ = 1`` after the last one, so the result is
the last projected estimate (``A x̂ = y`` up to the operator's pseudo-inverse accuracy).
The start ``x_T`` is Gaussian noise drawn from a seeded generator, as is ``z``. This is
DDNM's own parameterisation of ``η`` (the share of fresh noise in the re-noising term).

**Timestep.** IDM's noise estimators take no timestep. Called with one of them this sampler
is a *timing baseline* (100 network evaluations at the cost DDNM would pay), not a faithful
DDNM reconstruction. Pass ``timestep_conditioned=True`` with an estimator
``estimator(x, t)`` (e.g. a diffusers ``UNet2DModel`` trained on the same schedule) for the
real method.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .operators import range_null_space_projection

logger = logging.getLogger(__name__)


def linear_alphas_cumprod(
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> torch.Tensor:
    """``ᾱ_τ = ∏_{s ≤ τ} (1 - β_s)`` for a linear β schedule; ``(num_train_timesteps,)`` float64."""
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, 0)


def _estimate(
    estimator: Callable, x: torch.Tensor, t: int, timestep_conditioned: bool
) -> torch.Tensor:
    if not timestep_conditioned:
        return estimator(x)
    out = estimator(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
    return getattr(out, "sample", out)  # diffusers models return an output dataclass


@torch.no_grad()
def ddnm_sample(
    y: torch.Tensor,
    operator: nn.Module,
    estimator: Callable[..., torch.Tensor],
    *,
    steps: int = 100,
    eta: float = 0.85,
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    seed: int = 0,
    timestep_conditioned: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Run DDNM: ``y`` ``(B, *measurement_shape)`` → ``x̂`` ``(B, *operator.image_shape)``.

    Args:
        y: measurements.
        operator: any :class:`idm_med.operators.Operator` (uses ``A`` and ``A_pinv``).
        estimator: ``estimator(x) -> ε`` (same shape), or ``estimator(x, t)`` when
            ``timestep_conditioned`` (see the module docstring).
        steps: number of sampling steps (must divide into ``num_train_timesteps``).
        eta: share of fresh noise in ``[0, 1]`` (DDNM's η).
        num_train_timesteps, beta_start, beta_end: the linear β schedule.
        seed: seeds the generator for ``x_T`` and the per-step noise (reproducible runs).
        timestep_conditioned: call ``estimator(x, t)`` with integer timesteps ``(B,)``.
        progress: show a tqdm progress bar.
    """
    if steps < 1 or steps > num_train_timesteps:
        raise ValueError(f"steps must lie in [1, {num_train_timesteps}], got {steps}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    y = operator.check_measurement(y, "y")
    abar_all = linear_alphas_cumprod(num_train_timesteps, beta_start, beta_end)
    skip = num_train_timesteps // steps
    taus = list(range(0, num_train_timesteps, skip))[:steps]
    gen = torch.Generator(device=y.device).manual_seed(int(seed))
    shape = (y.shape[0], *operator.image_shape)
    x = torch.randn(shape, generator=gen, device=y.device, dtype=y.dtype)
    for k in tqdm(range(len(taus) - 1, -1, -1), disable=not progress, desc="DDNM"):
        tau = taus[k]
        a_t = float(abar_all[tau])
        a_next = float(abar_all[taus[k - 1]]) if k > 0 else 1.0
        eps = _estimate(estimator, x, tau, timestep_conditioned)
        x0 = (x - (1.0 - a_t) ** 0.5 * eps) / a_t**0.5
        x0 = range_null_space_projection(x0, y, operator)
        if k == 0:
            x = x0  # ᾱ = 1 after the last step
            break
        noise = torch.randn(shape, generator=gen, device=y.device, dtype=y.dtype)
        sigma = (1.0 - a_next) ** 0.5
        x = a_next**0.5 * x0 + sigma * (eta * noise + (1.0 - eta**2) ** 0.5 * eps)
    return x
