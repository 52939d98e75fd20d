"""Checkpoints of :class:`idm_med.model.IDM`: diffusers persistence plus the stored operator.

A checkpoint is a diffusers model directory,

* ``config.json`` – the model's ``register_to_config`` arguments, among them ``operator``
  (the JSON-safe ``op.config`` of the operator it was trained for, or ``null``);
* ``diffusion_pytorch_model.safetensors`` – the weights (diffusers' name and format);
* ``operator.safetensors`` – that operator's tensors (``op.state_dict()``: explicit masks,
  coil maps, ...; empty for operators rebuilt from their config alone),

so ``IDM.from_pretrained(dir, torch_dtype=...)`` and ``save_pretrained`` take diffusers'
arguments. The directory is written as a whole by
:func:`idm_med.datasets.atomic.atomic_directory`: a failed save leaves the previous
checkpoint, and files that are not the model's (``training.json``, ``model_card.json``,
``log.csv``, a training run's ``checkpoint/``) are carried over, hard-linked.

Unlike diffusers, loading is strict: weights that do not fit the config (missing,
unexpected or resized tensors) raise instead of being re-initialised with a warning.

Directories written before the diffusers layout (weights in ``model.safetensors``; the
checkpoints shipped in ``idm_med/pretrained`` and ``benchmarks/ablation_models``) still load
and give the outputs they gave; ``scripts/convert_checkpoints.py``
(:func:`convert_legacy_checkpoint`) rewrites them, checked bit for bit.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .datasets.atomic import atomic_directory

logger = logging.getLogger(__name__)

#: diffusers' weights file (``diffusers.utils.SAFETENSORS_WEIGHTS_NAME``).
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
#: Where checkpoints written before the diffusers layout kept their weights.
LEGACY_WEIGHTS_NAME = "model.safetensors"
#: The stored operator's tensors (explicit masks, coil maps, ...) beside the weights.
OPERATOR_WEIGHTS_NAME = "operator.safetensors"
CONFIG_NAME = "config.json"


def is_legacy_layout(directory: Path) -> bool:
    """Whether ``directory`` holds a checkpoint of the pre-diffusers layout."""
    return (directory / LEGACY_WEIGHTS_NAME).is_file() and not any(
        directory.glob("diffusion_pytorch_model*")
    )


def saved_class_name(directory: str | os.PathLike) -> str | None:
    """The diffusers ``_class_name`` a model directory's ``config.json`` records (``IDM``,
    ``PostProcessingUNet``, ``UNet2DModel``, ...), ``None`` without a readable one."""
    try:
        config = json.loads((Path(directory) / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config.get("_class_name") if isinstance(config, dict) else None


def is_idm_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds an IDM checkpoint (either layout), as opposed to a
    diffusers UNet directory (a prior, an SR3 model) or anything else."""
    directory = Path(directory)
    if is_legacy_layout(directory):
        return (directory / CONFIG_NAME).is_file()
    if not any(directory.glob("diffusion_pytorch_model*.safetensors*")):
        return False
    return saved_class_name(directory) == "IDM"


def _is_model_file(name: str) -> bool:
    """Files ``save_pretrained`` writes (and so replaces) in a checkpoint directory."""
    return name in (CONFIG_NAME, OPERATOR_WEIGHTS_NAME, LEGACY_WEIGHTS_NAME) or name.startswith(
        "diffusion_pytorch_model"
    )


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link ``src`` to ``dst`` (same file system, no data copied); copy if links fail."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _carry_over(old: Path, new: Path) -> None:
    """Put into ``new`` every entry of the directory ``old`` that is not a model file."""
    if not old.is_dir():
        return
    for entry in old.iterdir():
        if _is_model_file(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, new / entry.name, symlinks=True, copy_function=_link_or_copy)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry), new / entry.name)
        else:
            _link_or_copy(str(entry), str(new / entry.name))


def _usual_modes(directory: Path) -> None:
    """Give the model files in ``directory`` the umask's usual mode (safetensors writes
    its files private, 0600, unlike every other file of a checkpoint)."""
    mask = os.umask(0)
    os.umask(mask)
    for entry in directory.iterdir():
        if _is_model_file(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.chmod(0o666 & ~mask)


def build_operator(config: dict[str, Any], state: dict[str, torch.Tensor] | None) -> nn.Module:
    """``make_operator(**config)`` with its tensors restored from ``state`` (strict)."""
    from .operators import make_operator

    operator = make_operator(**config)
    if state:
        operator.load_state_dict(state, strict=True)
    return operator


class StoredOperatorMixin:
    """``save_pretrained`` / ``from_pretrained`` of a diffusers model whose config holds an
    ``operator`` entry, with that operator's tensors in ``operator.safetensors``.

    Mixed in before ``ModelMixin``; the model sets ``_operator_cache = None`` and
    ``_operator_state = None`` in its ``__init__``.
    """

    _operator_cache: nn.Module | None
    _operator_state: dict[str, torch.Tensor] | None

    def _set_operator_cache(self, operator: nn.Module | None) -> None:
        # Not a submodule: the stored operator's tensors live in operator.safetensors, not
        # in the model's state_dict (which must load strictly into a fresh model).
        object.__setattr__(self, "_operator_cache", operator)

    def stored_operator(self) -> nn.Module:
        """The operator of ``config.operator`` (plus the tensors of
        ``operator.safetensors``), built once and moved to the model's device and dtype."""
        if self.config.operator is None:
            raise ValueError("no operator given and none stored in the model config")
        if self._operator_cache is None:
            self._set_operator_cache(build_operator(self.config.operator, self._operator_state))
        ref = next(self.parameters())
        return self._operator_cache.to(device=ref.device, dtype=ref.dtype)

    def _operator_to_store(
        self, operator: nn.Module | None
    ) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor] | None, nn.Module | None]:
        """``(config, tensors, rebuilt operator)`` to save; raises (``TypeError`` for a
        config that is not JSON-safe) before anything is written."""
        op_config, op_state, rebuilt = self.config.operator, self._operator_state, None
        operator = operator if operator is not None else self._operator_cache
        if operator is not None:
            op_config = dict(operator.config)
            op_state = {k: v.detach().cpu().contiguous() for k, v in operator.state_dict().items()}
            json.dumps(op_config, allow_nan=False)
            rebuilt = build_operator(op_config, op_state)
        return op_config, op_state, rebuilt

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        operator: nn.Module | None = None,
        is_main_process: bool = True,
        **kwargs: Any,
    ) -> None:
        """Write the checkpoint directory (see the module docstring) as a whole.

        ``operator`` (optional) becomes the model's stored operator: its JSON-safe
        ``config`` goes into ``config.json``, its tensors into ``operator.safetensors``, and
        ``forward(y)`` without an operator uses it from now on. Everything is checked (the
        operator is rebuilt from what will be written) before any file is touched; on a
        failure the previous directory and the model's config stay as they were.
        ``kwargs`` go to diffusers' ``ModelMixin.save_pretrained`` (``variant``,
        ``max_shard_size``, ...; ``safe_serialization`` defaults to ``True``).
        """
        directory = Path(save_directory)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"{directory}: a checkpoint is a directory, not a file")
        if kwargs.get("push_to_hub"):
            raise ValueError("IDM checkpoints are saved to local directories only")
        op_config, op_state, rebuilt = self._operator_to_store(operator)
        previous = self.config.operator
        self.register_to_config(operator=op_config)
        try:
            if is_main_process:  # other processes only take the stored operator
                with atomic_directory(directory, overwrite=True) as tmp:
                    _carry_over(directory, tmp)
                    super().save_pretrained(tmp, **{"safe_serialization": True, **kwargs})
                    if op_config is not None:
                        path = str(tmp / OPERATOR_WEIGHTS_NAME)
                        save_file(op_state or {}, path, metadata={"format": "pt"})
                    _usual_modes(tmp)
        except BaseException:
            self.register_to_config(operator=previous)
            raise
        if rebuilt is not None:
            self._set_operator_cache(rebuilt)
            self._operator_state = op_state
        logger.info("saved %s to %s", type(self).__name__, directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """Load a checkpoint directory written by :meth:`save_pretrained` (local only).

        ``kwargs`` go to diffusers' ``ModelMixin.from_pretrained``: ``torch_dtype`` (default
        float32, as diffusers), ``device_map``, ``low_cpu_mem_usage``, ``variant``,
        ``output_loading_info``, ... Unlike diffusers, the weights must match the config
        exactly (a missing, unexpected or resized tensor raises ``RuntimeError``): a model
        with silently re-initialised layers would still reconstruct, badly. The stored
        operator is rebuilt on first use. A directory of the pre-diffusers layout
        (``model.safetensors``) loads too (``torch_dtype`` only).
        """
        directory = Path(pretrained_model_name_or_path)
        if not (directory / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"{directory}: no {CONFIG_NAME} (IDM loads local save_pretrained directories)"
            )
        with_info = kwargs.pop("output_loading_info", False)
        if is_legacy_layout(directory):
            model, info = cls._from_legacy_layout(directory, **kwargs)
        else:
            kwargs.setdefault("local_files_only", True)
            try:
                model, info = super().from_pretrained(
                    str(directory), output_loading_info=True, **kwargs
                )
            except ValueError as err:  # diffusers' words for a tensor of another shape
                if "expected shape" not in str(err):
                    raise
                reason = str(err).split(". If you want")[0].replace("Cannot load  because ", "")
                raise RuntimeError(_MISMATCH.format(directory, f"size mismatch: {reason}")) from err
            _check_loading_info(directory, info)
        op_weights = directory / OPERATOR_WEIGHTS_NAME
        if model.config.operator is not None and op_weights.is_file():
            model._operator_state = load_file(str(op_weights))
        return (model, info) if with_info else model

    @classmethod
    def _from_legacy_layout(
        cls, directory: Path, torch_dtype: torch.dtype | None = None, **kwargs: Any
    ) -> tuple[nn.Module, dict[str, list]]:
        """A checkpoint of the pre-diffusers layout (``model.safetensors``), loaded strictly
        (``load_state_dict`` raises on missing, unexpected or resized tensors)."""
        if kwargs:
            raise TypeError(
                f"{directory}: pre-diffusers checkpoint layout loads with torch_dtype only, "
                f"not {sorted(kwargs)} (convert it: scripts/convert_checkpoints.py)"
            )
        model = cls.from_config(cls.load_config(directory))
        model.load_state_dict(load_file(str(directory / LEGACY_WEIGHTS_NAME)), strict=True)
        if torch_dtype is not None:
            model.to(torch_dtype)
        logger.debug(
            "%s: pre-diffusers checkpoint layout (scripts/convert_checkpoints.py)", directory
        )
        info = {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
        return model.eval(), info


#: The message of a checkpoint whose weights do not fit its config (``load_state_dict``'s
#: words, which :func:`idm_med.checkpoints.load_idm` recognises).
_MISMATCH = "the weights in {} do not match its config.json: {}"


def _check_loading_info(directory: Path, info: dict[str, list]) -> None:
    """Raise ``RuntimeError`` unless every tensor of the model was loaded from
    ``directory`` and every stored tensor was used."""
    problems = []
    for key, words in (
        ("missing_keys", "Missing key(s)"),
        ("unexpected_keys", "Unexpected key(s)"),
    ):
        if info.get(key):
            problems.append(f"{words} {sorted(info[key])[:5]}")
    if info.get("mismatched_keys"):
        problems.append(f"size mismatch for {[k[0] for k in info['mismatched_keys']][:5]}")
    if problems:
        raise RuntimeError(_MISMATCH.format(directory, "; ".join(problems)))


def convert_legacy_checkpoint(model_cls: type, directory: str | os.PathLike) -> bool:
    """Rewrite a pre-diffusers checkpoint directory in the diffusers layout, in place.

    The model is loaded in the dtype of its stored weights, saved with ``save_pretrained``
    (atomically; ``training.json``, ``model_card.json``, logs are kept; ``model.safetensors``
    goes) and read back; the new directory must hold bit-identical tensors (weights and
    operator), so the model's outputs are unchanged. Returns ``False`` (and touches
    nothing) when ``directory`` is not of the old layout.
    """
    directory = Path(directory)
    if not is_legacy_layout(directory):
        return False
    state = load_file(str(directory / LEGACY_WEIGHTS_NAME))
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    dtype = dtypes.pop() if len(dtypes) == 1 else None
    model = model_cls.from_pretrained(directory, torch_dtype=dtype)
    operator_state = dict(model._operator_state or {})
    model.save_pretrained(directory)
    loaded = model_cls.from_pretrained(directory, torch_dtype=dtype)
    _check_same_tensors(directory, state, loaded.state_dict())
    _check_same_tensors(directory, operator_state, dict(loaded._operator_state or {}))
    public = [{k: v for k, v in m.config.items() if not k.startswith("_")} for m in (model, loaded)]
    if public[0] != public[1]:
        raise RuntimeError(f"{directory}: converted config differs from the original")
    logger.info("%s: converted to the diffusers layout (%d tensors)", directory, len(state))
    return True


def _check_same_tensors(
    directory: Path, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]
) -> None:
    """Raise ``RuntimeError`` unless both dicts hold the same tensors, bit for bit."""
    same = before.keys() == after.keys() and all(
        before[k].dtype == after[k].dtype and torch.equal(before[k], after[k].cpu()) for k in before
    )
    if not same:
        raise RuntimeError(f"{directory}: converted checkpoint differs from the original")
