"""Faster IDM inference: windowed attention and a bfloat16 backbone.

Windowed attention is checked against attention written out by hand on every tile (padded
tiles included) and against global attention when the window covers the grid; the bf16
backbone must keep the output consistent with the data in full precision.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.attention_processor import Attention

from idm_med.backbones import small_unet_config
from idm_med.model import IDM
from idm_med.operators import make_operator
from idm_med.windowed_attention import WindowedAttnProcessor, set_attention_window


def _attention(channels: int = 8, heads: int = 2) -> Attention:
    torch.manual_seed(0)
    attn = Attention(
        channels,
        heads=heads,
        dim_head=channels // heads,
        norm_num_groups=4,
        residual_connection=True,
        bias=True,
        upcast_softmax=True,
        _from_deprecated_attn_block=True,
    )
    return attn.double().eval()


def _tile_attention_by_hand(attn: Attention, x: torch.Tensor, window: int) -> torch.Tensor:
    """Softmax attention restricted to each window × window tile, one tile at a time."""
    b, c, h, w = x.shape
    heads = attn.heads
    d = c // heads
    tokens = attn.group_norm(x).flatten(2).transpose(1, 2)  # (B, h·w, C)
    q, k, v = attn.to_q(tokens), attn.to_k(tokens), attn.to_v(tokens)
    out = torch.zeros_like(q)
    rows = torch.arange(h * w) // w
    cols = torch.arange(h * w) % w
    for i in range(0, h, window):
        for j in range(0, w, window):
            idx = ((rows >= i) & (rows < i + window) & (cols >= j) & (cols < j + window)).nonzero()
            idx = idx.squeeze(1)
            for head in range(heads):
                sl = slice(head * d, (head + 1) * d)
                qs, ks, vs = q[:, idx, sl], k[:, idx, sl], v[:, idx, sl]
                weights = torch.softmax(qs @ ks.transpose(1, 2) / math.sqrt(d), dim=-1)
                out[:, idx, sl] = weights @ vs
    out = attn.to_out[0](out).transpose(1, 2).reshape(b, c, h, w)
    return (out + x) / attn.rescale_output_factor


@pytest.mark.parametrize("shape, window", [((6, 6), 3), ((7, 5), 3), ((5, 9), 4), ((4, 4), 1)])
def test_windowed_attention_is_attention_within_each_tile(shape, window):
    attn = _attention()
    x = torch.randn(2, 8, *shape, dtype=torch.float64)
    attn.set_processor(WindowedAttnProcessor(window))
    with torch.no_grad():
        got = attn(x)
        want = _tile_attention_by_hand(attn, x, window)
    assert torch.allclose(got, want, atol=1e-12)


def test_a_window_covering_the_grid_is_global_attention():
    attn = _attention()
    x = torch.randn(1, 8, 6, 5, dtype=torch.float64)
    with torch.no_grad():
        plain = attn(x)
        set_attention_window(attn, 6)
        covering = attn(x)
        set_attention_window(attn, 3)
        tiled = attn(x)
        set_attention_window(attn, None)
        back = attn(x)
    assert torch.allclose(covering, plain, atol=1e-12)
    assert torch.allclose(back, plain, atol=1e-12)
    assert (tiled - plain).abs().max() > 1e-6  # tiles do change the result


def _model(op) -> IDM:
    torch.manual_seed(0)
    return IDM(
        backbone=small_unet_config(block_out_channels=(8, 16, 16), norm_num_groups=4),
        image_channels=op.image_shape[0],
    ).eval()


def test_idm_attention_window_is_in_image_pixels():
    """The small UNet attends at 1/4 resolution: a 32-pixel window is 8 tokens, and on a
    32² image (8² tokens) it is exactly global attention."""
    op = make_operator("inpainting", image_size=64, missing_ratio=0.5, seed=1)
    model = _model(op)
    windows = [
        m.processor.window
        for m in model.modules()
        if isinstance(m, Attention) and isinstance(m.processor, WindowedAttnProcessor)
    ]
    assert windows == []
    y = op.A(torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        full = model(y, op)
        windowed = model.set_attention_window(32)(y, op)
    windows = [
        m.processor.window
        for m in model.modules()
        if isinstance(m, Attention) and isinstance(m.processor, WindowedAttnProcessor)
    ]
    assert windows and set(windows) == {8}
    assert (windowed - full).abs().max() > 1e-7
    small = make_operator("inpainting", image_size=32, missing_ratio=0.5, seed=1)
    ys = small.A(torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        assert torch.allclose(model(ys, small), model.set_attention_window(None)(ys, small))
    with pytest.raises(ValueError, match="attention window"):
        model.set_attention_window(0)


def test_bf16_backbone_keeps_the_data_consistent_in_full_precision():
    op = make_operator("gaussian_cs", image_size=32, ratio=0.25, block_size=8)
    model = _model(op)
    y = op.A(torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(3)))
    with torch.no_grad():
        full = model(y, op)
        half = model.set_backbone_precision("bf16")(y, op)
    assert half.dtype == torch.float32
    assert (op.A(half) - y).norm() / y.norm() < 1e-5  # the projections ran in fp32
    assert 0 < (half - full).norm() / full.norm() < 5e-2  # only the UNet is rounded
    with pytest.raises(ValueError, match="backbone precision"):
        model.set_backbone_precision("fp16")


def test_idm_method_takes_the_training_patch_as_window(tmp_path):
    import json

    from idm_med.methods import IDMMethod

    op = make_operator("inpainting", image_size=32, missing_ratio=0.5, seed=1)
    model = _model(op)
    model.save_pretrained(tmp_path, operator=op)
    (tmp_path / "training.json").write_text(json.dumps({"image_size": 24}))
    method = IDMMethod(tmp_path, precision="bf16", attention_window="training")
    assert method.model.attention_window == 24
    assert method.model.backbone_precision == "bf16"
    (tmp_path / "training.json").write_text(json.dumps({}))
    with pytest.raises(ValueError, match="image_size"):
        IDMMethod(tmp_path, attention_window="training")


def test_fp32_backbone_keeps_the_callers_autocast():
    """Training under bf16 autocast (mixed_precision="bf16") with a matrix operator gives a
    bf16 ``y``; the default "fp32" backbone must not switch the caller's autocast off, or
    its convolutions meet bf16 inputs with fp32 weights."""
    op = make_operator("gaussian_cs", image_size=32, ratio=0.25, block_size=8)
    model = _model(op).train()
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = op.A(x)
        assert y.dtype == torch.bfloat16
        loss = (model(y, op) - x).abs().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
