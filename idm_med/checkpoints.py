"""Finding, describing and checking IDM checkpoints.

A checkpoint is a ``save_pretrained`` directory (``config.json`` + the weights,
``diffusion_pytorch_model.safetensors`` or, before the diffusers layout,
``model.safetensors``; :mod:`idm_med.model_io`) plus, for a trained model,
``training.json`` (the training configuration) and optionally ``model_card.json``
(``{"data": ..., "validation": {"psnr": ..., "ssim": ...}}``). They are looked up by path,
or by name among the shipped models (``idm_med/pretrained``) and the user's models
(``$IDM_MED_HOME/models``, default ``~/.cache/idm-med/models``).

:func:`load_idm` turns every loading failure into one :class:`CheckpointError` naming the
directory; :func:`check_fit` compares what the checkpoint was trained for with the data.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the directory and the problem."""


class ModelMismatchError(ValueError):
    """A checkpoint trained for other data than it is applied to."""


def user_models_dir() -> Path:
    """Where ``idm-med models`` looks for the user's checkpoints."""
    home = os.environ.get("IDM_MED_HOME")
    base = Path(home) if home else Path.home() / ".cache" / "idm-med"
    return base / "models"


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


_STAGE_RECORD = re.compile(r"training_stage(\d+)\.json")


def record_iterations(record: dict[str, Any]) -> int | None:
    """Iterations of one training record (``idm-med train``'s, old or new layout)."""
    return record.get("iterations") or (record.get("loop") or {}).get("iterations")


def stage_records(directory: str | Path) -> list[dict[str, Any]]:
    """A model's training records, first stage first: a model trained further with
    ``--init`` keeps each earlier stage's record as ``training_stageN.json`` and the last
    stage's as ``training.json`` (``{}`` where that is missing)."""
    directory = Path(directory)
    staged = sorted(
        (int(m.group(1)), f)
        for f in directory.glob("training_stage*.json")
        if (m := _STAGE_RECORD.fullmatch(f.name))
    )
    return [_read_json(f) for _, f in staged] + [_read_json(directory / "training.json")]


@dataclass
class ModelInfo:
    """What a checkpoint directory says about itself."""

    name: str
    path: Path
    source: str  # "shipped" | "user" | "path"
    config: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path, source: str, name: str | None = None) -> ModelInfo:
        return cls(
            name=name or path.name,
            path=path,
            source=source,
            config=_read_json(path / "config.json"),
            training=_read_json(path / "training.json"),
            card=_read_json(path / "model_card.json"),
        )

    @property
    def operator(self) -> dict[str, Any]:
        return dict(self.config.get("operator") or self.training.get("operator") or {})

    @property
    def trained(self) -> bool:
        return bool(self.training)

    @property
    def stage_iterations(self) -> list[int]:
        """Iterations of each training stage, first stage first."""
        counts = [record_iterations(r) for r in stage_records(self.path)]
        return [int(c) for c in counts if c]

    @property
    def multicoil(self) -> bool:
        return config_is_multicoil(self.operator)

    @property
    def noise_text(self) -> str:
        """``"aware, σ ≤ 0.02"`` for a noise-aware model (the latest stage's training
        noise), ``"-"`` for one trained on noiseless data."""
        if not self.config.get("noise_aware"):
            return "-"
        sigma = self.training.get("measurement_noise")
        return f"aware, σ ≤ {sigma:g}" if sigma else "aware"

    def summary(self) -> dict[str, str]:
        """One row of ``idm-med models`` (settings: every one the model was trained for)."""
        op = dict(self.training.get("operator") or self.operator)
        settings = ", ".join(
            f"{k}={op[k]}"
            for k in (
                "acceleration",
                "mask_type",
                "center_fraction",
                "ratio",
                "missing_ratio",
                "factor",
                "n_views",
            )
            if op.get(k) is not None
        )
        size = self.training.get("image_size") or op.get("image_size")
        validation = self.card.get("validation") or {}
        scores = ", ".join(f"{k} {v:.4g}" for k, v in validation.items() if isinstance(v, float))
        return {
            "name": self.name,
            "source": self.source,
            "operator": f"{op.get('name', '?')}{' multi-coil' if self.multicoil else ''}",
            "settings": settings or "-",
            # --noise-sigma softens the data consistency only of noise-aware models
            "noise": self.noise_text,
            "image size": str(size or "-"),
            "trained": _trained_text(self.stage_iterations) if self.trained else "NO (init)",
            "data": str(self.card.get("data") or self.training.get("data") or "-"),
            "validation": scores or "-",
        }


def _trained_text(stages: list[int]) -> str:
    """``"6100 it (5 stages)"``, or ``"1200 it"`` for one stage."""
    text = f"{sum(stages)} it"
    return f"{text} ({len(stages)} stages)" if len(stages) > 1 else text


def config_is_multicoil(config: dict[str, Any]) -> bool:
    """Whether an operator config describes multi-coil MRI (``coil_maps`` or
    ``num_coils`` recorded)."""
    return config.get("coil_maps") is not None or bool(config.get("num_coils"))


def _candidates() -> list[tuple[str, Path]]:
    from .model_io import is_idm_checkpoint
    from .pretrained import PRETRAINED_DIR

    out = []
    for source, root in (("shipped", PRETRAINED_DIR), ("user", user_models_dir())):
        if root.is_dir():
            # IDM checkpoints only (priors and SR3 models are diffusers UNet directories).
            out += [(source, p) for p in sorted(root.iterdir()) if is_idm_checkpoint(p)]
    return out


def list_models() -> list[ModelInfo]:
    """Shipped models first, then the user's; unreadable ones are skipped with a warning."""
    models = []
    for source, path in _candidates():
        try:
            models.append(ModelInfo.read(path, source))
        except CheckpointError as exc:
            logger.warning("%s", exc)
    return models


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint directory from a path or a model name (shipped, then user)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    for _, candidate in _candidates():
        if candidate.name == str(name_or_path):
            return candidate
    names = [p.name for _, p in _candidates()]
    raise CheckpointError(
        f"{name_or_path}: no such checkpoint directory or model name (known models: "
        f"{', '.join(names) or 'none'}; see `idm-med models`)"
    )


def default_checkpoint(operator_name: str) -> Path:
    """The shipped (then user) trained model for ``operator_name``, preferring one whose
    ``model_card.json`` says ``"default": true`` (the best measured); says which."""
    models = sorted(list_models(), key=lambda m: not m.card.get("default", False))
    for info in models:
        if info.trained and info.operator.get("name") == operator_name and not info.multicoil:
            logger.info(
                "--method idm: using the %s model %r (%s)",
                info.source,
                info.name,
                info.summary()["settings"],
            )
            return info.path
    raise CheckpointError(
        f"no trained model for operator {operator_name!r} (see `idm-med models`); "
        "pass --checkpoint DIR"
    )


#: Words of torch's and diffusers' messages for weights that do not fit the config.
_MISMATCH_WORDS = ("size mismatch", "Missing key", "Unexpected key", "expected shape")


def _weights_name(directory: Path) -> str:
    from .model_io import LEGACY_WEIGHTS_NAME, WEIGHTS_NAME, is_legacy_layout

    return LEGACY_WEIGHTS_NAME if is_legacy_layout(directory) else WEIGHTS_NAME


def load_idm(directory: str | os.PathLike):
    """``IDM.from_pretrained`` with every failure as one :class:`CheckpointError`."""
    from .model import IDM

    directory = resolve_checkpoint(directory)
    _read_json(directory / "config.json")  # a clear message for malformed JSON
    try:
        return IDM.from_pretrained(str(directory)).eval()
    except Exception as exc:  # noqa: BLE001 - every loading failure is the checkpoint's
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if any(key in str(exc) for key in _MISMATCH_WORDS):
            first = f"config.json does not match {_weights_name(directory)} ({first[:200]})"
        raise CheckpointError(f"{directory}: cannot load the IDM checkpoint: {first}") from exc


def check_fit(
    info: ModelInfo,
    operator_config: dict[str, Any],
    image_channels: int,
    allow_mismatch: bool = False,
) -> None:
    """Refuse (or, with ``allow_mismatch``, warn about) a model applied to data it was
    not trained for: another operator family, other image channels. Warns for an untrained
    (``idm-med init``) checkpoint, for other undersampling settings and for single-coil
    weights on multi-coil data (allowed: the network sees the coil-combined image, and
    SENSE's ``A†`` / ``A†A`` reach it through the same injector inputs, but its artefacts
    differ from the training data's)."""
    recorded = info.operator
    problems = []
    if recorded.get("name") and recorded["name"] != operator_config.get("name"):
        problems.append(
            f"trained for operator {recorded['name']!r}, "
            f"the data need {operator_config.get('name')!r}"
        )
    channels = info.config.get("image_channels")
    if channels is not None and channels != image_channels:
        problems.append(f"trained on {channels}-channel images, the data have {image_channels}")
    data_multicoil = config_is_multicoil(operator_config)
    if data_multicoil != info.multicoil:
        kind = "multi-coil" if info.multicoil else "single-coil"
        logger.warning(
            "%s: a %s model on %s-coil data (it reconstructs the coil-combined image; "
            "trained on other data, results may be worse)",
            info.path,
            kind,
            "multi" if data_multicoil else "single",
        )
    for problem in problems:
        message = f"{info.path}: {problem}"
        if not allow_mismatch:
            raise ModelMismatchError(message + " (pass --allow-mismatch to run it anyway)")
        logger.warning("%s; results will be poor", message)
    if not info.trained:
        logger.warning(
            "%s: no training.json, the weights are untrained (idm-med init); the result is "
            "not a reconstruction to trust",
            info.path,
        )
    # A model trained on a range of settings records them in training.json (a list drawn
    # per batch); its config.json holds one example operator of that range.
    trained = (info.training.get("operator") or {}).get(
        "acceleration", recorded.get("acceleration")
    )
    data_acc = operator_config.get("acceleration")
    if trained is not None and data_acc is not None:
        low, high = (
            (min(trained), max(trained)) if isinstance(trained, list) else (trained, trained)
        )
        if not low <= data_acc <= high:
            span = f"{low:g}x" if low == high else f"{low:g}x-{high:g}x"
            logger.warning(
                "%s: trained at %s acceleration, the data are %gx", info.path, span, data_acc
            )
