"""fastMRI .h5 reading/writing, the acquisition of its slices (masks, coil maps) and coil
tools."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from idm_med.acquisition.coils import (
    coil_combine,
    estimate_coil_maps,
    fft2c,
    ifft2c,
    normalise_maps,
    rss,
    synthetic_coil_maps,
    zero_filled_maps,
)
from idm_med.acquisition.mri import iter_volume, simulate_targets, to_channels
from idm_med.datasets.fastmri import (
    FastMRIFileError,
    FastMRIVolume,
    center_crop,
    make_ismrmrd_header,
    parse_ismrmrd_header,
    read_slice,
    read_volume_info,
    reconstruction_path,
    write_fastmri_file,
    write_reconstruction,
)
from idm_med.datasets.samples import sample_path
from idm_med.operators import make_operator
from idm_med.operators.mri_masks import column_mask, seed_from_filename

S, H, W = 3, 40, 32
RECON = (32, 24)
SIM = {"simulated": True, "source": "unit test"}


def _kspace(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


@pytest.fixture
def singlecoil(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    k = _kspace((S, H, W))
    target = simulate_targets(k, RECON)
    path = write_fastmri_file(
        tmp_path / "file_single.h5",
        k,
        target=target,
        acquisition="AXT1",
        patient_id="p1",
        attrs=SIM,
    )
    return path, k, target


def _no_leftovers(folder: Path) -> None:
    assert [p.name for p in folder.iterdir() if p.name.endswith(".part")] == []


# -- round trip ------------------------------------------------------------------------
def test_singlecoil_round_trip(singlecoil) -> None:
    path, k, target = singlecoil
    info = read_volume_info(path)
    assert info.num_slices == S and info.num_coils is None and not info.multicoil
    assert info.kspace_shape == (H, W)
    assert info.encoding_size == (H, W, 1) and info.recon_size == (*RECON, 1)
    assert info.crop_size == RECON
    assert info.target_key == "reconstruction_esc" and info.target_shape == RECON
    assert not info.has_mask
    assert info.acquisition == "AXT1" and info.patient_id == "p1"
    assert info.attrs["simulated"] is True and info.attrs["source"] == "unit test"
    assert info.max == pytest.approx(float(target.max()))
    assert info.norm == pytest.approx(float(np.linalg.norm(target.astype(np.float64))), rel=1e-6)
    vol = FastMRIVolume(path)
    assert len(vol) == S
    for i, sl in enumerate(vol):
        assert sl.slice_index == i and sl.fname == "file_single.h5"
        assert sl.kspace.dtype == torch.complex64
        np.testing.assert_array_equal(sl.kspace.numpy(), k[i])
        np.testing.assert_array_equal(sl.target.numpy(), target[i])
        assert sl.mask is None
    # The esc target is |ifft2c(k)| centre-cropped, fastMRI's start index (H - h) // 2.
    expected = np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k[1]), norm="ortho")))
    np.testing.assert_allclose(target[1], expected[4:36, 4:28], rtol=1e-5, atol=1e-6)


def test_multicoil_prospective_round_trip(tmp_path: Path) -> None:
    k = _kspace((2, 4, H, W), seed=1)
    mask = np.zeros(W, dtype=bool)
    mask[::3] = True
    k = k * mask
    target = simulate_targets(k, (H, W))
    path = write_fastmri_file(tmp_path / "multi.h5", k, target=target, mask=mask, attrs=SIM)
    info = read_volume_info(path)
    assert info.multicoil and info.num_coils == 4 and info.target_key == "reconstruction_rss"
    assert info.has_mask and info.recon_size == (H, W, 1)
    sl = read_slice(path, -1)
    assert sl.slice_index == 1
    np.testing.assert_array_equal(sl.kspace.numpy(), k[1])
    np.testing.assert_array_equal(sl.mask.numpy(), mask)
    # RSS target: sqrt(sum_c |ifft2c(k_c)|^2).
    coil_images = ifft2c(torch.from_numpy(k[1]))
    manual = torch.sqrt((coil_images.abs() ** 2).sum(0))
    torch.testing.assert_close(sl.target, manual.float(), rtol=1e-5, atol=1e-6)


def test_header_parse_and_namespace() -> None:
    header = make_ismrmrd_header((640, 368), (320, 320))
    assert b"http://www.ismrm.org/ISMRMRD" in header
    assert parse_ismrmrd_header(header) == ((640, 368, 1), (320, 320, 1))
    plain = (
        "<ismrmrdHeader><encoding><encodedSpace><matrixSize><x>8</x><y>6</y><z>1</z>"
        "</matrixSize></encodedSpace><reconSpace><matrixSize><x>4</x><y>4</y><z>1</z>"
        "</matrixSize></reconSpace></encoding></ismrmrdHeader>"
    )
    assert parse_ismrmrd_header(plain) == ((8, 6, 1), (4, 4, 1))
    with pytest.raises(ValueError, match="not valid XML"):
        parse_ismrmrd_header(b"<ismrmrdHeader><encoding>")
    with pytest.raises(ValueError, match="reconSpace"):
        parse_ismrmrd_header(plain.replace("reconSpace", "otherSpace"))


# -- laziness and bad files ------------------------------------------------------------
def test_lazy_access_reads_only_the_indexed_slice(singlecoil) -> None:
    path, k, _ = singlecoil
    # Destroy slice 2's compressed chunk on disk: slices 0 and 1 and the metadata must
    # still read, which proves nothing beyond the indexed slice is touched.
    with h5py.File(path, "r") as f:
        chunk = f["kspace"].id.get_chunk_info(2)
    with open(path, "r+b") as raw:
        raw.seek(chunk.byte_offset)
        raw.write(b"\0" * chunk.size)
    vol = FastMRIVolume(path)
    np.testing.assert_array_equal(vol[0].kspace.numpy(), k[0])
    np.testing.assert_array_equal(vol[1].kspace.numpy(), k[1])
    with pytest.raises(FastMRIFileError, match=r"file_single\.h5: cannot read slice 2"):
        vol[2]
    with pytest.raises(IndexError):
        vol[S]


def _truncated(tmp_path: Path, singlecoil) -> Path:
    path = tmp_path / "truncated.h5"
    data = singlecoil[0].read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _garbage(tmp_path: Path, singlecoil) -> Path:
    path = tmp_path / "garbage.h5"
    path.write_bytes(b"this is not an HDF5 file" * 10)
    return path


def _no_kspace(tmp_path: Path, singlecoil) -> Path:
    path = tmp_path / "no_kspace.h5"
    with h5py.File(path, "w") as f:
        f["reconstruction_esc"] = np.zeros((2, 4, 4), np.float32)
    return path


def _rank2(tmp_path: Path, singlecoil) -> Path:
    path = tmp_path / "rank2.h5"
    with h5py.File(path, "w") as f:
        f["kspace"] = np.zeros((4, 4), np.complex64)
    return path


def _real(tmp_path: Path, singlecoil) -> Path:
    path = tmp_path / "real.h5"
    with h5py.File(path, "w") as f:
        f["kspace"] = np.zeros((2, 4, 4), np.float32)
    return path


def _bad_header(tmp_path: Path, singlecoil) -> Path:
    path = tmp_path / "bad_header.h5"
    with h5py.File(path, "w") as f:
        f["kspace"] = np.zeros((2, 4, 4), np.complex64)
        f["ismrmrd_header"] = np.bytes_(b"<ismrmrdHeader><enc")
    return path


def _missing(tmp_path: Path, singlecoil) -> Path:
    return tmp_path / "missing.h5"


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (_truncated, "truncated or corrupt"),
        (_garbage, "not a readable HDF5 file"),
        (_no_kspace, "no 'kspace' dataset"),
        (_rank2, r"kspace must have rank 3 .* got shape \(4, 4\)"),
        (_real, "kspace must be complex"),
        (_bad_header, "ismrmrd_header is not valid XML"),
        (_missing, "no such file"),
    ],
)
def test_bad_files_rejected(tmp_path: Path, singlecoil, make, problem: str) -> None:
    path = make(tmp_path, singlecoil)
    with pytest.raises(FastMRIFileError, match=problem) as err:
        read_volume_info(path)
    assert isinstance(err.value, ValueError)
    assert str(path) in str(err.value)


# -- writers ---------------------------------------------------------------------------
def test_reconstruction_writer_fastmri_layout(tmp_path: Path, singlecoil) -> None:
    path, k, target = singlecoil
    info = read_volume_info(path)
    images = ifft2c(torch.from_numpy(k))  # (S, H, W) complex
    out = reconstruction_path(tmp_path / "recon", path)
    assert out == tmp_path / "recon" / "file_single.h5"
    write_reconstruction(out, images, crop_size=info.crop_size, attrs={"acceleration": 4.0})
    with h5py.File(out, "r") as f:
        assert list(f.keys()) == ["reconstruction"]
        rec = f["reconstruction"][()]
        assert f.attrs["acceleration"] == 4.0
    assert rec.dtype == np.float32 and rec.shape == (S, *info.crop_size)
    np.testing.assert_allclose(rec, target, rtol=1e-5, atol=1e-6)
    # Real/imag channels (S, 2, H, W) give the same magnitude.
    channels = torch.view_as_real(images).permute(0, 3, 1, 2)
    write_reconstruction(tmp_path / "b.h5", channels, crop_size=info.crop_size)
    with h5py.File(tmp_path / "b.h5", "r") as f:
        np.testing.assert_allclose(f["reconstruction"][()], rec, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="cannot centre-crop"):
        write_reconstruction(tmp_path / "c.h5", images, crop_size=(H + 2, W))
    with pytest.raises(ValueError, match="NaN"):
        write_reconstruction(tmp_path / "d.h5", torch.full((1, 4, 4), float("nan")))
    with pytest.raises(
        ValueError, match=r"\(slices, 2, H, W\) channels, got float32 \(2, 3, 8, 8\)"
    ):
        write_reconstruction(tmp_path / "e.h5", np.ones((2, 3, 8, 8), np.float32))
    assert not (tmp_path / "e.h5").exists()


def test_failing_write_leaves_no_file(tmp_path: Path, singlecoil) -> None:
    out = tmp_path / "out.h5"
    recon = np.ones((2, 8, 8), np.float32)
    # An attribute h5py cannot store fails half-way through writing the file.
    with pytest.raises(TypeError):
        write_reconstruction(out, recon, attrs={"bad": object()})
    assert not out.exists()
    _no_leftovers(tmp_path)
    # An existing output survives a failed overwrite untouched.
    write_reconstruction(out, recon)
    before = out.read_bytes()
    with pytest.raises(TypeError):
        write_reconstruction(out, 2 * recon, attrs={"bad": object()})
    assert out.read_bytes() == before
    with pytest.raises(TypeError):
        write_fastmri_file(tmp_path / "in.h5", _kspace((1, 4, 4)), attrs={"bad": object()})
    assert not (tmp_path / "in.h5").exists()
    _no_leftovers(tmp_path)


def test_center_crop_matches_fastmri_convention() -> None:
    x = torch.arange(7 * 9).reshape(7, 9)
    assert torch.equal(center_crop(x, (4, 4)), x[1:5, 2:6])
    assert torch.equal(center_crop(x, (7, 9)), x)


# -- masks and measurements (idm_med.acquisition.mri) -----------------------------------
def test_masks_seeded_from_file_name(tmp_path: Path, singlecoil) -> None:
    path = singlecoil[0]
    other = tmp_path / "file_other.h5"
    shutil.copy(path, other)
    a = [s.mask for s in iter_volume(path, acceleration=4, center_fraction=0.125)]
    b = [s.mask for s in iter_volume(other, acceleration=4, center_fraction=0.125)]
    mask = a[0]
    expected = column_mask("random", W, 4, 0.125, seed_from_filename("file_single.h5"))
    assert torch.equal(mask, expected)
    # Same file: same mask for every slice and every pass.
    again = next(iter_volume(path, acceleration=4, center_fraction=0.125)).mask
    assert all(torch.equal(m, mask) for m in a) and torch.equal(again, mask)
    # Another file name: another mask (same data).
    assert all(torch.equal(m, b[0]) for m in b) and not torch.equal(b[0], mask)
    assert mask[W // 2 - 2 : W // 2 + 2].all()  # 4 centre columns always sampled
    with pytest.raises(ValueError, match="mask_type"):
        next(iter_volume(path, acceleration=4, mask_type="spiral"))


def test_measurement_matches_mri_operator(singlecoil) -> None:
    path, k, _ = singlecoil
    items = iter_volume(path, acceleration=4, center_fraction=0.125, mask_type="equispaced")
    item = list(items)[1]
    assert item.measurement.shape == (1, 2, H, W) and item.measurement.dtype == torch.float32
    assert item.info.fname == "file_single.h5" and item.info.crop_size == RECON
    assert item.slice_index == 1
    image = to_channels(ifft2c(torch.from_numpy(k[1])))  # the fully sampled image
    op = make_operator(**item.operator_config)
    y = op.A(image[None].double()).float()
    torch.testing.assert_close(y, item.measurement, rtol=1e-5, atol=1e-5)
    assert item.measurement[..., ~item.mask].abs().max() == 0


def test_iter_volume(tmp_path: Path, singlecoil) -> None:
    path, k, target = singlecoil
    slices = list(iter_volume(path, acceleration=4, center_fraction=0.125))
    assert [s.slice_index for s in slices] == list(range(S))
    for s in slices:
        op = make_operator(**s.operator_config)
        assert torch.equal(op.mask, s.mask)  # the seed regenerates the same mask
        assert s.measurement.shape == (1, 2, H, W)
        expected = fft2c(ifft2c(torch.from_numpy(k[s.slice_index]))) * s.mask
        torch.testing.assert_close(
            torch.complex(s.measurement[0, 0], s.measurement[0, 1]), expected, rtol=1e-5, atol=1e-5
        )
        np.testing.assert_array_equal(s.target.numpy(), target[s.slice_index])
    picked = list(iter_volume(path, acceleration=4, center_fraction=0.125, slices=[S - 1, 0]))
    assert [s.slice_index for s in picked] == [S - 1, 0]  # only these, in this order
    assert torch.equal(picked[1].measurement, slices[0].measurement)
    with pytest.raises(ValueError, match="fully sampled"):
        next(iter_volume(path))
    # A prospectively undersampled file brings its own mask.
    mask = np.zeros(W, bool)
    mask[::2] = True
    pro = write_fastmri_file(tmp_path / "pro.h5", k * mask, mask=mask, attrs=SIM)
    first = next(iter_volume(pro))
    assert torch.equal(first.mask, torch.from_numpy(mask))
    assert first.operator_config["acceleration"] == 2.0
    assert torch.equal(make_operator(**first.operator_config).mask, first.mask)


def test_multicoil_measurement_and_coil_maps(tmp_path: Path) -> None:
    n, coils = 48, 6
    maps = synthetic_coil_maps(coils, (n, n))
    v, u = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    support = (u / 0.8) ** 2 + (v / 0.85) ** 2 < 1
    phantom = support * (1 + 0.4 * torch.sin(4 * v)) * torch.exp(1j * 0.6 * u)
    k = fft2c(maps * phantom.to(torch.complex64)).unsqueeze(0)  # (1, C, n, n)
    path = write_fastmri_file(tmp_path / "mc.h5", k, target=simulate_targets(k, (n, n)))
    item = next(iter_volume(path, acceleration=4, center_fraction=0.35, calib_width=16))
    assert item.measurement.shape == (1, coils, 2, n, n)
    est = item.operator_config["coil_maps"]
    assert est.shape == (coils, n, n)
    op = make_operator(**item.operator_config)
    assert op.measurement_shape == (coils, 2, n, n)
    # The ESPIRiT-combined fully sampled image, measured, reproduces the data.
    image = coil_combine(ifft2c(k[0]), est)
    y = item.measurement
    rel = (op.A(to_channels(image)[None]) - y).norm() / y.norm()
    assert float(rel) < 0.02  # measured 0.43 %
    torch.testing.assert_close(
        image.abs()[support], phantom.abs()[support].float(), rtol=0.03, atol=0.03
    )


def test_bundled_samples() -> None:
    single = read_volume_info(sample_path("fastmri_singlecoil_brain.h5"))
    multi = read_volume_info(sample_path("fastmri_multicoil_brain.h5"))
    assert (single.num_slices, single.kspace_shape, single.crop_size) == (4, (256, 256), (256, 256))
    assert (multi.num_slices, multi.num_coils) == (2, 8)
    for info in (single, multi):
        assert info.attrs["simulated"] is True and "mni152" in info.attrs["source"].lower()
        assert len(info.attrs["source_slices"]) == info.num_slices
    assert set(multi.attrs["source_slices"]) <= set(single.attrs["source_slices"])
    sl = read_slice(single.path, 0)
    torch.testing.assert_close(sl.target, ifft2c(sl.kspace).abs(), rtol=1e-5, atol=1e-5)


# -- coils -----------------------------------------------------------------------------
def test_rss_matches_definition() -> None:
    x = torch.from_numpy(_kspace((5, 6, 7), seed=2)).to(torch.complex128)
    manual = torch.sqrt((x.real**2 + x.imag**2).sum(0))
    torch.testing.assert_close(rss(x), manual)
    np.testing.assert_allclose(rss(x.numpy()), manual.numpy(), rtol=1e-12)
    np.testing.assert_allclose(rss(x.numpy(), dim=1), np.sqrt((np.abs(x.numpy()) ** 2).sum(1)))


def test_synthetic_maps_normalised_and_combine_inverts() -> None:
    maps = synthetic_coil_maps(6, (24, 20))
    assert maps.shape == (6, 24, 20) and maps.dtype == torch.complex64
    torch.testing.assert_close(rss(maps), torch.ones(24, 20), rtol=1e-5, atol=1e-5)
    # Coils are distinct and smooth (not constant).
    assert float((maps[0].abs() - maps[3].abs()).abs().max()) > 0.1
    x = torch.from_numpy(_kspace((24, 20), seed=3))
    coil_images = maps * x
    torch.testing.assert_close(rss(coil_images), x.abs(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(coil_combine(coil_images, maps), x, rtol=1e-5, atol=1e-5)
    zero = normalise_maps(torch.zeros(2, 3, 3, dtype=torch.complex64))
    assert zero.abs().max() == 0


def test_espirit_recovers_true_maps_up_to_phase() -> None:
    n, coils = 48, 8
    true_maps = synthetic_coil_maps(coils, (n, n)).to(torch.complex128)
    v, u = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    support = (u / 0.8) ** 2 + (v / 0.9) ** 2 < 1
    image = support * (1 + 0.5 * torch.cos(3 * u)) * torch.exp(1j * (0.5 * u + 0.3 * v))
    kspace = fft2c(true_maps * image.to(torch.complex128))
    est = estimate_coil_maps(kspace, calib_width=16).to(torch.complex128)
    assert est.shape == (coils, n, n)
    # Maps are defined up to one phase per pixel: align it, then compare inside the object.
    inner = (est.conj() * true_maps).sum(0)
    aligned = est * inner / inner.abs().clamp_min(1e-12)
    rel = float((aligned - true_maps)[:, support].norm() / true_maps[:, support].norm())
    assert rel < 0.02  # measured 0.51 % (48², 8 coils, calib 16)
    torch.testing.assert_close(
        rss(est)[support], torch.ones(int(support.sum()), dtype=torch.float64), rtol=1e-4, atol=1e-4
    )
    with pytest.raises(ValueError, match="calib_width"):
        estimate_coil_maps(kspace, calib_width=80)
    with pytest.raises(ValueError, match="complex"):
        estimate_coil_maps(kspace.real)


# -- edge cases: narrow k-space (issue 9, defect 6) --------------------------------------
def test_kspace_narrower_than_recon_size_crops_square(tmp_path: Path, caplog) -> None:
    """fastMRI's "FLAIR 203" files: W < recon width falls back to a (W, W) crop."""
    k = _kspace((2, 24, 10))
    path = write_fastmri_file(tmp_path / "flair.h5", k, recon_size=(12, 12))
    with caplog.at_level("WARNING"):
        info = read_volume_info(path)
    assert info.narrow and info.crop_size == (10, 10)
    assert "flair.h5" in caplog.text and "narrower" in caplog.text
    item = next(iter_volume(path, acceleration=2, center_fraction=0.2))
    x = make_operator(**item.operator_config).A_pinv(item.measurement)
    assert center_crop(x[0, 0], item.info.crop_size).shape == (10, 10)


def _multicoil_file(tmp_path: Path, width: int, name: str = "mc.h5") -> Path:
    n, coils = 32, 4
    maps = synthetic_coil_maps(coils, (n, width))
    v, u = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, width), indexing="ij")
    phantom = ((u / 0.8) ** 2 + (v / 0.85) ** 2 < 1) * (1 + 0.4 * torch.sin(4 * v))
    k = fft2c(maps * phantom.to(torch.complex64)).unsqueeze(0).repeat(2, 1, 1, 1)
    return write_fastmri_file(tmp_path / name, k, target=simulate_targets(k, (n, width)))


def test_narrow_multicoil_falls_back_to_rss_equivalent_maps(tmp_path: Path, caplog) -> None:
    path = _multicoil_file(tmp_path, width=40)
    with caplog.at_level("WARNING"):
        item = next(iter_volume(path, acceleration=4, center_fraction=0.08))
    assert "mc.h5" in caplog.text and "RSS-equivalent" in caplog.text
    op = make_operator(**item.operator_config).double()
    pinv = torch.linalg.vector_norm(op.A_pinv(item.measurement.double()), dim=1)[0]
    kspace = torch.complex(item.measurement[0, :, 0], item.measurement[0, :, 1])
    zero_filled_rss = rss(ifft2c(kspace), dim=0)
    # With the fallback maps A†y is exactly the zero-filled RSS image (up to the CG
    # tolerance of the SENSE pseudo-inverse).
    rel = (pinv - zero_filled_rss.double()).norm() / zero_filled_rss.double().norm()
    assert float(rel) < 1e-3


def test_sampled_centre_width_and_explicit_calib_width(tmp_path: Path) -> None:
    from idm_med.acquisition.mri import sampled_centre_width

    mask = torch.zeros(20, dtype=torch.bool)
    mask[7:14] = True
    mask[2] = True
    assert sampled_centre_width(mask) == 7
    mask[10] = False
    assert sampled_centre_width(mask) == 0
    # A wide fully sampled centre calibrates ESPIRiT with the derived width (no fallback).
    path = _multicoil_file(tmp_path, width=40, name="wide.h5")
    item = next(iter_volume(path, acceleration=2, center_fraction=0.5))
    maps = item.operator_config["coil_maps"]
    kspace = torch.complex(item.measurement[0, :, 0], item.measurement[0, :, 1])
    assert not torch.allclose(maps.abs(), zero_filled_maps(kspace).abs(), atol=1e-2)


def test_coil_maps_are_computed_once_per_volume(tmp_path: Path, monkeypatch) -> None:
    from idm_med.acquisition import mri as fastmri_module

    path = _multicoil_file(tmp_path, width=32)
    calls = []
    real = fastmri_module.estimate_coil_maps

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fastmri_module, "estimate_coil_maps", counting)
    for _ in range(2):  # two methods over the same volume
        items = list(iter_volume(path, acceleration=2, center_fraction=0.6))
    assert len(items) == 2 and len(calls) == 2  # once per slice, not once per pass


def test_measured_multicoil_pinv_bounds_the_noise_amplification(tmp_path: Path) -> None:
    """SENSE at an acceleration equal to the number of coils is badly conditioned: on
    noisy k-space the exact pseudo-inverse (cutoff 1e-6) amplifies the noise far past the
    image, the cutoff used for measured data (MEASURED_SENSE_RTOL) does not."""
    from idm_med.acquisition.mri import MEASURED_SENSE_RTOL

    torch.manual_seed(0)
    n, coils = 64, 4
    maps = synthetic_coil_maps(coils, (n, n))
    v, u = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    phantom = ((u / 0.8) ** 2 + (v / 0.85) ** 2 < 1) * (1 + 0.4 * torch.sin(4 * v))
    k = fft2c(maps * phantom.to(torch.complex64)).unsqueeze(0)
    k = k + 3e-3 * k.abs().pow(2).mean().sqrt() * torch.randn_like(k)
    path = write_fastmri_file(tmp_path / "noisy.h5", k, target=simulate_targets(k, (n, n)))
    errors = {}
    for rtol in (MEASURED_SENSE_RTOL, 1e-6):  # the first is iter_volume's default
        extra = {} if rtol == MEASURED_SENSE_RTOL else {"pinv_rtol": rtol}
        item = next(iter_volume(path, 4, center_fraction=0.25, mask_type="equispaced", **extra))
        assert item.operator_config["pinv_rtol"] == rtol
        op = make_operator(**item.operator_config).double()
        x = torch.linalg.vector_norm(op.A_pinv(item.measurement.double()), dim=1)[0]
        target = torch.as_tensor(item.target).double()
        errors[rtol] = float((x - target).norm() / target.norm())
    assert errors[MEASURED_SENSE_RTOL] < 0.2
    assert errors[1e-6] > 10 * errors[MEASURED_SENSE_RTOL]
