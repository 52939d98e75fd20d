"""Training: settings drawn per batch, a short run that learns, exact and checked resume,
IDM started from a diffusion prior, and two-process training in every memory mode."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel

from idm_med import prior, train_loop
from idm_med.backbones import small_unet_config
from idm_med.datasets.phantoms import random_ellipse_batch
from idm_med.model import IDM
from idm_med.postprocessing_unet import PostProcessingUNet
from idm_med.training import (
    OperatorPool,
    TrainingConfig,
    idm_from_prior,
    load_training_images,
    train,
)

TINY_LAYOUT = dict(block_out_channels=(8, 16, 16), norm_num_groups=4)
TINY = small_unet_config(**TINY_LAYOUT)


def _data(n: int = 6, size: int = 24) -> list[np.ndarray]:
    return list(random_ellipse_batch(n, size=size, seed=3)[:, 0].numpy())


def _config(iterations: int = 6, checkpoint_every: int = 3, **kw) -> TrainingConfig:
    base = dict(
        operator={"name": "inpainting", "missing_ratio": 0.5},
        image_size=16,
        image_channels=1,
        backbone=TINY,
        steps=2,
        batch_size=2,
        loop=train_loop.LoopConfig(
            iterations=iterations,
            learning_rate=1e-3,
            warmup=1,
            ema_decay=0.0,
            checkpoint_every=checkpoint_every,
            seed=0,
        ),
    )
    return TrainingConfig(**(base | kw))


def test_settings_are_drawn_per_batch():
    cfg = _config(operator={"name": "gaussian_cs", "ratio": [0.1, 0.3, 0.5], "block_size": 8})
    assert cfg.settings() == {"ratio": [0.1, 0.3, 0.5]}
    pool = OperatorPool(cfg.operator, cfg.image_size)
    drawn = {pool.kwargs(train_loop.step_generator(0, s))["ratio"] for s in range(30)}
    assert drawn == {0.1, 0.3, 0.5}
    assert pool.kwargs()["ratio"] == 0.1
    assert pool(None) is pool(None)  # one operator per setting, built once


def test_load_training_images_excludes_held_out_slices():
    from idm_med.datasets.samples import sample_path

    path = sample_path("brain_t1.nii.gz")
    all_slices = load_training_images([path], axis=2)
    kept = load_training_images([path], axis=2, exclude_slices={path.name: [40, 41]})
    assert len(kept) == len(all_slices) - 2
    assert max(float(a.max()) for a in kept) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no training images"):
        load_training_images([])


def test_short_training_run_reduces_the_loss_and_saves(tmp_path):
    result = train(_config(40, 20), tmp_path, data=_data(), progress=False)
    losses = result.losses
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    model = IDM.from_pretrained(tmp_path)
    assert model.config.operator["name"] == "inpainting"
    assert json.loads((tmp_path / "training.json").read_text())["steps"] == 2
    assert (tmp_path / "checkpoint" / "training_state.pt").is_file()


def test_postprocessing_unet_baseline_trains_saves_and_loads(tmp_path):
    config = _config(40, 20, architecture="postprocessing_unet", memory_mode="autograd")
    losses = train(config, tmp_path, data=_data(), progress=False).losses
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    model = PostProcessingUNet.from_pretrained(tmp_path).double()
    assert json.loads((tmp_path / "training.json").read_text())["architecture"] == (
        "postprocessing_unet"
    )
    op = model.stored_operator()
    x = torch.rand(2, *op.image_shape, dtype=torch.float64)
    y = op.A(x)
    with torch.no_grad():
        out = model(y)
        # x̂ = A†y + f(A†y): the network's residual is all it adds.
        residual = model.unet(op.A_pinv(y))
    torch.testing.assert_close(out, op.A_pinv(y) + residual)
    # A later stage continues from the saved U-Net's weights ...
    later = _config(architecture="postprocessing_unet", init=str(tmp_path)).make_model()
    torch.testing.assert_close(later.double().state_dict(), model.state_dict())
    # ... never from an IDM model or a prior, which would make it another method.
    idm_dir = tmp_path / "idm"
    train(_config(2, 2), idm_dir, data=_data(), progress=False)
    for other in (str(idm_dir), "some/prior"):
        with pytest.raises(ValueError, match="from scratch or continues"):
            _config(architecture="postprocessing_unet", init=other).make_model()
    with pytest.raises(ValueError, match="image_channels"):
        _config(
            architecture="postprocessing_unet", init=str(tmp_path), image_channels=2
        ).make_model()
    with pytest.raises(ValueError, match="architecture"):
        _config(architecture="resnet").make_model()


@pytest.mark.parametrize("architecture", ["idm", "postprocessing_unet"])
def test_bf16_training_keeps_the_operator_in_full_precision(tmp_path, architecture, request):
    """bf16 autocast on CT: its sparse A has no bf16 kernels, so the measurement and the
    data-consistency algebra stay in fp32 and only the UNet autocasts."""
    from dataclasses import replace

    from accelerate.state import AcceleratorState

    # Accelerate keeps one mixed-precision state per process: earlier fp32 trainings in
    # this test session would refuse bf16 (and ours must not leak into later tests).
    AcceleratorState._reset_state()
    request.addfinalizer(AcceleratorState._reset_state)
    ct = {"name": "ct", "n_views": 6, "pinv": "direct"}
    config = _config(2, 2, operator=ct, memory_mode="autograd")
    config = replace(
        config, architecture=architecture, loop=replace(config.loop, mixed_precision="bf16")
    )
    losses = train(config, tmp_path, data=_data(), progress=False).losses
    assert len(losses) == 2 and np.isfinite(losses).all()


def test_postprocessing_unet_forms_a_pinv_in_full_precision_under_bf16_autocast():
    """Under bf16 autocast only the UNet autocasts: with its residual zeroed the output is
    the fp32 ``A†y`` itself (block CS's dense A† would otherwise run in bf16, ~1e-3 off)."""
    from idm_med.operators import make_operator

    torch.manual_seed(0)
    op = make_operator("gaussian_cs", image_size=16, ratio=0.3, block_size=8)
    model = PostProcessingUNet(backbone=TINY, image_channels=1)
    for p in model.unet.parameters():
        torch.nn.init.zeros_(p)
    y = op.A(torch.rand(2, 1, 16, 16))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(y, op)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, op.A_pinv(y), rtol=1e-5, atol=1e-6)


def test_resume_continues_exactly_and_refuses_other_settings(tmp_path):
    full = train(_config(), tmp_path / "full", data=_data(), progress=False).losses
    part = tmp_path / "part"
    train(_config(iterations=3), part, data=_data(), progress=False)
    resumed = train(_config(), part, data=_data(), resume=True, progress=False).losses
    np.testing.assert_allclose(resumed, full, rtol=1e-5)
    a = IDM.from_pretrained(tmp_path / "full").state_dict()
    b = IDM.from_pretrained(part).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="other settings"):
        train(_config(image_size=24), part, data=_data(), resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(_config(), tmp_path / "empty", data=_data(), resume=True, progress=False)
    with pytest.raises(FileExistsError):  # a fresh run never overwrites a trained one
        train(_config(), part, data=_data(), progress=False)
    user = tmp_path / "user"  # nor a folder of someone's files
    user.mkdir()
    (user / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="not empty"):
        train(_config(), user, data=_data(), progress=False)
    assert (user / "config.json").read_text() == "{}" and len(list(user.iterdir())) == 1


@pytest.mark.parametrize("channels", [1, 2])
def test_idm_from_prior_keeps_the_prior_at_the_folded_timestep(tmp_path, channels):
    torch.manual_seed(0)
    unet = UNet2DModel(**prior.prior_unet_config(1, **TINY_LAYOUT)).eval()
    prior.save_prior(unet, tmp_path, {"kind": "prior"})
    model = idm_from_prior(tmp_path, image_channels=channels, invertible_blocks=False).eval()
    alpha0 = float(model.alphas_cumprod().detach()[2])
    sched = prior.default_scheduler()
    t = int(torch.argmin((sched.alphas_cumprod - alpha0).abs()))
    x = torch.randn(2, channels, 16, 16)
    with torch.no_grad():
        ref = torch.cat(
            [unet(x[:, c : c + 1], torch.full((2,), t)).sample for c in range(channels)], 1
        )
        out = model.backbone(x)
    if channels == 1:
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    else:  # conv_in shared by the parts: equal parts give the prior's response
        same = torch.cat([x[:, :1], x[:, :1]], 1)
        with torch.no_grad():
            out = model.backbone(same)
            ref = unet(x[:, :1], torch.full((2,), t)).sample
        torch.testing.assert_close(out[:, :1], ref, rtol=1e-4, atol=1e-5)


# -- two processes (gloo) -------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gradients(mode: str, batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """One training step's gradients of a tiny IDM on ``batch`` (the global batch)."""
    from accelerate import Accelerator

    from idm_med.operators import make_operator

    torch.manual_seed(0)
    model = IDM(backbone=TINY, image_channels=1, steps=2).double().set_memory_mode(mode)
    op = make_operator("inpainting", image_size=16, missing_ratio=0.5, seed=1).double()

    def loss_fn(net, x, gen):
        return (net(op.A(x), op) - x).abs().mean()

    acc = Accelerator()
    gen = train_loop.step_generator(0, 0)
    train_loop.train_step(model, batch, loss_fn, gen, acc, train_loop.LoopConfig(grad_clip=0))
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, world: int, port: int, mode: str, batch, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    grads = _gradients(mode, batch)
    if rank == 0:
        torch.save(grads, out)
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["level1+2", "autograd"])
def test_two_processes_give_the_single_process_gradients(tmp_path, mode):
    batch = torch.rand(
        4, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    single = _gradients(mode, batch)
    out = str(tmp_path / "grads.pt")
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), mode, batch, out), nprocs=2)
    double = torch.load(out)
    assert double.keys() == single.keys()
    for name, g in single.items():
        torch.testing.assert_close(double[name], g, rtol=1e-9, atol=1e-12, msg=name)


def test_batch_smaller_than_the_processes_is_a_clear_error():
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        train_loop.shard(torch.zeros(1, 1, 4, 4), 0, 2)


def test_train_starts_from_an_init_checkpoint_and_recovers_an_interrupted_write(tmp_path):
    from idm_med.cli import main

    with pytest.raises(SystemExit) as done:
        main(["init", str(tmp_path / "init"), "--image-channels", "1", "--steps", "2"])
    assert done.value.code == 0
    cfg = _config(iterations=2, checkpoint_every=1, init=str(tmp_path / "init"))
    train(cfg, tmp_path / "run", data=_data(), progress=False)
    with pytest.raises(ValueError, match="steps=2"):
        train(
            _config(iterations=2, steps=3, init=str(tmp_path / "init")),
            tmp_path / "bad",
            data=_data(),
            progress=False,
        )
    # A crash between moving the old checkpoint aside and renaming the new one in.
    ckpt = tmp_path / "run" / "checkpoint"
    ckpt.rename(ckpt.with_name(".checkpoint.old"))
    cfg3 = _config(iterations=3, checkpoint_every=1, init=str(tmp_path / "init"))
    resumed = train(cfg3, tmp_path / "run", data=_data(), resume=True, progress=False)
    assert len(resumed.losses) == 3 and ckpt.is_dir()
