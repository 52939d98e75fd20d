r"""DDNM: training-free reconstruction with a pretrained diffusion prior (the baseline IDM
starts from), on diffusers' DDIM scheduler.

DDNM (Wang et al., 2023) runs a prior ``ε_θ(x_t, t)`` for ``steps`` DDIM steps and, at every
step, replaces the range-space part of the denoised estimate by the measurement:

.. math::

    x_{0|t} &= (x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon_\theta(x_t, t)) / \sqrt{\bar\alpha_t}\\
    \bar x_{0|t} &= x_{0|t} - A^\dagger(A x_{0|t} - y)\\
    x_{t'} &= \text{DDIM step from } \bar x_{0|t} \text{ and } \varepsilon_\theta
        \text{ with } \eta

The DDIM step is diffusers' ``DDIMScheduler.step`` on the prior's training schedule (fed the
sample whose clean estimate is :math:`\bar x_{0|t}`); ``η`` is DDIM's (0: deterministic,
1: DDPM-like ancestral noise). The last step lands on ᾱ = 1 and returns the projected
estimate, so ``A x̂ = y`` for noiseless ``y`` up to the pseudo-inverse's accuracy. With a
noise level (``noise_sigma``) the hard projection is replaced by the noise-aware
data-consistency step (:func:`idm_med.operators.noise_aware_projection`).

``prior`` is a diffusers ``UNet2DModel``, an SD-layout ``UNet2DConditionModel`` prior (run
with its null context, see :mod:`idm_med.prior`) or any callable ``ε(x, t)``; a 1-channel
prior serves 2-channel complex MRI channel by channel (:func:`idm_med.sampling.denoiser`).
Images are in the prior's data range (``[0, 1]``, or complex with ``|x| ≤ 1``), which is
the range idm-med's pipelines use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from diffusers import SchedulerMixin
from torch import nn
from tqdm.auto import tqdm

from .operators import noise_aware_projection, range_null_space_projection
from .prior import default_scheduler
from .sampling import denoiser, make_scheduler, timestep

logger = logging.getLogger(__name__)


@torch.no_grad()
def ddnm_sample(
    y: torch.Tensor,
    operator: nn.Module,
    prior: nn.Module | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    steps: int = 100,
    eta: float = 0.85,
    scheduler: SchedulerMixin | None = None,
    noise_sigma: float = 0.0,
    seed: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """Run DDNM: ``y`` ``(B, *measurement_shape)`` → ``x̂`` ``(B, *operator.image_shape)``.

    Args:
        y: measurements.
        operator: any :class:`idm_med.operators.Operator` (uses ``A`` and ``A_pinv``).
        prior: timestep-conditioned noise estimator ``ε(x, t)`` (a prior UNet of
            :mod:`idm_med.prior`, small or SD layout, or a callable).
        steps: number of DDIM steps (100 in DDNM).
        eta: DDIM's η in ``[0, 1]`` (DDNM's default 0.85).
        scheduler: the prior's training scheduler (default: DDPM's linear schedule, the
            one :mod:`idm_med.prior` trains with).
        noise_sigma: standard deviation of the measurement noise; when > 0 the hard
            projection becomes :func:`~idm_med.operators.noise_aware_projection` with the
            estimate's own uncertainty ``sqrt((1 - ᾱ_t) / ᾱ_t)`` as its prior σ (DDNM+).
        seed: seeds ``x_T`` and the per-step noise (reproducible runs).
        progress: show a tqdm progress bar.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    y = operator.check_measurement(y, "y")
    shape = (y.shape[0], *operator.image_shape)
    sched = make_scheduler("ddim", scheduler or default_scheduler(), steps)
    eps_fn = denoiser(prior, shape[1])
    abar = sched.alphas_cumprod.to(torch.float64)
    gen = torch.Generator(device=y.device).manual_seed(int(seed))
    x = torch.randn(shape, generator=gen, device=y.device, dtype=y.dtype)
    x0 = x
    for t in tqdm(sched.timesteps, disable=not progress, desc="DDNM"):
        eps = eps_fn(x, timestep(t, shape[0], y.device)).to(y.dtype)
        a_t = float(abar[int(t)])
        x0 = (x - (1.0 - a_t) ** 0.5 * eps) / a_t**0.5
        if noise_sigma > 0:
            sigma_x = max(((1.0 - a_t) / a_t) ** 0.5, 1e-6)
            x0 = noise_aware_projection(x0, y, operator, noise_sigma, sigma_x)
        else:
            x0 = range_null_space_projection(x0, y, operator)
        # The sample whose clean estimate is the projected x0, for diffusers' DDIM step.
        x_bar = a_t**0.5 * x0 + (1.0 - a_t) ** 0.5 * eps
        x = sched.step(eps, t, x_bar, eta=eta, generator=gen).prev_sample
    return x0  # the last step lands on ᾱ = 1: its projected estimate is the result
