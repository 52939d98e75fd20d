"""Tests of the reversible coupling engine (idm_med.reversible)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from idm_med.reversible import (
    ReversibleBlockGroup,
    constrained_unit_interval,
    constrained_unit_interval_inverse,
    coupled_sequence,
    forward_states,
    inverse_reconstruction_error,
    invert_sequence,
)

DT = torch.float64
SHAPE = (2, 2, 16, 16)  # (B, C, H, W)


def _net(seed: int, dtype: torch.dtype = DT, channels: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(4, channels, 3, padding=1),
    ).to(dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


class _Setup:
    """K conv nets (shared or separate) scaled by a schedule alpha = sigmoid(raw) (non-leaf,
    passed in params) plus a captured constant (like A†y), and leaf inputs x, h, v."""

    def __init__(self, K: int, shared: bool, seed: int = 0) -> None:
        nets = [_net(seed)] * K if shared else [_net(seed + i) for i in range(K)]
        self.nets = nn.ModuleList(nets)  # ModuleList dedupes nothing; params dedup below
        g = torch.Generator().manual_seed(seed + 100)
        self.raw_alpha = nn.Parameter(torch.randn(K, generator=g, dtype=DT))
        self.const = torch.randn(SHAPE, generator=g, dtype=DT)
        self.x = torch.randn(SHAPE, generator=g, dtype=DT)
        self.h = torch.randn(SHAPE, generator=g, dtype=DT)
        self.v = (0.2 + 0.6 * torch.rand(K, generator=g, dtype=DT)).requires_grad_()
        self.w = torch.randn(SHAPE, generator=g, dtype=DT)  # loss weights
        self.K = K

    def leaves(self) -> list[torch.Tensor]:
        uniq = {id(p): p for p in self.nets.parameters()}
        return [self.x, self.h, self.v, self.raw_alpha, *uniq.values()]

    def run(self, mode: str, x_req: bool = True, h_req: bool = True, v_req: bool = True):
        for t in self.leaves():
            t.grad = None
        self.x.requires_grad_(x_req)
        self.h.requires_grad_(h_req)
        self.v.requires_grad_(v_req)
        alpha = torch.sigmoid(self.raw_alpha)
        fns = [
            (lambda z, i=i: alpha[i] * self.nets[i](z) + 0.1 * self.const) for i in range(self.K)
        ]
        params = [*self.nets.parameters(), alpha]  # duplicates (shared nets) are dropped
        x_k, h_k = coupled_sequence(fns, self.v, self.x, self.h, params=params, mode=mode)
        loss = (self.w * x_k).sum() + (x_k * h_k).mean()
        loss.backward()
        grads = [None if t.grad is None else t.grad.clone() for t in self.leaves()]
        return x_k.detach(), h_k.detach(), grads


# -- constrained parameterisation --------------------------------------------------------
def test_constrained_unit_interval_roundtrip_and_bounds():
    raw = torch.linspace(-50, 50, 101, dtype=DT)
    val = constrained_unit_interval(raw, 0.05, 0.95)
    assert float(val.min()) >= 0.05 and float(val.max()) <= 0.95
    assert torch.all(val[1:] >= val[:-1])
    mid = torch.linspace(-5, 5, 11, dtype=DT)
    back = constrained_unit_interval_inverse(constrained_unit_interval(mid, 0.05, 0.95), 0.05, 0.95)
    torch.testing.assert_close(back, mid, rtol=1e-10, atol=1e-10)
    assert abs(float(constrained_unit_interval_inverse(0.5, 0.05, 0.95))) < 1e-12
    with pytest.raises(ValueError, match="value"):
        constrained_unit_interval_inverse(0.95, 0.05, 0.95)
    with pytest.raises(ValueError, match="lo < hi"):
        constrained_unit_interval(raw, 0.5, 0.5)


# -- equality of the three modes ---------------------------------------------------------
@pytest.mark.parametrize("K", [1, 3, 5])
@pytest.mark.parametrize("shared", [False, True])
def test_modes_agree(K: int, shared: bool):
    s = _Setup(K, shared)
    ref_x, ref_h, ref_g = s.run("autograd")
    for mode in ("checkpoint", "reversible"):
        x_k, h_k, grads = s.run(mode)
        assert torch.equal(x_k, ref_x) and torch.equal(h_k, ref_h), mode
        for name, g, r in zip(("x", "h", "v", "raw_alpha", "nets"), grads, ref_g, strict=False):
            assert g is not None and r is not None, (mode, name)
            assert _rel(g, r) < 1e-8, (mode, name, _rel(g, r))
        for g, r in zip(grads[4:], ref_g[4:], strict=True):
            assert _rel(g, r) < 1e-8, mode


@pytest.mark.parametrize("x_req,h_req,v_req", [(False, False, False), (True, False, False)])
def test_inputs_without_grad(x_req: bool, h_req: bool, v_req: bool):
    s = _Setup(3, shared=False, seed=3)
    _, _, ref = s.run("autograd", x_req, h_req, v_req)
    _, _, got = s.run("reversible", x_req, h_req, v_req)
    for g, r, req in zip(got[:3], ref[:3], (x_req, h_req, v_req), strict=True):
        assert (g is None) == (r is None) == (not req)
        if req:
            assert _rel(g, r) < 1e-8
    for g, r in zip(got[3:], ref[3:], strict=True):
        assert _rel(g, r) < 1e-8


def test_gradcheck_tiny():
    # Matrix products rather than convolutions: same check, a fraction of the run time.
    torch.manual_seed(1)
    x = torch.randn(1, 1, 3, 3, dtype=DT, requires_grad=True)
    h = torch.randn(1, 1, 3, 3, dtype=DT, requires_grad=True)
    v = torch.tensor([0.3, 0.6], dtype=DT, requires_grad=True)
    w0 = (0.7 * torch.randn(3, 3, dtype=DT)).requires_grad_()
    w1 = (0.7 * torch.randn(3, 3, dtype=DT)).requires_grad_()

    def fn(x, h, v, w0, w1):
        fns = [lambda z, w=w: torch.tanh(z @ w) for w in (w0, w1)]
        return coupled_sequence(fns, v, x, h, params=[w0, w1], mode="reversible")

    assert torch.autograd.gradcheck(fn, (x, h, v, w0, w1), eps=1e-6, atol=1e-7)


# -- nested (level 2 inside level 1) -----------------------------------------------------
def _nested_grads(outer_mode: str, inner_mode: str, use_ckpt: bool):
    K = 3
    torch.manual_seed(7)
    groups = nn.ModuleList(
        ReversibleBlockGroup([_net(10 * i + 1), _net(10 * i + 2)], v_init=0.4) for i in range(K)
    )
    convs = nn.ModuleList(nn.Conv2d(2, 2, 3, padding=1).to(DT) for _ in range(K))
    for g in groups:
        g.to(DT)
        with torch.no_grad():
            g.m.fill_(0.3)  # non-zero so the h_K branch of the merge is exercised
            g.v_raw.add_(torch.tensor([0.2, -0.3], dtype=DT))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(SHAPE, generator=g, dtype=DT, requires_grad=True)
    v = torch.tensor([0.5, 0.3, 0.7], dtype=DT, requires_grad=True)

    def f(z: torch.Tensor, i: int) -> torch.Tensor:
        z = groups[i](z, mode=inner_mode)
        return checkpoint(convs[i], z, use_reentrant=False) if use_ckpt else convs[i](z)

    fns = [lambda z, i=i: f(z, i) for i in range(K)]
    params = [*groups.parameters(), *convs.parameters()]
    x_k, h_k = coupled_sequence(fns, v, x, x, params=params, mode=outer_mode)
    (x_k.square().sum() + (x_k * h_k).sum()).backward()
    return [x.grad, v.grad] + [p.grad for p in params]


def test_nested_reversible_and_checkpoint():
    ref = _nested_grads("autograd", "autograd", use_ckpt=False)
    for outer, inner, ck in (
        ("reversible", "reversible", True),
        ("checkpoint", "reversible", True),
    ):
        got = _nested_grads(outer, inner, ck)
        for gg, rr in zip(got, ref, strict=True):
            assert gg is not None and rr is not None
            assert _rel(gg, rr) < 1e-8, (outer, _rel(gg, rr))


# -- inverse pass ------------------------------------------------------------------------
def test_inverse_reconstructs_forward_states():
    K = 5
    nets = [_net(20 + i, torch.float32) for i in range(K)]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=g)
    fns = list(nets)
    fwd = forward_states(fns, torch.full((K,), 0.5), x, x)
    inv = invert_sequence(fns, torch.full((K,), 0.5), *fwd[-1])
    assert len(inv) == K + 1
    # x_{K-1} = h_K is a copy: the first inverse step is exact in x; round-off enters via h.
    assert torch.equal(inv[K][0], fwd[K][0]) and torch.equal(inv[K - 1][0], fwd[K - 1][0])
    err_05 = inverse_reconstruction_error(fns, torch.full((K,), 0.5), x, x)
    err_005 = inverse_reconstruction_error(fns, torch.full((K,), 0.05), x, x)
    # Measured (float32, K=5, (2, 2, 16, 16), torch 2.13 CPU), max relative error over states:
    # v=0.5 -> 8.0e-08, v=0.2 -> 7.6e-07, v=0.1 -> 8.8e-06, v=0.05 -> 1.4e-04.
    # The 1/v amplification per inverse step shows as ~3 orders of magnitude between the ends.
    assert err_05 < 1e-6
    assert err_005 < 2e-3
    assert err_005 > 100 * err_05


# -- memory ------------------------------------------------------------------------------
def _saved_bytes(mode: str, K: int) -> int:
    s = _Setup(K, shared=False, seed=2)
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    alpha = torch.sigmoid(s.raw_alpha)
    fns = [(lambda z, i=i: alpha[i] * s.nets[i](z)) for i in range(K)]
    x = s.x.requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        x_k, _ = coupled_sequence(fns, s.v, x, s.h, params=[*s.nets.parameters(), alpha], mode=mode)
    x_k.sum().backward()  # the graph is still usable
    return total


def test_reversible_saves_almost_nothing():
    K = 5
    auto = _saved_bytes("autograd", K)
    rev = _saved_bytes("reversible", K)
    ckpt = _saved_bytes("checkpoint", K)
    # Measured (bytes for K = 1, 3, 5; x is 8192 B): autograd 66704 / 200128 / 333552,
    # checkpoint 16392 / 49176 / 81960 (the step inputs), reversible 16392 / 16408 / 16424
    # (x_K, h_K and v: independent of K).
    assert rev < auto / K
    assert rev <= 2 * x_bytes() + 64
    assert rev < ckpt < auto


def x_bytes() -> int:
    return torch.zeros(SHAPE, dtype=DT).numel() * 8


# -- validation, inference path, RNG -----------------------------------------------------
def test_validation_errors():
    x = torch.randn(SHAPE, dtype=DT)
    fns = [nn.Identity(), nn.Identity()]
    for bad in ([0.0, 0.5], [0.5, 1.0], [-0.1, 0.5], [float("nan"), 0.5]):
        with pytest.raises(ValueError, match="v must lie strictly"):
            coupled_sequence(fns, torch.tensor(bad, dtype=DT), x, x)
    with pytest.raises(ValueError, match=r"v must be a tensor of shape \(K,\)"):
        coupled_sequence(fns, torch.full((3,), 0.5, dtype=DT), x, x)
    with pytest.raises(ValueError, match="mode"):
        coupled_sequence(fns, torch.full((2,), 0.5, dtype=DT), x, x, mode="fast")
    with pytest.raises(ValueError, match="h must have the shape"):
        coupled_sequence(fns, torch.full((2,), 0.5, dtype=DT), x, x[:1])
    with pytest.raises(ValueError, match=r"functions\[1\]"):
        coupled_sequence(
            [nn.Identity(), lambda z: z[:1]], torch.full((2,), 0.5, dtype=DT), x, x, mode="autograd"
        )
    with pytest.raises(ValueError, match="v_init"):
        ReversibleBlockGroup([nn.Identity()], v_init=0.99, v_min=0.05)


def test_no_grad_inference_path():
    s = _Setup(3, shared=False, seed=4)
    fns = list(s.nets)
    ref_x, ref_h = coupled_sequence(fns, s.v, s.x, s.h, mode="autograd")
    with torch.no_grad():
        for mode in ("autograd", "checkpoint", "reversible"):
            x_k, h_k = coupled_sequence(fns, s.v, s.x, s.h, params=list(s.nets.parameters()))
            assert x_k.grad_fn is None and not x_k.requires_grad, mode
            assert torch.equal(x_k, ref_x.detach()) and torch.equal(h_k, ref_h.detach())
    x_k, _ = coupled_sequence(fns, s.v, s.x, s.h, params=list(s.nets.parameters()))
    assert "Reversible" in type(x_k.grad_fn).__name__


def _noisy_grads(mode: str, preserve: bool = True, check: bool = False):
    nets = nn.ModuleList(_net(30 + i) for i in range(3))
    v = torch.full((3,), 0.5, dtype=DT, requires_grad=True)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(SHAPE, generator=g, dtype=DT, requires_grad=True)
    fns = [(lambda z, n=n: n(z) * (1 + 0.1 * torch.rand_like(z))) for n in nets]
    torch.manual_seed(123)
    x_k, h_k = coupled_sequence(
        fns,
        v,
        x,
        x,
        params=list(nets.parameters()),
        mode=mode,
        preserve_rng_state=preserve,
        check_recompute=check,
    )
    state = torch.get_rng_state()
    (x_k + h_k).square().sum().backward()
    if preserve:  # the replay runs inside fork_rng: backward leaves the global RNG untouched
        assert torch.equal(state, torch.get_rng_state())
    return [x.grad, v.grad, *[p.grad for p in nets.parameters()]]


def test_rng_is_replayed_in_backward():
    ref = _noisy_grads("autograd")
    got = _noisy_grads("reversible", check=True)
    for gg, rr in zip(got, ref, strict=True):
        assert _rel(gg, rr) < 1e-8
    with pytest.warns(RuntimeWarning, match="recomputed"):
        bad = _noisy_grads("reversible", preserve=False, check=True)
    assert _rel(bad[0], ref[0]) > 1e-4  # without replay, the gradient is wrong


def test_autocast_state_is_replayed():
    """Under CPU bfloat16 autocast the recomputed f_i must match the forward's bf16 values;
    recomputing in float32 would shift h_i by bf16 round-off (~1e-2 relative)."""
    grads = {}
    for mode in ("autograd", "reversible"):
        nets = nn.ModuleList(_net(50 + i, torch.float32) for i in range(3))
        v = torch.full((3,), 0.5, requires_grad=True)
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2), requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x_k, h_k = coupled_sequence(nets, v, x, x, params=list(nets.parameters()), mode=mode)
        (x_k.float().square().sum() + h_k.float().sum()).backward()
        grads[mode] = [x.grad, v.grad, *[p.grad for p in nets.parameters()]]
    # Measured: x and parameter grads 1e-8 / 0 relative with the replay, 1e-3 without it.
    # v's grad differs by ~4e-4: autograd reduces the bf16 product (1 - v) f_i in bf16,
    # the closed-form <g_x, h_i - f_i> is summed in float32.
    rev, ref = grads["reversible"], grads["autograd"]
    assert _rel(rev[1], ref[1]) < 3e-3
    for gg, rr in zip(rev[:1] + rev[2:], ref[:1] + ref[2:], strict=True):
        assert _rel(gg, rr) < 1e-5


# -- level-2 wrapper ---------------------------------------------------------------------
def test_block_group_init_bounds_and_closures():
    nets = [_net(40), _net(41)]
    grp = ReversibleBlockGroup(nets, v_init=0.5, v_min=0.05).to(DT)
    torch.testing.assert_close(grp.v, torch.full((2,), 0.5, dtype=DT))
    assert float(grp.m.detach()) == 0.0
    assert {id(p) for p in nets[0].parameters()} <= {id(p) for p in grp.parameters()}
    x = torch.randn(SHAPE, dtype=DT)
    x_k, _ = coupled_sequence(nets, grp.v, x, x, mode="autograd")
    assert torch.equal(grp(x, mode="reversible"), x_k)  # m = 0 gives x_K
    with torch.no_grad():
        grp.v_raw.copy_(torch.tensor([-1e3, 1e3]))
    v_now = grp.v.detach()
    assert float(v_now.min()) >= 0.05 and float(v_now.max()) <= 0.95

    # Closures over a plain tensor parameter: it must be passed explicitly via params.
    scale = torch.tensor(0.7, dtype=DT, requires_grad=True)
    net = _net(42)
    grads = {}
    for mode in ("autograd", "reversible"):
        grp2 = ReversibleBlockGroup([lambda z: scale * net(z), torch.tanh], params=[scale]).to(DT)
        with torch.no_grad():
            grp2.m.fill_(0.5)
        scale.grad = None
        for p in net.parameters():
            p.grad = None
        # net is captured by a closure, so its parameters are extra params of this call.
        grp2(x, mode=mode, extra_params=list(net.parameters())).square().sum().backward()
        grads[mode] = [
            scale.grad,
            grp2.v_raw.grad,
            grp2.m.grad,
            *[p.grad for p in net.parameters()],
        ]
    for gg, rr in zip(grads["reversible"], grads["autograd"], strict=True):
        assert _rel(gg, rr) < 1e-8


@pytest.mark.parametrize("shared", [False, True])
def test_accumulate_grad_matches_autograd(shared: bool):
    """With accumulate_grad, leaf-parameter gradients are added straight into .grad and
    equal plain autograd's (the schedule is then a leaf tensor used inside the closures)."""
    torch.manual_seed(0)
    K = 3
    nets = nn.ModuleList([_net(0)] * K if shared else [_net(i) for i in range(K)])
    x = torch.randn(SHAPE, dtype=DT, requires_grad=True)
    v = torch.full((K,), 0.4, dtype=DT, requires_grad=True)
    w = torch.randn(SHAPE, dtype=DT)
    params = list({id(p): p for p in nets.parameters()}.values())

    def grads(mode: str, accumulate: bool):
        for t in [x, v, *params]:
            t.grad = None
        fns = [nets[i] for i in range(K)]
        x_k, h_k = coupled_sequence(
            fns, v, x, x * 0.5, params=params, mode=mode, accumulate_grad=accumulate
        )
        ((w * x_k).sum() + (x_k * h_k).mean()).backward()
        return [t.grad.clone() for t in [x, v, *params]]

    ref = grads("autograd", False)
    for got, want in zip(grads("reversible", True), ref, strict=True):
        assert _rel(got, want) < 1e-10
    # Non-leaf params cannot be accumulated into .grad.
    with pytest.raises(ValueError, match="needs every tensor in params to be a leaf"):
        coupled_sequence(
            [nets[0]],
            v[:1],
            x,
            x,
            params=[params[0] * 1.0],
            mode="reversible",
            accumulate_grad=True,
        )
