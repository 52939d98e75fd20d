"""Fan-beam CT from a DICOM series (issue 8, item 4): the distances come from the series'
DistanceSourceToPatient (0018,1111) / DistanceSourceToDetector (0018,1110), else from the
options (mm), else a clear error; the parallel-beam path is unchanged."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from idm_med import cli
from idm_med.acquisition import MeasurementSettings, measure
from idm_med.acquisition.ct import fan_beam_operator, simulate_sparse_view
from idm_med.baselines import make_method as make_baseline
from idm_med.datasets import dicom
from idm_med.datasets.phantoms import shepp_logan
from idm_med.methods import make_method
from idm_med.operators import make_operator
from idm_med.operators.fan_beam import fan_geometry_from_dicom
from idm_med.pipeline import reconstruct

N, VIEWS, PIXEL_MM = 32, 8, 7.5
SDD_MM, SID_MM = 1085.6, 595.0  # a typical third-generation scanner


def write_series(folder: Path, tags: bool) -> Path:
    """A 2-slice 32² Shepp–Logan CT series with 7.5 mm pixels, with or without the two
    fan-beam distance tags."""
    hu = np.stack([-1000 + 2000 * shepp_logan(N), -1000 + 1800 * shepp_logan(N)[::-1]])
    volume = dicom.CTVolume(
        hu=hu.astype(np.float32),
        spacing=(5.0, PIXEL_MM, PIXEL_MM),
        positions=np.array([[-120.0, -120.0, 5.0 * k] for k in range(2)]),
        orientation=np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
        series_uid=pydicom.uid.generate_uid(),
    )
    out = dicom.write_dicom_series(volume.hu, volume, folder)
    if tags:
        for f in out.iterdir():
            ds = pydicom.dcmread(f)
            ds.DistanceSourceToDetector = str(SDD_MM)
            ds.DistanceSourceToPatient = str(SID_MM)
            ds.save_as(f)
    return out


def recording(method):
    """``method`` that also records the operators it was called with."""
    seen = []

    def run(y, op):
        seen.append(op)
        return method(y, op)

    run.operators = seen
    return run


def test_fan_beam_from_the_tags(tmp_path: Path) -> None:
    series = write_series(tmp_path / "series", tags=True)
    fan = recording(make_baseline("fbp"))
    res = reconstruct(
        series, tmp_path / "fan", fan, MeasurementSettings(n_views=VIEWS, ct_geometry="fan")
    )
    expected = fan_geometry_from_dicom(SDD_MM, SID_MM, (PIXEL_MM, PIXEL_MM))
    config = fan.operators[0].config
    assert config["geometry"] == "fan" and config["detector"] == "arc"
    assert config["source_distance"] == pytest.approx(expected["source_distance"])  # 79.3 px
    assert config["detector_distance"] == pytest.approx(expected["detector_distance"])
    assert config["n_views"] == VIEWS and config["angle_range"] == 360.0
    back = dicom.read_dicom_series(res.output)
    assert back.shape == (2, N, N)

    parallel = recording(make_baseline("fbp"))
    res_par = reconstruct(series, tmp_path / "par", parallel, MeasurementSettings(n_views=VIEWS))
    assert parallel.operators[0].config["geometry"] == "parallel"
    assert fan.operators[0].measurement_shape != parallel.operators[0].measurement_shape
    assert np.abs(res.reconstruction - res_par.reconstruction).max() > 1e-2
    assert not np.allclose(back.hu, dicom.read_dicom_series(res_par.output).hu, atol=1.0)
    # Fan beam reconstructs the phantom too (FBP of 8 views: streaky, but close).
    assert res.metrics["psnr"] > 15 and abs(res.metrics["psnr"] - res.pinv_metrics["psnr"]) < 10


def test_flat_detector_and_pinv(tmp_path: Path) -> None:
    series = write_series(tmp_path / "series", tags=True)
    pinv = recording(make_method("pinv"))
    s = MeasurementSettings(n_views=VIEWS, ct_geometry="fan", detector="flat")
    res = reconstruct(series, tmp_path / "o", pinv, s)
    assert pinv.operators[0].config["detector"] == "flat"
    np.testing.assert_allclose(res.reconstruction, res.pinv, atol=1e-6)


@pytest.mark.parametrize(
    ("options", "tag", "option"),
    [
        ({}, r"DistanceSourceToPatient \(0018,1111\)", "--source-distance"),
        ({"source_distance_mm": SID_MM}, r"DistanceSourceToDetector \(0018,1110\)", "--detector"),
    ],
)
def test_missing_tags_without_options_is_a_clear_error(tmp_path, options, tag, option) -> None:
    series = write_series(tmp_path / "series", tags=False)
    settings = MeasurementSettings(n_views=VIEWS, ct_geometry="fan", **options)
    called = []
    with pytest.raises(ValueError, match=f"no {tag} tag; pass {option}"):
        reconstruct(series, tmp_path / "out", lambda y, op: called.append(op), settings)
    assert not called and not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]


def test_options_stand_in_for_missing_tags(tmp_path: Path) -> None:
    series = write_series(tmp_path / "series", tags=False)
    pinv = recording(make_method("pinv"))
    s = MeasurementSettings(
        n_views=VIEWS, ct_geometry="fan", source_distance_mm=500.0, detector_distance_mm=950.0
    )
    res = reconstruct(series, tmp_path / "o", pinv, s)
    config = pinv.operators[0].config
    assert config["source_distance"] == pytest.approx(500.0 / PIXEL_MM)
    assert config["detector_distance"] == pytest.approx(950.0 / PIXEL_MM)
    assert res.output.is_dir() and len(list(res.output.iterdir())) == 2


def test_tags_win_over_options(tmp_path: Path, caplog) -> None:
    volume = dicom.read_dicom_series(write_series(tmp_path / "series", tags=True))
    with caplog.at_level(logging.WARNING):
        op = fan_beam_operator(volume, VIEWS, source_distance_mm=500.0)
    assert op.config["source_distance"] == pytest.approx(SID_MM / PIXEL_MM)
    assert "DistanceSourceToPatient (0018,1111) = 595 mm from the series" in caplog.text
    # On a coarser grid the pixel is larger: the field of view is kept.
    half = fan_beam_operator(volume, VIEWS, image_size=N // 2)
    assert half.config["source_distance"] == pytest.approx(SID_MM / (2 * PIXEL_MM))


def test_bad_geometry_settings(tmp_path: Path) -> None:
    volume = dicom.read_dicom_series(write_series(tmp_path / "series", tags=True))
    for bad, match in (
        ({"ct_geometry": "cone"}, "--ct-geometry must be one of"),
        ({"detector": "curved"}, "--detector must be one of"),
        ({"source_distance_mm": 500.0}, "--source-distance apply to --ct-geometry fan only"),
        ({"detector": "flat"}, "--detector flat apply to --ct-geometry fan only"),
    ):
        with pytest.raises(ValueError, match=match):
            next(measure.measure_ct(volume, MeasurementSettings(n_views=VIEWS, **bad)))
    # A source inside the field of view: the error is in mm and names the series.
    small = dataclasses.replace(  # files=(): named by its SeriesInstanceUID
        volume, files=(), distance_source_to_patient=None, distance_source_to_detector=None
    )
    with pytest.raises(ValueError, match=r"series .*source–isocentre 100 mm.*7\.5 x 7\.5 mm"):
        fan_beam_operator(small, VIEWS, source_distance_mm=100.0, detector_distance_mm=200.0)
    with pytest.raises(ValueError, match="must exceed DistanceSourceToPatient"):
        fan_beam_operator(small, VIEWS, source_distance_mm=500.0, detector_distance_mm=400.0)


def test_parallel_beam_is_unchanged(tmp_path: Path) -> None:
    """The default settings give simulate_sparse_view's own sinograms, bit for bit."""
    volume = dicom.read_dicom_series(write_series(tmp_path / "series", tags=True))
    items = list(
        measure.measure_ct(volume, MeasurementSettings(n_views=VIEWS, noise_level=0.1, seed=3))
    )
    sim = simulate_sparse_view(volume, VIEWS, noise_level=0.1, seed=3)
    assert items[0].operator.config == make_operator("ct", image_size=N, n_views=VIEWS).config
    assert torch.equal(torch.cat([it.y for it in items]), sim.sinogram)


def test_cli_options() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["reconstruct", "x"])
    assert (args.ct_geometry, args.source_distance, args.detector_distance, args.detector) == (
        "parallel",
        None,
        None,
        "arc",
    )
    args = parser.parse_args(
        [
            "reconstruct",
            "x",
            "--ct-geometry",
            "fan",
            "--source-distance",
            "570",
            "--detector",
            "flat",
            "--detector-distance",
            "1040.5",
        ]  # fmt: skip
    )
    assert (args.ct_geometry, args.source_distance, args.detector_distance, args.detector) == (
        "fan",
        570.0,
        1040.5,
        "flat",
    )
    rec = next(a for a in parser._actions if a.dest == "command").choices["reconstruct"]
    helps = {a.dest: a.help for a in rec._actions}
    assert "preferred when present" in helps["source_distance"]
    assert "(0018,1110)" in helps["detector_distance"]


def _run(*argv: object) -> int:
    with pytest.raises(SystemExit) as exc:
        cli.main([str(a) for a in argv])
    return exc.value.code


def test_cli_fan_beam_end_to_end(tmp_path: Path, caplog) -> None:
    tagged = write_series(tmp_path / "tagged", tags=True)
    plain = write_series(tmp_path / "plain", tags=False)
    common = ["--method", "pinv", "--n-views", VIEWS, "--device", "cpu"]
    fan = ["--ct-geometry", "fan"]
    assert _run("reconstruct", tagged, "--output", tmp_path / "fan", *common, *fan) == 0
    assert _run("reconstruct", tagged, "--output", tmp_path / "par", *common) == 0
    a = dicom.read_dicom_series(tmp_path / "fan" / "tagged_pinv")
    b = dicom.read_dicom_series(tmp_path / "par" / "tagged_pinv")
    assert not np.allclose(a.hu, b.hu, atol=1.0)

    assert _run("reconstruct", plain, "--output", tmp_path / "none", *common, *fan) != 0
    assert "--source-distance" in caplog.text and not (tmp_path / "none").exists()
    mm = ["--source-distance", 595, "--detector-distance", 1085.6]
    assert _run("reconstruct", plain, "--output", tmp_path / "opt", *common, *fan, *mm) == 0
    c = dicom.read_dicom_series(tmp_path / "opt" / "plain_pinv")
    np.testing.assert_allclose(c.hu, a.hu, atol=1.0)  # the same geometry as the tags
    # The written series records the geometry it was reconstructed with (tags or options).
    for out in (a, c):
        assert out.distance_source_to_patient == pytest.approx(SID_MM)
        assert out.distance_source_to_detector == pytest.approx(SDD_MM)
    assert b.distance_source_to_patient == pytest.approx(SID_MM)  # copied from the source
