"""Checkpoint layouts (idm_med.model_io, idm_med.checkpoints, scripts/convert_checkpoints.py).

The shipped IDM checkpoints were written before IDM became a diffusers ``ModelMixin``
(weights in ``model.safetensors``); they must keep loading and give the outputs they gave,
and convert to the diffusers layout bit-identically.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from idm_med import checkpoints
from idm_med.model import IDM
from idm_med.model_io import convert_legacy_checkpoint, is_idm_checkpoint, is_legacy_layout
from idm_med.pretrained import PRETRAINED_DIR

ROOT = Path(__file__).resolve().parents[1]
# The committed checkpoints still in the legacy layout (idm_cs and idm_mri were retrained
# and saved in the diffusers layout; idm_cs's first stage is kept as an ablation model).
SHIPPED = [
    PRETRAINED_DIR / "mri_4x",
    PRETRAINED_DIR / "idm_superres",
    ROOT / "benchmarks" / "ablation_models" / "idm_cs_scratch",
    ROOT / "benchmarks" / "ablation_models" / "idm_cs_stage1",
]

# mri_4x on x = rand(1, 2, 96, 96) (generator seed 0), y = A x with its stored operator,
# computed with the code before IDM became a ModelMixin (commit 5e74dff^, and again at
# 1e92f22), one CPU thread: the output's float64 sum, and the L1 / squared L2 norm of
# x̂ - A†y (the network's part of the output, which the final projection leaves outside
# the sampled k-space). sha256 of the float32 output bytes there: c9477023e57735f6...
MRI_4X_REFERENCE = (9254.8979784064, 400.21615217998624, 14.575059460595922)
MRI_4X_SHA256 = "c9477023e57735f620744fe65e3c942d9e6ef48f79b69feb29aa17b01b7b7097"


def _output(model: IDM) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x̂, A†y)`` of ``model`` with its stored operator on a fixed random image."""
    op = model.stored_operator()
    x = torch.rand((1, *op.image_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = op.A(x)
        return model(y), op.A_pinv(y)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference was computed single-threaded
    yield
    torch.set_num_threads(threads)


def test_shipped_mri_4x_gives_the_outputs_it_gave(one_thread):
    model = IDM.from_pretrained(PRETRAINED_DIR / "mri_4x")
    assert is_legacy_layout(PRETRAINED_DIR / "mri_4x") and not model.training
    out, pinv = _output(model)
    net = (out - pinv).double()
    measured = (out.double().sum().item(), net.abs().sum().item(), net.square().sum().item())
    assert measured == pytest.approx(MRI_4X_REFERENCE, rel=1e-6)


@pytest.mark.parametrize("source", SHIPPED, ids=lambda p: p.name)
def test_shipped_checkpoints_convert_bit_identically(tmp_path, source):
    directory = tmp_path / source.name
    shutil.copytree(source, directory)
    before, _ = _output(IDM.from_pretrained(directory))
    assert convert_legacy_checkpoint(IDM, directory)
    kept = {p.name for p in source.iterdir()} - {"model.safetensors"}
    assert kept | {"diffusion_pytorch_model.safetensors", "operator.safetensors"} == {
        p.name for p in directory.iterdir()
    }
    assert not is_legacy_layout(directory) and is_idm_checkpoint(directory)
    after, _ = _output(IDM.from_pretrained(directory))
    assert torch.equal(before, after)
    assert not convert_legacy_checkpoint(IDM, directory)  # already converted: untouched


def test_conversion_script_converts_and_skips(tmp_path):
    import runpy

    directory = tmp_path / "idm_cs"
    shutil.copytree(PRETRAINED_DIR / "idm_cs", directory)
    script = runpy.run_path(str(ROOT / "scripts" / "convert_checkpoints.py"))
    assert script["main"]([str(directory), str(directory)]) == 0
    assert (directory / "diffusion_pytorch_model.safetensors").is_file()
    assert not (directory / "model.safetensors").exists()


def test_idm_checkpoints_are_told_apart_from_diffusers_unets(tmp_path, monkeypatch):
    """``idm-med models`` lists IDM checkpoints of both layouts, not priors (which are
    diffusers UNet2DModel directories with the same weights file name)."""
    user = tmp_path / "home" / "models"
    IDM(steps=1).save_pretrained(user / "mine")
    shutil.copytree(PRETRAINED_DIR / "prior_gray", user / "prior")
    monkeypatch.setenv("IDM_MED_HOME", str(tmp_path / "home"))
    assert is_idm_checkpoint(user / "mine") and is_idm_checkpoint(PRETRAINED_DIR / "mri_4x")
    assert not is_idm_checkpoint(user / "prior") and not is_idm_checkpoint(tmp_path)
    names = {(m.source, m.name) for m in checkpoints.list_models()}
    assert ("user", "mine") in names and ("shipped", "mri_4x") in names
    assert not any(name.startswith("prior") for _, name in names)


def test_load_idm_names_the_weights_that_do_not_fit(tmp_path):
    IDM(steps=1).save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**config, "steps": 2}))
    with pytest.raises(checkpoints.CheckpointError) as err:
        checkpoints.load_idm(tmp_path / "ckpt")
    message = str(err.value)
    assert str(tmp_path / "ckpt") in message and "\n" not in message
    assert "does not match diffusion_pytorch_model.safetensors" in message


@pytest.mark.parametrize(
    ("trained", "data", "warns"),
    [([4, 8], 8, False), ([4, 8], 6, False), ([4, 8], 12, True), (4, 4, False), (4, 8, True)],
)
def test_acceleration_warning_reads_the_trained_range(tmp_path, caplog, trained, data, warns):
    """A model trained on a range of accelerations (training.json) is not warned about
    inside the range, although its config.json stores one example operator (4×)."""
    info = checkpoints.ModelInfo(
        name="m",
        path=tmp_path,
        source="path",
        config={"operator": {"name": "mri", "acceleration": 4}, "image_channels": 2},
        training={"operator": {"name": "mri", "acceleration": trained}},
    )
    with caplog.at_level("WARNING"):
        checkpoints.check_fit(info, {"name": "mri", "acceleration": data}, image_channels=2)
    assert ("acceleration, the data are" in caplog.text) is warns


def test_models_list_counts_every_training_stage(tmp_path):
    """A model trained further with ``--init`` keeps each earlier stage's record; the
    ``idm-med models`` row counts them all, not only the last stage."""
    for name, iterations in (
        ("training_stage1.json", 600),
        ("training_stage2.json", 1000),
        ("training_stage10.json", 5),  # numeric order, not text order
        ("training_stage_old.json", 99),  # not a stage record: ignored
        ("training.json", 1500),
    ):
        (tmp_path / name).write_text(json.dumps({"loop": {"iterations": iterations}}))
    info = checkpoints.ModelInfo.read(tmp_path, "path")
    assert info.stage_iterations == [600, 1000, 5, 1500]
    assert info.summary()["trained"] == "3105 it (4 stages)"
    (tmp_path / "training_stage1.json").unlink()
    (tmp_path / "training_stage2.json").unlink()
    (tmp_path / "training_stage10.json").unlink()
    (tmp_path / "training_stage_old.json").unlink()
    assert checkpoints.ModelInfo.read(tmp_path, "path").summary()["trained"] == "1500 it"
