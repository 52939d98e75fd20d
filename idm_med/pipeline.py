"""The reconstruction pipeline: read → measure → method → write, for every input format.

:func:`reconstruct` is the whole path for one input:

1. the reader (:func:`idm_med.datasets.readers.select_reader`: suffix or content decides)
   reads the file;
2. the acquisition layer (:data:`idm_med.acquisition.MEASUREMENTS`) turns it into
   ``(operator, y)`` per slice;
3. the *method* — any callable ``method(y, operator) -> x`` — runs on batches of slices
   that share an operator, with ``A†y`` computed once per slice and reused by the method
   (:func:`solve`);
4. the output code (:data:`idm_med.outputs.OUTPUTS`) writes the result in the input's
   format, atomically, and metrics are computed when a reference exists.

Outputs never replace an input and never replace an existing output unless
``overwrite=True`` (:func:`idm_med.datasets.atomic.check_output`); a failure at any point
leaves nothing behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import metrics
from .acquisition import MEASUREMENTS, MeasuredSlice, MeasurementSettings, count_slices
from .datasets.atomic import check_output
from .datasets.readers import ImageReader, select_reader
from .methods import Method
from .operators import Operator
from .outputs import OUTPUTS


@dataclass
class ReconstructionResult:
    """What a pipeline produced: the output path, the reconstruction (as written, before
    format-specific encoding) ``(S, H, W)``, the baseline ``A†y`` and the reference when
    there is one, and the metrics of both against the reference."""

    output: Path
    reconstruction: np.ndarray
    pinv: np.ndarray
    reference: np.ndarray | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    pinv_metrics: dict[str, float] = field(default_factory=dict)
    mask: np.ndarray | None = None


@contextlib.contextmanager
def _pinv_once(op: Operator, y: torch.Tensor, pinv: torch.Tensor) -> Iterator[None]:
    """While active, ``op.A_pinv(y)`` for this very ``y`` returns ``pinv`` (no second CG
    solve inside the method); other arguments are solved as usual."""
    solve = op.A_pinv

    def cached(arg: torch.Tensor) -> torch.Tensor:
        return pinv if arg is y else solve(arg)

    op.A_pinv = cached  # instance attribute shadows the method
    try:
        yield
    finally:
        del op.A_pinv


def solve(method: Method, op: Operator, y: torch.Tensor, device: str = "cpu"):
    """``(method(y, op), A†y)`` for a batch ``y`` ``(B, *op.measurement_shape)``, on
    ``device``, returned on the CPU; ``A†y`` is computed once and reused by the method."""
    op = op.to(device)
    y = y.to(device)
    with torch.no_grad():
        pinv = op.A_pinv(y)
    with _pinv_once(op, y, pinv):
        x = method(y, op)
    return x.detach().cpu(), pinv.detach().cpu()


def run_slices(
    items: Iterable[tuple[Operator, torch.Tensor]],
    method: Method,
    batch_size: int = 1,
    device: str = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Run ``method`` over ``(operator, y (1, ...))`` pairs, batching up to ``batch_size``
    consecutive slices that share one operator object; yields per-slice
    ``(x (1, ...), A†y (1, ...))`` in order."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    pending: list[torch.Tensor] = []
    current: Operator | None = None

    def flush() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, pinv = solve(method, current, torch.cat(pending), device)
        yield from zip(x.split(1), pinv.split(1), strict=True)

    for op, y in items:
        if pending and (op is not current or len(pending) == batch_size):
            yield from flush()
            pending = []
        current = op
        pending.append(y)
    if pending:
        yield from flush()


def _evaluate(result: ReconstructionResult) -> ReconstructionResult:
    if result.reference is not None:
        result.metrics = metrics.evaluate(result.reference, result.reconstruction)
        result.pinv_metrics = metrics.evaluate(result.reference, result.pinv)
    return result


def _run(
    measured: Iterable[MeasuredSlice], method: Method, batch_size: int, device: str
) -> Iterator[tuple[MeasuredSlice, torch.Tensor, torch.Tensor]]:
    """:func:`run_slices` that keeps each slice's :class:`MeasuredSlice` with its result."""
    seen: list[MeasuredSlice] = []

    def pairs() -> Iterator[tuple[Operator, torch.Tensor]]:
        for sl in measured:
            seen.append(sl)
            yield sl.operator, sl.y

    for k, (x, p) in enumerate(run_slices(pairs(), method, batch_size, device)):
        yield seen[k], x, p


def reconstruct(
    path: str | Path,
    out: str | Path,
    method: Method,
    settings: MeasurementSettings | None = None,
    *,
    reader: ImageReader | None = None,
    batch_size: int = 1,
    device: str = "cpu",
    overwrite: bool = False,
) -> ReconstructionResult:
    """Reconstruct one input (any format a reader verifies) and write it in its format.

    Args:
        path: the input file or DICOM folder.
        out: an output file of the input's format, or a folder (``out/<input name>``;
            a DICOM series is written into the folder ``out`` itself).
        method: ``method(y, op) -> x`` (see :func:`idm_med.methods.make_method`).
        settings: how the data are measured (default :class:`MeasurementSettings()`).
        reader: force a reader instead of choosing one by suffix or content.
        batch_size: slices that share an operator reconstructed at once.
        device: where the method runs.
        overwrite: replace an existing output (never an input).

    Returns:
        The written path, the reconstruction and ``A†y`` ``(S, H', W')`` in output units
        (one image: ``(H', W')``), the reference and both sets of metrics when known.
    """
    s = settings or MeasurementSettings()
    reader = reader or select_reader(path)
    output = OUTPUTS[reader.name]
    target = check_output(output.target(out, path), [path], overwrite)
    data = reader.read(Path(path))
    recon, pinv, refs, mask = [], [], [], None
    measured = MEASUREMENTS[reader.name](data, s)
    runs = _run(measured, method, batch_size, device)
    total = count_slices(data, s)
    for sl, x, p in tqdm(runs, total=total, desc=Path(path).name, unit="slice"):
        recon.append(output.image(x, sl, data))
        pinv.append(output.image(p, sl, data))
        refs.append(sl.reference)
        mask = sl.mask if mask is None else mask
    if not recon:
        raise ValueError(f"{path}: no slice selected")
    written = Path(output.write(target, np.stack(recon), data, s, overwrite))
    pick = (lambda a: a[0]) if output.squeeze else (lambda a: a)
    reference = None
    if all(r is not None for r in refs):
        reference = pick(np.stack(refs))
    result = ReconstructionResult(written, pick(np.stack(recon)), pick(np.stack(pinv)), reference)
    result.mask = None if mask is None else mask.numpy()
    return _evaluate(result)
