"""The command line end to end: outputs where promised, user data never lost, one clear
line per user error, model/data checks, batches, previews and metrics files (issue 9)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from idm_med import cli, methods, reconstruction
from idm_med.acquisition import attenuation_to_hu, simulate_targets
from idm_med.datasets import atomic, fastmri, images, nifti
from idm_med.datasets.samples import sample_path
from idm_med.operators import make_operator
from idm_med.operators.mri import fft2c


def _run(*argv: str) -> int:
    with pytest.raises(SystemExit) as exc:
        cli.main([str(a) for a in argv])
    return exc.value.code


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative name → content)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _dirs(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir()}


@pytest.fixture()
def h5(tmp_path: Path) -> Path:
    """A tiny fully sampled single-coil fastMRI file (2 slices of 32²)."""
    rng = np.random.default_rng(0)
    image = np.zeros((2, 32, 32), np.complex64)
    image[:, 8:24, 6:26] = 1 + rng.random((2, 16, 20))
    kspace = fft2c(torch.from_numpy(image))
    target = simulate_targets(kspace, (32, 32))
    folder = tmp_path / "data"
    return fastmri.write_fastmri_file(folder / "vol.h5", kspace, target=target)


@pytest.fixture()
def png(tmp_path: Path) -> Path:
    src = tmp_path / "data" / "img.png"
    images.write_image(src, torch.rand(1, 32, 32))
    return src


@pytest.fixture()
def nii(tmp_path: Path) -> Path:
    src = tmp_path / "data" / "vol.nii.gz"
    data = np.random.default_rng(1).random((16, 16, 2)).astype(np.float32)
    return nifti.write_nifti(src, data, np.diag([2.0, 2.0, 3.0, 1.0]))


@pytest.fixture()
def series(tmp_path: Path) -> Path:
    """A 2-slice 16² CT series derived from the bundled head CT."""
    from idm_med.datasets import dicom

    src = dicom.read_dicom_series(sample_path("ct_head"))
    reduced = src.with_hu(torch.nn.functional.avg_pool2d(torch.from_numpy(src.hu), 32).numpy())
    return dicom.write_dicom_series(reduced.hu, reduced, tmp_path / "data" / "series")


def _constant(c: float = 0.25):
    """A method whose output differs from A†y: the constant image ``c``."""
    return lambda y, op: torch.full((y.shape[0], *op.image_shape), c)


# -- the method's output is what gets written (issue 7 defect) -------------------------
def test_written_file_holds_the_method_output(tmp_path, h5, png, nii):
    c = 0.25
    res = reconstruction.reconstruct_fastmri(h5, tmp_path / "o", _constant(c), acceleration=4)
    import h5py

    with h5py.File(res.output) as f:
        stored = f["reconstruction"][()]
    np.testing.assert_allclose(stored, np.full_like(stored, c * np.sqrt(2)), rtol=1e-6)
    assert not np.allclose(stored, res.pinv, atol=1e-3)

    res = reconstruction.reconstruct_image(
        png, tmp_path / "o" / "i.png", _constant(c), ratio=0.3, block_size=16
    )
    np.testing.assert_allclose(images.read_image(res.output)[0], c, atol=1 / 255)
    assert not np.allclose(res.pinv, c, atol=0.05)

    res = reconstruction.reconstruct_nifti(nii, tmp_path / "o" / "n.nii.gz", _constant(c))
    data = nifti.read_nifti(nii).data
    out = nifti.read_nifti(res.output).data
    np.testing.assert_allclose(out, c * np.sqrt(2) * np.abs(data).max(), rtol=1e-5)


def test_written_series_holds_the_method_output(tmp_path, series):
    from idm_med.datasets import dicom

    c = 0.25
    res = reconstruction.reconstruct_dicom(series, tmp_path / "o", _constant(c), n_views=8)
    back = dicom.read_dicom_series(res.output)
    expected = attenuation_to_hu(np.full(back.hu.shape, c, np.float32))
    np.testing.assert_allclose(back.hu, expected, atol=1.0)


def test_pseudo_inverse_is_solved_once_per_slice(monkeypatch, png):
    op = make_operator("gaussian_cs", image_size=16, ratio=0.3, block_size=16)
    calls = []
    real = type(op).A_pinv

    def counting(self, y):
        calls.append(1)
        return real(self, y)

    monkeypatch.setattr(type(op), "A_pinv", counting)
    y = op.A(torch.rand(2, 1, 16, 16))
    x, pinv = reconstruction.solve(lambda y, op: op.A_pinv(y) * 2, op, y)
    assert len(calls) == 1
    torch.testing.assert_close(x, 2 * pinv)


# -- data safety (issue 9, defect 2) -----------------------------------------------------
def test_outputs_of_two_runs_and_user_files_survive(tmp_path, h5, series):
    out = tmp_path / "reconstructions"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _run("reconstruct", h5, "--method", "pinv", "--output", out) == 0
    assert _run("reconstruct", series, "--method", "pinv", "--n-views", "8", "--output", out) == 0
    assert _run("reconstruct", h5, "--method", "tv", "--output", out) == 0
    files = set(_tree(out))
    assert {"notes.txt", "pinv/vol.h5", "tv/vol.h5", "pinv/vol.h5.metrics.json"} <= files
    assert any(f.startswith("series_pinv/slice_") for f in files)
    assert (out / "notes.txt").read_text() == "mine"


def test_existing_output_needs_overwrite(tmp_path, h5, caplog):
    out = tmp_path / "result.h5"
    assert _run("reconstruct", h5, "--method", "pinv", "--output", out) == 0
    assert out.is_file()  # `--output result.h5` is that file
    before = out.read_bytes()
    assert _run("reconstruct", h5, "--method", "tv", "--output", out) == 2
    assert "already exists" in caplog.text and out.read_bytes() == before
    assert _run("reconstruct", h5, "--method", "tv", "--output", out, "--overwrite") == 0
    assert out.read_bytes() != before


def test_inputs_are_never_written_over(tmp_path, h5, png, series, caplog):
    data = tmp_path / "data"
    before = _tree(data)
    assert _run("reconstruct", png, "--method", "pinv", "--output", png, "--overwrite") == 2
    assert "would write over the input" in caplog.text
    assert _run("reconstruct", h5, "--method", "pinv", "--output", h5, "--overwrite") == 2
    assert _run("reconstruct", series, "--n-views", "8", "--output", series) == 2
    # The folder holding the input .h5: the result goes into <folder>/pinv/, input intact.
    assert _run("reconstruct", h5, "--method", "pinv", "--output", data) == 0
    after = _tree(data)
    assert all(after[name] == content for name, content in before.items())
    with pytest.raises(atomic.OutputIsInputError):
        atomic.check_output(series, [series], overwrite=True)
    with pytest.raises(atomic.OutputIsInputError):  # inside the input series
        atomic.check_output(series / "x", [series], overwrite=True)
    with pytest.raises(atomic.OutputIsInputError):  # a folder that holds an input
        atomic.check_output(data, [h5], overwrite=True)


@pytest.mark.parametrize("fmt", ["fastmri", "image", "nifti", "dicom"])
def test_failure_halfway_leaves_nothing_behind(tmp_path, monkeypatch, fmt, request):
    src = request.getfixturevalue({"fastmri": "h5", "image": "png", "nifti": "nii",
                                   "dicom": "series"}[fmt])  # fmt: skip
    before_files, before_dirs = _tree(tmp_path), _dirs(tmp_path)
    out = tmp_path / "new" / "deeper"
    if fmt == "dicom":
        from idm_med.datasets import dicom

        real = dicom.pydicom.dcmwrite
        calls = []

        def failing(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise OSError("disk full")
            return real(*args, **kwargs)

        monkeypatch.setattr(dicom.pydicom, "dcmwrite", failing)
    else:

        def failing_replace(src_path, dst_path):
            raise OSError("disk full")

        monkeypatch.setattr(atomic.os, "replace", failing_replace)
    assert _run("reconstruct", src, "--method", "pinv", "--n-views", "8", "--output", out) == 2
    assert _tree(tmp_path) == before_files and _dirs(tmp_path) == before_dirs


def test_failing_method_and_ctrl_c_leave_nothing(tmp_path, monkeypatch, h5, caplog):
    before = _tree(tmp_path)
    calls = []

    def interrupted(y, op):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return op.A_pinv(y)

    monkeypatch.setattr(methods, "make_method", lambda *a, **k: interrupted)
    assert _run("reconstruct", h5, "--output", tmp_path / "out") == 130
    assert "interrupted" in caplog.text and _tree(tmp_path) == before
    assert not (tmp_path / "out").exists()


# -- one clear line per user error (defect 3) --------------------------------------------
def _init(path: Path) -> Path:
    assert _run("init", path, "--steps", "1", "--image-channels", "2") == 0
    return path


def test_checkpoint_errors_are_one_line(tmp_path, h5, caplog, capsys):
    bad = _init(tmp_path / "ckpt")
    config = json.loads((bad / "config.json").read_text())
    config["backbone"]["unet"]["block_out_channels"] = [16, 16, 16]
    (bad / "config.json").write_text(json.dumps(config))
    args = ("reconstruct", h5, "--method", "idm", "--output", tmp_path / "o")
    assert _run(*args, "--checkpoint", bad) == 2
    assert "does not match diffusion_pytorch_model" in caplog.text and str(bad) in caplog.text
    assert "Traceback" not in capsys.readouterr().err
    (bad / "config.json").write_text("{not json")
    caplog.clear()
    assert _run(*args, "--checkpoint", bad) == 2
    assert "config.json: not valid JSON" in caplog.text
    assert _run(*args, "--checkpoint", "no_such_model") == 2
    assert "known models" in caplog.text
    from idm_med.checkpoints import CheckpointError

    with pytest.raises(CheckpointError):  # --debug shows the real error
        cli.main([str(a) for a in (*args, "--checkpoint", bad, "--debug")])


def test_unwritable_output_is_one_line(tmp_path, monkeypatch, png, caplog):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "locked"))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", denied)
    assert _run("reconstruct", png, "--method", "pinv", "--output", tmp_path / "locked") == 2
    assert "Permission denied" in caplog.text and "locked" in caplog.text


# -- model / data mismatch (defect 5) ----------------------------------------------------
def test_single_coil_model_runs_on_multicoil_data_with_a_warning(tmp_path, caplog):
    """The MRI model reconstructs the coil-combined image through SENSE (issue 11)."""
    from idm_med.acquisition.coils import synthetic_coil_maps

    maps = synthetic_coil_maps(4, (32, 32))
    image = torch.zeros(32, 32, dtype=torch.complex64)
    image[8:24, 8:24] = 1
    k = fft2c(maps * image).unsqueeze(0)
    path = fastmri.write_fastmri_file(tmp_path / "mc.h5", k, target=simulate_targets(k, (32, 32)))
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        assert _run("reconstruct", path, "--method", "idm", "--center-fraction", "0.5",
                    "--output", out) == 0  # fmt: skip
    from idm_med.checkpoints import default_checkpoint

    default = default_checkpoint("mri").name
    assert "single-coil model on multi-coil data" in caplog.text and default in caplog.text
    with h5py.File(out / "idm" / "mc.h5") as f:
        recon = f["reconstruction"][()]
    assert recon.shape == (1, 32, 32) and np.isfinite(recon).all() and recon.max() > 0


def test_untrained_checkpoint_warns(tmp_path, h5, caplog):
    ckpt = _init(tmp_path / "ckpt")
    with caplog.at_level(logging.WARNING):
        code = _run("reconstruct", h5, "--method", "idm", "--checkpoint", ckpt,
                    "--output", tmp_path / "o")  # fmt: skip
    assert code == 0 and "untrained" in caplog.text


# -- commands ------------------------------------------------------------------------------
def test_models_lists_the_shipped_model_and_resolves_names(capsys, caplog):
    assert _run("models") == 0
    out = capsys.readouterr().out
    assert "mri_4x" in out and "shipped" in out and "acceleration=4" in out
    assert _run("models", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert any(r["name"] == "mri_4x" and r["operator"] == "mri" for r in rows)
    from idm_med.checkpoints import default_checkpoint, resolve_checkpoint

    assert resolve_checkpoint("mri_4x").name == "mri_4x"
    with caplog.at_level(logging.INFO):
        default = default_checkpoint("mri")
    # The default for an operator is a trained shipped model of it, and the log says which.
    assert default.parent.name == "pretrained" and default.name in caplog.text
    assert default.name in {r["name"] for r in rows if r["operator"] == "mri"}


def test_version_and_help(capsys):
    assert _run("--version") == 0
    assert capsys.readouterr().out.strip().startswith("idm-med ")
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.choices and "reconstruct" in a.choices)
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help"
        text = p.format_help()
        for line in text.split("\n  -"):
            assert line.count("(default: ") <= 1, f"{name}: default printed twice in {line!r}"


def test_batch_folder_preview_and_metrics(tmp_path, h5, capsys):
    second = h5.with_name("vol2.h5")
    second.write_bytes(h5.read_bytes())
    out = tmp_path / "out"
    code = _run("reconstruct", h5.parent, "--method", "pinv", "--output", out, "--preview",
                out / "preview.png", "--batch-size", "2", "--device", "cpu")  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "vol.h5" in text and "vol2.h5" in text and "PSNR" in text  # the summary table
    for name in ("vol.h5", "vol2.h5"):
        report = json.loads((out / "pinv" / f"{name}.metrics.json").read_text())
        assert report["metrics"]["psnr"] > 0 and report["method"] == "pinv"
        assert (out / f"preview_{name}.png").stat().st_size > 1000
    assert _run("reconstruct", str(h5.parent / "*.h5"), "--method", "pinv",
                "--output", tmp_path / "glob") == 0  # fmt: skip
    assert {"pinv/vol.h5", "pinv/vol2.h5"} <= set(_tree(tmp_path / "glob"))


def test_batched_slices_equal_one_by_one(tmp_path, nii):
    method = reconstruction.make_method("pinv")
    one = reconstruction.reconstruct_nifti(nii, tmp_path / "a.nii", method, batch_size=1)
    two = reconstruction.reconstruct_nifti(nii, tmp_path / "b.nii", method, batch_size=2)
    np.testing.assert_allclose(one.reconstruction, two.reconstruction, rtol=1e-5, atol=1e-6)


def test_device_option():
    assert cli.resolve_device("cpu") == "cpu"
    assert cli.resolve_device("auto") in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            cli.resolve_device("cuda")


def test_inputs_are_dealt_across_processes(monkeypatch):
    from pathlib import Path

    from idm_med.runner import process_share

    inputs = [Path(f"v{i}.h5") for i in range(5)]
    assert process_share(inputs) == inputs
    shares = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        shares.append(process_share(inputs))
    assert shares[0] == inputs[0::2] and shares[1] == inputs[1::2]
    assert sorted(shares[0] + shares[1]) == sorted(inputs)


def test_readers_are_chosen_by_suffix_or_content(tmp_path, h5, png, nii, series):
    from idm_med.datasets import readers

    for path, name in ((h5, "fastmri"), (png, "image"), (nii, "nifti"), (series, "dicom")):
        reader = readers.select_reader(path)
        assert reader.name == name and isinstance(reader, readers.ImageReader)
        assert [r.name for r in readers.READERS if r.verify_suffix(path)] == [name]
    volume, meta = readers.FastMRIReader().get_data(readers.FastMRIReader().read(h5))
    assert len(volume) == meta["num_slices"] == 2 and meta["crop_size"] == (32, 32)
    data, meta = readers.NiftiReader().get_data(readers.NiftiReader().read(nii))
    assert data.shape == (16, 16, 2) and meta["voxel_size"] == (2.0, 2.0, 3.0)
    assert readers.reader_for_name(tmp_path / "x.nii.gz").name == "nifti"
    with pytest.raises(ValueError, match="cannot tell the format"):
        (tmp_path / "notes.txt").write_text("x")
        readers.select_reader(tmp_path / "notes.txt")


def test_ct_pipeline_solves_the_pseudo_inverse_once_per_slice(tmp_path, monkeypatch, series):
    """The CT pseudo-inverse is a CG solve: the pipeline computes A†y once per batch of
    slices and the method's own ``op.A_pinv(y)`` reuses it."""
    op_class = type(make_operator("ct", image_size=16, n_views=8))
    real, calls = op_class.A_pinv, []

    def counting(self, y):
        calls.append(y.shape[0])
        return real(self, y)

    monkeypatch.setattr(op_class, "A_pinv", counting)
    res = reconstruction.reconstruct_dicom(
        series, tmp_path / "o", lambda y, op: 0.5 * op.A_pinv(y), n_views=8, batch_size=2
    )
    assert len(res.reconstruction) == 4 and calls == [2, 2]  # one solve per batch of 2
    np.testing.assert_allclose(res.reconstruction, 0.5 * res.pinv, rtol=1e-5, atol=1e-6)


def test_ct_series_with_method_idm_uses_the_shipped_ct_model(tmp_path, series, caplog):
    """`--method idm` on a CT DICOM series runs the shipped CT model (no --checkpoint) and
    writes a DICOM series that differs from the A†y reconstruction."""
    from idm_med.datasets import dicom

    out_idm, out_pinv = tmp_path / "idm", tmp_path / "pinv"
    with caplog.at_level(logging.INFO):
        assert _run("reconstruct", series, "--method", "idm", "--n-views", "2",
                    "--output", out_idm) == 0  # fmt: skip
    assert "'idm_ct'" in caplog.text
    assert _run("reconstruct", series, "--method", "pinv", "--n-views", "2",
                "--output", out_pinv) == 0  # fmt: skip
    (idm_dir,) = [p for p in out_idm.iterdir() if p.is_dir()]
    (pinv_dir,) = [p for p in out_pinv.iterdir() if p.is_dir()]
    ours, pinv = dicom.read_dicom_series(idm_dir), dicom.read_dicom_series(pinv_dir)
    assert ours.hu.shape == pinv.hu.shape
    # 2 views leave most of the image unmeasured: the model fills it in, unlike A†y.
    assert np.abs(ours.hu - pinv.hu).max() > 20.0  # HU (219 when written)
