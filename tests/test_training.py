"""Training: data augmentation, a short run that learns, and exact resumption."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from idm_med.backbones import small_unet_config
from idm_med.datasets.phantoms import random_ellipse_batch
from idm_med.model import IDM
from idm_med.training import TrainingConfig, TrainingImageDataset, load_training_images, train

TINY = small_unet_config(block_out_channels=(8, 16, 16), norm_num_groups=4)


def _data(n: int = 6, size: int = 24) -> list[np.ndarray]:
    return list(random_ellipse_batch(n, size=size, seed=3)[:, 0].numpy())


def _config(**kw) -> TrainingConfig:
    base = dict(
        operator={"name": "inpainting", "missing_ratio": 0.5},
        image_size=16,
        image_channels=1,
        backbone=TINY,
        steps=2,
        batch_size=2,
        iterations=6,
        learning_rate=1e-3,
        halve_lr_every=100,
        checkpoint_every=3,
        seed=0,
    )
    return TrainingConfig(**(base | kw))


def test_dataset_crops_augments_and_adds_phase():
    data = _data(2, size=20)
    real = TrainingImageDataset(data, size=16, channels=1, seed=0)
    x = real[0]
    assert x.shape == (1, 16, 16) and float(x.abs().max()) == pytest.approx(1.0)
    assert torch.equal(x, real[0])  # deterministic per (seed, index, epoch)
    real.epoch = 1
    assert not torch.equal(x, real[0])
    cplx = TrainingImageDataset(data, size=16, channels=2, seed=0)[1]
    assert cplx.shape == (2, 16, 16) and cplx[1].abs().max() > 0  # random smooth phase
    small = TrainingImageDataset([np.ones((8, 10), np.float32)], size=16)[0]
    assert small.shape == (1, 16, 16)  # padded, then cropped


def test_load_training_images_excludes_held_out_slices(tmp_path):
    from idm_med.datasets.samples import sample_path

    path = sample_path("brain_t1.nii.gz")
    all_slices = load_training_images([path], axis=2)
    kept = load_training_images([path], axis=2, exclude_slices={path.name: [40, 41]})
    assert len(kept) == len(all_slices) - 2
    with pytest.raises(ValueError, match="no training images"):
        load_training_images([])


def test_short_training_run_reduces_the_loss_and_saves(tmp_path):
    losses = train(_config(iterations=40, checkpoint_every=20), _data(), tmp_path, progress=False)
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    model = IDM.from_pretrained(tmp_path)
    assert model.config.operator["name"] == "inpainting"
    assert (tmp_path / "training.json").is_file()
    assert (tmp_path / "checkpoint" / "training_state.pt").is_file()


def test_resume_continues_exactly(tmp_path):
    full = train(_config(), _data(), tmp_path / "full", progress=False)
    part = tmp_path / "part"
    train(_config(iterations=3), _data(), part, progress=False)
    resumed = train(_config(), _data(), part, resume=True, progress=False)
    assert resumed[:3] == full[:3]
    np.testing.assert_allclose(resumed[3:], full[3:], rtol=1e-5)
    a = IDM.from_pretrained(tmp_path / "full").state_dict()
    b = IDM.from_pretrained(part).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
