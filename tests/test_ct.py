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
@pytest.mark.parametrize("n", [64, 45])  # even and odd sizes: the centre is n // 2 in both
def test_radon_matches_skimage(n):
    angles = parallel_beam_angles(30)
    image = phantom(n)
    expected = radon(image, np.rad2deg(angles.numpy()), circle=True).T  # (views, detectors)
    ours64 = RadonTransform(n, angles, dtype=torch.float64)(torch.from_numpy(image))
    # Measured 8e-16 (n=64) and 9e-16 (n=45): the same discretisation up to rounding.
    assert rel(ours64, expected) < 1e-12
    ours32 = RadonTransform(n, angles, dtype=torch.float32)(torch.from_numpy(image).float())
    # Measured ~1e-7 in float32.
    assert rel(ours32.double(), expected) < 1e-5


def test_adjoint_dot_product_float64():
    op = SparseViewCT(32, 12).double()
    x = torch.randn(3, 1, 32, 32, generator=gen(1), dtype=torch.float64)
    y = torch.randn(3, 1, 12, 32, generator=gen(2), dtype=torch.float64)
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
    y = torch.randn(2, 3, 7, n, generator=gen(4))
    lhs, rhs = float((module(x) * y).sum()), float((x * module.backproject(y)).sum())
    assert abs(lhs - rhs) < 1e-5 * math.sqrt(x.numel()) * math.sqrt(y.numel())
    # (B, C) batching equals sample-by-sample application.
    one = module(x[1, 2])
    torch.testing.assert_close(module(x)[1, 2], one, rtol=1e-6, atol=1e-6)


def test_pixels_outside_disc_are_in_null_space():
    op = SparseViewCT(16, 5).double()
    outside = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    # (r - 8)² + (k - 8)² > 64: outside the inscribed disc.
    outside[..., 0, 0] = outside[..., 15, 15] = outside[..., 0, 7] = outside[..., 2, 2] = 1.0
    assert float(op.A(outside).abs().max()) == 0.0
    back = op.At(torch.ones(1, 1, 5, 16, dtype=torch.float64))
    assert float(back[..., 0, 0]) == 0.0 and float(back[..., 8, 8]) > 0.0


def test_fbp_matches_iradon_and_recovers_image():
    n = 64
    angles = parallel_beam_angles(180)
    image = phantom(n)
    sinogram = radon(image, np.rad2deg(angles.numpy()), circle=True)
    module = RadonTransform(n, angles, dtype=torch.float64)
    for name in FILTERS:
        expected = iradon(sinogram, np.rad2deg(angles.numpy()), filter_name=name, circle=True)
        ours = module.fbp(torch.from_numpy(sinogram.T), name)
        # Measured ≤ 1.3e-15 for every filter: the same filter and interpolation as iradon.
        assert rel(ours, expected) < 1e-10, name
    # Full 180-view ramp FBP of the 64² phantom from *our* operator (float32): measured
    # relative error to the image 0.177 (iradon: the same 0.177); the residual is the
    # phantom's sharp edges smoothed by bilinear projection + ramp at 64².
    op = SparseViewCT(n, 180)
    x = torch.from_numpy(image).float()[None, None]
    recon = op.fbp(op.A(x))
    assert recon.shape == x.shape
    assert rel(recon, x) < 0.19
    # Sparse views (18) are clearly worse (measured 0.293): the streaks IDM has to remove.
    sparse = SparseViewCT(n, 18)
    assert rel(sparse.fbp(sparse.A(x)), x) > 0.25


def test_fbp_function_validates_angles():
    with pytest.raises(ValueError, match="angles"):
        fbp(torch.zeros(5, 16), parallel_beam_angles(4))


# -- the pseudo-inverse by CG --------------------------------------------------------------
def test_pinv_float64_tight():
    # 32², 8 views: A has rank 255 and condition number 740 on its row space, so CG in
    # float64 runs to (near) finite termination within the cap.
    op = SparseViewCT(32, 8, cg_tol=1e-12, cg_max_iter=2000).double()
    x = torch.rand(2, 1, 32, 32, generator=gen(5), dtype=torch.float64)
    y = op.A(x)
    x_pinv = op.A_pinv(y)
    # A A† y = y for y in the range (measured 3e-12).
    assert rel(op.A(x_pinv), y) < 1e-5
    # Minimum norm: A† y is the shortest pre-image, so never longer than x.
    assert float(x_pinv.norm()) <= float(x.norm())
    # The pseudo-inverse lives in the range of Aᵀ, which is zero outside the disc.
    assert float(x_pinv[..., 0, 0].abs().max()) == 0.0
    p = op.AtA(x)
    assert rel(op.AtA(p), p) < 1e-5  # idempotent (measured 3e-10)
    z = x + torch.randn(x.shape, generator=gen(6), dtype=torch.float64)
    lhs, rhs = float((p * z).sum()), float((x * op.AtA(z)).sum())
    assert abs(lhs - rhs) < 1e-5 * abs(lhs)  # symmetric (measured 6e-12)


def test_pinv_float32():
    # CG runs in float64 internally, so a float32 operator reaches the same accuracy up to
    # the final rounding (plain float32 CG stalls near 1e-6 here and, iterated on, diverged).
    op = SparseViewCT(32, 8, cg_tol=1e-12, cg_max_iter=2000)
    x = torch.rand(2, 1, 32, 32, generator=gen(7))
    y = op.A(x)
    x_pinv = op.A_pinv(y)
    assert x_pinv.dtype == torch.float32
    assert rel(op.A(x_pinv), y) < 1e-3  # measured 1e-7
    p = op.AtA(x)
    assert rel(op.AtA(p), p) < 1e-3  # idempotent (measured 1e-5)
    z = x + torch.randn(x.shape, generator=gen(8))
    lhs, rhs = float((p * z).sum()), float((x * op.AtA(z)).sum())
    assert abs(lhs - rhs) < 1e-3 * abs(lhs)  # symmetric (measured < 1e-7)


def test_pinv_default_tolerance():
    # Defaults (cg_tol=1e-5, at most 200 iterations) aim at speed at 256²: the data
    # residual is ~3e-4 (measured 2e-4 - 4e-4 at 32²-256²), image-space errors ~1e-2.
    op = SparseViewCT(32, 8)
    x = torch.rand(2, 1, 32, 32, generator=gen(9))
    y = op.A(x)
    assert rel(op.A(op.A_pinv(y)), y) < 1e-3
    p = op.AtA(x)
    assert rel(op.AtA(p), p) < 5e-2  # measured 1.4e-2 - 1.7e-2


# -- gradients -----------------------------------------------------------------------------
def test_gradients_flow_through_A_At_pinv():
    op = SparseViewCT(8, 3, cg_tol=1e-13, cg_max_iter=500).double()
    x = torch.randn(1, 1, 8, 8, generator=gen(9), dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, 1, 3, 8, generator=gen(10), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op.A, (x,))
    assert torch.autograd.gradcheck(op.At, (y,))
    assert torch.autograd.gradgradcheck(op.A, (x,))  # the backward is differentiable too
    assert torch.autograd.gradcheck(op.A_pinv, (y,), atol=1e-6)
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
    assert op.measurement_shape == (1, 10, 32)
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
        SparseViewCT(32, 8, geometry="fan")
    with pytest.raises(ValueError, match="backend"):
        SparseViewCT(32, 8, backend="astra")
    with pytest.raises(ValueError, match="angle_range"):
        SparseViewCT(32, 8, angle_range=0.0)
    with pytest.raises(ValueError, match="cg_tol"):
        SparseViewCT(32, 8, cg_tol=0.0)
    if not torch_radon_available():
        with pytest.raises(ImportError, match="torch_radon"):
            SparseViewCT(32, 8, backend="torch_radon")
    op = SparseViewCT(16, 4)
    with pytest.raises(ValueError, match=r"x must have image shape \(B, 1, 16, 16\)"):
        op.A(torch.zeros(1, 1, 16, 15))
    with pytest.raises(ValueError, match=r"y must have measurement shape \(B, 1, 4, 16\)"):
        op.At(torch.zeros(1, 1, 5, 16))
    with pytest.raises(ValueError, match="y"):
        op.A_pinv(torch.zeros(1, 4, 16))
    with pytest.raises(ValueError, match="filter_name"):
        op.fbp(torch.zeros(1, 1, 4, 16), "triangle")
