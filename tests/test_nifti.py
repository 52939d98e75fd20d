"""NIfTI reading/writing with affines, slicing, and rejection of bad files."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from idm_med.datasets.nifti import (
    NiftiVolume,
    extract_slices,
    read_nifti,
    stack_slices,
    write_nifti,
)
from idm_med.datasets.samples import sample_path


def _affine() -> np.ndarray:
    """An oblique affine: rotation about z, anisotropic voxels, a translation."""
    c, s = np.cos(0.3), np.sin(0.3)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.9, 1.1, 2.5])
    affine[:3, 3] = [-90.0, 12.5, -40.0]
    return affine


def _volume(shape: tuple[int, int, int] = (12, 10, 6)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("name", ["vol.nii.gz", "vol.nii"])
def test_round_trip_keeps_data_affine_and_header(tmp_path: Path, name: str) -> None:
    data, affine = _volume(), _affine()
    template = nib.Nifti1Header()
    template["descrip"] = b"idm-med test"
    template.set_xyzt_units("mm", "sec")
    path = write_nifti(tmp_path / name, data, affine, header=template)
    vol = read_nifti(path)
    assert isinstance(vol, NiftiVolume) and vol.path == path
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_allclose(vol.affine, affine, rtol=0, atol=1e-5)
    np.testing.assert_allclose(vol.voxel_size, (0.9, 1.1, 2.5), rtol=1e-5)
    assert vol.header["descrip"].tobytes().rstrip(b"\0") == b"idm-med test"
    assert vol.header.get_xyzt_units() == ("mm", "sec")
    # Both sform and qform carry the affine (nibabel readers may use either).
    np.testing.assert_allclose(vol.header.get_qform(), affine, atol=1e-5)
    np.testing.assert_allclose(vol.header.get_sform(), affine, atol=1e-5)
    # Deterministic bytes (gzip without a timestamp).
    again = write_nifti(tmp_path / f"again_{name}", data, affine, header=template)
    assert again.read_bytes() == path.read_bytes()


def test_integer_data_and_float64_read(tmp_path: Path) -> None:
    data = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)
    path = write_nifti(tmp_path / "int.nii.gz", data, np.eye(4))
    assert nib.load(path).get_data_dtype() == np.int16
    vol = read_nifti(path, dtype=np.float64)
    assert vol.data.dtype == np.float64
    np.testing.assert_array_equal(vol.data, data)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_extract_and_stack_slices(axis: int) -> None:
    data = _volume((5, 6, 7))
    slices = extract_slices(data, axis)
    assert slices.shape[0] == data.shape[axis]
    np.testing.assert_array_equal(slices[3], np.take(data, 3, axis=axis))
    np.testing.assert_array_equal(stack_slices(slices, axis), data)
    picked = extract_slices(data, axis, [4, 0])
    np.testing.assert_array_equal(picked[0], np.take(data, 4, axis=axis))
    np.testing.assert_array_equal(picked[1], np.take(data, 0, axis=axis))


def test_slice_arguments_rejected() -> None:
    data = _volume((5, 6, 7))
    with pytest.raises(ValueError, match="axis"):
        extract_slices(data, 3)
    with pytest.raises(ValueError, match="indices"):
        extract_slices(data, 0, [5])
    with pytest.raises(ValueError, match="3-D"):
        extract_slices(data[0], 0)


def test_singleton_time_axis_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(_volume()[..., None], _affine()), path)
    assert read_nifti(path).data.shape == (12, 10, 6)


@pytest.mark.parametrize(
    ("shape", "name"), [((12, 10, 6, 2), "four_d.nii.gz"), ((12, 10), "two_d.nii.gz")]
)
def test_wrong_dimensionality_rejected(tmp_path: Path, shape: tuple[int, ...], name: str) -> None:
    path = tmp_path / name
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), path)
    with pytest.raises(ValueError, match=rf"{name}: expected a 3-D volume .* got shape"):
        read_nifti(path)


def test_unreadable_files_rejected(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not a nifti file at all" * 20)
    with pytest.raises(ValueError, match="garbage.nii.gz: not a readable NIfTI"):
        read_nifti(garbage)
    with pytest.raises(ValueError, match="missing.nii: no such file"):
        read_nifti(tmp_path / "missing.nii")
    good = write_nifti(tmp_path / "good.nii.gz", _volume(), np.eye(4))
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.nii.gz: not a readable NIfTI"):
        read_nifti(truncated)


def test_write_arguments_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3-D"):
        write_nifti(tmp_path / "a.nii.gz", np.zeros((4, 4)), np.eye(4))
    with pytest.raises(ValueError, match="affine"):
        write_nifti(tmp_path / "a.nii.gz", _volume(), np.eye(3))
    with pytest.raises(ValueError, match=r"\.nii or \.nii\.gz"):
        write_nifti(tmp_path / "a.png", _volume(), np.eye(4))
    assert list(tmp_path.iterdir()) == []


def test_failing_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out.nii.gz"
    real_write = Path.write_bytes

    def half_then_fail(self: Path, data: bytes) -> int:
        real_write(self, data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_nifti(out, _volume(), np.eye(4))
    assert list(tmp_path.iterdir()) == []


def test_bundled_brain_sample() -> None:
    vol = read_nifti(sample_path("brain_t1.nii.gz"))
    assert vol.data.shape == (98, 116, 94)
    np.testing.assert_allclose(vol.voxel_size, (2.0, 2.0, 2.0))
    assert 900 <= vol.data.max() <= 1000 and vol.data.min() >= 0
    # World coordinates kept: voxel (0, 0, 0) is the centre of the template's first 2³
    # block, i.e. template voxel (0.5, 0.5, 0.5) of the 1 mm MNI grid (origin -98, -134, -72).
    np.testing.assert_allclose(vol.affine[:3, 3], [-97.5, -133.5, -71.5])
