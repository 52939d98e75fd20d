"""Tests of the noise-estimator adapters (idm_med.backbones) and injectors (idm_med.injectors)."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.resnet import ResnetBlock2D

from idm_med.backbones import NoiseEstimator, sd_layout_config, small_unet_config
from idm_med.injectors import Injector, InjectorContext
from idm_med.sd_unet import load_sd_unet

SD_TINY = dict(block_out_channels=(16, 32), norm_num_groups=8, attention_head_dim=4)
SMALL_TINY = dict(block_out_channels=(8, 16, 16), norm_num_groups=4)


def _configs():
    return [
        pytest.param(sd_layout_config(**SD_TINY, cross_attention_dim=16), id="sd"),
        pytest.param(small_unet_config(**SMALL_TINY), id="small"),
    ]


def test_trimmed_sd_layout_has_no_mid_block_time_embedding_or_cross_attention():
    net = NoiseEstimator(sd_layout_config(**SD_TINY, cross_attention_dim=16))
    names = [n for n, _ in net.named_modules()]
    assert not any("mid_block" in n or "time_embedding" in n or "time_proj" in n for n in names)
    resnets = [m for m in net.modules() if isinstance(m, ResnetBlock2D)]
    transformers = [m for m in net.modules() if isinstance(m, BasicTransformerBlock)]
    assert len(resnets) == 2 * 2 + 2 * 3 and len(transformers) == 10
    assert all(r.time_emb_proj is None for r in resnets)
    assert all(b.attn2 is None and b.norm2 is None for b in transformers)
    assert len(net.down_blocks) == 2 and len(net.up_blocks) == 2
    assert net.down_blocks[1].downsamplers is None and net.up_blocks[1].upsamplers is None


@pytest.mark.parametrize("channels", [1, 2])
def test_parameter_count_equals_diffusers_unet_minus_removed_parts(channels):
    cfg = sd_layout_config(**SD_TINY, cross_attention_dim=16)
    net = NoiseEstimator(cfg, image_channels=channels)
    kwargs = dict(cfg["unet"], in_channels=4 * channels, out_channels=4 * channels)
    reference = UNet2DConditionModel(**kwargs)

    def removed_part(name: str) -> bool:
        text_attention = "transformer_blocks" in name and (".attn2." in name or ".norm2." in name)
        return name.startswith("time_embedding.") or ".time_emb_proj." in name or text_attention

    removed = sum(p.numel() for n, p in reference.named_parameters() if removed_part(n))
    n = net.num_parameters()
    print(f"tiny trimmed SD layout ({channels} channel(s)): {n} parameters")
    assert n == sum(p.numel() for p in reference.parameters()) - removed
    assert removed > 0


def test_pixel_unshuffle_adapter_round_trip_and_channel_layout():
    net = NoiseEstimator(sd_layout_config(**SD_TINY, cross_attention_dim=16), image_channels=2)
    x = torch.randn(3, 2, 8, 12, dtype=torch.float64)
    h = net.to_unet_channels(x)
    assert h.shape == (3, 8, 4, 6)
    torch.testing.assert_close(net.from_unet_channels(h), x, rtol=0, atol=0)
    # Channel k·4 + j is sub-pixel j (row-major in the 2×2 cell) of image channel k.
    torch.testing.assert_close(h[:, 4 + 3], x[:, 1, 1::2, 1::2], rtol=0, atol=0)
    torch.testing.assert_close(h[:, 1], x[:, 0, 0::2, 1::2], rtol=0, atol=0)


@pytest.mark.parametrize("config", _configs())
@pytest.mark.parametrize("channels", [1, 2])
def test_output_shape_and_size_check(config, channels):
    net = NoiseEstimator(config, image_channels=channels, invertible_blocks=True)
    x = torch.randn(2, channels, 16, 16)
    out = net(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.randn(1, channels, 18, 16))
    with pytest.raises(ValueError, match=f"\\(B, {channels}, H, W\\)"):
        net(torch.randn(1, channels + 1, 16, 16))


@pytest.mark.parametrize("config", _configs())
def test_traversal_matches_diffusers_block_forward(config):
    """Without couplings/injectors our traversal equals diffusers' own block forwards."""
    torch.manual_seed(0)
    net = NoiseEstimator(config).double().eval()
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    h = net.conv_in(net.to_unet_channels(x))
    skips = (h,)
    for block in net.down_blocks:
        h, res = block(h, temb=None)
        skips += res
    for block in net.up_blocks:
        n = len(block.resnets)
        h, skips = block(h, skips[-n:], temb=None), skips[:-n]
    h = net.conv_out(net.conv_act(net.conv_norm_out(h)))
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.from_unet_channels(h), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("config", _configs())
def test_level2_modes_agree_and_couplings_change_the_function(config):
    torch.manual_seed(0)
    plain = NoiseEstimator(config).double()
    net = NoiseEstimator(config, invertible_blocks=True).double()
    net.load_state_dict(plain.state_dict(), strict=False)  # same UNet weights
    assert len(net.groups) > 0
    with torch.no_grad():
        for g in net.groups:
            g.m.fill_(0.3)
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    out = {}
    grads = {}
    for mode in ("autograd", "reversible"):
        net.zero_grad(set_to_none=True)
        out[mode] = net(x, level2_mode=mode)
        out[mode].square().sum().backward()
        grads[mode] = torch.cat([p.grad.flatten() for p in net.parameters()])
    torch.testing.assert_close(out["reversible"], out["autograd"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads["reversible"], grads["autograd"], rtol=1e-8, atol=1e-10)
    with torch.no_grad():
        assert (plain(x) - out["autograd"]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="invertible_blocks"):
        plain(x, level2_mode="reversible")


def test_injector_formula_and_divisibility():
    torch.manual_seed(0)
    inj = Injector(channels=32, factor=4, image_channels=2).double()
    feat = torch.randn(2, 32, 3, 5, dtype=torch.float64)
    x_pinv = torch.randn(2, 2, 12, 20, dtype=torch.float64)
    ctx = InjectorContext(x_pinv=x_pinv, AtA=lambda f: 0.5 * f)
    out = inj(feat, ctx)
    f = inj.conv1(torch.nn.functional.pixel_shuffle(feat, 4))
    expected = feat + torch.nn.functional.pixel_unshuffle(
        inj.conv2(torch.cat([f, 0.5 * f, x_pinv], 1)), 4
    )
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert sum(p.numel() for p in inj.parameters()) == (2 * 2 + 2) + (6 * 2 + 2)
    with pytest.raises(ValueError, match="divisible"):
        Injector(channels=24, factor=4)


def test_injection_sites_of_both_layouts():
    sd = NoiseEstimator(sd_layout_config(**SD_TINY, cross_attention_dim=16))
    # 2 per attention: 2 down blocks × 2 layers + 2 up blocks × 3 layers = 10 attentions.
    assert [(s.channels, s.factor) for s in sd.sites] == (
        [(16, 2)] * 4 + [(32, 4)] * 4 + [(32, 4)] * 6 + [(16, 2)] * 6
    )
    small = NoiseEstimator(small_unet_config(**SMALL_TINY))
    # No-attention blocks: one after the resnet group; attention blocks: around each attention.
    assert [(s.channels, s.factor) for s in small.sites] == (
        [(8, 1), (16, 2)] + [(16, 4)] * 2 + [(16, 4)] * 4 + [(16, 2), (8, 1)]
    )


def test_load_sd_unet_from_local_full_layout_directory(tmp_path):
    """A tiny full SD-like UNet (4 resolutions, mid block, time embedding, text attention)."""
    torch.manual_seed(0)
    full = UNet2DConditionModel(
        block_out_channels=(16, 32, 32, 32),
        norm_num_groups=8,
        attention_head_dim=4,
        cross_attention_dim=16,
        layers_per_block=2,
    )
    full.save_pretrained(tmp_path / "unet")
    net, report = load_sd_unet(tmp_path, image_channels=2)
    src = full.state_dict()
    got = net.state_dict()
    assert any(k.startswith("time_embedding.") for k in report["dropped"])
    assert any(k.startswith("mid_block.") for k in report["dropped"])
    assert any(".attn2." in k for k in report["dropped"])
    assert any(k.startswith("down_blocks.1.downsamplers") for k in report["dropped"])
    assert report["missing"] == [] and report["mismatched"] == []
    # SD up block 2 (second-to-last) becomes our up block 0.
    key = "up_blocks.2.attentions.1.transformer_blocks.0.attn1.to_q.weight"
    torch.testing.assert_close(got[key.replace("up_blocks.2", "up_blocks.0")], src[key])
    w = src["conv_in.weight"]
    torch.testing.assert_close(got["conv_in.weight"], torch.cat([w, w], 1) / 2)
    torch.testing.assert_close(got["conv_out.bias"], src["conv_out.bias"].repeat(2))
    assert net(torch.randn(1, 2, 16, 16)).shape == (1, 2, 16, 16)


def test_small_unet_is_a_unet2dmodel_without_time_embedding():
    net = NoiseEstimator(small_unet_config(**SMALL_TINY))
    reference = UNet2DModel(**net.config["unet"])
    removed = sum(
        p.numel()
        for n, p in reference.named_parameters()
        if n.startswith(("time_embedding.", "time_proj.")) or "time_emb_proj." in n
    )
    assert net.num_parameters() == sum(p.numel() for p in reference.parameters()) - removed
    assert all(m.time_emb_proj is None for m in net.modules() if isinstance(m, ResnetBlock2D))


def test_adapt_channels_tiles_and_halves_input_filters():
    from idm_med.channel_adapters import adapt_channels

    w = torch.arange(2 * 3 * 1 * 1, dtype=torch.float64).reshape(2, 3, 1, 1)
    same = adapt_channels(w, 1, 3)
    assert same is w
    wide = adapt_channels(w, 1, 6)
    torch.testing.assert_close(wide, torch.cat([w, w], 1) / 2, rtol=0, atol=0)
    # An input with equal parts gives the original filter response.
    x = torch.rand(3, dtype=torch.float64)
    torch.testing.assert_close(wide[:, :, 0, 0] @ torch.cat([x, x]), w[:, :, 0, 0] @ x)
    bias = torch.tensor([1.0, -2.0])
    torch.testing.assert_close(adapt_channels(bias, 0, 4), torch.tensor([1.0, -2.0, 1.0, -2.0]))
    assert adapt_channels(w, 1, 4) is None  # 4 is not a multiple of 3
