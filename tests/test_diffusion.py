"""Tests of the diffusion family: priors (idm_med.prior), sampling (idm_med.sampling) and
DDNM (idm_med.ddnm), on tiny UNets."""

from __future__ import annotations

import json
import types

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from idm_med import prior, sampling, train_loop
from idm_med.ddnm import ddnm_sample
from idm_med.operators import make_operator

from .prior_helpers import pretrain_tiny, random_sampler

TINY = dict(block_out_channels=(8, 16, 16), norm_num_groups=4)


def _unet(channels: int = 1) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(**prior.prior_unet_config(channels, **TINY)).double().eval()


def test_scheduler_is_ddpm_linear():
    sched = prior.default_scheduler()
    assert isinstance(sched, DDPMScheduler)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    torch.testing.assert_close(
        sched.alphas_cumprod.double(), torch.cumprod(1 - betas, 0), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("channels", [1, 2])
def test_patch_sampler_is_seeded_and_in_range(channels):
    s = random_sampler(channels)
    a = s.batch(4, train_loop.step_generator(0, 5))
    b = s.batch(4, train_loop.step_generator(0, 5))
    c = s.batch(4, train_loop.step_generator(0, 6))
    assert a.shape == (4, channels, 16, 16)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3
    mag = a.norm(dim=1) if channels == 2 else a[:, 0]
    assert float(mag.max()) <= 1.0 + 1e-6
    if channels == 1:
        assert float(a.min()) >= 0.0
    else:  # a real smooth phase: the imaginary part is not zero
        assert float(a[:, 1].abs().max()) > 0.05


def _pretrain(root, name, iterations, **kwargs):
    return pretrain_tiny(root, name, iterations, TINY, **kwargs)


def test_pretrain_resumes_exactly_and_round_trips(tmp_path):
    full = _pretrain(tmp_path, "a", 4)
    _pretrain(tmp_path, "b", 2)
    resumed = _pretrain(tmp_path, "b", 4, resume=True)
    for (k, v), w in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(v, w, rtol=0, atol=0, msg=k)
    # A plain diffusers directory: UNet2DModel.from_pretrained reads it.
    loaded = UNet2DModel.from_pretrained(tmp_path / "a")
    for k, v in full.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    unet, sched, info = prior.load_prior(tmp_path / "a")
    assert isinstance(sched, DDPMScheduler) and info["record"]["steps"] == 4
    assert (tmp_path / "a" / "log.csv").read_text().count("\n") == 5  # header + 4 steps
    with pytest.raises(FileExistsError, match="resume"):
        _pretrain(tmp_path, "a", 4)
    with pytest.raises(ValueError, match="other settings"):
        _pretrain(tmp_path, "a", 6, resume=True, channels=2)


def test_two_channel_prior_starts_from_gray(tmp_path):
    gray = _pretrain(tmp_path, "gray", 2)
    cplx = _pretrain(tmp_path, "cplx", 2, channels=2, init=str(tmp_path / "gray"))
    assert cplx.conv_in.weight.shape[1] == 2 and cplx.conv_out.weight.shape[0] == 2
    assert gray.conv_in.weight.shape[1] == 1


@pytest.mark.parametrize("kind", sampling.SAMPLERS)
def test_sampling_is_seeded(kind):
    unet, sched = _unet(), prior.default_scheduler()
    a = sampling.sample(unet, sched, (2, 1, 16, 16), steps=5, kind=kind, seed=1)
    b = sampling.sample(unet, sched, (2, 1, 16, 16), steps=5, kind=kind, seed=1)
    c = sampling.sample(unet, sched, (2, 1, 16, 16), steps=5, kind=kind, seed=2)
    assert a.shape == (2, 1, 16, 16) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3


def test_gray_prior_serves_complex_images_channel_by_channel():
    unet = _unet(1)
    eps = sampling.denoiser(unet, 2)
    x, t = torch.rand(3, 2, 16, 16, dtype=torch.float64), torch.full((3,), 10)
    out = eps(x, t)
    with torch.no_grad():
        ref = unet(x[:, 1:2], torch.full((3,), 10)).sample
    torch.testing.assert_close(out[:, 1:2], ref)
    with pytest.raises(ValueError, match="channels"):
        sampling.denoiser(_unet(2), 3)


@pytest.mark.parametrize("name", ["inpainting", "superres"])
def test_ddnm_is_seeded_and_data_consistent(name):
    kwargs = {"missing_ratio": 0.5} if name == "inpainting" else {"factor": 2}
    op = make_operator(name, image_size=16, **kwargs).double()
    x = torch.rand(2, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = op.A(x)
    unet = _unet()
    a = ddnm_sample(y, op, unet, steps=6, seed=3)
    b = ddnm_sample(y, op, unet, steps=6, seed=3)
    c = ddnm_sample(y, op, unet, steps=6, seed=4)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3
    torch.testing.assert_close(op.A(a), y, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="eta"):
        ddnm_sample(y, op, unet, steps=6, eta=1.5)


# -- SR3 ------------------------------------------------------------------------------------
def test_sr3_starts_from_the_prior_and_samples(tmp_path):
    from idm_med.sr3 import SR3Config, load_sr3, make_sr3_unet, sr3_sample, train_sr3

    unet = _unet().float()
    prior.save_prior(unet, tmp_path / "prior", {"kind": "prior"})
    cfg = SR3Config(
        operator={"name": "superres", "factor": [2, 4]},
        image_size=16,
        batch_size=2,
        init=str(tmp_path / "prior"),
        unet=TINY,
        loop=train_loop.LoopConfig(iterations=2, checkpoint_every=2, warmup=1),
    )
    sr3 = make_sr3_unet(cfg)
    assert sr3.conv_in.weight.shape[1] == 2
    torch.testing.assert_close(sr3.conv_in.weight[:, :1], unet.conv_in.weight)
    assert float(sr3.conv_in.weight[:, 1:].abs().max()) == 0.0  # condition starts silent
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():  # so at init SR3 is the prior's denoiser
        a = sr3(torch.cat([x, torch.rand_like(x)], 1), torch.full((2,), 50)).sample
        torch.testing.assert_close(a, unet(x, torch.full((2,), 50)).sample)
    train_sr3(cfg, tmp_path / "sr3", sampler=random_sampler(), progress=False)
    model, sched, info = load_sr3(tmp_path / "sr3")
    assert info["kind"] == "sr3" and info["operator"]["factor"] == [2, 4]
    # the saved scheduler tells diffusers' samplers what the UNet predicts
    assert sched.config.prediction_type == info["prediction_type"] == "v_prediction"
    op = make_operator("superres", image_size=16, factor=2)
    y = op.A(x)
    out = sr3_sample(y, op, model, sched, steps=4, seed=0)
    again = sr3_sample(y, op, model, sched, steps=4, seed=0)
    assert out.shape == x.shape
    torch.testing.assert_close(out, again, rtol=0, atol=0)
    assert (out - op.A_pinv(y)).abs().max() > 1e-2  # it sampled, not returned A†y


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_sr3_loss_targets_the_prediction_type(prediction_type):
    """The loss is the MSE to v = √ᾱ ε − √(1−ᾱ) x0 (or to ε), recomputed here from the
    same draws: a UNet that outputs exactly that target has zero loss."""
    from idm_med.sr3 import sr3_loss
    from idm_med.training import OperatorPool

    sched = DDPMScheduler.from_config(
        prior.default_scheduler().config, prediction_type=prediction_type
    )
    pool = OperatorPool({"name": "superres", "factor": 2}, 8)
    x0 = torch.rand(3, 1, 8, 8)

    def draws(seed):  # the loss's own order: operator, noise, t
        gen = torch.Generator().manual_seed(seed)
        pool(gen)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (3,), generator=gen)
        return noise, t

    noise, t = draws(5)
    ab = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    target = ab.sqrt() * noise - (1 - ab).sqrt() * x0 if prediction_type != "epsilon" else noise

    class Oracle(torch.nn.Module):
        def __init__(self, out):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.out = out

        def forward(self, inp, t):
            return types.SimpleNamespace(sample=self.out + self.w)

    loss = sr3_loss(sched, pool)
    assert float(loss(Oracle(target), x0, torch.Generator().manual_seed(5))) < 1e-12
    assert float(loss(Oracle(noise + 0.5 * x0), x0, torch.Generator().manual_seed(5))) > 1e-3


# -- command line -----------------------------------------------------------------------------
def test_pretrain_sample_and_sr3_commands(tmp_path):
    from idm_med.cli import main
    from idm_med.datasets.samples import sample_path

    files = [str(sample_path("natural/brick.png"))]
    tiny = [
        "--unet-channels",
        "8",
        "16",
        "16",
        "--norm-groups",
        "4",
        "--batch-size",
        "2",
        "--iterations",
        "2",
        "--checkpoint-every",
        "2",
        "--warmup",
        "1",
    ]
    with pytest.raises(SystemExit) as done:
        main(
            [
                "pretrain",
                "--files",
                *files,
                "--patch-size",
                "16",
                "--output",
                str(tmp_path / "prior"),
                *tiny,
            ]
        )
    assert done.value.code == 0
    UNet2DModel.from_pretrained(tmp_path / "prior")
    for sampler in ("ddpm", "ddim"):
        with pytest.raises(SystemExit) as done:
            main(
                [
                    "sample",
                    str(tmp_path / "prior"),
                    "--sampler",
                    sampler,
                    "--steps",
                    "3",
                    "--n",
                    "2",
                    "--size",
                    "16",
                    "--output",
                    str(tmp_path / f"{sampler}.png"),
                ]
            )
        assert done.value.code == 0 and (tmp_path / f"{sampler}.png").stat().st_size > 0
    with pytest.raises(SystemExit) as done:
        main(
            [
                "sr3",
                "--operator",
                "superres",
                "--factor",
                "2",
                "--image-size",
                "16",
                "--files",
                *files,
                "--init",
                str(tmp_path / "prior"),
                "--output",
                str(tmp_path / "sr3"),
                *tiny,
            ]
        )
    assert done.value.code == 0 and (tmp_path / "sr3" / "sr3.json").is_file()
    with pytest.raises(SystemExit) as done:
        main(
            [
                "train",
                "--operator",
                "superres",
                "--factor",
                "2",
                "4",
                "--image-size",
                "16",
                "--files",
                *files,
                "--init",
                str(tmp_path / "prior"),
                "--steps",
                "2",
                "--output",
                str(tmp_path / "idm"),
                *tiny,
            ]
        )
    assert done.value.code == 0
    from idm_med.model import IDM

    assert IDM.from_pretrained(tmp_path / "idm").config.operator["name"] == "superres"


def test_ddnm_noise_aware_step_only_with_noise():
    op = make_operator("inpainting", image_size=16, missing_ratio=0.5).double()
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = op.A(x) + 0.05 * op.A(torch.randn(1, 1, 16, 16, dtype=torch.float64))
    unet = _unet()
    hard = ddnm_sample(y, op, unet, steps=4, seed=0)
    soft = ddnm_sample(y, op, unet, steps=4, seed=0, noise_sigma=0.05)
    torch.testing.assert_close(op.A(hard), y, rtol=1e-10, atol=1e-10)  # fits the noise
    assert float((op.A(soft) - y).norm()) > 1e-3 * float(y.norm())  # does not


def test_train_from_a_config_file_saves_the_resolved_config(tmp_path):
    import yaml

    from idm_med.cli import main
    from idm_med.datasets.samples import sample_path

    cfg = {
        "operator": "superres",
        "factor": [2],
        "image-size": 16,
        "steps": 2,
        "files": [str(sample_path("natural/brick.png"))],
        "unet_channels": [8, 16, 16],
        "norm_groups": 4,
        "batch_size": 2,
        "iterations": 2,
        "checkpoint_every": 2,
        "warmup": 1,
        "skull_strip": 0.5,
        "output": str(tmp_path / "run"),
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as done:
        main(["train", "--config", str(tmp_path / "train.yaml"), "--iterations", "3"])
    assert done.value.code == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["iterations"] == 3 and saved["image_size"] == 16  # the command line wins
    assert saved["operator"] == "superres" and saved["output"] == str(tmp_path / "run")
    record = json.loads((tmp_path / "run" / "training.json").read_text())
    assert record["skull_strip"] == 0.5
    (tmp_path / "bad.yaml").write_text("learning_rat: 0.1\n")
    with pytest.raises(SystemExit) as done:
        main(["train", "--config", str(tmp_path / "bad.yaml"), "--output", str(tmp_path / "x")])
    assert done.value.code != 0 and not (tmp_path / "x").exists()
