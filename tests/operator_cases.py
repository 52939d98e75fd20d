"""Small instances of every registered operator, shared by the tests."""

from __future__ import annotations

import pytest
import torch

from idm_med.operators import available_operators, make_operator


def _coil_maps(num_coils: int, size: int) -> torch.Tensor:
    """Smooth synthetic coil sensitivities, normalised so that Σ|S_c|² = 1."""
    from idm_med.acquisition.coils import synthetic_coil_maps

    return torch.as_tensor(synthetic_coil_maps(num_coils, (size, size)))


# Small, fast configurations per registry name. An operator registered without an entry
# here makes the contract tests fail (see test_every_operator_has_a_test_case).
OPERATOR_CASES: dict[str, list[dict]] = {
    "gaussian_cs": [
        dict(image_size=32, ratio=0.25, block_size=16),
        dict(image_size=(32, 16), ratio=0.5, block_size=16, permute=True, seed=3),
    ],
    "inpainting": [
        dict(image_size=24, missing_ratio=0.6, seed=1),
        dict(image_size=(24, 32), missing_ratio=0.3, mask_type="box", channels=2),
    ],
    "superres": [dict(image_size=24, factor=4), dict(image_size=(16, 32), factor=2, channels=3)],
    "mri": [
        dict(image_size=(32, 24), acceleration=4, center_fraction=0.125),
        dict(image_size=32, acceleration=3, center_fraction=0.1, mask_type="equispaced", seed=5),
        # Multi-coil SENSE at the default settings, 4x and 8x random masks with smooth maps
        # (singular values down to ~1e-9 σ_max: the exact separable solve must cope).
        dict(image_size=32, acceleration=4, center_fraction=0.08, coil_maps=_coil_maps(4, 32)),
        dict(image_size=32, acceleration=8, center_fraction=0.04, coil_maps=_coil_maps(4, 32)),
    ],
    # Default settings (full detector, exact dense pseudo-inverse), and the disc-only
    # detector of skimage's circle=True.
    # Fan beam: an arc detector at the default distances (full scan), and a flat detector
    # with short distances on a short scan.
    "ct": [
        dict(image_size=24, n_views=8),
        dict(image_size=20, n_views=6, circle=True),
        dict(image_size=24, n_views=8, geometry="fan"),
        dict(
            image_size=20,
            n_views=7,
            geometry="fan",
            detector="flat",
            source_distance=40.0,
            detector_distance=70.0,
            angle_range=260.0,
        ),
    ],
}


def is_iterative(name: str, kwargs: dict) -> bool:
    """Whether the operator's pseudo-inverse may be computed by conjugate gradients (CT);
    SENSE is an exact factorisation."""
    return name == "ct"


def operator_cases() -> list:
    """pytest params ``(name, kwargs)`` for every registered operator and case."""
    params = []
    for name in available_operators():
        for i, kwargs in enumerate(OPERATOR_CASES.get(name, [])):
            params.append(pytest.param(name, kwargs, id=f"{name}-{i}"))
    return params


def build(name: str, kwargs: dict, dtype: torch.dtype = torch.float64, device: str | None = None):
    return make_operator(name, **kwargs).to(dtype=dtype, device=device)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES, name="device")
def device_fixture(request) -> str:
    """Every device the tests can run on: cpu, plus cuda when present (as deepinv)."""
    return request.param
