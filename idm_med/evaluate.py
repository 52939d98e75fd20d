"""Score a folder of fastMRI-style reconstructions, as fastMRI's ``evaluate.py`` does.

For every target file ``TARGET_DIR/<name>.h5`` the prediction ``PRED_DIR/<name>.h5`` must
hold a ``reconstruction`` dataset ``(slices, h, w)``. The target volume is the file's
``reconstruction_rss`` (multi-coil) or ``reconstruction_esc`` (single-coil) — or, when the
file has neither, the magnitude (single-coil) or root-sum-of-squares (multi-coil) image of
its fully sampled k-space, centre-cropped to the header's recon size. As in fastMRI, both
volumes are centre-cropped to ``(w, w)`` with ``w`` the target's width, and the metrics
are per volume (:func:`idm_med.metrics.evaluate`: NMSE, PSNR and SSIM with data range the
volume maximum, SSIM 7×7 per slice); the summary is the mean and the sample standard
deviation over volumes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from . import metrics
from .acquisition.mri import simulate_targets
from .datasets import fastmri

logger = logging.getLogger(__name__)
METRICS = ("nmse", "psnr", "ssim")


@dataclass
class Evaluation:
    """Per-volume metrics ``{file name: {metric: value}}`` and their summary."""

    volumes: dict[str, dict[str, float]] = field(default_factory=dict)

    def mean(self) -> dict[str, float]:
        return {m: float(np.mean([v[m] for v in self.volumes.values()])) for m in METRICS}

    def std(self) -> dict[str, float]:
        """Sample standard deviation over volumes (0 for a single volume)."""
        n = len(self.volumes)
        return {
            m: float(np.std([v[m] for v in self.volumes.values()], ddof=1)) if n > 1 else 0.0
            for m in METRICS
        }

    def to_text(self) -> str:
        mean, std = self.mean(), self.std()
        lines = [f"{'volume':40s} " + " ".join(f"{m.upper():>9s}" for m in METRICS)]
        for name, v in sorted(self.volumes.items()):
            lines.append(f"{name:40s} " + " ".join(f"{v[m]:9.4f}" for m in METRICS))
        lines.append(
            f"{len(self.volumes)} volumes: "
            + ", ".join(f"{m.upper()} = {mean[m]:.4g} ± {std[m]:.4g}" for m in METRICS)
        )
        return "\n".join(lines)


def read_target(path: str | Path, challenge: str | None = None) -> np.ndarray:
    """The target volume ``(slices, h, w)`` of a fastMRI file (see the module docstring).

    ``challenge`` ``"singlecoil"`` / ``"multicoil"`` forces ``reconstruction_esc`` /
    ``reconstruction_rss``; ``None`` picks by the k-space rank, then whichever exists.
    """
    path = Path(path)
    with h5py.File(path, "r") as f:
        multicoil = f[fastmri.KSPACE_KEY].ndim == 4 if fastmri.KSPACE_KEY in f else None
        if challenge is not None:
            keys = [fastmri.RSS_KEY if challenge == "multicoil" else fastmri.ESC_KEY]
        else:
            preferred = fastmri.RSS_KEY if multicoil else fastmri.ESC_KEY
            keys = [preferred, *(k for k in fastmri.TARGET_KEYS if k != preferred)]
        for key in keys:
            if key in f:
                return np.asarray(f[key][()], dtype=np.float64)
        if challenge is not None:
            raise ValueError(f"{path}: no {keys[0]} dataset")
        if multicoil is None:
            raise ValueError(f"{path}: neither a target dataset nor k-space")
        kspace = np.asarray(f[fastmri.KSPACE_KEY][()])
    crop = fastmri.read_volume_info(path).crop_size
    return np.asarray(simulate_targets(kspace, crop), dtype=np.float64)


def evaluate_folder(
    target_path: str | Path,
    predictions_path: str | Path,
    challenge: str | None = None,
    acquisition: str | None = None,
) -> Evaluation:
    """Score every ``*.h5`` of ``target_path`` against the same name in ``predictions_path``.

    ``acquisition`` (e.g. ``"CORPD_FBK"``) keeps only targets with that ``acquisition``
    attribute. Raises ``ValueError`` if a prediction is missing or no target is found.
    """
    target_path, predictions_path = Path(target_path), Path(predictions_path)
    targets = sorted(target_path.glob("*.h5"))
    if not targets:
        raise ValueError(f"{target_path}: no .h5 target files")
    result = Evaluation()
    for tgt_file in targets:
        if acquisition is not None:
            with h5py.File(tgt_file, "r") as f:
                if f.attrs.get("acquisition") != acquisition:
                    continue
        pred_file = predictions_path / tgt_file.name
        if not pred_file.is_file():
            raise ValueError(f"{pred_file}: missing prediction for target {tgt_file}")
        target = read_target(tgt_file, challenge)
        with h5py.File(pred_file, "r") as f:
            if fastmri.RECONSTRUCTION_KEY not in f:
                raise ValueError(f"{pred_file}: no 'reconstruction' dataset")
            pred = np.asarray(f[fastmri.RECONSTRUCTION_KEY][()], dtype=np.float64)
        width = target.shape[-1]
        target = fastmri.center_crop(target, (width, width))
        pred = fastmri.center_crop(pred, (width, width))
        result.volumes[tgt_file.name] = metrics.evaluate(target, pred)
        logger.info("%s: %s", tgt_file.name, result.volumes[tgt_file.name])
    if not result.volumes:
        raise ValueError(f"{target_path}: no target file matched acquisition={acquisition!r}")
    return result
