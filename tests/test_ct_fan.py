"""Fan-beam CT (``make_operator("ct", geometry="fan")``): the sparse projector against an
independent dense line-integral ray tracer, its FBP (full and short scan), and the DICOM
geometry helper.

Bounds were measured with this code (torch 2.x CPU, float64) and are stated next to each
assertion.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from idm_med.operators import make_operator
from idm_med.operators.fan_beam import (
    FanBeamTransform,
    FanGeometry,
    fan_geometry_from_dicom,
    parker_weights,
)
from idm_med.operators.sparse_view_ct import SparseViewCT

N = 48


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def smooth_image(n: int = N) -> torch.Tensor:
    """An off-centre Gaussian blob plus a broad ellipse, ``(1, 1, n, n)`` float64."""
    c = n // 2
    rows, cols = torch.meshgrid(
        torch.arange(n, dtype=torch.float64) - c,
        torch.arange(n, dtype=torch.float64) - c,
        indexing="ij",
    )
    blob = torch.exp(-((cols - 0.1 * n) ** 2 + (rows + 0.06 * n) ** 2) / (2 * (0.2 * n) ** 2))
    ellipse = torch.exp(-(((cols / (0.3 * n)) ** 2 + (rows / (0.15 * n)) ** 2) ** 2))
    return (blob + 0.5 * ellipse)[None, None]


def traced_sinogram(image: torch.Tensor, op: SparseViewCT, step: float = 0.02) -> torch.Tensor:
    """Independent reference ``(V, D)``: every ray sampled every ``step`` pixels from the
    source over ``2R`` and the bilinear interpolant (zero beyond the pixel centres, as
    ``grid_sample(align_corners=True)``) integrated by a Riemann sum."""
    geometry: FanGeometry = op.radon.geometry
    n, c, r = geometry.image_size, geometry.image_size // 2, geometry.source_distance
    beta = op.angles.double().view(-1, 1, 1)
    gamma = geometry.fan_angles().view(1, -1, 1)
    t = torch.arange(0.0, 2 * r, step, dtype=torch.float64).view(1, 1, -1)
    # The source at R (cos β, sin β); the ray to fan angle γ heads along -(cos, sin)(β - γ).
    x = r * torch.cos(beta) - t * torch.cos(beta - gamma)
    y = r * torch.sin(beta) - t * torch.sin(beta - gamma)
    grid = torch.stack([(x + c) / (n - 1) * 2 - 1, (y + c) / (n - 1) * 2 - 1], -1)
    views, bins = beta.shape[0], gamma.shape[1]
    samples = F.grid_sample(image, grid.view(1, views * bins, -1, 2), align_corners=True)
    return samples.view(views, bins, -1).sum(-1) * step


@pytest.mark.parametrize("detector", ["arc", "flat"])
def test_projection_matches_a_dense_ray_tracer(detector):
    op = make_operator("ct", image_size=N, n_views=24, geometry="fan", detector=detector)
    op = op.double()
    image = smooth_image()
    sinogram = op.A(image)[0, 0]
    reference = traced_sinogram(image, op)
    # Unit-step quadrature of the same bilinear image: measured 2.1e-4 (arc), 2.0e-4 (flat).
    assert rel(sinogram, reference) < 5e-4
    # A sharp image (a square with edges between pixels): measured 2.2e-3 / 2.1e-3.
    square = torch.zeros(1, 1, N, N, dtype=torch.float64)
    square[..., 10:30, 16:40] = 1.0
    assert rel(op.A(square)[0, 0], traced_sinogram(square, op)) < 1e-2


def test_default_geometry_covers_the_image():
    geometry = FanGeometry.create(256)
    assert (geometry.source_distance, geometry.detector_distance) == (512.0, 1024.0)
    assert geometry.detector == "arc" and geometry.n_detectors % 2 == 1
    reach = math.sqrt(2) * 128 + 1
    assert float(geometry.fan_angles().abs().max()) >= math.asin(reach / 512.0)
    op = make_operator("ct", image_size=32, n_views=6, geometry="fan").double()
    # Every pixel is measured: no pixel column of A is empty (corners included).
    basis = torch.eye(32 * 32, dtype=torch.float64).view(-1, 1, 32, 32)
    hits = op.A(basis).flatten(1).abs().sum(1)
    assert float(hits.min()) > 0.5  # measured 5.6


def test_adjoint_is_exact_and_batched():
    op = make_operator("ct", image_size=N, n_views=10, geometry="fan", detector="flat").double()
    x = torch.randn(3, 1, N, N, dtype=torch.float64)
    y = torch.randn(3, *op.measurement_shape, dtype=torch.float64)
    lhs, rhs = (op.A(x) * y).sum(), (x * op.At(y)).sum()
    assert abs(float(lhs - rhs)) <= 1e-12 * float(lhs.abs())
    assert op.adjointness_test(seed=2) < 1e-12


@pytest.mark.parametrize("detector", ["arc", "flat"])
def test_fbp_full_and_short_scan(detector):
    image = smooth_image()
    full = make_operator(
        "ct", image_size=N, n_views=360, geometry="fan", detector=detector
    ).double()
    # Full scan (360°): measured 6.2e-3 (arc), 6.3e-3 (flat).
    assert rel(full.fbp(full.A(image)), image) < 1e-2
    half_fan = float(full.radon.geometry.fan_angles().abs().max())
    short_range = 180.0 + 2 * math.degrees(half_fan) + 2.0
    short = make_operator(
        "ct", image_size=N, n_views=240, geometry="fan", detector=detector, angle_range=short_range
    ).double()
    # Short scan with Parker weights: measured 6.4e-3 (arc), 6.5e-3 (flat).
    assert rel(short.fbp(short.A(image)), image) < 1e-2
    too_short = make_operator("ct", image_size=N, n_views=60, geometry="fan", angle_range=180.0)
    with pytest.raises(ValueError, match="short scan"):
        too_short.fbp(torch.zeros(1, *too_short.measurement_shape))


def test_parker_weights_sum_to_one_over_redundant_rays():
    gamma = torch.linspace(-0.3, 0.3, 7, dtype=torch.float64)
    scan = math.pi + 2 * 0.35
    beta = torch.tensor([0.4, 1.0, 2.0, 2.6], dtype=torch.float64)
    w = parker_weights(beta, gamma, scan)
    # The ray (β, γ) is measured again as (β + π - 2γ, -γ) when that lies in the scan.
    for i, b in enumerate(beta.tolist()):
        for j, g in enumerate(gamma.tolist()):
            twin = b + math.pi - 2 * g
            twin = twin if twin <= scan else b - math.pi - 2 * g
            if 0 <= twin <= scan:
                twin_beta = torch.tensor([twin], dtype=torch.float64)
                w2 = parker_weights(twin_beta, torch.tensor([-g], dtype=torch.float64), scan)
                assert float(w[i, j] + w2[0, 0]) == pytest.approx(1.0, abs=1e-12)


def test_dicom_geometry_builds_the_operator():
    kwargs = fan_geometry_from_dicom(1085.6, 595.0, [1.953125, 1.953125])
    assert kwargs["source_distance"] == pytest.approx(595.0 / 1.953125)
    assert kwargs["detector_distance"] == pytest.approx(1085.6 / 1.953125)
    op = make_operator("ct", image_size=64, n_views=12, geometry="fan", **kwargs)
    assert op.config["source_distance"] == pytest.approx(304.64)
    rebuilt = make_operator(**op.config)
    x = torch.randn(1, 1, 64, 64)
    assert torch.equal(rebuilt.A(x), op.A(x))
    pitch = fan_geometry_from_dicom(1000.0, 500.0, 2.0, detector_spacing=1.0, n_detectors=99)
    assert pitch["detector_spacing"] == 0.5 and pitch["n_detectors"] == 99
    with pytest.raises(ValueError, match="square"):
        fan_geometry_from_dicom(1000.0, 500.0, [1.0, 2.0])
    with pytest.raises(ValueError, match="must exceed"):
        fan_geometry_from_dicom(500.0, 600.0, 1.0)
    with pytest.raises(ValueError, match="positive"):
        fan_geometry_from_dicom(1000.0, -1.0, 1.0)


def test_default_pinv_is_exact_for_fan_beam():
    op = make_operator("ct", image_size=32, n_views=12, geometry="fan").double()
    assert op.solver == "direct"
    x = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    y = op.A(x)
    x_pinv = op.A_pinv(y)
    assert rel(op.A(x_pinv), y) < 1e-6  # measured 1.3e-8
    assert rel(op.AtA(x_pinv), x_pinv) < 1e-6  # measured 4.5e-12


def test_fan_arguments_are_validated():
    with pytest.raises(TypeError, match="fan-beam keywords"):
        SparseViewCT(32, 8, source_distance=100.0)  # parallel geometry
    with pytest.raises(TypeError, match="fan-beam keywords"):
        SparseViewCT(32, 8, geometry="fan", focal_spot=1.0)
    with pytest.raises(ValueError, match="circle=False"):
        SparseViewCT(32, 8, geometry="fan", circle=True)
    with pytest.raises(ValueError, match="source_distance"):
        SparseViewCT(32, 8, geometry="fan", source_distance=20.0)
    with pytest.raises(ValueError, match="detector_distance"):
        SparseViewCT(32, 8, geometry="fan", source_distance=100.0, detector_distance=90.0)
    with pytest.raises(ValueError, match="detector must be"):
        FanGeometry.create(32, detector="curved")
    transform = FanBeamTransform(FanGeometry.create(16), torch.zeros(1))
    assert transform.project(torch.ones(1, 16, 16)).shape == (1, 1, transform.n_detectors)


@pytest.mark.parametrize("detector", ["arc", "flat"])
def test_cg_warm_start_is_the_fan_fbp_in_the_range_of_the_adjoint(detector):
    op = make_operator(
        "ct", image_size=48, n_views=40, geometry="fan", detector=detector, pinv="cg"
    ).double()
    A, At = op.radon.linear_maps(torch.float64)
    x = torch.rand(1, 1, 48, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = A(x)
    start = op._cg_warm_start(y, A, At)
    # The FBP-like start fits the data to 5.4e-2 / 5.6e-2 (measured); the plain
    # back-projection Aᵀy is off by a factor ~1.9e3.
    assert rel(A(start), y) < 0.1
    assert rel(op.fbp(y), x) < 0.5 and rel(start, x) < 0.5  # measured 0.38, 0.38
    assert rel(A(op.A_pinv(y)), y) < 1e-3  # measured 2.4e-4 (CG, default settings)
