"""CT DICOM series: reading, writing, grouping/sorting, errors, sparse-view simulation."""

from __future__ import annotations

import importlib
import logging
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from idm_med.acquisition.ct import attenuation_to_hu, hu_to_attenuation, simulate_sparse_view
from idm_med.datasets import dicom
from idm_med.datasets.dicom import (
    CTVolume,
    hu_rescale,
    read_dicom_series,
    write_dicom_series,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
COS30, SIN30 = np.cos(np.pi / 6), np.sin(np.pi / 6)
OBLIQUE = (1.0, 0.0, 0.0, 0.0, COS30, SIN30)  # tilted 30° about x: normal (0, -sin, cos)
STUDY_UID = "1.2.826.0.1.3680043.8.498.1234"


def make_slice(
    path: Path,
    pixels: np.ndarray,
    position: tuple[float, float, float],
    *,
    series_uid: str,
    orientation: tuple[float, ...] = AXIAL,
    pixel_spacing: tuple[float, float] = (0.5, 0.7),
    modality: str = "CT",
    slope: float | None = 1.0,
    intercept: float | None = -1024.0,
    instance: int = 1,
    with_pixels: bool = True,
) -> Path:
    """Write one int16 slice with pydicom directly (independently of write_dicom_series)."""
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientName = "Test^Patient"
    ds.PatientID = "P-42"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = STUDY_UID
    ds.StudyDate = "20240102"
    ds.StudyDescription = "unit test study"
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.99"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = "source"
    ds.InstanceNumber = instance
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
    ds.PixelSpacing = [str(v) for v in pixel_spacing]
    ds.SliceThickness = "2.0"
    if slope is not None:
        ds.RescaleSlope = str(slope)
    if intercept is not None:
        ds.RescaleIntercept = str(intercept)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if with_pixels:
        ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def make_series(
    folder: Path,
    n: int = 3,
    shape: tuple[int, int] = (16, 20),
    *,
    orientation: tuple[float, ...] = AXIAL,
    spacing: float = 2.5,
    reverse: bool = False,
    series_uid: str | None = None,
    shuffle_names: bool = True,
) -> tuple[str, np.ndarray]:
    """``n`` slices whose stored values equal 100·k + pixel index; returns (uid, positions)."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    normal = np.cross(orientation[:3], orientation[3:])
    origin = np.array([-10.0, -20.0, 30.0])
    positions = np.array([origin + k * spacing * normal for k in range(n)])
    names = [f"f{i:03d}.dcm" for i in range(n)]
    if shuffle_names:
        random.Random(0).shuffle(names)
    base = np.arange(shape[0] * shape[1]).reshape(shape) % 50
    for k in range(n):
        # Instance numbers run opposite to position when reverse=True.
        instance = n - k if reverse else k + 1
        make_slice(
            folder / names[k],
            (base + 100 * k).astype(np.int16),
            tuple(positions[k]),
            series_uid=series_uid,
            orientation=orientation,
            instance=instance,
        )
    return series_uid, positions


# -- reading ------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", [AXIAL, OBLIQUE])
def test_read_sorts_along_normal(tmp_path: Path, orientation: tuple[float, ...]) -> None:
    # Files are created in reversed position order with shuffled names.
    n, shape = 4, (16, 20)
    uid, positions = make_series(tmp_path / "s", n, shape, orientation=orientation, spacing=2.5)
    files = sorted((tmp_path / "s").iterdir())
    random.Random(1).shuffle(files)
    for source in (tmp_path / "s", files):
        vol = read_dicom_series(source)
        assert vol.hu.dtype == np.float32 and vol.shape == (n, *shape)
        assert vol.series_uid == uid
        np.testing.assert_allclose(vol.positions, positions, atol=1e-5)
        np.testing.assert_allclose(vol.spacing, (2.5, 0.5, 0.7), atol=1e-5)
        np.testing.assert_allclose(vol.orientation, orientation, atol=1e-7)
        # Slice k holds stored values base + 100 k; HU = stored - 1024.
        base = np.arange(shape[0] * shape[1]).reshape(shape) % 50
        for k in range(n):
            np.testing.assert_array_equal(vol.hu[k], base + 100 * k - 1024)
        assert vol.tags["PatientID"] == "P-42" and vol.tags["StudyInstanceUID"] == STUDY_UID


def test_reversed_positions_sorted(tmp_path: Path) -> None:
    # Slices placed along -normal (decreasing position with increasing instance number).
    folder = tmp_path / "rev"
    folder.mkdir()
    uid = generate_uid()
    for k in range(3):
        pixels = np.full((8, 8), 10 * k, dtype=np.int16)
        make_slice(folder / f"{k}.dcm", pixels, (0.0, 0.0, -3.0 * k), series_uid=uid, instance=k)
    vol = read_dicom_series(folder)
    np.testing.assert_allclose(vol.positions[:, 2], [-6.0, -3.0, 0.0])
    np.testing.assert_array_equal(vol.hu[:, 0, 0], np.array([20, 10, 0]) - 1024)
    assert vol.spacing[0] == pytest.approx(3.0)
    assert [f.name for f in vol.files] == ["2.dcm", "1.dcm", "0.dcm"]


def test_two_series_rejected_and_selectable(tmp_path: Path) -> None:
    folder = tmp_path / "two"
    uid_a, _ = make_series(folder / "a", 2)
    uid_b, _ = make_series(folder / "b", 3)
    for f in (folder / "a").iterdir():
        f.rename(folder / f"a_{f.name}")
    for f in (folder / "b").iterdir():
        f.rename(folder / f"b_{f.name}")
    with pytest.raises(ValueError, match="2 series") as info:
        read_dicom_series(folder)
    assert uid_a in str(info.value) and uid_b in str(info.value)
    assert read_dicom_series(folder, series_uid=uid_b).shape[0] == 3
    with pytest.raises(ValueError, match="not found"):
        read_dicom_series(folder, series_uid="1.2.3")


def test_error_messages_name_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty"):
        read_dicom_series(empty)

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not dicom")
    with pytest.raises(ValueError, match="no DICOM files"):
        read_dicom_series(junk)
    with pytest.raises(ValueError, match="notes.txt"):
        read_dicom_series([junk / "notes.txt"])

    pixels = np.zeros((8, 8), np.int16)
    nopix = make_slice(
        tmp_path / "nopix.dcm", pixels, (0, 0, 0), series_uid="1.2", with_pixels=False
    )
    with pytest.raises(ValueError, match=r"nopix\.dcm.*PixelData"):
        read_dicom_series(nopix)

    norescale = make_slice(
        tmp_path / "norescale.dcm", pixels, (0, 0, 0), series_uid="1.3", slope=None
    )
    with pytest.raises(ValueError, match=r"norescale\.dcm.*RescaleSlope"):
        read_dicom_series(norescale)

    sizes = tmp_path / "sizes"
    sizes.mkdir()
    make_slice(sizes / "a.dcm", pixels, (0, 0, 0), series_uid="1.4")
    make_slice(sizes / "b.dcm", np.zeros((8, 9), np.int16), (0, 0, 1), series_uid="1.4")
    with pytest.raises(ValueError, match=r"b\.dcm: inconsistent slice size 8x9"):
        read_dicom_series(sizes)

    dup = tmp_path / "dup"
    dup.mkdir()
    make_slice(dup / "a.dcm", pixels, (0, 0, 0), series_uid="1.5")
    make_slice(dup / "b.dcm", pixels, (0, 0, 0), series_uid="1.5")
    with pytest.raises(ValueError, match="same slice position"):
        read_dicom_series(dup)


def test_missing_rescale_on_non_ct_is_identity(tmp_path: Path, caplog) -> None:
    pixels = np.arange(64, dtype=np.int16).reshape(8, 8)
    path = make_slice(
        tmp_path / "mr.dcm",
        pixels,
        (0, 0, 0),
        series_uid="1.6",
        modality="MR",
        slope=None,
        intercept=None,
    )
    with caplog.at_level(logging.WARNING, logger="idm_med.datasets.dicom"):
        vol = read_dicom_series(path)
    np.testing.assert_array_equal(vol.hu[0], pixels)
    assert "mr.dcm" in caplog.text and "RescaleSlope" in caplog.text


# bad_sequence.dcm carries malformed UIDs (hence its name); pydicom warns while reading them.
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")
def test_compressed_transfer_syntaxes_decode() -> None:
    from pydicom.data import get_testdata_file

    plain, jpeg_ls = (
        get_testdata_file("MR_small.dcm", download=False),
        get_testdata_file("MR_small_jpeg_ls_lossless.dcm", download=False),
    )
    if plain is None or jpeg_ls is None:
        pytest.skip("pydicom test files MR_small*.dcm not available")
    # Lossless: the decoded JPEG-LS volume equals the uncompressed one exactly.
    np.testing.assert_array_equal(read_dicom_series(jpeg_ls).hu, read_dicom_series(plain).hu)

    ct = get_testdata_file(
        "bad_sequence.dcm", download=False
    )  # pydicom-data: CT, JPEG lossless process 14
    if ct is None:
        pytest.skip("pydicom-data (bad_sequence.dcm) not installed")
    assert pydicom.dcmread(ct, stop_before_pixels=True).file_meta.TransferSyntaxUID == (
        "1.2.840.10008.1.2.4.70"
    )
    vol = read_dicom_series(ct)
    assert vol.shape == (1, 512, 512)
    # Real HU of a CT slice: air near -1000, bone well above +500.
    assert -1100 < vol.hu.min() < -900 and vol.hu.max() > 500


# -- writing ------------------------------------------------------------------------------
def test_write_read_round_trip(tmp_path: Path) -> None:
    make_series(tmp_path / "src", 3, (16, 20), orientation=OBLIQUE, spacing=2.5)
    ref = read_dicom_series(tmp_path / "src")
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1000.0, 2500.0, size=ref.shape).astype(np.float32)

    out = write_dicom_series(hu, ref, tmp_path / "out", description="unit test recon")
    back = read_dicom_series(out)
    step = float(pydicom.dcmread(sorted(out.iterdir())[0]).RescaleSlope)
    assert step <= 3500.0 / 65534 * 1.001  # 16 bits spread over the range
    assert np.abs(back.hu - hu).max() <= step / 2 + 1e-3
    np.testing.assert_allclose(back.spacing, ref.spacing, atol=1e-6)
    np.testing.assert_allclose(back.positions, ref.positions, atol=1e-6)
    np.testing.assert_allclose(back.orientation, ref.orientation, atol=1e-9)
    assert back.series_uid != ref.series_uid
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyDescription",
        "FrameOfReferenceUID",
    ):
        assert back.tags[keyword] == ref.tags[keyword], keyword

    datasets = [pydicom.dcmread(f) for f in back.files]
    sop_uids = {ds.SOPInstanceUID for ds in datasets}
    source_uids = {pydicom.dcmread(f).SOPInstanceUID for f in ref.files}
    assert len(sop_uids) == 3 and not sop_uids & source_uids
    for ds in datasets:
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SeriesDescription == "unit test recon"
        assert ds.SeriesInstanceUID == back.series_uid


def test_integer_hu_exact_and_fixed_step(tmp_path: Path) -> None:
    make_series(tmp_path / "src", 2, (8, 8))
    ref = read_dicom_series(tmp_path / "src")
    out = write_dicom_series(ref.hu, ref, tmp_path / "same")
    np.testing.assert_array_equal(read_dicom_series(out).hu, ref.hu)

    hu = ref.hu + np.float32(0.37)
    assert hu_rescale(hu, step=1.0)[0] == 1.0
    back = read_dicom_series(write_dicom_series(hu, ref, tmp_path / "step", quantisation_step=1.0))
    assert np.abs(back.hu - hu).max() <= 0.5 + 1e-4
    with pytest.raises(ValueError, match="cannot cover"):
        hu_rescale(np.array([0.0, 1e5]), step=1.0)


def test_single_slice_and_resized_geometry(tmp_path: Path) -> None:
    pixels = np.arange(64, dtype=np.int16).reshape(8, 8)
    src = make_slice(tmp_path / "one.dcm", pixels, (-5.0, -6.0, 7.0), series_uid="1.7")
    ref = read_dicom_series(src)
    assert ref.spacing == pytest.approx((2.0, 0.5, 0.7))  # slice: SliceThickness
    small = ref.with_hu(ref.hu[:, ::2, ::2])
    assert small.spacing == pytest.approx((2.0, 1.0, 1.4))

    # The field of view (centre of the image in patient space) is unchanged.
    def centre(v: CTVolume) -> np.ndarray:
        _, rows, cols = v.shape
        r, c = v.orientation[:3], v.orientation[3:]
        return (
            v.positions[0] + (rows - 1) / 2 * v.spacing[1] * c + (cols - 1) / 2 * v.spacing[2] * r
        )

    np.testing.assert_allclose(centre(small), centre(ref), atol=1e-9)
    back = read_dicom_series(write_dicom_series(small.hu, small, tmp_path / "small"))
    np.testing.assert_allclose(back.positions, small.positions, atol=1e-6)
    assert back.spacing == pytest.approx(small.spacing)


def test_no_partial_output_after_failure(tmp_path: Path, monkeypatch) -> None:
    make_series(tmp_path / "src", 3, (8, 8))
    ref = read_dicom_series(tmp_path / "src")
    out = tmp_path / "out"
    real_write = pydicom.dcmwrite
    calls = []

    def failing_write(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(dicom.pydicom, "dcmwrite", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_dicom_series(ref.hu, ref, out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]

    # An existing series survives a failed overwrite untouched.
    monkeypatch.setattr(dicom.pydicom, "dcmwrite", real_write)
    write_dicom_series(ref.hu, ref, out)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(FileExistsError, match="not empty"):
        write_dicom_series(ref.hu, ref, out)
    calls.clear()
    monkeypatch.setattr(dicom.pydicom, "dcmwrite", failing_write)
    with pytest.raises(OSError):
        write_dicom_series(ref.hu + 1, ref, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == before
    np.testing.assert_array_equal(read_dicom_series(out).hu, ref.hu)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]

    # A folder holding anything the writer did not write is never replaced.
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="did not write.*notes.txt"):
        write_dicom_series(ref.hu, ref, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == sorted([*before, "notes.txt"])

    with pytest.raises(ValueError, match="NaN"):
        write_dicom_series(np.full(ref.shape, np.nan), ref, tmp_path / "nan")
    with pytest.raises(ValueError, match="shape"):
        write_dicom_series(ref.hu[:2], ref, tmp_path / "bad")


# -- attenuation convention and sparse-view simulation ----------------------------------
def test_hu_attenuation_convention() -> None:
    hu = np.array([-3024.0, -1000.0, 0.0, 1000.0, 3000.0, 5000.0])
    x = hu_to_attenuation(hu)
    np.testing.assert_allclose(x, [0.0, 0.0, 0.25, 0.5, 1.0, 1.0])
    mid = np.linspace(-1000, 3000, 9)
    np.testing.assert_allclose(attenuation_to_hu(hu_to_attenuation(mid)), mid, atol=1e-9)


class _RowSums(torch.nn.Module):
    """A stand-in CT operator: one parallel-beam view (column sums) and one (row sums)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.image_shape = (1, n, n)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.sum(dim=-2), x.sum(dim=-1)], dim=-2)  # (B, 1, 2, n)


def test_simulate_sparse_view_convention() -> None:
    hu = np.random.default_rng(1).uniform(-1200.0, 2000.0, size=(3, 16, 16)).astype(np.float32)
    sim = simulate_sparse_view(hu, 2, operator=_RowSums(16))
    expected = torch.from_numpy(hu_to_attenuation(hu))[:, None]
    torch.testing.assert_close(sim.image, expected)
    torch.testing.assert_close(sim.sinogram, _RowSums(16).A(expected))

    # Resizing keeps the image in [0, 1]; noise is seeded and has the requested level.
    a = simulate_sparse_view(hu, 2, image_size=8, operator=_RowSums(8), noise_level=0.1, seed=3)
    b = simulate_sparse_view(hu, 2, image_size=8, operator=_RowSums(8), noise_level=0.1, seed=3)
    torch.testing.assert_close(a.sinogram, b.sinogram)
    clean = _RowSums(8).A(a.image)
    rel = (a.sinogram - clean).pow(2).mean().sqrt() / clean.pow(2).mean().sqrt()
    assert 0.07 < float(rel) < 0.13
    assert a.image.shape == (3, 1, 8, 8) and 0 <= a.image.min() and a.image.max() <= 1
    with pytest.raises(ValueError, match="image_shape"):
        simulate_sparse_view(hu, 2, operator=_RowSums(8))


def test_simulate_sparse_view_with_ct_operator() -> None:
    try:
        from idm_med.operators import available_operators

        # Registers "ct" even before operators/__init__ imports the module.
        importlib.import_module("idm_med.operators.sparse_view_ct")
    except ImportError as exc:
        pytest.skip(f"CT operator not importable: {exc}")
    if "ct" not in available_operators():
        pytest.skip("CT operator not registered yet")
    hu = np.full((2, 32, 32), -1000.0, np.float32)
    hu[:, 8:24, 8:24] = 0.0  # a water square
    sim = simulate_sparse_view(hu, 12)
    # Detector count is the operator's choice (at least the image side).
    assert sim.sinogram.shape[:3] == (2, 1, 12) and sim.sinogram.shape[3] >= 32
    assert sim.operator.config["n_views"] == 12
    torch.testing.assert_close(sim.sinogram, sim.operator.A(sim.image))
    # Water is x = 0.25: every parallel view carries the total mass 16² · 0.25 = 64, and
    # no ray through the square is longer than its diagonal (16√2 · 0.25 ≈ 5.66).
    torch.testing.assert_close(
        sim.sinogram.sum(dim=-1), torch.full((2, 1, 12), 64.0), rtol=0.02, atol=0
    )
    assert 3.9 < float(sim.sinogram.max()) < 5.7


def test_bundled_ct_head_sample() -> None:
    from idm_med.datasets.samples import sample_path

    vol = read_dicom_series(sample_path("ct_head"))
    assert vol.shape == (4, 256, 256) and vol.modality == "CT"
    assert "ASSEMBLED" in vol.series_description
    np.testing.assert_allclose(vol.spacing, (5.0, 0.957032, 0.957032), atol=1e-6)
    np.testing.assert_allclose(np.diff(vol.positions[:, 2]), 5.0)
    # 2x2 means of integer HU, padding set to air: stored exactly in 1/4 HU steps.
    np.testing.assert_array_equal(vol.hu * 4, np.round(vol.hu * 4))
    assert vol.hu.min() == -1024.0 and 1000 < vol.hu.max() < 3000
    water_like = (vol.hu > -100) & (vol.hu < 100)
    assert water_like.mean() > 0.1  # brain tissue fills a good part of the slice


def test_dicomdir_and_other_files_skipped(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    uid, _ = make_series(tmp_path / "s", 2, (8, 8))
    (tmp_path / "s" / "README.txt").write_text("scanner export")
    dicomdir = get_testdata_file("DICOMDIR", download=False)
    if dicomdir is not None:
        (tmp_path / "s" / "DICOMDIR").write_bytes(Path(dicomdir).read_bytes())
    vol = read_dicom_series(tmp_path / "s")
    assert vol.series_uid == uid and vol.shape == (2, 8, 8)


def test_fan_beam_distances_in_the_metadata(tmp_path: Path) -> None:
    """DistanceSourceToDetector (0018,1110) / DistanceSourceToPatient (0018,1111) come
    through the reader (mm), and are None when the files lack them."""
    from idm_med.datasets.readers import DicomReader, select_reader

    make_series(tmp_path / "plain", 2, (8, 8))
    reader = select_reader(tmp_path / "plain")
    assert isinstance(reader, DicomReader)
    hu, meta = reader.get_data(reader.read(tmp_path / "plain"))
    assert hu.shape == (2, 8, 8)
    assert meta["distance_source_to_detector"] is None
    assert meta["distance_source_to_patient"] is None

    make_series(tmp_path / "fan", 2, (8, 8))
    for f in (tmp_path / "fan").iterdir():
        ds = pydicom.dcmread(f)
        ds.DistanceSourceToDetector = "1085.6"
        ds.DistanceSourceToPatient = "595"
        ds.save_as(f)
    volume = read_dicom_series(tmp_path / "fan")
    assert volume.distance_source_to_detector == pytest.approx(1085.6)
    assert volume.distance_source_to_patient == pytest.approx(595.0)
    _, meta = reader.get_data(volume)
    assert meta["distance_source_to_detector"] == pytest.approx(1085.6)
    assert meta["distance_source_to_patient"] == pytest.approx(595.0)
    np.testing.assert_array_equal(meta["affine"], volume.affine)
    # A derived volume (another in-plane size) keeps the scan geometry.
    half = volume.with_hu(volume.hu[:, ::2, ::2])
    assert half.distance_source_to_detector == volume.distance_source_to_detector
