"""The operator contract (operators/base.py), checked for every registered operator on
every device (the ``device`` fixture: cpu, plus cuda when present), at each case's own
settings (no tolerance tightened for the test)."""

from __future__ import annotations

import json

import pytest
import torch

from idm_med.operators import (
    OPERATORS,
    available_operators,
    check_finite,
    make_operator,
    range_null_space_projection,
)

from .operator_cases import (  # noqa: F401  (device_fixture provides `device`)
    OPERATOR_CASES,
    build,
    device_fixture,
    is_iterative,
    operator_cases,
)

CASES = operator_cases()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def random_pair(op, batch: int = 2, dtype=torch.float64, device="cpu"):
    x = torch.randn(batch, *op.image_shape, dtype=dtype, device=device)
    y = torch.randn(batch, *op.measurement_shape, dtype=dtype, device=device)
    return x, y


def test_every_operator_has_a_test_case():
    assert set(available_operators()) <= set(OPERATOR_CASES), (
        "add small kwargs for new operators to tests/conftest.py"
    )
    assert {"gaussian_cs", "inpainting", "superres"} <= set(available_operators())


@pytest.mark.parametrize("name,kwargs", CASES)
def test_adjoint_dot_product(name, kwargs, device):
    op = build(name, kwargs, device=device)
    assert op.adjointness_test(seed=1) <= 1e-10


def test_adjointness_diagnostic_detects_a_wrong_adjoint():
    from idm_med.operators import ScaledAdjointOperator

    class Diagonal(ScaledAdjointOperator):
        name = "diagonal"

        def __init__(self, wrong: bool) -> None:
            super().__init__()
            self.image_shape = self.measurement_shape = (1, 4, 4)
            self.register_buffer("d", torch.linspace(0.1, 1.0, 16, dtype=torch.float64))
            self.wrong = wrong

        def _A(self, x):
            return x * self.d.reshape(4, 4)

        def _At(self, y):
            d = self.d.flip(0) if self.wrong else self.d
            return y * d.reshape(4, 4)

    assert Diagonal(False).adjointness_test() < 1e-15
    assert Diagonal(True).adjointness_test() > 1e-2
    assert Diagonal(False).operator_norm() == pytest.approx(1.0, rel=1e-6)


# Cases small enough (≤ ~1.5k unknowns) for a dense eigen-decomposition in the test.
NORM_CASES = [
    p for p in CASES if p.id in {"gaussian_cs-0", "inpainting-0", "superres-0", "mri-0", "ct-0"}
]


@pytest.mark.parametrize("name,kwargs", NORM_CASES)
def test_operator_norm_matches_dense_spectrum(name, kwargs):
    """Power iteration against the largest eigenvalue of the dense Gram matrix AᵀA."""
    op = build(name, kwargs)
    n = 1
    for s in op.image_shape:
        n *= s
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *op.image_shape)
    dense = op.A(basis).reshape(n, -1)
    sigma_max = float(torch.linalg.eigvalsh(dense @ dense.T)[-1].sqrt())
    assert op.operator_norm(max_iter=1000, tol=1e-12) == pytest.approx(sigma_max, rel=1e-3)


@pytest.mark.parametrize("name,kwargs", CASES)
def test_pseudo_inverse_identities(name, kwargs, device):
    """Penrose: A A† A = A, and A† y lies in the row space (A†A A† y = A† y)."""
    op = build(name, kwargs, device=device)
    x, _ = random_pair(op, device=device)
    y = op.A(x)
    x_pinv = op.A_pinv(y)
    assert rel_err(op.A(x_pinv), y) < 1e-5
    assert rel_err(op.AtA(x_pinv), x_pinv) < 1e-5


@pytest.mark.parametrize("name,kwargs", CASES)
def test_pinv_float32_accuracy(name, kwargs, device):
    op = build(name, kwargs, torch.float32, device)
    x, _ = random_pair(op, dtype=torch.float32, device=device)
    y = op.A(x)
    tol = 1e-3 if is_iterative(name, kwargs) else 1e-5
    assert rel_err(op.A(op.A_pinv(y)), y) < tol


@pytest.mark.parametrize("name,kwargs", CASES)
def test_damped_pinv_solves_the_tikhonov_problem(name, kwargs, device):
    """``A_λ y`` minimises ‖A x − y‖² + λ‖x‖²: ``(AᵀA + λ I) x = Aᵀ y``, for a scalar λ and
    one λ per batch item; λ = 0 is ``A†``. CT's is the documented ``A† y / (1 + λ)``."""
    op = build(name, kwargs, device=device)
    _, y = random_pair(op, device=device)
    assert rel_err(op.A_pinv_damped(y, 0.0), op.A_pinv(y)) < 1e-12
    levels = torch.tensor([0.05, 0.7], dtype=torch.float64, device=device)
    batched = op.A_pinv_damped(y, levels)
    for i, level in enumerate(levels.tolist()):
        one = op.A_pinv_damped(y[i : i + 1], level)
        assert rel_err(batched[i : i + 1], one) < 1e-12
        if is_iterative(name, kwargs):
            assert rel_err(one, op.A_pinv(y[i : i + 1]) / (1 + level)) < 1e-12
        else:
            normal = op.At(op.A(one)) + level * one
            assert rel_err(normal, op.At(y[i : i + 1])) < 1e-6
    with pytest.raises(ValueError, match="damping"):
        op.A_pinv_damped(y, -0.1)


@pytest.mark.parametrize("name,kwargs", CASES)
def test_range_null_space_projection_is_data_consistent(name, kwargs, device):
    """The DDNM/IDM step x − A†(A x − y) matches the data and keeps the null-space part."""
    op = build(name, kwargs, device=device)
    x, _ = random_pair(op, device=device)
    y = op.A(x)
    z = torch.randn_like(x)
    p = range_null_space_projection(z, y, op)
    assert rel_err(op.A(p), y) < 1e-5
    null = z - op.AtA(z)  # may be ~0 when A has full column rank (e.g. SENSE at 2×)
    assert float((p - op.AtA(p) - null).norm()) < 1e-5 * float(z.norm())


@pytest.mark.parametrize("name,kwargs", CASES)
def test_AtA_is_an_orthogonal_projection(name, kwargs, device):
    op = build(name, kwargs, device=device)
    x, _ = random_pair(op, device=device)
    z = torch.randn_like(x)
    p = op.AtA(x)
    assert rel_err(op.AtA(p), p) < 1e-5  # idempotent
    lhs, rhs = (p * z).sum(), (x * op.AtA(z)).sum()  # symmetric
    assert abs(float(lhs - rhs)) <= 1e-5 * float(x.norm() * z.norm())
    assert rel_err(op.AtA(x), op.A_pinv(op.A(x))) < 1e-12


@pytest.mark.parametrize("name,kwargs", CASES)
def test_gradients_flow_through_every_method(name, kwargs):
    op = build(name, kwargs)
    x, y = random_pair(op)
    for method, inp in [("A", x), ("At", y), ("A_pinv", y), ("AtA", x)]:
        inp = inp.clone().requires_grad_(True)
        out = getattr(op, method)(inp)
        w = torch.randn_like(out)
        (grad,) = torch.autograd.grad((out * w).sum(), inp)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, method


@pytest.mark.parametrize("name,kwargs", CASES)
def test_linear_gradients_are_adjoints(name, kwargs):
    """The gradient of <A x, w> w.r.t. x is Aᵀ w, and of <A† y, w> w.r.t. y is (A†)ᵀ w."""
    op = build(name, kwargs)
    x, y = random_pair(op)
    w = torch.randn(1, *op.measurement_shape, dtype=torch.float64).expand_as(y)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((op.A(xg) * w).sum(), xg)
    assert rel_err(g, op.At(w)) < 1e-10
    # (A†)ᵀ checked by the dot-product identity <A† y, v> = <y, (A†)ᵀ v>.
    v = torch.randn_like(x)
    yg = y.clone().requires_grad_(True)
    (gy,) = torch.autograd.grad((op.A_pinv(yg) * v).sum(), yg)
    lhs, rhs = (op.A_pinv(y) * v).sum(), (y * gy).sum()
    assert abs(float(lhs - rhs)) <= 1e-5 * float(y.norm() * v.norm())


@pytest.mark.parametrize("name,kwargs", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_preserved(name, kwargs, dtype, device):
    op = build(name, kwargs, dtype, device)
    for buf in op.buffers():
        if buf.is_floating_point():
            assert buf.dtype == dtype
    x, y = random_pair(op, dtype=dtype, device=device)
    for out in (op.A(x), op.At(y), op.A_pinv(y), op.AtA(x)):
        assert out.dtype == dtype and out.device == x.device
    assert op.A(x).shape == (2, *op.measurement_shape)
    assert op.A_pinv(y).shape == (2, *op.image_shape)


@pytest.mark.parametrize("name,kwargs", CASES)
def test_device_matches_cpu(name, kwargs, device):
    op = build(name, kwargs, torch.float32)
    x, y = random_pair(op, dtype=torch.float32)
    op_dev = build(name, kwargs, torch.float32, device)
    for method, inp in [("A", x), ("At", y), ("A_pinv", y)]:
        out = getattr(op_dev, method)(inp.to(device))
        assert out.device.type == device
        assert rel_err(out.cpu(), getattr(op, method)(inp)) < 1e-4


@pytest.mark.parametrize("name,kwargs", CASES)
def test_config_is_json_and_rebuilds_with_the_state(name, kwargs):
    """``config`` is JSON-safe; config (through JSON) + ``state_dict`` rebuild the operator."""
    op = make_operator(name, **kwargs)
    config = json.loads(json.dumps(op.config, allow_nan=False))
    assert config["name"] == name
    rebuilt = make_operator(**config)
    rebuilt.load_state_dict(op.state_dict())
    assert rebuilt.config == config
    state, state2 = op.state_dict(), rebuilt.state_dict()
    assert state.keys() == state2.keys()
    for key in state:
        assert torch.equal(state[key], state2[key]), key
    x = torch.randn(1, *op.image_shape)
    y = torch.randn(1, *op.measurement_shape)
    assert torch.equal(op.A(x), rebuilt.A(x))
    assert torch.equal(op.A_pinv(y), rebuilt.A_pinv(y))


@pytest.mark.parametrize("name,kwargs", CASES)
def test_update_without_arguments_changes_nothing(name, kwargs):
    op = make_operator(name, **kwargs)
    x = torch.randn(1, *op.image_shape)
    before, config = op.A(x), op.config
    assert op.update() is op
    assert torch.equal(op.A(x), before) and op.config == config
    with pytest.raises(TypeError):
        op.update(no_such_parameter=1)


@pytest.mark.parametrize("name,kwargs", CASES)
def test_bad_input_raises_value_error(name, kwargs):
    op = build(name, kwargs)
    x, y = random_pair(op)
    wrong = torch.randn(2, *[s + 1 for s in op.image_shape], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"x must have image shape \(B, "):
        op.A(wrong)
    with pytest.raises(ValueError, match="y must have measurement shape"):
        op.A_pinv(y[:, :1, ..., :1])
    with pytest.raises(ValueError, match="x must have image shape"):
        op.A(x[0])  # missing batch dimension
    with pytest.raises(ValueError, match="real floating-point"):
        op.A(x.to(torch.int64))
    with pytest.raises(ValueError, match="real floating-point"):
        op.At(y.to(torch.complex128))


def test_check_finite_is_the_entry_point_check():
    """NaN/inf are rejected once at entry (check_finite), not by every operator call."""
    x = torch.randn(1, 1, 4, 4)
    assert check_finite(x) is x
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN or infinite"):
        check_finite(bad, "x")
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_finite(bad)


def test_unknown_operator_name():
    with pytest.raises(ValueError, match="unknown operator name 'nope'"):
        make_operator("nope")
    assert all(cls.name == key for key, cls in OPERATORS.items())


def test_incomplete_operator_cannot_be_built():
    from idm_med.operators import Operator

    class Half(Operator):
        name = "half"

        def _A(self, x):
            return x

    with pytest.raises(TypeError, match="abstract"):
        Half()


@pytest.mark.parametrize("name,kwargs", CASES)
def test_resample_is_reproducible_from_its_seed(name, kwargs):
    """Per-step parameters come from a seed: the same seed gives the same operator."""
    a = make_operator(name, **kwargs).resample(123)
    b = make_operator(name, **kwargs).resample(123)
    x = torch.randn(1, *a.image_shape)
    assert torch.equal(a.A(x), b.A(x)) and a.config == b.config
    rebuilt = make_operator(**a.config)
    if not rebuilt._missing:  # coil maps travel in the state; seeded parameters do not
        assert torch.equal(rebuilt.A(x), a.A(x))
