"""Grid search of a method's parameters on validation cases, and the record it leaves.

A *case* is ``(y, operator, reference)``; a *score* maps ``(reference, reconstruction)``
to a number to maximise (e.g. PSNR). The record of one search is a JSON-ready dict::

    {"grid": {...}, "fixed": {...}, "scores": [{"params": {...}, "score": s}, ...],
     "best": {...}, "best_score": s, "n_cases": n}

For a one-parameter grid (sorted values) the search stops once ``patience`` consecutive
values score below the best so far — the score of a regularisation weight is unimodal in
practice — and the record lists only the values it evaluated. Multi-parameter grids are
searched exhaustively.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..operators import Operator
from . import get, make_method

logger = logging.getLogger(__name__)
Case = tuple[torch.Tensor, Operator, Any]


def grid_points(grid: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in order."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def grid_search(
    method: str,
    cases: Sequence[Case],
    score: Callable[[Any, torch.Tensor], float],
    grid: dict[str, Sequence[Any]] | None = None,
    fixed: dict[str, Any] | None = None,
    patience: int = 2,
) -> dict[str, Any]:
    """Search ``method``'s grid (its registered one by default) on ``cases``; the mean
    score over cases decides. Returns the record described in the module docstring."""
    grid = dict(get(method).grid if grid is None else grid)
    fixed = dict(fixed or {})
    if not grid:
        raise ValueError(f"method {method!r} has nothing to tune")
    if not cases:
        raise ValueError("grid_search needs at least one validation case")
    scores: list[dict[str, Any]] = []
    best, best_score, declines = None, -np.inf, 0
    for params in grid_points(grid):
        run = make_method(method, **fixed, **params)
        value = float(np.mean([score(ref, run(y, op)) for y, op, ref in cases]))
        scores.append({"params": params, "score": value})
        logger.info("tune %s %s: %.3f", method, params, value)
        if value > best_score:
            best, best_score, declines = params, value, 0
        else:
            declines += 1
            if len(grid) == 1 and declines >= patience:
                break
    return {
        "grid": {k: list(v) for k, v in grid.items()},
        "fixed": fixed,
        "scores": scores,
        "best": best,
        "best_score": best_score,
        "n_cases": len(cases),
    }


def load_tuning(path: str | Path) -> dict[str, Any]:
    """The tuning record ``{suite: {setting: {method: record}}}`` (empty if absent)."""
    path = Path(path)
    if not path.is_file():
        return {}
    return json.loads(path.read_text()).get("suites", {})


def tuned_params(
    tuning: dict[str, Any], suite: str, setting: str, method: str
) -> dict[str, Any] | None:
    """The chosen parameters of ``method`` for ``suite`` / ``setting`` (``fixed`` ones
    included), or ``None`` when that search was never run."""
    record = tuning.get(suite, {}).get(setting, {}).get(method)
    if record is None:
        return None
    return {**record.get("fixed", {}), **record["best"]}
