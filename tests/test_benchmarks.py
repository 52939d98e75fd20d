"""Smoke tests of the memory and speed benchmark suites at a tiny size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import memory, speed


def test_saved_tensor_meter_counts_live_bytes() -> None:
    """Two saved 4-KiB activations of a tanh chain: total 8 KiB, all freed after backward."""
    w = torch.randn(32, 32, requires_grad=True)
    meter = memory.SavedTensorMeter({w.untyped_storage().data_ptr()})
    with meter:
        h = torch.tanh(torch.tanh(w) * 2.0)  # tanh saves its output; * scalar saves nothing
        during = meter.bytes.current
        h.sum().backward()
    assert during == meter.bytes.total == 2 * 32 * 32 * 4
    assert meter.bytes.current == 0


def test_memory_quick(tmp_path) -> None:
    memory.main(["--quick", "--output-dir", str(tmp_path)])
    data = json.loads((tmp_path / "memory.json").read_text())
    rows = {(r["steps"], r["mode"]): r for r in data["rows"]}
    assert set(rows) == {(T, m) for T in (1, 2) for m in memory.MEMORY_MODES}
    for T in (1, 2):
        auto, l12 = rows[(T, "autograd")], rows[(T, "level1+2")]
        # Level 1+2 saves and holds less than plain autograd.
        assert 0 < l12["saved_peak"] < auto["saved_peak"]
        assert 0 < l12["alloc_peak"]
        # Autograd keeps everything until backward: its peak equals the total saved.
        assert auto["saved_peak"] == pytest.approx(auto["saved_total"], rel=0.01)
        # Every mode computes the same function.
        for m in memory.MEMORY_MODES:
            assert rows[(T, m)]["loss"] == pytest.approx(auto["loss"], rel=1e-5)
            assert rows[(T, m)]["time"] > 0
            assert rows[(T, m)]["alloc_peak"] >= rows[(T, m)]["saved_peak"]
            assert rows[(T, m)]["rss_peak"] is None  # in-process: no per-config RSS
    # Autograd memory grows with T; level 1 recomputes one step at a time in backward.
    assert rows[(2, "autograd")]["saved_total"] > 1.8 * rows[(1, "autograd")]["saved_total"]
    assert rows[(2, "level1")]["saved_peak"] < 0.6 * rows[(2, "autograd")]["saved_peak"]
    for v in data["grad_check"]["modes"].values():
        assert v["grad_rel"] < 1e-4
    assert (tmp_path / "memory.png").stat().st_size > 0
    assert "| target |" in (tmp_path / "memory.md").read_text()


def test_speed_quick(tmp_path) -> None:
    speed.main(["--quick", "--ddnm-steps", "20", "--output-dir", str(tmp_path)])
    row = json.loads((tmp_path / "speed.json").read_text())["rows"][0]
    assert row["idm"] > 0 and row["ddnm"] > 0
    # 20 DDNM network calls against 3 IDM steps: DDNM must be clearly slower.
    assert row["speedup"] == pytest.approx(row["ddnm"] / row["idm"])
    assert row["speedup"] > 2.0
    assert "speed-up" in (tmp_path / "speed.md").read_text()


def test_operators_quick(tmp_path) -> None:
    from benchmarks import operators

    out = tmp_path / "operators.md"
    operators.main(
        ["--sizes", "32", "--batches", "1", "--min-run-time", "0.01", "--output", str(out)]
    )
    table = out.read_text()
    for label in ("gaussian_cs", "inpainting", "superres", "mri", "mri 8 coils", "ct"):
        assert f"| {label} | 32² | 1 |" in table


def test_quality_suite_tiny(tmp_path) -> None:
    """The suite framework end to end at 32²: tuned parameters are used, every applicable
    method gets a row, and the table, JSON and figures are written."""
    from benchmarks import cs
    from benchmarks.suite import RunConfig, run_suite, write_results

    config = RunConfig(
        size=32,
        max_sources=1,
        max_slices=1,
        settings=("ratio 0.3",),
        overrides={"tv": {"n_iter": 100}, "wavelet": {"n_iter": 20}, "ddnm": {"steps": 5}},
    )
    tuning = {"cs": {"ratio 0.3": {"tv": {"best": {"lam": 3e-3}, "fixed": {}}}}}
    payload = run_suite(cs.SUITE, config, tuning)
    write_results(cs.SUITE, payload, tmp_path, "test")
    rows = {r["method"]: r for r in json.loads((tmp_path / "cs.json").read_text())["rows"]}
    # the learned methods run on the shipped prior / model beside the classical ones
    learned = {"ddnm", "idm", "idm_stage1", "idm_scratch", "unet"}
    assert set(rows) == {"pinv", "tv", "wavelet"} | learned
    # the supervised U-Net post-processes A†y: another image than A†y and than IDM's
    assert rows["unet"]["psnr"] not in (rows["pinv"]["psnr"], rows["idm"]["psnr"])
    assert rows["ddnm"]["params"] == {"steps": 5}
    assert rows["idm"]["psnr"] > rows["pinv"]["psnr"] + 3
    assert rows["idm_scratch"]["psnr"] != rows["idm"]["psnr"]  # another model
    assert rows["idm_stage1"]["psnr"] not in (rows["idm"]["psnr"], rows["idm_scratch"]["psnr"])
    assert rows["tv"]["params"] == {"lam": 3e-3, "n_iter": 100} and rows["tv"]["tuned"]
    assert not rows["wavelet"]["tuned"]  # no tuning record: defaults, flagged
    assert rows["tv"]["psnr"] > rows["pinv"]["psnr"] + 3
    for r in rows.values():
        assert r["seconds"] > 0 and r["peak_mib"] >= 0
        assert set(r["per_source"]) == {"camera"}
    table = (tmp_path / "cs.md").read_text()
    assert "| TV (Chambolle–Pock) |" in table and "(untuned)" in table
    assert (tmp_path / "cs_ratio-0-3.png").stat().st_size > 0
    assert (tmp_path / "cs_psnr.png").stat().st_size > 0


def test_merge_adds_methods_to_existing_results(tmp_path) -> None:
    """``--merge`` measures only the added methods: the merged rows equal a single run of
    all of them (deterministic methods), the kept rows keep their timings, and runs on
    other images are refused."""
    from dataclasses import replace

    from benchmarks import cs, suite_merge
    from benchmarks.suite import RunConfig, run_suite, write_results

    config = RunConfig(size=32, max_sources=1, max_slices=1, settings=("ratio 0.3",))
    config = replace(config, overrides={"tv": {"n_iter": 20}})
    tuning = {}
    both = run_suite(replace(cs.SUITE, methods=("pinv", "tv")), config, tuning)
    first = run_suite(replace(cs.SUITE, methods=("tv",)), config, tuning)
    write_results(cs.SUITE, first, tmp_path, "python -m benchmarks cs")
    old = suite_merge.load_previous(tmp_path, "cs")
    kept_seconds = old[0]["rows"][0]["seconds"]
    added = run_suite(replace(cs.SUITE, methods=("pinv",)), config, tuning)
    merged = suite_merge.merge(*old, added, cs.SUITE.methods)
    assert [r["method"] for r in merged["rows"]] == ["pinv", "tv"]  # the suite's order
    for got, want in zip(merged["rows"], both["rows"], strict=True):
        assert got["psnr"] == pytest.approx(want["psnr"], abs=1e-9)
    assert merged["rows"][1]["seconds"] == kept_seconds
    assert list(merged["_shown"]["ratio 0.3"]) == ["reference", "A†y", "TV (Chambolle–Pock)"]
    write_results(cs.SUITE, merged, tmp_path, merged.pop("command"))
    saved = json.loads((tmp_path / "cs.json").read_text())
    assert saved["command"] == "python -m benchmarks cs"
    assert saved["merged_runs"][0]["methods"] == ["pinv"]
    other = run_suite(replace(cs.SUITE, methods=("pinv",)), replace(config, size=64), tuning)
    with pytest.raises(ValueError, match="size"):
        suite_merge.merge(*suite_merge.load_previous(tmp_path, "cs"), other, cs.SUITE.methods)
    with pytest.raises(FileNotFoundError, match="run the full suite"):
        suite_merge.load_previous(tmp_path / "none", "cs")
    # Without the panels file a merge may add whole settings (their figure is drawn, the
    # others' are kept) but not change a setting whose figure it cannot redraw.
    suite_merge.panels_path(tmp_path, "cs").unlink()
    old_figure = (tmp_path / "cs_ratio-0-3.png").read_bytes()
    with pytest.raises(ValueError, match="no panels of 'ratio 0.3'"):
        suite_merge.merge(*suite_merge.load_previous(tmp_path, "cs"), added, cs.SUITE.methods)
    new_setting = run_suite(
        replace(cs.SUITE, methods=("pinv",)), replace(config, settings=("ratio 0.1",)), tuning
    )
    merged = suite_merge.merge(
        *suite_merge.load_previous(tmp_path, "cs"), new_setting, cs.SUITE.methods
    )
    assert [r["setting"] for r in merged["rows"]] == ["ratio 0.3", "ratio 0.3", "ratio 0.1"]
    assert list(merged["_shown"]) == ["ratio 0.1"]
    write_results(cs.SUITE, merged, tmp_path, merged.pop("command"))
    assert (tmp_path / "cs_ratio-0-3.png").read_bytes() == old_figure
    assert (tmp_path / "cs_ratio-0-1.png").is_file()
    assert "## ratio 0.1" in (tmp_path / "cs.md").read_text()
    # A rerun of every method of a setting needs none of its old panels.
    suite_merge.panels_path(tmp_path, "cs").unlink()
    merged = suite_merge.merge(*suite_merge.load_previous(tmp_path, "cs"), both, cs.SUITE.methods)
    assert [r["setting"] for r in merged["rows"]] == ["ratio 0.3", "ratio 0.3", "ratio 0.1"]
    assert list(merged["_shown"]["ratio 0.3"]) == ["reference", "A†y", "TV (Chambolle–Pock)"]


def test_tuning_records_drop_methods_that_left_and_keep_every_command() -> None:
    """A full retune of a setting replaces its records (SART no longer applies to fan
    beam and must not stay behind); a --methods run keeps the other methods'; the
    suite's command lists every partial run after the last full one."""
    from benchmarks.tune import record_run

    payload: dict = {}
    record_run(payload, "ct", {"fan": {"sart": 1, "tv": 2}}, {"command": "tune"}, False, False)
    record_run(payload, "ct", {"fan": {"tv": 3}}, {"command": "tune -s fan"}, True, False)
    assert payload["suites"]["ct"]["fan"] == {"tv": 3}
    record_run(payload, "ct", {"fan": {"fbp": 4}}, {"command": "tune -m fbp"}, False, True)
    assert payload["suites"]["ct"]["fan"] == {"tv": 3, "fbp": 4}
    assert payload["runs"]["ct"]["command"] == "tune && tune -s fan && tune -m fbp"
    record_run(payload, "ct", {"fan": {"tv": 5}}, {"command": "tune"}, False, False)
    assert payload["runs"]["ct"]["command"] == "tune"


def test_tune_and_mri_suite_tiny(tmp_path) -> None:
    """Tuning on validation images feeds the MRI suite (complex images, fastMRI scores)."""
    from dataclasses import replace

    from benchmarks import mri
    from benchmarks.suite import RunConfig, run_suite
    from benchmarks.tune import tune_suite

    setting = "4x random single-coil"
    suite = replace(mri.SUITE, methods=("pinv", "tv"))
    record = tune_suite(suite, 32, 1, [setting])
    tv = record[setting]["tv"]
    assert tv["best"] in [s["params"] for s in tv["scores"]]
    assert tv["best_score"] == max(s["score"] for s in tv["scores"])
    assert tv["validation"] == {"mni152_val": 1}
    both = replace(mri.SUITE, methods=("pinv", "tv", "wavelet"))
    assert set(tune_suite(both, 32, 1, [setting], ["wavelet"])[setting]) == {"wavelet"}
    config = RunConfig(size=32, max_sources=1, max_slices=1, settings=(setting,))
    payload = run_suite(suite, config, {"mri": record})
    rows = {r["method"]: r for r in payload["rows"]}
    assert rows["tv"]["params"]["lam"] == tv["best"]["lam"]
    assert 0 < rows["pinv"]["nmse"] and rows["tv"]["nmse"] < rows["pinv"]["nmse"]


def test_bench_cli_runs_a_suite_and_rejects_unknown_ones(tmp_path) -> None:
    from idm_med import cli

    out = tmp_path / "operators.md"
    argv = ["--sizes", "32", "--batches", "1", "--min-run-time", "0.01", "--output", str(out)]
    with pytest.raises(SystemExit) as done:
        cli.main(["bench", "operators", *argv])
    assert done.value.code == 0 and "| ct | 32² | 1 |" in out.read_text()
    with pytest.raises(SystemExit) as done:
        cli.main(["bench", "nope"])
    assert done.value.code == 2


def test_training_cost_times_a_choice_and_writes_its_table(tmp_path) -> None:
    from benchmarks import training_cost

    row = training_cost.time_choice({"image_size": 32, "batch_size": 2}, {}, 0, 1)
    assert row["seconds"] > 0
    assert row["pixels_per_second"] == pytest.approx(2 * 32**2 / row["seconds"])
    rows = [{"choice": "a", **row}, {"choice": "b", "error": "RuntimeError: no compiler"}]
    payload = {"command": "x", "machine": "m", "warmup": 0, "repeats": 1}
    table = training_cost.to_markdown(rows, payload)
    assert "| a | " in table and "| 1.00 |" in table and "failed: RuntimeError" in table


def test_noisy_mri_setting_adds_seeded_kspace_noise_and_bounds_the_pinv() -> None:
    """The noisy SENSE settings measure A x plus σ complex noise on the sampled k-space,
    seeded by the image index, with the measured-data cutoff on A†."""
    from benchmarks import mri

    setting = next(s for s in mri.SUITE.settings if s.name == "4x random 8-coil SENSE noisy")
    clean = next(s for s in mri.SUITE.settings if s.name == "4x random 8-coil SENSE")
    assert clean.noise is None
    op = setting.make_operator(32)
    assert op.config["pinv_rtol"] == mri.NOISY_SENSE_RTOL
    x = mri.encode(np.random.default_rng(0).random((32, 32)), 0)
    y = op.A(x)
    noise = setting.measure(op, x, 3) - y
    measured = y.abs().sum(dim=(0, 1, 2, 3)) > 0  # columns of the mask
    assert torch.equal(noise[..., ~measured], torch.zeros_like(noise[..., ~measured]))
    std = noise[..., measured].pow(2).mean().mul(2).sqrt().item()  # E|n|² = σ² over re, im
    assert std == pytest.approx(mri.NOISE_SIGMA, rel=0.05)
    assert torch.equal(setting.measure(op, x, 3), setting.measure(op, x, 3))
    assert not torch.equal(setting.measure(op, x, 3), setting.measure(op, x, 4))


def test_sense_cutoff_picks_the_best_validation_cutoff(tmp_path) -> None:
    """The cutoff scan scores A†y of every noisy setting per cutoff and marks the best."""
    from benchmarks import sense_cutoff

    sense_cutoff.main(["--quick", "--output-dir", str(tmp_path)])
    result = json.loads((tmp_path / "sense_cutoff.json").read_text())
    assert set(result["settings"]) == {
        "4x random 8-coil SENSE noisy",
        "8x random 8-coil SENSE noisy",
    }
    for rec in result["settings"].values():
        assert len(rec["psnr"]) == len(sense_cutoff.GRID)
        assert rec["psnr"][str(rec["best"])] == max(rec["psnr"].values())
    # The cutoff matters on noisy data: the grid's ends differ clearly.
    rec = result["settings"]["4x random 8-coil SENSE noisy"]
    assert abs(rec["psnr"]["0.01"] - rec["psnr"]["0.2"]) > 1.0
    assert "**" in (tmp_path / "sense_cutoff.md").read_text()


def test_every_noisy_test_image_gets_its_own_noise_draw() -> None:
    """The first slices of two test sources (same slice index) get different noise and
    a different MRI phase, and the cases are reproducible."""
    from benchmarks import mri
    from benchmarks.suite import measure_test_images

    setting = next(s for s in mri.SUITE.settings if s.name == "4x random 8-coil SENSE noisy")
    op = setting.make_operator(32)
    image = np.random.default_rng(0).random((32, 32))
    test = {"a": [image, image], "b": [image]}
    cases = measure_test_images(mri.SUITE, setting, op, test)
    noise = [y - op.A(x) for src in ("a", "b") for x, y in cases[src]]
    assert len(noise) == 3
    assert not torch.equal(noise[0], noise[2])  # slice 0 of a vs slice 0 of b
    assert not torch.equal(noise[0], noise[1])
    assert not torch.equal(cases["a"][0][0], cases["b"][0][0])  # same image, own phase
    again = measure_test_images(mri.SUITE, setting, op, test)
    assert torch.equal(again["b"][0][1], cases["b"][0][1])


def test_ct_inner_cg_table_lists_every_cap_per_setting() -> None:
    from benchmarks import ct_inner_cg

    row = {"psnr_hu": 30.0, "psnr": 45.0, "residual": 1e-5, "seconds": 12.0}
    result = {
        "settings": {"30 views": {"None": row, "10": {**row, "psnr_hu": 29.5}}},
        "validation": {"CT_small": 1},
        "size": 256,
        "operator_cg_max_iter": 200,
        "machine": "m",
    }
    table = ct_inner_cg.to_markdown(result, "python -m benchmarks ct_inner_cg")
    assert "| 30 views | none | 30.00 |" in table and "| 30 views | 10 | 29.50 |" in table
    assert "operator's 200" in table


def test_inference_options_table_gives_each_option_against_fp32_global() -> None:
    from benchmarks import inference_options

    labels = [inference_options._label(p, w) for p, w in inference_options.OPTIONS]
    rows = {label: {"psnr": 20.0 + i, "seconds": 2.0 - 0.5 * i} for i, label in enumerate(labels)}
    result = {
        "suites": {"cs": {"ratio 0.1": rows}},
        "models": {"cs": {"model": "idm_cs", "window": 96}},
        "size": 256,
        "max_slices": 4,
        "machine": "m",
    }
    table = inference_options.to_markdown(result, "python -m benchmarks inference_options")
    assert "| cs (idm_cs, 96 px) | ratio 0.1 | 20.00, 2.00 s | 21.00 (+1.00), 1.50 s |" in table
    assert "23.00 (+3.00), 0.50 s |" in table
