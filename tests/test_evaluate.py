"""`idm-med evaluate`: fastMRI-style scoring of a folder of reconstructions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from idm_med import cli, metrics
from idm_med.acquisition.mri import simulate_targets
from idm_med.datasets import fastmri
from idm_med.evaluate import evaluate_folder, read_target


def _kspace(seed: int, coils: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (2, coils, 16, 12) if coils else (2, 16, 12)
    img = rng.uniform(0, 1, shape) * np.exp(1j * rng.uniform(0, 1, shape))
    return np.fft.fftshift(
        np.fft.fft2(np.fft.ifftshift(img, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )


@pytest.fixture
def folders(tmp_path):
    targets, preds = tmp_path / "targets", tmp_path / "preds"
    targets.mkdir()
    preds.mkdir()
    rng = np.random.default_rng(0)
    expected = {}
    for i, coils in enumerate([None, 3]):
        k = _kspace(i, coils)
        tgt = simulate_targets(torch.from_numpy(k), (12, 12))
        name = f"vol{i}.h5"
        fastmri.write_fastmri_file(targets / name, k, target=tgt)
        pred = np.abs(tgt + 0.05 * rng.standard_normal(tgt.shape)).astype(np.float32)  # magnitude
        fastmri.write_reconstruction(preds / name, pred)
        expected[name] = metrics.evaluate(tgt, pred)
    # A k-space-only target: the reference comes from the fully sampled k-space.
    k = _kspace(5)
    fastmri.write_fastmri_file(targets / "raw.h5", k, recon_size=(12, 12))
    tgt = simulate_targets(torch.from_numpy(k), (12, 12))
    fastmri.write_reconstruction(preds / "raw.h5", 0.9 * tgt)
    expected["raw.h5"] = metrics.evaluate(tgt, 0.9 * tgt)
    return targets, preds, expected


def test_evaluate_folder_per_volume_and_summary(folders) -> None:
    targets, preds, expected = folders
    result = evaluate_folder(targets, preds)
    assert set(result.volumes) == set(expected)
    for name, values in expected.items():
        for key, value in values.items():
            assert result.volumes[name][key] == pytest.approx(value, rel=1e-5)
    psnrs = [v["psnr"] for v in expected.values()]
    assert result.mean()["psnr"] == pytest.approx(np.mean(psnrs), rel=1e-5)
    assert result.std()["psnr"] == pytest.approx(np.std(psnrs, ddof=1), rel=1e-4)
    assert "3 volumes" in result.to_text()


def test_read_target_prefers_the_challenge_key(folders) -> None:
    targets, _, _ = folders
    with pytest.raises(ValueError, match="reconstruction_rss"):
        read_target(targets / "vol0.h5", challenge="multicoil")
    assert read_target(targets / "vol1.h5").shape == (2, 12, 12)


def test_evaluate_cli_and_missing_prediction(folders, tmp_path, capsys) -> None:
    targets, preds, expected = folders
    out = tmp_path / "scores.json"
    with pytest.raises(SystemExit) as done:
        cli.main(
            [
                "evaluate",
                "--target-path",
                str(targets),
                "--predictions-path",
                str(preds),
                "--output",
                str(out),
            ]
        )
    assert done.value.code == 0
    assert "PSNR" in capsys.readouterr().out
    assert set(json.loads(out.read_text())["volumes"]) == set(expected)
    (preds / "raw.h5").unlink()
    with pytest.raises(ValueError, match="missing prediction"):
        evaluate_folder(targets, preds)
