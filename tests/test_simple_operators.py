"""Operator-specific checks for Gaussian CS, inpainting and super-resolution."""

from __future__ import annotations

import math

import pytest
import torch

from idm_med.operators import PixelMaskFunc, make_operator


def test_gaussian_cs_matrix_has_orthonormal_columns():
    op = make_operator("gaussian_cs", image_size=64, ratio=0.1, block_size=32)
    phi = op.phi.double()
    q = math.ceil(0.1 * 1024)
    assert phi.shape == (1024, q)
    assert torch.allclose(phi.T @ phi, torch.eye(q, dtype=torch.float64), atol=1e-6)


def test_gaussian_cs_blocks_are_local_without_permutation():
    op = make_operator("gaussian_cs", image_size=32, ratio=0.5, block_size=16)
    x = torch.zeros(1, 1, 32, 32)
    x[..., 16:, :16] = torch.rand(16, 16)  # bottom-left tile only
    y = op.A(x)
    nonzero_blocks = (y.abs().sum(-1) > 0).flatten().nonzero().flatten().tolist()
    assert nonzero_blocks == [2]  # tiles are numbered row-major


def test_gaussian_cs_permutation_scatters_blocks():
    op = make_operator("gaussian_cs", image_size=32, ratio=0.5, block_size=16, permute=True)
    x = torch.zeros(1, 1, 32, 32)
    x[..., 16:, :16] = torch.rand(16, 16)
    assert (op.A(x).abs().sum(-1) > 0).sum() == 4
    other = make_operator(
        "gaussian_cs", image_size=32, ratio=0.5, block_size=16, permute=True, seed=1
    )
    assert not torch.equal(op.perm, other.perm)


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_gaussian_cs_rejects_bad_ratio(ratio):
    with pytest.raises(ValueError, match=r"ratio must lie in \(0, 1\]"):
        make_operator("gaussian_cs", image_size=32, ratio=ratio)


def test_gaussian_cs_rejects_indivisible_size():
    with pytest.raises(ValueError, match="block_size must be a positive divisor"):
        make_operator("gaussian_cs", image_size=40, ratio=0.1, block_size=32)


@pytest.mark.parametrize("mask_type", ["random", "box"])
def test_inpainting_missing_fraction(mask_type):
    op = make_operator("inpainting", image_size=64, missing_ratio=0.25, mask_type=mask_type)
    assert abs((~op.mask).float().mean().item() - 0.25) < 0.01


def test_inpainting_box_is_one_rectangle():
    op = make_operator("inpainting", image_size=(40, 60), missing_ratio=0.36, mask_type="box")
    rows, cols = (~op.mask).nonzero(as_tuple=True)
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert (h, w) == (24, 36) and int((~op.mask).sum()) == h * w


def test_inpainting_explicit_mask_and_errors():
    mask = torch.rand(8, 8) > 0.5
    op = make_operator("inpainting", image_size=8, mask=mask)
    assert torch.equal(op.mask, mask) and op.config["explicit_mask"] is True
    rebuilt = make_operator(**op.config)
    with pytest.raises(RuntimeError, match="has no mask yet"):
        rebuilt.A(torch.rand(1, 1, 8, 8))
    rebuilt.load_state_dict(op.state_dict())
    assert torch.equal(rebuilt.mask, mask)
    with pytest.raises(ValueError, match=r"mask must have shape \(8, 8\)"):
        make_operator("inpainting", image_size=8, mask=torch.ones(8, 9))
    with pytest.raises(ValueError, match="missing_ratio must lie in"):
        make_operator("inpainting", image_size=8, missing_ratio=1.0)
    with pytest.raises(ValueError, match="mask_type must be one of"):
        make_operator("inpainting", image_size=8, missing_ratio=0.5, mask_type="stripes")


def test_superres_pinv_is_replicate_upsampling():
    op = make_operator("superres", image_size=8, factor=4)
    y = torch.arange(4.0).reshape(1, 1, 2, 2)
    up = op.A_pinv(y)
    assert torch.equal(up[0, 0, :4, :4], torch.zeros(4, 4))
    assert torch.equal(up[0, 0, 4:, 4:], torch.full((4, 4), 3.0))
    assert torch.equal(op.A(up), y)


def test_superres_rejects_bad_factor():
    with pytest.raises(ValueError, match="factor must be a positive integer dividing"):
        make_operator("superres", image_size=10, factor=3)


def test_gaussian_cs_double_is_exactly_orthonormal():
    """A float32 operator cast to float64 takes the exact matrix, not float32's rounding."""
    op = make_operator("gaussian_cs", image_size=32, ratio=0.3, block_size=16)
    assert op.phi.dtype == torch.float32
    op = op.double()
    gram = op.phi.T @ op.phi
    assert torch.allclose(gram, torch.eye(gram.shape[0], dtype=torch.float64), atol=1e-12)
    assert op.float().phi.dtype == torch.float32


def test_inpainting_update_draws_the_mask_of_a_fresh_operator():
    op = make_operator("inpainting", image_size=16, missing_ratio=0.4, seed=0)
    assert op.update(seed=5) is op
    fresh = make_operator("inpainting", image_size=16, missing_ratio=0.4, seed=5)
    assert torch.equal(op.mask, fresh.mask) and op.config == fresh.config
    func = PixelMaskFunc(0.4, "box")
    assert torch.equal(func(16, 16, 3), func(16, 16, 3))
    assert int((~func(16, 16, 3)).sum()) == round(0.4**0.5 * 16) ** 2
    mask = torch.rand(16, 16) > 0.5
    op.update(mask=mask)
    assert torch.equal(op.mask, mask) and op.config["explicit_mask"] is True
    with pytest.raises(ValueError, match="not both"):
        op.update(mask=mask, seed=1)


def test_gaussian_cs_update_draws_a_new_permutation_and_keeps_phi():
    kwargs = dict(image_size=32, ratio=0.5, block_size=16, permute=True)
    op = make_operator("gaussian_cs", **kwargs)
    phi = op.phi.clone()
    op.update(perm_seed=9)
    fresh = make_operator("gaussian_cs", **kwargs, perm_seed=9)
    assert torch.equal(op.perm, fresh.perm) and torch.equal(op.phi, phi)
    x = torch.rand(1, 1, 32, 32)
    assert torch.equal(op.A(x), fresh.A(x))
    perm = torch.randperm(32 * 32)
    op.update(perm=perm)
    assert torch.equal(op.perm, perm) and op.config["explicit_perm"] is True
    assert torch.allclose(op.At(op.A(op.At(op.A(x)))), op.At(op.A(x)), atol=1e-5)
    with pytest.raises(ValueError, match="permutation of range"):
        op.update(perm=torch.zeros(32 * 32, dtype=torch.long))
    with pytest.raises(ValueError, match="permute=True"):
        make_operator("gaussian_cs", image_size=32, ratio=0.5, block_size=16).update(perm_seed=1)


def test_superres_has_no_parameters():
    op = make_operator("superres", image_size=8, factor=2)
    assert op.gram_scale == 0.25
    with pytest.raises(TypeError, match="no parameters"):
        op.update(mask=None)
