"""End-to-end pipelines: each input format in, the same format out, with metrics."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from idm_med import cli, metrics
from idm_med.classical import tv_rnd_reconstruct
from idm_med.datasets import fastmri, images, nifti
from idm_med.datasets.samples import list_samples, sample_path
from idm_med.operators import available_operators, make_operator, range_null_space_projection
from idm_med.reconstruction import (
    detect_format,
    make_method,
    reconstruct_fastmri,
    reconstruct_image,
    reconstruct_nifti,
)


def test_bundled_samples_are_listed():
    names = list_samples()
    for expected in ("fastmri_singlecoil_brain.h5", "brain_t1.nii.gz", "ct_head", "natural"):
        assert expected in names
    assert not any(n.startswith("NOTICE") for n in names)
    with pytest.raises(ValueError, match="no bundled sample"):
        sample_path("missing.h5")


def test_metrics_match_definitions():
    gt = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    noisy = gt + 0.01
    assert metrics.psnr(gt, noisy) == pytest.approx(40.0, abs=1e-6)  # max 1, MSE 1e-4
    assert metrics.nmse(gt, noisy) == pytest.approx(1e-4 / np.mean(gt**2))
    assert metrics.ssim(gt, gt) == pytest.approx(1.0)
    assert metrics.ssim(gt, noisy) < 1.0
    with pytest.raises(ValueError, match="same shape"):
        metrics.psnr(gt, gt[:10])


def test_rnd_projection_enforces_data_consistency():
    op = make_operator("gaussian_cs", image_size=32, ratio=0.3, block_size=16).double()
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    y = op.A(x)
    z = range_null_space_projection(torch.randn_like(x), y, op)
    assert torch.allclose(op.A(z), y, atol=1e-6)


def test_tv_baseline_beats_pseudo_inverse_on_a_real_image():
    image = images.read_image(sample_path("natural") / "coins.png")[None, :, :128, :128]
    op = make_operator("inpainting", image_size=128, missing_ratio=0.5)
    y = op.A(image)
    tv = tv_rnd_reconstruct(y, op, n_iter=15, progress=False)
    assert metrics.psnr(image[0, 0], tv[0, 0]) > metrics.psnr(image[0, 0], op.A_pinv(y)[0, 0]) + 5


def test_fastmri_pipeline_writes_fastmri_reconstruction(tmp_path):
    path = sample_path("fastmri_singlecoil_brain.h5")
    result = reconstruct_fastmri(path, tmp_path, make_method("pinv"), acceleration=4)
    info = fastmri.read_volume_info(path)
    with h5py.File(result.output, "r") as f:
        stored = f["reconstruction"][()]
    assert stored.shape == (info.num_slices, *info.crop_size)
    assert np.allclose(stored, result.reconstruction, atol=1e-6)
    # The zero-filled reconstruction loses information but keeps the anatomy.
    assert 15 < result.metrics["psnr"] < 40 and result.metrics["ssim"] > 0.3


def test_nifti_pipeline_keeps_affine(tmp_path):
    src = sample_path("brain_t1.nii.gz")
    out = tmp_path / "recon.nii.gz"
    result = reconstruct_nifti(src, out, make_method("pinv"), axis=2, slices=[40, 45])
    before, after = nifti.read_nifti(src), nifti.read_nifti(out)
    assert np.array_equal(before.affine, after.affine)
    assert after.data.shape == before.data.shape
    untouched = [i for i in range(before.data.shape[2]) if i not in (40, 45)]
    assert np.allclose(after.data[..., untouched], before.data[..., untouched], atol=1e-3)
    assert result.reconstruction.shape == (2, *before.data.shape[:2])
    assert result.metrics["psnr"] > 20


@pytest.mark.parametrize(
    "operator,kwargs",
    [
        ("gaussian_cs", {"ratio": 0.25}),
        ("inpainting", {"missing_ratio": 0.5}),
        ("superres", {"factor": 2}),
    ],
)
def test_image_pipeline_round_trip(tmp_path, operator, kwargs):
    src = tmp_path / "in.npy"
    np.save(src, np.random.default_rng(0).random((64, 64)).astype(np.float32))
    out = tmp_path / "out.npy"
    result = reconstruct_image(src, out, make_method("pinv"), operator, **kwargs)
    assert np.allclose(np.load(out).reshape(result.reconstruction.shape), result.reconstruction)


@pytest.mark.skipif("ct" not in available_operators(), reason="CT operator not registered")
def test_dicom_pipeline_writes_a_new_series(tmp_path):
    from idm_med.datasets import dicom
    from idm_med.reconstruction import reconstruct_dicom

    src = dicom.read_dicom_series(sample_path("ct_head"))
    small = src.with_hu(torch.nn.functional.avg_pool2d(torch.from_numpy(src.hu), 4).numpy())
    folder = tmp_path / "small"
    dicom.write_dicom_series(small.hu, small, folder)
    result = reconstruct_dicom(folder, tmp_path / "out", make_method("pinv"), n_views=32)
    back = dicom.read_dicom_series(result.output)
    assert back.series_uid != small.series_uid
    assert back.hu.shape == small.hu.shape
    assert np.allclose(back.spacing, small.spacing)
    assert result.metrics["psnr"] > 15


def test_detect_format(tmp_path):
    assert detect_format(sample_path("ct_head")) == "dicom"
    for name, fmt in [("a.h5", "fastmri"), ("a.nii.gz", "nifti"), ("a.png", "image")]:
        (tmp_path / name).touch()
        assert detect_format(tmp_path / name) == fmt
    (tmp_path / "notes.txt").touch()
    with pytest.raises(ValueError, match="cannot tell the format"):
        detect_format(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="no such file or folder"):
        detect_format(tmp_path / "missing.h5")


def test_make_method_errors():
    with pytest.raises(ValueError, match="needs checkpoint"):
        make_method("idm")
    with pytest.raises(ValueError, match="unknown method"):
        make_method("magic")


def test_cli_help_and_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    assert "reconstruct" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli.main(["reconstruct", str(tmp_path / "notes.txt"), "--method", "pinv"])
    assert exc.value.code == 2


def test_cli_reconstructs_an_image(tmp_path, capsys):
    src = tmp_path / "in.png"
    images.write_image(src, torch.rand(1, 32, 32))
    with pytest.raises(SystemExit) as exc:
        cli.main(
            [
                "reconstruct",
                str(src),
                "--output",
                str(tmp_path / "out.png"),
                "--method",
                "tv",
                "--operator",
                "inpainting",
                "--ratio",
                "0.3",
            ]
        )
    assert exc.value.code == 0
    assert "PSNR" in capsys.readouterr().out
    assert images.read_image(tmp_path / "out.png").shape == (1, 32, 32)


def test_idm_checkpoint_runs_through_the_pipelines(tmp_path, capsys):
    """An IDM checkpoint made by `idm-med init` reconstructs through the file pipelines
    (untrained weights: this checks the plumbing, not the quality)."""
    from idm_med.model import IDM

    ckpt = tmp_path / "ckpt"
    with pytest.raises(SystemExit) as exc:
        cli.main(["init", str(ckpt), "--steps", "2", "--image-channels", "2"])
    assert exc.value.code == 0
    model = IDM.from_pretrained(ckpt)
    assert model.steps == 2 and model.image_channels == 2
    result = reconstruct_nifti(
        sample_path("brain_t1.nii.gz"),
        tmp_path / "out.nii.gz",
        make_method("idm", checkpoint=ckpt),
        axis=2,
        slices=[45],
    )
    assert result.reconstruction.shape == (1, 98, 116) and np.isfinite(result.reconstruction).all()


def test_demo_writes_png_and_metrics(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--output", str(tmp_path), "--mri-only"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "zero-filled: PSNR" in out and "TV-RND: PSNR" in out
    assert "IDM: PSNR" in out  # the shipped default MRI model runs without --checkpoint
    assert (tmp_path / "demo_mri.png").stat().st_size > 10_000
    assert (tmp_path / "TV-RND" / "fastmri_singlecoil_brain.h5").is_file()


def test_demo_tasks_beat_pinv_with_each_shipped_model(tmp_path):
    """The demo's tasks after the MRI slice run the shipped model of each task on its
    held-out image (cameraman, the test CT section) and write one figure per task; the
    model must beat A†y."""
    from idm_med.demo_tasks import TASKS, run_demo_tasks
    from idm_med.pretrained import list_pretrained

    results = run_demo_tasks(tmp_path, size=64, ct_size=64)
    assert "ct" in {t.operator for t in TASKS}
    shipped = [t for t in TASKS if t.model in list_pretrained()]
    assert [label for label, _, _ in results] == [t.label for t in shipped] and shipped
    for (label, pinv, idm), task in zip(results, shipped, strict=True):
        assert idm["psnr"] > pinv["psnr"] + 1.0, label
        assert (tmp_path / f"demo_{task.operator}.png").stat().st_size > 5_000
