"""Reconstruction methods: any callable ``method(y, operator) -> x`` on a batch ``y``
``(B, *operator.measurement_shape)`` returning ``(B, *operator.image_shape)``.

:func:`make_method` builds them by name: ``"pinv"`` (``A†y``: zero-filled MRI,
least-squares CT), ``"tv"`` (TV + range–null-space baseline, training free), ``"idm"`` (an
IDM checkpoint directory or model name), ``"ddnm"`` and ``"sr3"``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from .classical import tv_rnd_reconstruct
from .operators import Operator

Method = Callable[[torch.Tensor, Operator], torch.Tensor]
METHODS = ("pinv", "tv", "idm", "ddnm", "sr3")


#: CG iterations of the solves inside IDM's unrolled steps on operators whose ``A_pinv``
#: is CG (sparse-view CT at clinical sizes); the final range–null-space step keeps the
#: operator's own setting. On the CT validation section (256², shipped ``idm_ct``) a cap
#: of 10 costs 0.01 / 0.21 / 0.17 dB (HU window) at 30 / 60 / 90 views against the
#: operator's 200 iterations and makes the reconstruction 9-10x faster; caps of 20 and 30
#: measured no better (``python -m benchmarks ct_inner_cg``, results/ct_inner_cg.md).
INNER_CG_MAX_ITER = 10


class IDMMethod:
    """An IDM checkpoint as a method; checks on first use per operator that the model
    fits the data (:func:`idm_med.checkpoints.check_fit`).

    ``inner_cg_max_iter``: on CG-solved operators, the cap of the CG iterations in the
    unrolled steps and the injectors (``None``: the operator's own, exact-as-it-gets
    setting); see :data:`INNER_CG_MAX_ITER`.

    ``precision`` (``"fp32"`` / ``"bf16"``) and ``attention_window`` (pixels, ``None``:
    global; ``"training"``: the checkpoint's training patch size) make inference faster:
    :meth:`idm_med.model.IDM.set_backbone_precision`, :meth:`~idm_med.model.IDM.
    set_attention_window` (the speed suite, results/speed.md, measures both).

    ``noise_sigma``: the measurement noise per real component (``σ/√2`` for complex
    k-space noise of ``E|n|² = σ²``); a noise-aware model (trained with
    ``--measurement-noise``) then softens its data-consistency steps, other models warn
    and ignore it.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        device: str = "cpu",
        allow_mismatch=False,
        inner_cg_max_iter: int | None = INNER_CG_MAX_ITER,
        precision: str = "fp32",
        attention_window: int | str | None = None,
        noise_sigma: float = 0.0,
    ):
        from .checkpoints import ModelInfo, load_idm, resolve_checkpoint

        path = resolve_checkpoint(checkpoint)
        self.info = ModelInfo.read(path, "path")
        self.model = load_idm(path).to(device).set_backbone_precision(precision)
        if attention_window == "training":
            attention_window = self.info.training.get("image_size")
            if attention_window is None:
                raise ValueError(
                    f"{path}: training.json states no image_size for attention_window='training'"
                )
        self.model.set_attention_window(attention_window)
        self.allow_mismatch = allow_mismatch
        self.inner_cg_max_iter = inner_cg_max_iter
        if not noise_sigma >= 0:
            raise ValueError(f"noise_sigma must be >= 0, got {noise_sigma}")
        self.noise_sigma = float(noise_sigma)
        self._checked: set[int] = set()

    def inner_operator(self, op: Operator) -> Operator | None:
        """The cheaper view of ``op`` for the unrolled steps, or ``None`` (use ``op``)."""
        cap = self.inner_cg_max_iter
        if cap is None or getattr(op, "solver", None) != "cg" or op.cg_max_iter <= cap:
            return None
        return op.with_cg_max_iter(cap)

    def __call__(self, y: torch.Tensor, op: Operator) -> torch.Tensor:
        from .checkpoints import check_fit

        if id(op) not in self._checked:
            check_fit(self.info, dict(op.config), op.image_shape[0], self.allow_mismatch)
            self._checked.add(id(op))
        with torch.no_grad():
            sigma = self.noise_sigma or None
            return self.model(y, op, self.inner_operator(op), sigma)


def make_method(
    name: str,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    allow_mismatch: bool = False,
    **kwargs,
) -> Method:
    """Build a reconstruction method by name.

    Args:
        name: ``"pinv"``, ``"tv"``, ``"idm"``, ``"ddnm"`` (training-free, on a diffusion
            prior) or ``"sr3"`` (a trained SR3 model).
        checkpoint: IDM checkpoint directory or model name (``idm-med models``), required
            for ``"idm"``; the prior directory for ``"ddnm"`` (default: the shipped prior);
            the SR3 directory for ``"sr3"``.
        device: where the IDM model runs.
        allow_mismatch: run an IDM model on data it was not trained for (with a warning).
        kwargs: :class:`IDMMethod`'s ``precision`` / ``attention_window`` /
            ``noise_sigma`` for ``"idm"``;
            passed to :func:`~idm_med.classical.tv_rnd_reconstruct` for ``"tv"`` and to
            :func:`~idm_med.diffusion_methods.ddnm_method` / ``sr3_method`` otherwise
            (``progress=True`` shows the iterations inside each slice).
    """
    if name == "pinv":
        return lambda y, op: op.A_pinv(y)
    if name == "tv":
        kwargs.setdefault("progress", False)
        return lambda y, op: tv_rnd_reconstruct(
            y, op, complex_channels=op.image_shape[0] == 2, **kwargs
        )
    if name == "idm":
        if checkpoint is None:
            raise ValueError("method 'idm' needs checkpoint=<directory of a trained IDM model>")
        return IDMMethod(checkpoint, device=device, allow_mismatch=allow_mismatch, **kwargs)
    if name == "ddnm":
        from .diffusion_methods import ddnm_method

        return ddnm_method(checkpoint, **kwargs)
    if name == "sr3":
        from .diffusion_methods import sr3_method

        if checkpoint is None:
            raise ValueError("method 'sr3' needs checkpoint=<directory of a trained SR3 model>")
        return sr3_method(checkpoint, **kwargs)
    raise ValueError(f"unknown method {name!r}; expected one of {METHODS}")


# -- the shared slice loop ---------------------------------------------------------------
