"""SD-layout diffusion priors (``idm-med pretrain --backbone sd``): pretraining a tiny
trimmed SD UNet2DConditionModel unconditionally (null context), resuming, sampling and
DDNM from it, and IDM fine-tuned from it (``train --init``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from idm_med import prior, sampling
from idm_med.ddnm import ddnm_sample
from idm_med.model import IDM
from idm_med.operators import make_operator
from idm_med.training import TrainingConfig, idm_from_prior

from .prior_helpers import pretrain_tiny

TINY = dict(
    block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=16, attention_head_dim=4
)


def _pretrain(root, name, iterations, **kwargs):
    return pretrain_tiny(root, name, iterations, TINY, backbone="sd", **kwargs)


@pytest.fixture(scope="module")
def sd_prior(tmp_path_factory):
    """A 3-step SD-layout prior whose cross-attention output biases are made non-zero, so
    that folding them into IDM matters."""
    root = tmp_path_factory.mktemp("sd_prior")
    unet = _pretrain(root, "p", 3)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "attn2.to_out.0.bias" in name:
                p.normal_(0.0, 0.5)
    prior.save_prior(unet, root / "q", {"kind": "prior"})
    return root


def test_pretrain_writes_an_sd_layout_diffusers_directory(sd_prior):
    loaded = UNet2DConditionModel.from_pretrained(sd_prior / "p")
    assert loaded.config.in_channels == 4 and loaded.config.out_channels == 4  # 2×2 unshuffle
    assert loaded.config.down_block_types == ["CrossAttnDownBlock2D"] * 2
    assert loaded.config.mid_block_type is None and loaded.config.cross_attention_dim == 16
    unet, sched, info = prior.load_prior(sd_prior / "p")
    assert isinstance(unet, UNet2DConditionModel) and isinstance(sched, DDPMScheduler)
    assert info["backbone"] == "sd" and info["pretraining"]["backbone"] == "sd"
    assert info["record"]["steps"] == 3
    losses = [float(r.split(",")[1]) for r in (sd_prior / "p" / "log.csv").read_text().split()[1:]]
    assert len(losses) == 3 and np.isfinite(losses).all()
    assert sampling.image_channels_of(unet) == 1


def test_sd_pretrain_resumes_exactly(tmp_path):
    full = _pretrain(tmp_path, "a", 4)
    _pretrain(tmp_path, "b", 2)
    resumed = _pretrain(tmp_path, "b", 4, resume=True)
    for (k, v), w in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(v, w, rtol=0, atol=0, msg=k)


def test_backbone_and_patch_size_are_checked(tmp_path, sd_prior):
    with pytest.raises(ValueError, match="backbone must be one of"):
        prior.make_prior_unet(prior.PretrainConfig(backbone="large"))
    with pytest.raises(ValueError, match="multiple of 4"):
        prior.make_prior_unet(prior.PretrainConfig(backbone="sd", patch_size=18, unet=TINY))
    small = prior.PretrainConfig(unet=dict(block_out_channels=(8, 16, 16), norm_num_groups=4))
    with pytest.raises(ValueError, match="same --backbone"):
        prior._init_from(prior.make_prior_unet(small), str(sd_prior / "p"))
    unet, _, _ = prior.load_prior(sd_prior / "p")
    with pytest.raises(ValueError, match="small prior"):  # SR3 / the small backbone
        prior.layout_of(unet)


def test_sd_prior_samples_and_runs_ddnm(sd_prior):
    unet, sched, _ = prior.load_prior(sd_prior / "p")
    a = sampling.sample(unet, sched, (2, 1, 16, 16), steps=3, kind="ddim", seed=1)
    b = sampling.sample(unet, sched, (2, 1, 16, 16), steps=3, kind="ddim", seed=1)
    assert a.shape == (2, 1, 16, 16) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # The gray SD prior serves 2-channel images part by part, as a small prior does.
    eps = sampling.denoiser(unet, 2)
    x, t = torch.rand(2, 2, 16, 16), torch.full((2,), 10)
    with torch.no_grad():
        both = eps(x, t)
        part = sampling.unet_eps(unet, x[:, 1:], t)
    torch.testing.assert_close(both[:, 1:], part, rtol=1e-5, atol=1e-6)
    op = make_operator("inpainting", image_size=16, missing_ratio=0.5)
    y = op.A(torch.rand(1, 1, 16, 16))
    out = ddnm_sample(y, op, unet, steps=3, scheduler=sched, seed=0)
    assert out.shape == (1, 1, 16, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("channels", [1, 2])
def test_idm_from_sd_prior_keeps_the_prior_at_the_folded_timestep(sd_prior, channels):
    unet, sched, _ = prior.load_prior(sd_prior / "q")
    model = idm_from_prior(sd_prior / "q", image_channels=channels, invertible_blocks=False)
    model.eval()
    assert model.backbone.kind == "sd"
    alpha0 = float(model.alphas_cumprod().detach()[2])
    t = int(torch.argmin((sched.alphas_cumprod - alpha0).abs()))
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():  # equal parts: each gets the prior's noise estimate
        out = model.backbone(torch.cat([x] * channels, 1))
        ref = sampling.unet_eps(unet, x, torch.full((2,), t))
    for c in range(channels):
        torch.testing.assert_close(out[:, c : c + 1], ref, rtol=1e-4, atol=1e-5)


def test_training_config_starts_idm_from_the_sd_prior(sd_prior):
    unet, _, _ = prior.load_prior(sd_prior / "p")
    cfg = TrainingConfig(
        operator={"name": "gaussian_cs", "ratio": 0.5, "block_size": 8},
        image_size=16,
        image_channels=1,
        init=str(sd_prior / "p"),
        steps=2,
    )
    model = cfg.make_model()
    assert isinstance(model, IDM) and model.backbone.kind == "sd"
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    torch.testing.assert_close(model.backbone.state_dict()[key], unet.state_dict()[key])
    key = "up_blocks.1.resnets.2.conv2.weight"
    torch.testing.assert_close(model.backbone.state_dict()[key], unet.state_dict()[key])
    op = make_operator("gaussian_cs", image_size=16, ratio=0.5, block_size=8)
    y = op.A(torch.rand(2, 1, 16, 16))
    out = model(y, op)
    assert out.shape == (2, 1, 16, 16) and torch.isfinite(out).all()
    out.abs().mean().backward()  # fine-tunable
    assert model.backbone.conv_in.weight.grad is not None


def test_pretrain_sd_sample_and_train_commands(tmp_path):
    from idm_med.cli import main
    from idm_med.datasets.samples import sample_path

    files = [str(sample_path("natural/brick.png"))]
    loop = ["--batch-size", "2", "--iterations", "1", "--checkpoint-every", "1", "--warmup", "1"]
    prior_dir = str(tmp_path / "prior")
    commands = [
        ["pretrain", "--backbone", "sd", "--unet-channels", "32", "64", "--norm-groups", "8"]
        + ["--files", *files, "--patch-size", "16", "--output", prior_dir, *loop],
        ["sample", prior_dir, "--steps", "2", "--n", "2", "--size", "16"]
        + ["--output", str(tmp_path / "s.png")],
        ["train", "--operator", "superres", "--factor", "2", "--image-size", "16"]
        + ["--files", *files, "--init", prior_dir, "--steps", "2"]
        + ["--output", str(tmp_path / "idm"), *loop],
    ]
    for argv in commands:
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0, argv[0]
    assert UNet2DConditionModel.from_pretrained(prior_dir).config.block_out_channels == [32, 64]
    assert (tmp_path / "s.png").stat().st_size > 0
    assert IDM.from_pretrained(tmp_path / "idm").backbone.kind == "sd"
