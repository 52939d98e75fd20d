"""Measurement noise (idm_med.acquisition) and the noise-aware data-consistency step."""

from __future__ import annotations

import math

import pytest
import torch

from idm_med.acquisition import add_kspace_noise, add_poisson_noise
from idm_med.operators import make_operator, noise_aware_projection, range_null_space_projection


def test_kspace_noise_is_seeded_complex_gaussian_on_measured_columns():
    op = make_operator("mri", image_size=64, acceleration=4, center_fraction=0.08).double()
    y = op.A(torch.randn(4, *op.image_shape, dtype=torch.float64))
    sigma = 0.3
    noisy, record = add_kspace_noise(y, sigma, seed=11, mask=op.mask)
    again, _ = add_kspace_noise(y, sigma, seed=11, mask=op.mask)
    other, _ = add_kspace_noise(y, sigma, seed=12, mask=op.mask)
    assert torch.equal(noisy, again) and not torch.equal(noisy, other)
    assert record.as_dict() == {"kind": "kspace_gaussian", "seed": 11, "sigma": sigma}
    noise = noisy - y
    assert float(noise[..., ~op.mask].abs().max()) == 0.0  # unmeasured columns stay zero
    n = noise[..., op.mask]  # (B, 2, H, K) real and imaginary parts
    power = n.pow(2).sum(dim=1).flatten()  # |n|² per complex sample
    se = float(power.std()) / math.sqrt(power.numel())
    assert abs(float(power.mean()) - sigma**2) < 4 * se  # E|n|² = σ²
    assert abs(float((n[:, 0] * n[:, 1]).mean())) < 4 * sigma**2 / 2 / math.sqrt(n[:, 0].numel())
    # Without a mask, noise goes where y is measured (nonzero).
    assert torch.equal(add_kspace_noise(y, sigma, seed=11)[0], noisy)
    with pytest.raises(ValueError, match="sigma"):
        add_kspace_noise(y, -1.0, seed=0)


@pytest.mark.parametrize("I0", [1e3, 1e5])
def test_poisson_noise_has_the_photon_statistics(I0):
    p = torch.linspace(0.5, 3.0, 6, dtype=torch.float64).repeat(20000, 1)
    noisy, record = add_poisson_noise(p, I0, seed=3)
    assert record.as_dict() == {"kind": "ct_poisson", "seed": 3, "I0": I0}
    assert torch.equal(noisy, add_poisson_noise(p, I0, seed=3)[0])
    # Delta method: E p̃ ≈ p + e^p/(2 I0), Var p̃ ≈ e^p / I0.
    expected_var = torch.exp(p[0]) / I0
    var = noisy.var(dim=0)
    assert torch.allclose(var, expected_var, rtol=0.15)
    bias = noisy.mean(dim=0) - p[0]
    std_err = (expected_var / p.shape[0]).sqrt()
    assert bool(((bias - expected_var / 2).abs() < 4 * std_err + 0.2 * expected_var).all())
    with pytest.raises(ValueError, match="I0"):
        add_poisson_noise(p, 0.0, seed=0)


def _errors(sigmas, trials: int = 4):
    """Mean squared errors of the plain and noise-aware steps vs the true image."""
    op = make_operator("mri", image_size=32, acceleration=4, center_fraction=0.125).double()
    prior_sigma = 0.1
    plain, aware = [], []
    for sigma in sigmas:
        e_plain = e_aware = 0.0
        for t in range(trials):
            g = torch.Generator().manual_seed(t)
            x_true = torch.randn(1, *op.image_shape, generator=g, dtype=torch.float64)
            error = torch.randn(x_true.shape, generator=g, dtype=torch.float64)
            estimate = x_true + prior_sigma * error
            y, _ = add_kspace_noise(op.A(x_true), sigma, seed=100 + t, mask=op.mask)
            # σ per real channel is σ/√2 (E|n|² = σ² per complex sample).
            a = noise_aware_projection(estimate, y, op, sigma / math.sqrt(2), prior_sigma)
            p = range_null_space_projection(estimate, y, op)
            e_plain += float((p - x_true).pow(2).mean()) / trials
            e_aware += float((a - x_true).pow(2).mean()) / trials
        plain.append(e_plain)
        aware.append(e_aware)
    return plain, aware


def test_noise_aware_step_beats_the_plain_one_and_error_grows_smoothly():
    sigmas = [0.0, 0.05, 0.1, 0.15, 0.2, 0.3]
    plain, aware = _errors(sigmas)
    assert aware[0] == pytest.approx(plain[0], rel=1e-12)  # σ = 0: the plain step
    for s, p, a in zip(sigmas[1:], plain[1:], aware[1:], strict=True):
        assert a < p, f"sigma={s}: noise-aware {a:.3e} not below plain {p:.3e}"
    # The plain step passes the noise through A†: its excess error is ∝ σ² (smooth).
    excess = [(p - plain[0]) / s**2 for s, p in zip(sigmas[1:], plain[1:], strict=True)]
    assert max(excess) / min(excess) < 1.3
    assert all(b > a for a, b in zip(plain, plain[1:], strict=False))
    assert all(b > a for a, b in zip(aware, aware[1:], strict=False))


def test_noise_aware_projection_validates_levels():
    op = make_operator("inpainting", image_size=8, missing_ratio=0.5)
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match="prior_sigma"):
        noise_aware_projection(x, op.A(x), op, 0.1, 0.0)
