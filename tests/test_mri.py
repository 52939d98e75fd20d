"""MRI specifics: fastMRI column masks, centred FFT convention, single-coil and SENSE maps.

The generic contract (shapes, dtypes, errors) is covered by test_operator_contract.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from idm_med.operators import make_operator
from idm_med.operators.mri import MRI, channels_to_complex, complex_to_channels, fft2c, ifft2c
from idm_med.operators.mri_masks import (
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
def test_single_coil_identities(kwargs):
    op = MRI(**kwargs).double()
    x = torch.randn(3, *op.image_shape, dtype=torch.float64)
    y = torch.randn(3, *op.measurement_shape, dtype=torch.float64)
    ax = op.A(x)
    assert abs(float((ax * y).sum() - (x * op.At(y)).sum())) < 1e-10 * float(ax.norm() * y.norm())
    assert torch.equal(op.A_pinv(y), op.At(y))  # partial isometry: A† = Aᴴ
    assert rel_err(op.A(op.A_pinv(ax)), ax) < 1e-12
    p, z = op.AtA(x), torch.randn_like(x)
    assert rel_err(op.AtA(p), p) < 1e-12
    assert abs(float((p * z).sum() - (x * op.AtA(z)).sum())) < 1e-12 * float(x.norm() * z.norm())
    # Measurements are zero outside the sampled columns and equal the centred FFT inside.
    k = channels_to_complex(ax)
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


def test_explicit_mask_and_config_round_trip():
    mask = torch.zeros(24, dtype=torch.bool)
    mask[::3] = True
    op = MRI((16, 24), mask=mask.int())
    assert torch.equal(op.mask, mask)
    rebuilt = make_operator(**op.config)
    assert torch.equal(rebuilt.mask, mask) and rebuilt.config.keys() == op.config.keys()
    # The fastMRI file seed survives a JSON-like round trip (tuple -> list).
    op = MRI(32, seed=seed_from_filename("file1000001.h5"), mask_type="equispaced")
    config = dict(op.config, seed=list(op.config["seed"]))
    assert torch.equal(make_operator(**config).mask, op.mask)
    assert not torch.equal(MRI(32, seed=seed_from_filename("file2.h5")).mask, MRI(32).mask)


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
    with pytest.raises(ValueError, match="cg_tol"):
        MRI(16, coil_maps=torch.ones(1, 16, 16, dtype=torch.complex64), cg_tol=0)
    op = MRI(16, coil_maps=smooth_coil_maps(3, 16, 16))
    with pytest.raises(ValueError, match=r"y must have measurement shape \(B, 3, 2, 16, 16\)"):
        op.At(torch.randn(1, 2, 16, 16))


# ------------------------------------------------------------------------ multi-coil
def sense_op(size=32, coils=4, **kwargs) -> MRI:
    # Equispaced acceleration 2 with 4 coils is well conditioned (σ_min/σ_max ≈ 0.07), so
    # CG reaches its tolerance; see test_sense_ill_conditioned for the general case.
    kwargs = dict(acceleration=2, center_fraction=0.08, mask_type="equispaced") | kwargs
    return MRI(size, coil_maps=smooth_coil_maps(coils, size, size), **kwargs).double()


def test_sense_adjoint_and_layouts():
    op = sense_op()
    assert op.measurement_shape == (4, 2, 32, 32) and op.num_coils == 4
    x = torch.randn(2, *op.image_shape, dtype=torch.float64)
    y = torch.randn(2, *op.measurement_shape, dtype=torch.float64)
    ax = op.A(x)
    assert abs(float((ax * y).sum() - (x * op.At(y)).sum())) < 1e-10 * float(ax.norm() * y.norm())
    # Per coil: A x = M F (S_c x).
    maps = smooth_coil_maps(4, 32, 32)
    k = fft2c(maps * channels_to_complex(x)[:, None]) * op.mask
    assert rel_err(channels_to_complex(ax), k) < 1e-14
    # Real-layout maps give the same operator; op.double()/float() cast them.
    real_maps = MRI(32, coil_maps=complex_to_channels(maps), mask=op.mask).double()
    assert torch.equal(real_maps.A(x), ax)
    assert real_maps.float().coil_maps.dtype == torch.float32
    # Half precision is computed in float32 (CG included) and cast back.
    out = real_maps.A_pinv(ax.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and rel_err(out.double(), op.A_pinv(ax)) < 2e-2


@pytest.mark.parametrize("cg_tol,bound", [(1e-6, 1e-4), (1e-10, 1e-8)])
def test_sense_pinv_identities(cg_tol, bound):
    """Penrose identities hold to about κ(AᴴA)·cg_tol (κ ≈ 200 here)."""
    op = sense_op(cg_tol=cg_tol)
    x = torch.randn(2, *op.image_shape, dtype=torch.float64)
    y = op.A(x)
    xp = op.A_pinv(y)
    assert rel_err(op.A(xp), y) < bound
    p, z = op.AtA(x), torch.randn_like(x)
    assert rel_err(op.AtA(p), p) < bound  # idempotent
    assert abs(float((p * z).sum() - (x * op.AtA(z)).sum())) < bound * float(x.norm() * z.norm())
    # Minimum-norm least squares for y outside the range: normal equations hold.
    y_out = torch.randn_like(y)
    xp = op.A_pinv(y_out)
    assert rel_err(op.At(op.A(xp)), op.At(y_out)) < bound


def test_sense_full_sampling_is_an_isometry():
    """With Σ_c|S_c|² = 1 and every column sampled, AᴴA = I, so A† A = I."""
    op = sense_op(size=16, coils=3, mask=torch.ones(16, dtype=torch.bool))
    x = torch.randn(2, *op.image_shape, dtype=torch.float64)
    assert abs(float(op.A(x).norm() / x.norm()) - 1) < 1e-12
    assert rel_err(op.AtA(x), x) < 1e-10


def test_sense_cg_float32_matches_dense_pseudo_inverse():
    """CG in float32 with the default tol 1e-6 against numpy-style pinv of the dense matrix
    (random mask, acceleration 4, 2 coils, 16²: well conditioned, σ_min/σ_max ≈ 0.2)."""
    op = MRI(16, acceleration=4, center_fraction=0.08, coil_maps=smooth_coil_maps(2, 16, 16))
    pinv = torch.linalg.pinv(dense_matrix(op), rtol=1e-10)
    op.float()
    for y in (op.A(torch.randn(2, *op.image_shape)), torch.randn(2, *op.measurement_shape)):
        ref = (pinv @ y.double().reshape(2, -1).T).T.reshape(2, *op.image_shape)
        got = op.A_pinv(y)
        assert got.dtype == torch.float32
        assert rel_err(got.double(), ref) < 1e-3


def test_sense_ill_conditioned_still_consistent():
    """Random acceleration-4 SENSE with smooth maps has singular values down to ~1e-6 σ_max,
    so CG stops at cg_max_iter; A A† y ≈ y still holds to ~1e-3 (documented limitation)."""
    op = MRI(32, acceleration=4, center_fraction=0.08, coil_maps=smooth_coil_maps(4, 32, 32))
    op.double()
    y = op.A(torch.randn(1, *op.image_shape, dtype=torch.float64))
    assert rel_err(op.A(op.A_pinv(y)), y) < 5e-3


@pytest.mark.parametrize("multicoil", [False, True])
def test_gradients_flow(multicoil):
    op = sense_op(size=16, coils=2) if multicoil else MRI(16).double()
    x = torch.randn(2, *op.image_shape, dtype=torch.float64)
    y = torch.randn(2, *op.measurement_shape, dtype=torch.float64)
    for method, inp in [("A", x), ("At", y), ("A_pinv", y), ("AtA", x)]:
        inp = inp.clone().requires_grad_(True)
        out = getattr(op, method)(inp)
        (grad,) = torch.autograd.grad((out * torch.randn_like(out)).sum(), inp)
        assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0, method
    # d<A x, w>/dx = Aᴴ w exactly.
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((op.A(xg) * y).sum(), xg)
    assert rel_err(g, op.At(y)) < 1e-12


def test_sense_config_round_trip_and_state():
    op = sense_op(size=16, coils=2, seed=seed_from_filename("file9.h5"))
    assert set(op.state_dict()) == {"mask", "coil_maps"}
    rebuilt = make_operator(**op.config).double()
    x = torch.randn(1, *op.image_shape, dtype=torch.float64)
    assert torch.equal(rebuilt.A(x), op.A(x))
    assert rebuilt.config["mask"] is None  # generated masks rebuild from the seed
