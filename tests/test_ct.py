"""Sparse-view CT: the pure-torch Radon transform and the ``ct`` operator.

Bounds below were measured with this code (torch 2.13 CPU, skimage's ``radon`` / ``iradon``)
and are stated next to each assertion.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import iradon, radon, resize

from idm_med.operators import make_operator
from idm_med.operators.radon import FILTERS, RadonTransform, fbp, parallel_beam_angles
from idm_med.operators.sparse_view_ct import SparseViewCT, torch_radon_available


def phantom(n: int) -> np.ndarray:
    """Shepp–Logan resized to ``n x n``, zero outside the inscribed disc (float64)."""
    image = resize(shepp_logan_phantom(), (n, n), anti_aliasing=True)
    rows, cols = np.mgrid[:n, :n]
    image[(rows - n // 2) ** 2 + (cols - n // 2) ** 2 > (n // 2) ** 2] = 0.0
    return image


def rel(a, b) -> float:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return float((a - b).norm() / b.norm())


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- the Radon transform -------------------------------------------------------------------
@pytest.mark.parametrize("circle", [False, True])
@pytest.mark.parametrize("n", [64, 45])  # even and odd sizes: the centre is n // 2 in both
def test_radon_matches_skimage(n, circle):
    angles = parallel_beam_angles(30)
    image = phantom(n)
    if not circle:  # fill the corners: the full detector must measure them
        image = image + np.random.default_rng(0).random((n, n))
    expected = radon(image, np.rad2deg(angles.numpy()), circle=circle).T  # (views, detectors)
    module = RadonTransform(n, angles, dtype=torch.float64, circle=circle)
    assert module.n_detectors == expected.shape[1] == (n if circle else math.ceil(math.sqrt(2) * n))
    ours64 = module(torch.from_numpy(image))
    # Measured 6e-16 - 9e-16 in both modes: the same discretisation up to rounding.
    assert rel(ours64, expected) < 1e-12
    ours32 = RadonTransform(n, angles, dtype=torch.float32, circle=circle)
    # Measured ~1e-7 in float32.
    assert rel(ours32(torch.from_numpy(image).float()).double(), expected) < 1e-5


def test_full_detector_is_the_default_and_measures_the_corners():
    op = SparseViewCT(16, 5).double()
    assert op.measurement_shape == (1, 5, 23) and not op.config["circle"]
    corner = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    corner[..., 0, 0] = 1.0
    # Every view measures the corner pixel (bilinear weights sum to ~1 per view: exactly
    # 1 at 0°, measured 0.89-1.0 at the others).
    assert float(op.A(corner).sum(-1).min()) > 0.8


def test_adjoint_dot_product_float64():
    op = SparseViewCT(32, 12).double()
    x = torch.randn(3, 1, 32, 32, generator=gen(1), dtype=torch.float64)
    y = torch.randn(3, *op.measurement_shape, generator=gen(2), dtype=torch.float64)
    lhs, rhs = (op.A(x) * y).sum(), (x * op.At(y)).sum()
    assert abs(float(lhs - rhs)) < 1e-12 * abs(float(lhs))
    # Per sample too (each is its own dot product).
    per_lhs = (op.A(x) * y).flatten(1).sum(1)
    per_rhs = (x * op.At(y)).flatten(1).sum(1)
    torch.testing.assert_close(per_lhs, per_rhs, rtol=1e-12, atol=0)


def test_adjoint_float32_and_batched_over_channels():
    n, angles = 24, parallel_beam_angles(7)
    module = RadonTransform(n, angles, dtype=torch.float32)
    x = torch.randn(2, 3, n, n, generator=gen(3))
    y = torch.randn(2, 3, 7, module.n_detectors, generator=gen(4))
    lhs, rhs = float((module(x) * y).sum()), float((x * module.backproject(y)).sum())
    assert abs(lhs - rhs) < 1e-5 * math.sqrt(x.numel()) * math.sqrt(y.numel())
    # (B, C) batching equals sample-by-sample application.
    one = module(x[1, 2])
    torch.testing.assert_close(module(x)[1, 2], one, rtol=1e-6, atol=1e-6)


def test_pixels_outside_disc_are_in_null_space_with_circle():
    op = SparseViewCT(16, 5, circle=True).double()
    outside = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    # (r - 8)² + (k - 8)² > 64: outside the inscribed disc.
    outside[..., 0, 0] = outside[..., 15, 15] = outside[..., 0, 7] = outside[..., 2, 2] = 1.0
    assert float(op.A(outside).abs().max()) == 0.0
    back = op.At(torch.ones(1, 1, 5, 16, dtype=torch.float64))
    assert float(back[..., 0, 0]) == 0.0 and float(back[..., 8, 8]) > 0.0


@pytest.mark.parametrize("circle", [False, True])
def test_fbp_matches_iradon(circle):
    n = 64
    angles = parallel_beam_angles(180)
    image = phantom(n)
    if not circle:
        image = image + np.random.default_rng(1).random((n, n))
    sinogram = radon(image, np.rad2deg(angles.numpy()), circle=circle)
    module = RadonTransform(n, angles, dtype=torch.float64, circle=circle)
    for name in FILTERS:
        expected = iradon(
            sinogram, np.rad2deg(angles.numpy()), filter_name=name, circle=circle, output_size=n
        )
        ours = module.fbp(torch.from_numpy(sinogram.T), name)
        # Measured ≤ 5e-15 for every filter and both modes: iradon's filter and interpolation.
        assert rel(ours, expected) < 1e-10, name


def test_fbp_recovers_image():
    # Full 180-view ramp FBP of the 64² phantom from *our* operator (float32): measured
    # relative error to the image 0.177 (iradon: the same 0.177); the residual is the
    # phantom's sharp edges smoothed by bilinear projection + ramp at 64².
    n = 64
    op = SparseViewCT(n, 180)
    x = torch.from_numpy(phantom(n)).float()[None, None]
    recon = op.fbp(op.A(x))
    assert recon.shape == x.shape
    assert rel(recon, x) < 0.19
    # Sparse views (18) are clearly worse (measured 0.293): the streaks IDM has to remove.
    sparse = SparseViewCT(n, 18)
    assert rel(sparse.fbp(sparse.A(x)), x) > 0.25


def test_fbp_function_validates_angles():
    with pytest.raises(ValueError, match="angles"):
        fbp(torch.zeros(5, 16), parallel_beam_angles(4))


# -- the pseudo-inverse ---------------------------------------------------------------
def penrose_errors(op, dtype, seed: int) -> dict[str, float]:
    """Relative errors of the contract identities on random images and measurements."""
    g = gen(seed)
    x = torch.randn(2, *op.image_shape, generator=g, dtype=torch.float64).to(dtype)
    y_any = torch.randn(2, *op.measurement_shape, generator=g, dtype=torch.float64).to(dtype)
    z = torch.randn(x.shape, generator=g, dtype=torch.float64).to(dtype)
    y = op.A(x)
    x_pinv, p = op.A_pinv(y_any), op.AtA(x)
    return {
        "A A+ A = A": rel(op.A(op.A_pinv(y)), y),
        "A+ A A+ = A+": rel(op.AtA(x_pinv), x_pinv),
        "AtA idempotent": rel(op.AtA(p), p),
        "AtA symmetric": abs(float((p * z).sum() - (x * op.AtA(z)).sum()))
        / float(x.norm() * z.norm()),
    }


@pytest.mark.parametrize("n,views,circle", [(24, 8, False), (32, 12, False), (24, 9, True)])
def test_default_pinv_is_exact(n, views, circle):
    """At default settings (no tolerance passed) the Penrose identities hold to 1e-6 in
    float64 and 1e-4 in float32, also for measurements outside the range."""
    op = SparseViewCT(n, views, circle=circle)
    assert op.solver == "direct"
    # Measured ≤ 1.3e-8 (float64) and ≤ 2.2e-5 (float32) for these cases.
    for dtype, bound in ((torch.float64, 1e-6), (torch.float32, 1e-4)):
        errors = penrose_errors(op.to(dtype), dtype, seed=5)
        assert max(errors.values()) < bound, (dtype, errors)
    # Minimum norm: A† A x is the shortest pre-image of A x, never longer than x.
    x = torch.rand(2, 1, n, n, generator=gen(6), dtype=torch.float64)
    assert float(op.double().AtA(x).norm()) <= float(x.norm())


def test_direct_pinv_matches_numpy_pinv():
    op = SparseViewCT(16, 5).double()
    eye = torch.eye(16 * 16, dtype=torch.float64).view(-1, 1, 16, 16)
    matrix = op.A(eye).reshape(16 * 16, -1).T.numpy()  # (rays, pixels)
    y = torch.randn(3, *op.measurement_shape, generator=gen(7), dtype=torch.float64)
    expected = np.linalg.pinv(matrix, rcond=1e-9) @ y.reshape(3, -1).numpy().T
    assert rel(op.A_pinv(y).reshape(3, -1), torch.from_numpy(expected.T)) < 1e-8


def test_cg_pinv_warm_start_and_accuracy():
    # The iterative solver (large geometries) on a small case: κ(A) ≈ 1e4-1e8 on the row
    # space, so at its defaults (1e-6, 200 iterations) CG reaches the data but not the
    # image-space identities.
    op = SparseViewCT(24, 8, pinv="cg").double()
    exact = SparseViewCT(24, 8, pinv="direct").double()
    x = torch.rand(2, 1, 24, 24, generator=gen(8), dtype=torch.float64)
    y = op.A(x)
    x_cg = op.A_pinv(y)
    assert rel(op.A(x_cg), y) < 5e-4  # measured 6.1e-5
    assert rel(x_cg, exact.A_pinv(y)) < 0.1  # measured 4.2e-2
    # The FBP warm start lies in the range of Aᵀ: its exact projection leaves it unchanged.
    start = op._cg_warm_start(y, *op.radon.linear_maps(torch.float64))
    assert rel(exact.AtA(start), start) < 1e-6  # measured 1.7e-11
    assert rel(op.A(start), y) < 0.3  # measured 0.18 (Aᵀ y alone: 184)


# -- gradients -----------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_gradients_flow_through_A_At_pinv(solver):
    tight = {"cg_tol": 1e-13, "cg_max_iter": 500} if solver == "cg" else {}
    # circle=True: the inscribed detector keeps A Aᵀ well conditioned, so CG converges to
    # the exact A† whose Jacobian gradcheck compares (corner rays make it ill-conditioned)
    op = SparseViewCT(8, 3, pinv=solver, circle=True, **tight).double()
    x = torch.randn(1, 1, 8, 8, generator=gen(9), dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, *op.measurement_shape, generator=gen(10), dtype=torch.float64)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(op.A, (x,))
    assert torch.autograd.gradcheck(op.At, (y,))
    assert torch.autograd.gradgradcheck(op.A, (x,))  # the backward is differentiable too
    # Finite differences of a CG solve stopped at 1e-13 are accurate to ~1e-6 (measured up
    # to 1.2e-6 against the exact pseudo-inverse's Jacobian).
    assert torch.autograd.gradcheck(op.A_pinv, (y,), atol=1e-6 if solver == "direct" else 1e-5)
    # fbp is differentiable as well.
    assert torch.autograd.gradcheck(op.fbp, (y,))
    # The gradient of ½‖Ax - y‖² is Aᵀ(Ax - y).
    loss = 0.5 * (op.A(x) - y.detach()).square().sum()
    (grad,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(grad, op.At(op.A(x.detach()) - y.detach()))


# -- operator plumbing ---------------------------------------------------------------------
def test_shapes_config_roundtrip_and_buffers():
    op = SparseViewCT(32, 10, angle_range=180.0)
    assert op.image_shape == (1, 32, 32)
    assert op.measurement_shape == (1, 10, 46)  # ⌈√2·32⌉ detectors
    assert op.config["name"] == "ct"
    again = make_operator(**op.config)
    assert isinstance(again, SparseViewCT) and again.config == op.config
    x = torch.rand(2, 1, 32, 32, generator=gen(11))
    assert torch.equal(again.A(x), op.A(x))
    # Angles equally spaced over [0, 180°).
    expected = torch.arange(10, dtype=torch.float64) * math.pi / 10
    torch.testing.assert_close(op.angles.double(), expected, rtol=1e-7, atol=1e-7)
    # dtype / device moves follow nn.Module semantics; the matrix stays out of state_dict.
    double = op.double().to("cpu")
    assert double.A(x.double()).dtype == torch.float64
    assert double.radon.val.dtype == torch.float64 and double.radon.col.dtype == torch.int32
    assert all(v.numel() <= 10 for v in op.state_dict().values())
    # backend="auto" on CPU is the pure-torch transform.
    auto, forced = SparseViewCT(32, 10, backend="auto"), SparseViewCT(32, 10, backend="torch")
    assert torch.equal(auto.A(x), forced.A(x))


def test_bad_input():
    with pytest.raises(ValueError, match="n_views"):
        SparseViewCT(32, 0)
    with pytest.raises(ValueError, match="n_views"):
        SparseViewCT(32, 2.5)
    with pytest.raises(ValueError, match="square"):
        SparseViewCT((32, 48), 8)
    with pytest.raises(ValueError, match="image_size"):
        SparseViewCT(0, 8)
    with pytest.raises(ValueError, match="parallel"):
        SparseViewCT(32, 8, geometry="cone")
    with pytest.raises(ValueError, match="backend"):
        SparseViewCT(32, 8, backend="astra")
    with pytest.raises(ValueError, match="angle_range"):
        SparseViewCT(32, 8, angle_range=0.0)
    with pytest.raises(ValueError, match="cg_tol"):
        SparseViewCT(32, 8, cg_tol=0.0)
    with pytest.raises(ValueError, match="pinv"):
        SparseViewCT(32, 8, pinv="lsqr")
    if not torch_radon_available():
        with pytest.raises(ImportError, match="torch_radon"):
            SparseViewCT(32, 8, backend="torch_radon")
    op = SparseViewCT(16, 4, circle=True)
    with pytest.raises(ValueError, match=r"x must have image shape \(B, 1, 16, 16\)"):
        op.A(torch.zeros(1, 1, 16, 15))
    with pytest.raises(ValueError, match=r"y must have measurement shape \(B, 1, 4, 16\)"):
        op.At(torch.zeros(1, 1, 5, 16))
    with pytest.raises(ValueError, match="y"):
        op.A_pinv(torch.zeros(1, 4, 16))
    with pytest.raises(ValueError, match="filter_name"):
        op.fbp(torch.zeros(1, 1, 4, 16), "triangle")


def test_capped_cg_view_shares_the_operator_and_caps_only_the_solver():
    op = SparseViewCT(24, 8, pinv="cg").double()
    view = op.with_cg_max_iter(3)
    assert view.cg_max_iter == 3 and op.cg_max_iter == 200
    assert view.config["cg_max_iter"] == 3 and op.config["cg_max_iter"] == 200
    assert view.radon is op.radon  # the matrices are shared, not rebuilt
    x = torch.rand(1, 1, 24, 24, generator=gen(3), dtype=torch.float64)
    y = op.A(x)
    assert torch.equal(view.A(x), y)
    full, capped = op.A_pinv(y), view.A_pinv(y)
    # Fewer iterations: a worse fit of the data (3 iterations measured 1.6e-2, 200: 7.5e-5).
    assert rel(op.A(capped), y) > 10 * rel(op.A(full), y)
    assert torch.equal(op.with_cg_max_iter(200).A_pinv(y), full)
    with pytest.raises(ValueError, match="positive integer"):
        op.with_cg_max_iter(0)
