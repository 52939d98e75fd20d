"""MRI specifics: fastMRI column masks, centred FFT convention, single-coil and SENSE maps.

The generic contract (shapes, dtypes, errors) is covered by test_operator_contract.py.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from idm_med.operators import make_operator, noise_aware_projection
from idm_med.operators.mri import MRI, channels_to_complex, complex_to_channels, fft2c, ifft2c
from idm_med.operators.mri_masks import (
    EquiSpacedMaskFunc,
    RandomMaskFunc,
    center_columns,
    column_mask,
    equispaced_column_mask,
    num_center_columns,
    random_column_mask,
    seed_from_filename,
)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def smooth_coil_maps(num_coils: int, height: int, width: int) -> torch.Tensor:
    """Complex (Ncoil, H, W) maps: Gaussian bumps centred on a ring outside the field of
    view, each with its own linear phase, normalised so that Σ_c |S_c|² = 1."""
    yy, xx = torch.meshgrid(
        torch.linspace(-1, 1, height, dtype=torch.float64),
        torch.linspace(-1, 1, width, dtype=torch.float64),
        indexing="ij",
    )
    maps = []
    for c in range(num_coils):
        angle = 2 * math.pi * c / num_coils
        cy, cx = 1.2 * math.sin(angle), 1.2 * math.cos(angle)
        magnitude = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 1.5)
        phase = torch.exp(1j * (math.pi * (0.3 * xx + 0.2 * yy) + angle))
        maps.append(magnitude * phase)
    maps = torch.stack(maps)
    return maps / maps.abs().pow(2).sum(0).sqrt()


def dense_matrix(op: MRI) -> torch.Tensor:
    """The real matrix of ``op.A`` (float64), shape (prod(measurement), prod(image))."""
    n = math.prod(op.image_shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *op.image_shape)
    return op.double().A(basis).reshape(n, -1).T


# ------------------------------------------------------------------------------ masks
def fastmri_random_reference(width, acc, cf, seed) -> np.ndarray:
    """fastMRI RandomMaskFunc, restated independently (one (cf, acc) choice)."""
    rng = np.random.RandomState(seed)
    rng.randint(0, 1)  # choose_acceleration among a single option
    num_low = round(width * cf)
    prob = (width / acc - num_low) / (width - num_low)
    mask = rng.uniform(size=width) < prob
    pad = (width - num_low + 1) // 2
    mask[pad : pad + num_low] = True
    return mask


def fastmri_equispaced_reference(width, acc, cf, seed) -> np.ndarray:
    """fastMRI's original EquiSpacedMaskFunc (spacing adjusted for the centre)."""
    rng = np.random.RandomState(seed)
    rng.randint(0, 1)
    num_low = round(width * cf)
    mask = np.zeros(width, dtype=bool)
    pad = (width - num_low + 1) // 2
    mask[pad : pad + num_low] = True
    adjusted = acc * (num_low - width) / (num_low * acc - width)
    offset = rng.randint(0, round(adjusted))
    mask[np.around(np.arange(offset, width - 1, adjusted)).astype(np.uint)] = True
    return mask


@pytest.mark.parametrize("width", [37, 64, 320])
@pytest.mark.parametrize("acc,cf", [(4, 0.08), (8, 0.04), (3, 0.1)])
def test_masks_match_fastmri_reference(width, acc, cf):
    for seed in (0, 7, seed_from_filename("file1000001.h5")):
        got = random_column_mask(width, acc, cf, seed)
        assert got.dtype == torch.bool and got.shape == (width,)
        assert np.array_equal(got.numpy(), fastmri_random_reference(width, acc, cf, seed))
        got = equispaced_column_mask(width, acc, cf, seed)
        assert np.array_equal(got.numpy(), fastmri_equispaced_reference(width, acc, cf, seed))


@pytest.mark.parametrize("mask_type", ["random", "equispaced"])
@pytest.mark.parametrize("width,cf", [(64, 0.08), (368, 0.04), (33, 0.125), (320, 0.5)])
def test_center_is_fully_sampled(mask_type, width, cf):
    num_low = round(width * cf)
    assert num_center_columns(width, cf) == num_low
    centre = center_columns(width, cf)
    assert centre.stop - centre.start == num_low and centre.start <= width // 2 < centre.stop
    for seed in range(5):
        mask = column_mask(mask_type, width, 4, cf, seed)
        assert bool(mask[centre].all())


def test_random_mask_mean_fraction_is_one_over_acceleration():
    """E[#sampled] = W/acc exactly; over 300 seeds the mean count is within 4 standard
    errors of it (outer columns are Bernoulli(p) and independent)."""
    width, acc, cf, n = 128, 4, 0.08, 300
    counts = torch.tensor([float(random_column_mask(width, acc, cf, s).sum()) for s in range(n)])
    num_low = round(width * cf)
    p = (width / acc - num_low) / (width - num_low)
    std_err = math.sqrt((width - num_low) * p * (1 - p) / n)
    assert abs(float(counts.mean()) - width / acc) < 4 * std_err
    assert float(counts.std()) > 0  # really random across seeds


@pytest.mark.parametrize("width", [64, 128, 320, 368])
@pytest.mark.parametrize("acc,cf", [(4, 0.08), (8, 0.04), (2, 0.16)])
def test_equispaced_acceleration_is_nearly_exact(width, acc, cf):
    for seed in range(6):
        mask = equispaced_column_mask(width, acc, cf, seed)
        assert abs(int(mask.sum()) - width / acc) <= 2
        # Outside the centre, sampled columns are equally spaced (up to rounding).
        outer = torch.ones(width, dtype=torch.bool)
        outer[center_columns(width, cf)] = False
        idx = torch.nonzero(mask & outer).flatten()
        lo = idx[idx < width // 2]
        if len(lo) > 2:
            gaps = lo.diff()
            assert int(gaps.max() - gaps.min()) <= 1


def test_seeds_are_reproducible_and_file_specific():
    a = random_column_mask(256, 4, 0.08, seed_from_filename("/data/a/file1000001.h5"))
    b = random_column_mask(256, 4, 0.08, seed_from_filename("elsewhere/file1000001.h5"))
    c = random_column_mask(256, 4, 0.08, seed_from_filename("file1000002.h5"))
    assert torch.equal(a, b)  # only the base name matters
    assert not torch.equal(a, c)
    assert seed_from_filename("file1.h5") == tuple(map(ord, "file1.h5"))
    assert torch.equal(random_column_mask(64, 4, 0.08, 3), random_column_mask(64, 4, 0.08, 3))
    assert not torch.equal(random_column_mask(64, 4, 0.08, 3), random_column_mask(64, 4, 0.08, 4))


def test_mask_edge_cases():
    assert bool(random_column_mask(40, 1, 0.1, 0).all())  # acceleration 1 samples all
    assert bool(equispaced_column_mask(40, 1, 0.1, 0).all())
    for fn in (random_column_mask, equispaced_column_mask):
        full = fn(40, 4, 1.0, 0)  # centre covers everything
        assert bool(full.all())
        centre_only = fn(40, 4, 0.5, 0)  # centre exceeds W/acc: no outer columns
        assert int(centre_only.sum()) == 20


def test_mask_errors():
    with pytest.raises(ValueError, match="acceleration"):
        random_column_mask(64, 0.5, 0.08)
    with pytest.raises(ValueError, match="center_fraction"):
        random_column_mask(64, 4, 0.0)
    with pytest.raises(ValueError, match="center_fraction"):
        equispaced_column_mask(64, 4, 1.5)
    with pytest.raises(ValueError, match="mask_type"):
        column_mask("radial", 64, 4, 0.08)
    with pytest.raises(ValueError, match="seed"):
        random_column_mask(64, 4, 0.08, seed=-1)
    with pytest.raises(ValueError, match="seed"):
        random_column_mask(64, 4, 0.08, seed="file.h5")
    with pytest.raises(ValueError, match="width"):
        random_column_mask(0, 4, 0.08)


# --------------------------------------------------------------------- FFT convention
def test_centred_fft_matches_numpy_and_is_unitary():
    z = torch.randn(3, 33, 30, dtype=torch.complex128)  # odd size catches shift mix-ups
    ref = np.fft.fftshift(
        np.fft.fft2(np.fft.ifftshift(z.numpy(), axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )
    assert np.abs(fft2c(z).numpy() - ref).max() < 1e-12
    assert rel_err(ifft2c(fft2c(z)), z) < 1e-14
    assert abs(float(fft2c(z).norm() / z.norm()) - 1) < 1e-14
    # A constant image puts all its energy in the DC sample at (H//2, W//2).
    k = fft2c(torch.ones(33, 30, dtype=torch.complex128))
    assert abs(complex(k[16, 15]) - math.sqrt(33 * 30)) < 1e-10
    assert float(k.abs().sum()) - math.sqrt(33 * 30) < 1e-9


def test_channel_layout_round_trip():
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64)
    z = channels_to_complex(x)
    assert z.dtype == torch.complex128 and z.shape == (2, 5, 6)
    assert torch.equal(z.real, x[:, 0]) and torch.equal(z.imag, x[:, 1])
    assert torch.equal(complex_to_channels(z), x)
    assert channels_to_complex(x.float()).dtype == torch.complex64


# ------------------------------------------------------------------------ single coil
SINGLE = [
    dict(image_size=(33, 31), acceleration=4, center_fraction=0.1),
    dict(image_size=32, acceleration=3, center_fraction=0.08, mask_type="equispaced", seed=5),
]


@pytest.mark.parametrize("kwargs", SINGLE)
def test_single_coil_measures_the_masked_centred_fft(kwargs):
    """MRI specifics (the generic identities are in test_operator_contract.py)."""
    op = MRI(**kwargs).double()
    x = torch.randn(3, *op.image_shape, dtype=torch.float64)
    y = torch.randn(3, *op.measurement_shape, dtype=torch.float64)
    assert torch.equal(op.A_pinv(y), op.At(y))  # partial isometry: A† = Aᴴ
    # Measurements are zero outside the sampled columns and equal the centred FFT inside.
    k = channels_to_complex(op.A(x))
    assert float(k[..., ~op.mask].abs().max()) == 0.0
    full = fft2c(channels_to_complex(x))
    assert rel_err(k[..., op.mask], full[..., op.mask]) < 1e-14
    # ‖A x‖² = ‖M F x‖² and the projection has rank 2·H·|M| (trace of AtA).
    n_cols = int(op.mask.sum())
    assert abs(float(dense_matrix(op).pow(2).sum()) - 2 * op.image_shape[1] * n_cols) < 1e-8


def test_single_coil_dtypes_and_half_precision():
    op = MRI(16, acceleration=2, center_fraction=0.25)
    x = torch.randn(1, 2, 16, 16)
    assert op.A(x).dtype == torch.float32
    ref = op.double().A(x.double())
    assert rel_err(op.A(x).double(), ref) < 1e-6
    assert op.A(x.double()).dtype == torch.float64
    xb = x.to(torch.bfloat16)
    out = op.A(xb)
    assert out.dtype == torch.bfloat16 and rel_err(out.double(), ref) < 1e-2


def test_diagnostics_and_buffers():
    op = MRI(64, acceleration=4, center_fraction=0.08, seed=2)
    assert op.acceleration_achieved == pytest.approx(64 / int(op.mask.sum()))
    assert op.sampled_fraction == pytest.approx(int(op.mask.sum()) / 64)
    assert set(op.state_dict()) == {"mask"}
    op.double()
    assert op.mask.dtype == torch.bool
    empty = MRI(8, mask=torch.zeros(8))
    assert empty.acceleration_achieved == math.inf
    assert float(empty.A_pinv(torch.randn(1, 2, 8, 8)).abs().max()) == 0.0


def test_explicit_mask_travels_in_the_state_not_the_config():
    mask = torch.zeros(24, dtype=torch.bool)
    mask[::3] = True
    op = MRI((16, 24), mask=mask.int())
    assert torch.equal(op.mask, mask)
    config = json.loads(json.dumps(op.config))
    assert config["explicit_mask"] is True and "mask" not in config
    rebuilt = make_operator(**config)
    with pytest.raises(RuntimeError, match="has no mask yet"):
        rebuilt.A(torch.randn(1, *op.image_shape))
    rebuilt.load_state_dict(op.state_dict())
    assert torch.equal(rebuilt.mask, mask) and rebuilt.config == op.config
    # The fastMRI file seed survives a JSON round trip (tuple -> list).
    op = MRI(32, seed=seed_from_filename("file1000001.h5"), mask_type="equispaced")
    assert torch.equal(make_operator(**json.loads(json.dumps(op.config))).mask, op.mask)
    assert not torch.equal(MRI(32, seed=seed_from_filename("file2.h5")).mask, MRI(32).mask)


def test_mask_funcs_are_fastmri_style_generators():
    func = RandomMaskFunc(center_fraction=0.08, acceleration=4)
    seed = seed_from_filename("file1000001.h5")
    assert torch.equal(func(64, seed), random_column_mask(64, 4, 0.08, seed))
    assert torch.equal(func(64, seed), func(64, seed))  # reseeded per call
    eq = EquiSpacedMaskFunc(0.08, 4)
    assert torch.equal(eq(64, 3), equispaced_column_mask(64, 4, 0.08, 3))
    assert "acceleration=4.0" in repr(eq)


def test_update_swaps_parameters_in_place():
    """One operator serves a whole volume / training run: update() equals a fresh build."""
    maps = smooth_coil_maps(3, 16, 16)
    op = MRI(16, acceleration=4, center_fraction=0.125).double()
    x = torch.randn(1, *op.image_shape, dtype=torch.float64)
    assert op.update(seed=7) is op
    fresh = MRI(16, acceleration=4, center_fraction=0.125, seed=7).double()
    assert torch.equal(op.A(x), fresh.A(x)) and op.config == fresh.config
    op.update(coil_maps=maps)
    assert op.measurement_shape == (3, 2, 16, 16) and op.config["num_coils"] == 3
    first = op.A_pinv(op.A(x))
    op.update(seed=8)  # the cached SENSE factor must follow the mask
    fresh = MRI(16, acceleration=4, center_fraction=0.125, seed=8, coil_maps=maps).double()
    y = fresh.A(x)
    assert torch.equal(op.A(x), y)
    assert rel_err(op.A_pinv(y), fresh.A_pinv(y)) < 1e-12
    assert rel_err(op.A_pinv(y), first) > 1e-6
    op.update(coil_maps=None)
    assert op.measurement_shape == (2, 16, 16) and op.config["num_coils"] is None
    with pytest.raises(ValueError, match="not both"):
        op.update(mask=torch.ones(16), seed=1)


def test_coil_maps_from_state_only():
    op = MRI(16, coil_maps=smooth_coil_maps(2, 16, 16))
    rebuilt = make_operator(**op.config)
    assert rebuilt.measurement_shape == op.measurement_shape
    with pytest.raises(RuntimeError, match="has no coil_maps yet"):
        rebuilt.A_pinv(torch.randn(1, *op.measurement_shape))
    rebuilt.load_state_dict(op.state_dict())
    y = torch.randn(1, *op.measurement_shape)
    assert torch.equal(rebuilt.A_pinv(y), op.A_pinv(y))
    with pytest.raises(ValueError, match="num_coils"):
        MRI(16, num_coils=0)


def test_operator_errors():
    with pytest.raises(ValueError, match=r"mask must have shape \(24,\)"):
        MRI((16, 24), mask=torch.ones(16, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be boolean"):
        MRI(8, mask=torch.full((8,), 0.5))
    with pytest.raises(ValueError, match="acceleration"):
        MRI(16, acceleration=0.9)
    with pytest.raises(ValueError, match="center_fraction"):
        MRI(16, center_fraction=0)
    with pytest.raises(ValueError, match="mask_type"):
        MRI(16, mask_type="poisson")
    with pytest.raises(ValueError, match="coil_maps must have shape"):
        MRI(16, coil_maps=torch.ones(4, 16, 15, dtype=torch.complex64))
    with pytest.raises(ValueError, match="coil_maps must have shape"):
        MRI(16, coil_maps=torch.ones(4, 16, 16))  # real maps need the (Ncoil, 2, H, W) layout
    with pytest.raises(ValueError, match="pinv_rtol"):
        MRI(16, coil_maps=torch.ones(1, 16, 16, dtype=torch.complex64), pinv_rtol=0)
    op = MRI(16, coil_maps=smooth_coil_maps(3, 16, 16))
    with pytest.raises(ValueError, match=r"y must have measurement shape \(B, 3, 2, 16, 16\)"):
        op.At(torch.randn(1, 2, 16, 16))


# ------------------------------------------------------------------------ multi-coil
def sense_op(size=32, coils=4, **kwargs) -> MRI:
    kwargs = dict(acceleration=4, center_fraction=0.08) | kwargs
    return MRI(size, coil_maps=smooth_coil_maps(coils, size, size), **kwargs).double()


def test_sense_adjoint_and_layouts():
    op = sense_op(acceleration=2, mask_type="equispaced")
    assert op.measurement_shape == (4, 2, 32, 32) and op.num_coils == 4
    x = torch.randn(2, *op.image_shape, dtype=torch.float64)
    ax = op.A(x)
    # Per coil: A x = M F (S_c x).
    maps = smooth_coil_maps(4, 32, 32)
    k = fft2c(maps * channels_to_complex(x)[:, None]) * op.mask
    assert rel_err(channels_to_complex(ax), k) < 1e-14
    # Real-layout maps give the same operator; op.double()/float() cast them.
    real_maps = MRI(32, coil_maps=complex_to_channels(maps), mask=op.mask).double()
    assert torch.equal(real_maps.A(x), ax)
    assert real_maps.float().coil_maps.dtype == torch.float32
    # Half precision: the solve runs in float64 and the result is cast back.
    out = real_maps.A_pinv(ax.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and rel_err(out.double(), op.A_pinv(ax)) < 2e-2


@pytest.mark.parametrize("acceleration,center_fraction", [(4, 0.08), (8, 0.04)])
@pytest.mark.parametrize("coils", [2, 4])
def test_sense_pinv_matches_the_dense_pseudo_inverse(acceleration, center_fraction, coils):
    """Against torch.linalg.pinv of the dense real matrix with the same relative cutoff,
    for y in and outside the range (random masks, smooth maps: badly conditioned)."""
    op = sense_op(size=16, coils=coils, acceleration=acceleration, center_fraction=center_fraction)
    pinv = torch.linalg.pinv(dense_matrix(op), rtol=op.config["pinv_rtol"])
    for y in (
        op.A(torch.randn(2, *op.image_shape, dtype=torch.float64)),
        torch.randn(2, *op.measurement_shape, dtype=torch.float64),
    ):
        ref = (pinv @ y.reshape(2, -1).T).T.reshape(2, *op.image_shape)
        assert rel_err(op.A_pinv(y), ref) < 1e-8


@pytest.mark.parametrize("acceleration", [4, 8])
def test_sense_pinv_with_maps_zero_outside_the_object(acceleration):
    """ESPIRiT maps vanish outside the object: the factor restricts each row to its
    support (rows in chunks of different widths, empty rows included) and must still be
    the dense pseudo-inverse."""
    size = 24
    yy, xx = torch.meshgrid(
        torch.linspace(-1, 1, size, dtype=torch.float64),
        torch.linspace(-1, 1, size, dtype=torch.float64),
        indexing="ij",
    )
    inside = (xx / 0.9) ** 2 + (yy / 0.8) ** 2 <= 1  # an ellipse: widths vary by row
    assert not inside[0].any() and inside[size // 2].sum() > inside[3].sum() > 0
    maps = smooth_coil_maps(4, size, size) * inside
    op = MRI(size, coil_maps=maps, acceleration=acceleration, center_fraction=0.08).double()
    pinv = torch.linalg.pinv(dense_matrix(op), rtol=op.config["pinv_rtol"])
    y = torch.randn(2, *op.measurement_shape, dtype=torch.float64)
    ref = (pinv @ y.reshape(2, -1).T).T.reshape(2, *op.image_shape)
    out = op.A_pinv(y)
    assert rel_err(out, ref) < 1e-8
    assert torch.equal(out[..., ~inside], torch.zeros_like(out[..., ~inside]))


@pytest.mark.parametrize("acceleration,center_fraction", [(4, 0.08), (8, 0.04)])
def test_sense_AtA_is_idempotent_at_default_settings(acceleration, center_fraction):
    op = sense_op(size=48, coils=8, acceleration=acceleration, center_fraction=center_fraction)
    x = torch.randn(2, *op.image_shape, dtype=torch.float64)
    p = op.AtA(x)
    assert rel_err(op.AtA(p), p) < 1e-6
    y = op.A(x)
    assert rel_err(op.A(op.A_pinv(y)), y) < 1e-5
    # Minimum-norm least squares for y outside the range: the normal equations hold.
    y_out = torch.randn_like(y)
    assert rel_err(op.At(op.A(op.A_pinv(y_out))), op.At(y_out)) < 1e-5


def test_sense_full_sampling_is_an_isometry():
    """With Σ_c|S_c|² = 1 and every column sampled, AᴴA = I, so A† A = I."""
    op = sense_op(size=16, coils=3, mask=torch.ones(16, dtype=torch.bool))
    x = torch.randn(2, *op.image_shape, dtype=torch.float64)
    assert abs(float(op.A(x).norm() / x.norm()) - 1) < 1e-12
    assert rel_err(op.AtA(x), x) < 1e-10


def test_sense_pinv_gradcheck():
    """A† is a fixed linear map: autograd's gradient is exact (finite differences)."""
    op = sense_op(size=8, coils=2, center_fraction=0.25)
    y = torch.randn(1, *op.measurement_shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op.A_pinv, (y,), eps=1e-6, atol=1e-7)


def test_sense_damped_pinv_gradcheck_in_the_damping():
    """A learned σ_x reaches SENSE's damped inverse through λ = σ_y² / σ_x²: autograd's
    gradients in y and λ match finite differences."""
    op = sense_op(size=8, coils=2, center_fraction=0.25)
    y = torch.randn(2, *op.measurement_shape, dtype=torch.float64, requires_grad=True)
    damping = torch.tensor([0.02, 0.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op.A_pinv_damped, (y, damping), eps=1e-6, atol=1e-7)


def test_noise_aware_sense_step_beats_the_scalar_weight():
    """With SENSE's singular values far from 1, the exact posterior-mean step (one weight
    per singular value) has a lower error than one weight for all (DDNM+'s)."""
    op = sense_op(size=32, coils=4, acceleration=4, center_fraction=0.08)
    prior_sigma, noise_sigma = 0.05, 0.02
    g = torch.Generator().manual_seed(0)
    x_true = torch.randn(8, *op.image_shape, generator=g, dtype=torch.float64)
    estimate = x_true + prior_sigma * torch.randn(x_true.shape, generator=g, dtype=torch.float64)
    noise = noise_sigma * torch.randn(8, *op.measurement_shape, generator=g, dtype=torch.float64)
    y = op.A(x_true) + op.A(op.A_pinv(noise))  # noise in the range of A, as measured data
    residual = op.A(estimate) - y
    exact = noise_aware_projection(estimate, y, op, noise_sigma, prior_sigma)
    weight = prior_sigma**2 / (prior_sigma**2 + noise_sigma**2)
    scalar = estimate - weight * op.A_pinv(residual)
    hard = estimate - op.A_pinv(residual)
    errors = [float((z - x_true).pow(2).mean()) for z in (exact, scalar, hard)]
    assert errors[0] < 0.9 * errors[1] and errors[1] < errors[2], errors


def test_sense_state():
    op = sense_op(size=16, coils=2, seed=seed_from_filename("file9.h5"))
    assert set(op.state_dict()) == {"mask", "coil_maps"}
    svd = op.sense_svd()
    rank = svd.s.shape[1]
    assert svd.u.shape == (16, 2 * int(op.mask.sum()), rank) and svd.v.shape == (16, 16, rank)
    with pytest.raises(ValueError, match="coil maps"):
        MRI(16).sense_svd()
