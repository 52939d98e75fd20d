"""The training recipes, the validation command and the ablation registry."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import validate as validate_mod
from idm_med import metrics
from idm_med.checkpoints import stage_records
from idm_med.model import IDM
from idm_med.operators import make_operator
from idm_med.recipes import PRESETS, recipe
from idm_med.training import training_record

PRETRAINED = Path(__file__).resolve().parents[1] / "idm_med" / "pretrained"


def _stage2(name: str, seed: int, init: str | None = None, iterations: int = 1000, **extra) -> dict:
    """A later stage: ``train_idm.py --init`` the previous one, lr 1e-4."""
    init = init or f"idm_med/pretrained/{name}"
    return dict(iterations=iterations, learning_rate=1e-4, seed=seed, init=init, **extra)


#: The CT recipe's patches and data mix (``--image-size 64 --data ct=0.5 --data mri=0.25
#: --data natural=0.25``).
_CT_DATA = {"image_size": 64, "data": {"ct": 0.5, "mri": 0.25, "natural": 0.25}}

#: MRI's fifth stage adds fastMRI's 8× centre fraction (``--operator-option
#: 'center_fraction=[0.04,0.08]'``): the MRI suite's 8× masks keep 4 %, the earlier stages
#: saw 8 % only.
_FASTMRI_CENTER = {"center_fraction": [0.04, 0.08]}

#: MRI's sixth stage also draws half of its heads skull-stripped (``--skull-strip 0.5``), as
#: the validation brains and most test brains are.
_SKULL_STRIPPED = {"operator": _FASTMRI_CENTER, "skull_strip": 0.5}

#: MRI's seventh stage also draws measurement noise (``--measurement-noise 0.02``: half of
#: the batch items noisy, σ ~ U(0, 0.02)), and the model learns its prior σ_x per step;
#: its eighth stage repeats that recipe with the next seed.
_NOISY_SKULL_STRIPPED = {**_SKULL_STRIPPED, "measurement_noise": 0.02}

#: (model, modality, record in its directory, the recipe options that made it). Models
#: trained in stages keep each earlier stage's record as ``training_stageN.json``.
SHIPPED_RECORDS = [
    ("idm_superres", "superres", "training.json", {"iterations": 1200}),
    ("idm_cs", "cs", "training_stage1.json", {"iterations": 600}),
    ("idm_cs", "cs", "training_stage2.json", _stage2("idm_cs", 1, mixed_precision="bf16")),
    (
        "idm_cs",
        "cs",
        "training_stage3.json",
        _stage2("idm_cs", 2, iterations=1500, mixed_precision="bf16"),
    ),
    (
        "idm_cs",
        "cs",
        "training_stage4.json",
        _stage2("idm_cs", 3, iterations=1500, mixed_precision="bf16"),
    ),
    (
        "idm_cs",
        "cs",
        "training_stage5.json",
        _stage2("idm_cs", 4, iterations=1200, mixed_precision="bf16"),
    ),
    (
        "idm_cs",
        "cs",
        "training.json",
        _stage2("idm_cs", 5, iterations=1200, mixed_precision="bf16"),
    ),
    ("idm_mri", "mri", "training_stage1.json", {"iterations": 600}),
    ("idm_mri", "mri", "training_stage2.json", _stage2("idm_mri", 1, mixed_precision="bf16")),
    (
        "idm_mri",
        "mri",
        "training_stage3.json",
        _stage2("idm_mri", 2, iterations=1500, mixed_precision="bf16"),
    ),
    (
        "idm_mri",
        "mri",
        "training_stage4.json",
        _stage2("idm_mri", 3, iterations=1500, mixed_precision="bf16"),
    ),
    (
        "idm_mri",
        "mri",
        "training_stage5.json",
        _stage2("idm_mri", 4, iterations=1500, mixed_precision="bf16", operator=_FASTMRI_CENTER),
    ),
    (
        "idm_mri",
        "mri",
        "training_stage6.json",
        _stage2("idm_mri", 5, iterations=1500, mixed_precision="bf16", **_SKULL_STRIPPED),
    ),
    (
        "idm_mri",
        "mri",
        "training_stage7.json",
        _stage2("idm_mri", 6, iterations=1500, mixed_precision="bf16", **_NOISY_SKULL_STRIPPED),
    ),
    (
        "idm_mri",
        "mri",
        "training.json",
        _stage2("idm_mri", 7, iterations=1500, mixed_precision="bf16", **_NOISY_SKULL_STRIPPED),
    ),
    ("idm_ct", "ct", "training_stage1.json", {"iterations": 1200, **_CT_DATA}),
    (
        "idm_ct",
        "ct",
        "training.json",
        _stage2("idm_ct", 1, iterations=1500, mixed_precision="bf16", **_CT_DATA),
    ),
    ("idm_inpainting", "inpainting", "training_stage1.json", {"iterations": 800}),
    ("idm_inpainting", "inpainting", "training_stage2.json", _stage2("idm_inpainting", 1)),
    (
        "idm_inpainting",
        "inpainting",
        "training.json",
        _stage2("idm_inpainting", 2, init="runs/idm_inpainting_more"),
    ),
]


@pytest.mark.parametrize(("name", "modality", "record", "options"), SHIPPED_RECORDS)
def test_recipe_reproduces_each_shipped_training_record(name, modality, record, options):
    """Each shipped model's training record is what ``recipe`` builds from the options of
    the command that trained it (scripts/train_idm.py), stage by stage."""
    saved = json.loads((PRETRAINED / name / record).read_text())
    config = recipe(modality, **options)
    assert training_record(config) == {k: v for k, v in saved.items() if k != "loop"}
    assert asdict(config.loop) == saved["loop"]


#: (operator, modality, shipped IDM model, recipe options of each stage of the supervised
#: U-Net on A†y besides ``--architecture postprocessing_unet --mixed-precision bf16``):
#: each U-Net trains on its IDM model's data and patches for as many iterations as that
#: model's stages together (``train_idm.py MODALITY --architecture postprocessing_unet
#: ...``; a later stage ``--init``s the earlier U-Net).
UNET_BASELINES = [
    (
        "gaussian_cs",
        "cs",
        "idm_cs",
        [
            {"iterations": 4600},
            _stage2(
                "idm_cs",
                4,
                init="benchmarks/ablation_models/postprocessing_unet_cs",
                iterations=1200,
            ),
            _stage2(
                "idm_cs",
                5,
                init="benchmarks/ablation_models/postprocessing_unet_cs",
                iterations=1200,
            ),
        ],
    ),
    (
        "mri",
        "mri",
        "idm_mri",
        [
            {"iterations": 4600},
            _stage2(
                "idm_mri",
                4,
                init="benchmarks/ablation_models/postprocessing_unet_mri",
                iterations=1500,
                operator=_FASTMRI_CENTER,
            ),
            _stage2(
                "idm_mri",
                5,
                init="benchmarks/ablation_models/postprocessing_unet_mri",
                iterations=1500,
                **_SKULL_STRIPPED,
            ),
            _stage2(
                "idm_mri",
                6,
                init="benchmarks/ablation_models/postprocessing_unet_mri",
                iterations=1500,
                **_NOISY_SKULL_STRIPPED,
            ),
            _stage2(
                "idm_mri",
                7,
                init="benchmarks/ablation_models/postprocessing_unet_mri",
                iterations=1500,
                **_NOISY_SKULL_STRIPPED,
            ),
        ],
    ),
    (
        "ct",
        "ct",
        "idm_ct",
        [
            {"iterations": 1200, **_CT_DATA},
            _stage2(
                "idm_ct",
                1,
                init="benchmarks/ablation_models/postprocessing_unet_ct",
                iterations=1500,
                **_CT_DATA,
            ),
        ],
    ),
    ("superres", "superres", "idm_superres", [{"iterations": 1200}]),
    ("inpainting", "inpainting", "idm_inpainting", [{"iterations": 2800}]),
]


@pytest.mark.parametrize(("operator", "modality", "idm_name", "stages"), UNET_BASELINES)
def test_recipe_reproduces_each_suite_unet_baseline_record(operator, modality, idm_name, stages):
    """Each suite's supervised U-Net on A†y is its modality's recipe with the
    post-processing architecture, from scratch and then stage by stage: the IDM model's
    data and loss, as many iterations as the IDM model's stages together."""
    from benchmarks.learned import ABLATION_MODELS, POSTPROCESSING_UNET_BY_OPERATOR

    directory = ABLATION_MODELS / POSTPROCESSING_UNET_BY_OPERATOR[operator]
    saved_stages = stage_records(directory)
    assert len(saved_stages) == len(stages)
    for saved, options in zip(saved_stages, stages, strict=True):
        config = recipe(
            modality,
            from_scratch=True,
            architecture="postprocessing_unet",
            mixed_precision="bf16",
            **options,
        )
        assert training_record(config) == {k: v for k, v in saved.items() if k != "loop"}
        assert asdict(config.loop) == saved["loop"]
    idm_stages = stage_records(PRETRAINED / idm_name)
    assert sum(r["loop"]["iterations"] for r in saved_stages) == sum(
        r["loop"]["iterations"] for r in idm_stages
    )
    idm_record, saved = idm_stages[-1], saved_stages[-1]
    assert (saved["data"], saved["image_size"]) == (idm_record["data"], idm_record["image_size"])


def test_recipe_overrides_and_errors():
    config = recipe("cs", operator={"ratio": 0.3}, steps=5, injectors=False)
    assert config.operator == {**PRESETS["cs"]["operator"], "ratio": 0.3}
    assert (config.steps, config.injectors) == (5, False)
    assert config.make_model().injectors is None
    mixed = recipe("ct", data={"ct": 0.5, "natural": 0.5})  # a preset field replaced
    assert (mixed.data, mixed.operator) == ({"ct": 0.5, "natural": 0.5}, PRESETS["ct"]["operator"])
    with pytest.raises(ValueError, match="unknown modality"):
        recipe("pet")


def test_validate_scores_the_model_on_the_tuning_cases(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = IDM(image_channels=1, steps=1)
    with torch.no_grad():  # an output visibly unlike A†y, so a stand-in would be noticed
        model.alpha_raw.fill_(-3.0)
    op = make_operator("superres", image_size=32, factor=2)
    model.save_pretrained(tmp_path / "ckpt", operator=op)
    tuning = {"suites": {"superres": {"x2": {"tv": {"best": {}, "best_score": 99.0}}}}}
    (tmp_path / "tuning.json").write_text(json.dumps(tuning))
    monkeypatch.setattr(validate_mod, "TUNING", tmp_path / "tuning.json")

    result = validate_mod.validate("superres", tmp_path / "ckpt", size=32, max_slices=1)

    assert set(result["per_setting"]) == {"x2", "x4"}
    row = result["per_setting"]["x2"]
    assert (row["best_tuned_baseline"], row["baseline_psnr"]) == ("tv", 99.0)
    assert result["beats_tuned_baselines"] is None  # x4 has no tuned baseline here
    # The recorded PSNR is the model's own on the validation cases, not A†y's.
    from benchmarks import data
    from benchmarks.superres import SUITE
    from benchmarks.tune import validation_cases

    val = data.images("natural", "val", 32, max_slices=1)
    cases = validation_cases(SUITE, SUITE.settings[0], op, val)
    loaded = IDM.from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        ours = [metrics.luma_metrics(gt, SUITE.decode(loaded(y, op)))["psnr"] for y, _, gt in cases]
    pinv = [metrics.luma_metrics(gt, SUITE.decode(op.A_pinv(y)))["psnr"] for y, _, gt in cases]
    assert row["psnr"] == pytest.approx(np.mean(ours), abs=1e-6)
    assert abs(row["psnr"] - np.mean(pinv)) > 0.1


def test_ablation_suite_registers_trained_variants_and_routes_per_ratio(tmp_path, monkeypatch):
    from benchmarks import ablation
    from idm_med import baselines

    torch.manual_seed(1)
    for name in ("ratio_0.1", "ratio_0.3", "ratio_0.5"):
        model = IDM(image_channels=1, steps=1)
        with torch.no_grad():
            model.alpha_raw.fill_({"ratio_0.1": -2.0, "ratio_0.3": 0.0, "ratio_0.5": 2.0}[name])
        model.save_pretrained(tmp_path / name)
    monkeypatch.setattr(ablation, "MODELS", tmp_path)
    ablation._model.cache_clear()
    monkeypatch.setattr(baselines, "METHODS", dict(baselines.METHODS))
    baselines.METHODS.pop("ablation_per_ratio", None)

    assert ablation.register() == ["ablation_per_ratio"]  # only the per-ratio set is trained
    op = make_operator("gaussian_cs", image_size=32, ratio=0.3, block_size=32)
    y = op.A(torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    got = baselines.make_method("ablation_per_ratio")(y, op)
    with torch.no_grad():
        want = IDM.from_pretrained(tmp_path / "ratio_0.3")(y, op)
        other = IDM.from_pretrained(tmp_path / "ratio_0.1")(y, op)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, other)
    ablation._model.cache_clear()


def test_shipped_ct_model_is_data_consistent_and_beats_pinv():
    """The shipped sparse-view CT model on the held-out validation section (64², 15 views,
    the exact dense A†): A x̂ = y to float32 precision, and clearly better than A†y."""
    from benchmarks import data
    from idm_med.checkpoints import default_checkpoint

    path = default_checkpoint("ct")
    assert path == PRETRAINED / "idm_ct"
    model = IDM.from_pretrained(path)
    image = data.images("ct", "val", 64, max_slices=1)["CT_small"][0]
    x = torch.from_numpy(image[None, None].astype(np.float32))
    op = make_operator("ct", image_size=64, n_views=15, pinv="direct")
    with torch.no_grad():
        y = op.A(x)
        rec, pinv = model(y, op), op.A_pinv(y)
    residual = torch.linalg.vector_norm(op.A(rec) - y) / torch.linalg.vector_norm(y)
    assert residual < 1e-4
    gt = image.astype(np.float64)
    ours = metrics.psnr(gt, rec[0, 0].double().numpy(), data_range=1.0)
    baseline = metrics.psnr(gt, pinv[0, 0].double().numpy(), data_range=1.0)
    assert ours > baseline + 1.0, (ours, baseline)
