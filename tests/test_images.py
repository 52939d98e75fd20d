"""Plain images (PNG / TIFF / NPY) and phantoms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from idm_med.datasets.images import read_image, rgb_to_luma, write_image
from idm_med.datasets.phantoms import random_ellipse_batch, random_ellipses, shepp_logan


@pytest.fixture
def gray() -> torch.Tensor:
    return torch.rand(1, 24, 40, generator=torch.Generator().manual_seed(0))


def test_npy_and_tiff_round_trips_exact(tmp_path: Path, gray: torch.Tensor) -> None:
    for name in ("a.npy", "a.tif", "a.tiff"):
        path = write_image(tmp_path / name, gray)
        back = read_image(path)
        assert back.shape == (1, 24, 40) and back.dtype == torch.float32
        assert torch.equal(back, gray), name
    x64 = gray.double()
    assert torch.equal(read_image(write_image(tmp_path / "b.npy", x64), dtype=torch.float64), x64)
    rgb = torch.rand(3, 8, 10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(read_image(write_image(tmp_path / "c.tif", rgb), color="rgb"), rgb)
    assert torch.equal(read_image(write_image(tmp_path / "c.npy", rgb), color="rgb"), rgb)


def test_png_round_trip_quantised(tmp_path: Path, gray: torch.Tensor) -> None:
    back8 = read_image(write_image(tmp_path / "a.png", gray))
    assert back8.shape == gray.shape
    assert (back8 - gray).abs().max() <= 0.5 / 255 + 1e-6
    assert torch.equal(back8 * 255, (back8 * 255).round())  # really 8-bit levels
    back16 = read_image(write_image(tmp_path / "b.png", gray, bit_depth=16))
    assert (back16 - gray).abs().max() <= 0.5 / 65535 + 1e-7
    assert np.asarray(Image.open(tmp_path / "b.png")).dtype == np.uint16
    # Out-of-range values are clipped for PNG.
    assert read_image(write_image(tmp_path / "c.png", gray * 3 - 1)).min() == 0.0


def test_rgb_to_luma_bt601(tmp_path: Path) -> None:
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    y = read_image(tmp_path / "rgb.png")
    expected = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    assert y.shape == (1, 4, 5)
    torch.testing.assert_close(y, torch.full((1, 4, 5), expected), atol=1e-6, rtol=0)
    assert read_image(tmp_path / "rgb.png", color="rgb").shape == (3, 4, 5)
    white = torch.ones(2, 3, 4, 4)
    torch.testing.assert_close(rgb_to_luma(white), torch.ones(2, 1, 4, 4))


def test_read_errors_and_value_range(tmp_path: Path) -> None:
    np.save(tmp_path / "hu.npy", np.array([[-1000.0, 0.0], [1000.0, 3000.0]]))
    with pytest.raises(ValueError, match=r"hu\.npy.*outside \[0, 1\]"):
        read_image(tmp_path / "hu.npy")
    x = read_image(tmp_path / "hu.npy", value_range=(-1000, 3000), dtype=torch.float64)
    torch.testing.assert_close(x[0], torch.tensor([[0.0, 0.25], [0.5, 1.0]], dtype=torch.float64))
    np.save(tmp_path / "stack.npy", np.zeros((5, 6, 7)))
    with pytest.raises(ValueError, match="unsupported image array shape"):
        read_image(tmp_path / "stack.npy")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"broken\.png"):
        read_image(tmp_path / "broken.png")
    with pytest.raises(ValueError, match="suffix"):
        write_image(tmp_path / "a.jpg", torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        write_image(tmp_path / "n.tif", torch.full((1, 4, 4), float("nan")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.png", "hu.npy", "stack.npy"]


def test_write_is_atomic(tmp_path: Path, gray: torch.Tensor, monkeypatch) -> None:
    path = write_image(tmp_path / "a.png", gray)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        write_image(path, 1 - gray)
    assert path.read_bytes() == before  # the old file is untouched, no temporary left
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_phantoms() -> None:
    sl = shepp_logan(64)
    assert sl.shape == (64, 64) and sl.dtype == np.float32
    assert sl.min() >= 0.0 and 0.9 < sl.max() <= 1.0
    assert float(np.std(sl)) > 0.1

    a, b = random_ellipses(48, seed=7), random_ellipses(48, seed=7)
    assert np.array_equal(a, b) and not np.array_equal(a, random_ellipses(48, seed=8))
    assert a.dtype == np.float32 and a.min() >= 0.0 and a.max() <= 1.0
    assert a[0, 0] == 0.0 and a[24, 24] > 0.0  # corners are outside the body ellipse
    batch = random_ellipse_batch(3, 32, seed=5)
    assert batch.shape == (3, 1, 32, 32)
    assert torch.equal(batch[:2], random_ellipse_batch(2, 32, seed=5))
    assert not torch.equal(batch[0], batch[1])
    np.testing.assert_array_equal(batch[2, 0].numpy(), random_ellipses(32, seed=(5, 2)))


def test_bundled_natural_samples() -> None:
    from idm_med.datasets.samples import sample_path

    for name in ("camera.png", "astronaut.png", "coins.png", "brick.png"):
        image = read_image(sample_path("natural") / name)
        assert image.shape == (1, 256, 256)
        assert float(image.std()) > 0.05 and 0.0 <= float(image.min()) < float(image.max()) <= 1
