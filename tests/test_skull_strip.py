"""The skull-stripping augmentation: the brain mask of a synthetic head, and MRI training
patches drawn skull-stripped."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from idm_med.datasets.skull_strip import brain_mask, skull_strip
from idm_med.patches import PatchSampler
from idm_med.training import TrainingConfig, training_record


def _radius(size: int = 128) -> np.ndarray:
    v, u = np.mgrid[:size, :size] - (size - 1) / 2
    return np.hypot(u, v)


def _head(size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A T1-like head: brain (r < 40, with a dark 'ventricle'), dark skull (40-46), bright
    scalp (46-52) on a zero background; and the true brain mask."""
    r = _radius(size)
    brain = r < 40
    image = np.where(brain, 0.7, 0.0) + np.where((r >= 46) & (r < 52), 0.9, 0.0)
    image[(r >= 40) & (r < 46)] = 0.05
    image[r < 6] = 0.1  # CSF inside the brain: dark, but the brain's
    return image.astype(np.float32), brain


def test_brain_mask_finds_the_brain_and_drops_skull_and_scalp():
    image, truth = _head()
    mask = brain_mask(image)
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.9
    assert not mask[_radius() >= 46].any()  # no scalp
    assert mask[_radius() < 6].all()  # the dark ventricle is filled in


def test_brain_mask_of_blank_or_bad_input():
    assert not brain_mask(np.zeros((32, 32))).any()
    assert not brain_mask(np.full((32, 32), np.nan)).any()
    with pytest.raises(ValueError, match="2-D"):
        brain_mask(np.zeros((2, 32, 32)))


def test_skull_strip_zeroes_outside_and_keeps_the_brain():
    image, _ = _head()
    out = skull_strip(image)
    mask = brain_mask(image)
    assert out.dtype == image.dtype
    np.testing.assert_array_equal(out[mask], image[mask])
    assert (out[~mask] == 0).all()


def test_sampler_draws_mri_heads_skull_stripped_with_the_given_probability():
    image, _ = _head()
    scalp = torch.from_numpy(_radius() >= 46)  # rotation/flip invariant: centred rings
    scales = {"mri": (1.0, 1.0)}  # the whole image in every patch

    def scalp_visible(p: float, n: int = 40) -> list[bool]:
        sampler = PatchSampler({"mri": [image]}, {"mri": 1.0}, 128, 1, scales, {"mri": p})
        g = torch.Generator().manual_seed(0)
        return [bool(sampler.patch(g)[0][scalp].max() > 0) for _ in range(n)]

    assert all(scalp_visible(0.0))
    assert not any(scalp_visible(1.0))
    half = scalp_visible(0.5)
    assert 0 < sum(half) < len(half)
    with pytest.raises(ValueError, match="skull_strip"):
        PatchSampler({"mri": [image]}, {"mri": 1.0}, 128, 1, scales, {"mri": 1.5})


def test_skull_strip_is_recorded_only_when_used():
    assert "skull_strip" not in training_record(TrainingConfig())
    assert training_record(TrainingConfig(skull_strip=0.5))["skull_strip"] == 0.5
