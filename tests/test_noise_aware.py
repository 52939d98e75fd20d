"""Noise-aware IDM: learned σ_x per data-consistency step (idm_med.model), measurement
noise in training (idm_med.training), and the noise level reaching the model from the
reconstruction method and the benchmark settings."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from benchmarks import mri as mri_suite
from idm_med import train_loop
from idm_med.methods import IDMMethod
from idm_med.model import IDM
from idm_med.operators import make_operator, noise_aware_projection, range_null_space_projection
from idm_med.training import TrainingConfig, add_measurement_noise, train, training_record

from .test_model import BACKBONES, _loss_and_grads, _model
from .test_training import TINY, _data

SIZE = 16


def _mri():
    return make_operator(
        "mri", image_size=SIZE, acceleration=4, center_fraction=0.08, seed=0
    ).double()


def _case(batch: int = 2):
    op = _mri()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(batch, *op.image_shape, generator=g, dtype=torch.float64)
    return op, x, op.A(x)


def test_noise_awareness_leaves_the_noiseless_output_unchanged():
    op, x, y = _case()
    model = _model("small", op)
    with torch.no_grad():
        before = model(y, op)
        model.enable_noise_awareness()
        assert model.config.noise_aware
        for sigma in (None, 0.0, torch.zeros(2)):
            assert torch.equal(model(y, op, noise_sigma=sigma), before)
    residual = (op.A(before) - y).norm() / y.norm()
    assert residual < 1e-12


def test_noise_level_softens_each_item_by_its_own_level():
    op, x, y = _case()
    model = _model("small", op).enable_noise_awareness()
    with torch.no_grad():
        hard = model(y, op)
        mixed = model(y, op, noise_sigma=torch.tensor([0.0, 0.05]))
        alone = model(y[1:], op, noise_sigma=0.05)
    assert torch.equal(mixed[0], hard[0])
    assert torch.allclose(mixed[1], alone[0], atol=1e-12)
    # The soft steps no longer reproduce y: the measured part is a blend of it.
    assert float((op.A(mixed[1:]) - y[1:]).norm() / y[1:].norm()) > 1e-4


def test_tensor_levels_match_scalar_projection_calls():
    op, x, _ = _case()
    g = torch.Generator().manual_seed(5)
    y = op.A(x) + 0.01 * torch.randn(op.A(x).shape, generator=g, dtype=torch.float64)
    estimate = x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    levels = torch.tensor([0.0, 0.03], dtype=torch.float64)
    batched = noise_aware_projection(estimate, y, op, levels, torch.tensor(0.02))
    for i, level in enumerate(levels.tolist()):
        one = noise_aware_projection(estimate[i : i + 1], y[i : i + 1], op, level, 0.02)
        assert torch.allclose(batched[i : i + 1], one, atol=1e-14)
    hard = range_null_space_projection(estimate[:1], y[:1], op)
    assert torch.allclose(batched[:1], hard, atol=1e-14)
    with pytest.raises(ValueError, match="noise_sigma"):
        noise_aware_projection(estimate, y, op, torch.tensor([-0.1, 0.1]), 0.02)


def test_a_model_trained_without_noise_warns_and_keeps_hard_steps(caplog):
    op, x, y = _case()
    model = _model("small", op)
    assert model.prior_sigmas() is None
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="idm_med.model"):
        out = model(y, op, noise_sigma=0.05)
        assert torch.equal(out, model(y, op))
    assert "noise_aware=False" in caplog.text
    for bad in (-0.1, float("nan"), torch.zeros(3)):
        with pytest.raises(ValueError, match="noise_sigma"):
            model(y, op, noise_sigma=bad)


@pytest.mark.parametrize("mode", ["checkpoint", "level1", "level1+2"])
def test_memory_modes_give_autograd_gradients_with_noise(mode):
    op, x, y = _case()
    model = _model("small", op, noise_aware=True)
    sigma = torch.tensor([0.01, 0.04], dtype=torch.float64)

    def run(m):
        model.set_memory_mode(m)
        model.zero_grad(set_to_none=True)
        loss = (model(y, op, noise_sigma=sigma) - x).abs().mean()
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    ref_loss, ref = run("autograd")
    loss, grads = run(mode)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    assert float(ref["log_prior_sigma"].abs().min()) > 0  # every step's σ_x is used
    for name, g in ref.items():
        assert torch.allclose(grads[name], g, rtol=1e-8, atol=1e-12), name
    # Without noise σ_x does not enter: the hard steps are the model trained so far.
    _, noiseless = _loss_and_grads(model, "autograd", y, op, x)
    assert "log_prior_sigma" not in noiseless


def test_noise_aware_model_saves_and_loads(tmp_path):
    op, x, y = _case()
    model = _model("small", op).enable_noise_awareness(prior_sigma_init=0.03).eval()
    with torch.no_grad():
        model.log_prior_sigma.add_(torch.tensor([0.0, 0.01, 0.02, 0.03], dtype=torch.float64))
        expected = model(y, op, noise_sigma=0.02)
    model.save_pretrained(tmp_path / "m", operator=op)
    loaded = IDM.from_pretrained(tmp_path / "m", torch_dtype=torch.float64)
    assert loaded.config.noise_aware and loaded.config.prior_sigma_init == 0.03
    assert torch.allclose(loaded.prior_sigmas(), model.prior_sigmas())
    with torch.no_grad():
        torch.testing.assert_close(loaded(y, op, noise_sigma=0.02), expected, rtol=0, atol=0)


def test_prior_sigma_starts_where_asked():
    model = IDM(backbone=BACKBONES["small"], image_channels=2, noise_aware=True)
    assert torch.allclose(model.prior_sigmas(), torch.full((4,), 0.02))
    with pytest.raises(ValueError, match="prior_sigma_init"):
        IDM(backbone=BACKBONES["small"], image_channels=2, noise_aware=True, prior_sigma_init=0)


def test_training_noise_is_seeded_per_item_and_keeps_unmeasured_entries_zero():
    op, x, y = _case(batch=64)
    gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    noisy, sigma = add_measurement_noise(y, 0.02, 0.5, gen())
    again, sigma2 = add_measurement_noise(y, 0.02, 0.5, gen())
    assert torch.equal(noisy, again) and torch.equal(sigma, sigma2)
    assert torch.equal(noisy[y == 0], y[y == 0])  # unmeasured k-space columns
    clean = sigma == 0
    assert 10 < int(clean.sum()) < 54  # about half the items at probability 0.5
    assert torch.equal(noisy[clean], y[clean])
    assert float(sigma.max()) <= 0.02
    # The noise of an item has its drawn σ per real component on the measured entries.
    residual = (noisy - y)[~clean]
    measured = y[~clean] != 0
    per_item = (residual.square() * measured).flatten(1).sum(1) / measured.flatten(1).sum(1)
    ratio = per_item / sigma[~clean].square()  # about 100 entries per item
    assert abs(float(ratio.mean()) - 1) < 0.05 and float((ratio - 1).abs().max()) < 0.5
    never, none = add_measurement_noise(y, 0.02, 0.0, gen())
    assert torch.equal(never, y) and not bool(none.any())


def _noisy_config(**kw) -> TrainingConfig:
    kw.setdefault("memory_mode", "level1")
    kw.setdefault("measurement_noise", 0.02)
    kw.setdefault("noise_probability", 1.0)
    return TrainingConfig(
        operator={"name": "mri", "acceleration": 4, "center_fraction": 0.08},
        image_size=SIZE,
        image_channels=2,
        backbone=TINY,
        steps=2,
        batch_size=2,
        loop=train_loop.LoopConfig(
            iterations=4, learning_rate=5e-2, warmup=1, ema_decay=0.0, checkpoint_every=2
        ),
        **kw,
    )


def test_training_with_noise_learns_sigma_x_and_records_it(tmp_path):
    config = _noisy_config()
    train(config, tmp_path / "run", data=_data(size=SIZE), progress=False)
    model = IDM.from_pretrained(tmp_path / "run")
    assert model.config.noise_aware
    moved = model.prior_sigmas().detach() - 0.02
    assert float(moved.abs().max()) > 1e-4  # σ_x trained, not left at its start
    record = training_record(config)
    assert record["measurement_noise"] == 0.02 and record["noise_probability"] == 1.0
    assert "measurement_noise" not in training_record(TrainingConfig())
    assert "noise_probability" not in training_record(TrainingConfig())


def test_the_baseline_unet_trains_on_the_same_noisy_data(tmp_path):
    losses = {}
    for sigma in (0.0, 0.02):
        config = _noisy_config(
            architecture="postprocessing_unet", memory_mode="autograd", measurement_noise=sigma
        )
        out = tmp_path / f"unet{sigma}"
        losses[sigma] = train(config, out, data=_data(size=SIZE), progress=False).losses
    assert all(math.isfinite(v) for v in losses[0.02])
    # Same seed and data: only the noise of its measurements tells the two runs apart.
    assert losses[0.02][0] != losses[0.0][0]


@pytest.mark.parametrize(
    ("field", "value"), [("measurement_noise", -0.1), ("noise_probability", 1.5)]
)
def test_bad_noise_settings_are_refused_before_training(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        train(_noisy_config(**{field: value}), tmp_path / "bad", data=_data(size=SIZE))
    assert not (tmp_path / "bad").exists()


def test_reconstruction_method_passes_the_noise_level(tmp_path):
    op, x, y = _case()
    model = _model("small", op).enable_noise_awareness()
    model.save_pretrained(tmp_path / "m", operator=op)
    with torch.no_grad():
        expected = model(y, op, noise_sigma=0.03).float()
    method = IDMMethod(tmp_path / "m", noise_sigma=0.03)
    assert torch.allclose(method(y.float(), op.float()), expected, atol=1e-5)
    with pytest.raises(ValueError, match="noise_sigma"):
        IDMMethod(tmp_path / "m", noise_sigma=-1.0)


def test_noisy_mri_settings_tell_idm_their_level_and_nothing_else():
    noisy = [s for s in mri_suite.SUITE.settings if s.noise is not None]
    assert noisy and all(s.noise_sigma == mri_suite.NOISE_SIGMA / math.sqrt(2) for s in noisy)
    for setting in mri_suite.SUITE.settings:
        told = setting.known_noise("idm")
        assert told == ({"noise_sigma": setting.noise_sigma} if setting.noise else {})
        assert setting.known_noise("tv") == {}


def test_models_list_says_which_models_are_noise_aware(tmp_path):
    from idm_med.checkpoints import ModelInfo

    config = _noisy_config()
    train(config, tmp_path / "run", data=_data(size=SIZE), progress=False)
    assert ModelInfo.read(tmp_path / "run", "path").summary()["noise"] == "aware, σ ≤ 0.02"
    op = _mri()
    _model("small", op).save_pretrained(tmp_path / "plain", operator=op)
    assert ModelInfo.read(tmp_path / "plain", "path").summary()["noise"] == "-"


def test_run_suite_tells_only_noise_taking_methods_the_level(monkeypatch):
    from dataclasses import replace

    from benchmarks import cs
    from benchmarks.suite import RunConfig, run_suite
    from idm_med import baselines

    told: list[float] = []

    def record(y, operator, noise_sigma: float = 0.0):
        told.append(noise_sigma)
        return operator.A_pinv(y)

    monkeypatch.setitem(
        baselines.METHODS, "noise_probe", baselines.MethodSpec("noise_probe", record)
    )
    setting = replace(cs.SUITE.settings[1], noise=lambda y, seed: y, noise_sigma=0.03)
    suite = replace(cs.SUITE, settings=(setting,), methods=("pinv", "noise_probe"))
    config = RunConfig(size=32, max_sources=1, max_slices=1)
    payload = run_suite(suite, config, {})
    assert told and set(told) == {0.03}
    params = {r["method"]: r["params"] for r in payload["rows"]}
    assert params["noise_probe"] == {"noise_sigma": 0.03} and params["pinv"] == {}
