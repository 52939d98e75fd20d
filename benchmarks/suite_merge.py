"""Adding methods to a suite's results without re-running the others: ``--merge``.

A full suite run re-measures every method; DDNM alone takes minutes per 256² image on a
CPU. ``python -m benchmarks SUITE --methods NEW --merge`` measures only ``NEW`` and merges
its rows into the existing ``<suite>.json`` (rows of the same setting and method are
replaced, the others kept with their own timings). The figures need every method's
reconstruction, so each run also keeps its panels in ``.<suite>_panels.npz`` next to the
results (not committed); a merge on another image size or test set is refused, and so is
one that changes a setting whose panels are missing (its figure could not be redrawn).
Adding whole new settings (``--settings NEW --merge``) needs no old panels: the figures
of the other settings are left as they are. The results keep the full-suite command,
which regenerates every row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from idm_med.datasets.atomic import atomic_path

#: Separates setting, panel label and source in the keys of the panels file.
_SEP = "\x1f"
#: The run options that must agree between the merged runs.
_SAME_CONFIG = ("size", "max_sources", "max_slices")

Panels = dict[str, dict[str, dict[str, np.ndarray]]]


def panels_path(out_dir: Path, suite_name: str) -> Path:
    return Path(out_dir) / f".{suite_name}_panels.npz"


def save_panels(path: Path, shown: Panels) -> None:
    """Write ``{setting: {label: {source: image}}}`` atomically."""
    arrays = {
        _SEP.join((setting, label, src)): np.asarray(image, dtype=np.float32)
        for setting, panels in shown.items()
        for label, per_source in panels.items()
        for src, image in per_source.items()
    }
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def load_panels(path: Path) -> Panels:
    shown: Panels = {}
    with np.load(path) as stored:
        for key in stored.files:
            setting, label, src = key.split(_SEP)
            shown.setdefault(setting, {}).setdefault(label, {})[src] = stored[key]
    return shown


def load_previous(out_dir: Path, suite_name: str) -> tuple[dict[str, Any], Panels]:
    """The existing payload and panels (``{}`` when the panels file is missing) of a
    suite; ``FileNotFoundError`` when there are no results to merge into."""
    results = Path(out_dir) / f"{suite_name}.json"
    if not results.is_file():
        raise FileNotFoundError(
            f"--merge: no {results} (run the full suite once: python -m benchmarks {suite_name})"
        )
    panels = panels_path(out_dir, suite_name)
    return json.loads(results.read_text()), load_panels(panels) if panels.is_file() else {}


def merge(
    old: dict[str, Any], old_shown: Panels, new: dict[str, Any], methods: tuple[str, ...]
) -> dict[str, Any]:
    """``new``'s rows and panels merged into ``old``'s; rows ordered by setting, then by
    the suite's ``methods`` order. Raises ``ValueError`` for runs on other images."""
    for key in _SAME_CONFIG:
        if old["config"].get(key) != new["config"].get(key):
            raise ValueError(
                f"--merge: the results were measured with {key}={old['config'].get(key)}, "
                f"this run uses {new['config'].get(key)}"
            )
    if old["test_data"] != new["test_data"]:
        raise ValueError(f"--merge: other test images ({old['test_data']} vs {new['test_data']})")
    replaced = {(r["setting"], r["method"]) for r in new["rows"]}
    # A redrawn figure needs the old panels of the rows this run keeps (none when it
    # measures every method of the setting again).
    kept = {r["setting"] for r in old["rows"] if (r["setting"], r["method"]) not in replaced}
    for setting in new["_shown"]:
        if setting in kept and setting not in old_shown:
            raise ValueError(
                f"--merge: no panels of {setting!r} to redraw its figure (they are kept in "
                f"the panels file of a full run: python -m benchmarks {old['suite']})"
            )
    rows = [r for r in old["rows"] if (r["setting"], r["method"]) not in replaced] + new["rows"]
    settings = list(dict.fromkeys(r["setting"] for r in old["rows"] + new["rows"]))
    order = {m: i for i, m in enumerate(methods)}
    rows.sort(key=lambda r: (settings.index(r["setting"]), order.get(r["method"], len(order))))
    pool = {setting: dict(panels) for setting, panels in old_shown.items()}
    for setting, panels in new["_shown"].items():
        pool.setdefault(setting, {}).update(panels)
    # Figure panels: the reference, then the methods in table order; settings without
    # panels (old ones whose panels file is gone) keep the figure they have.
    shown = {
        setting: {
            label: pool[setting][label]
            for label in ["reference"] + [r["label"] for r in rows if r["setting"] == setting]
            if label in pool[setting]
        }
        for setting in settings
        if setting in pool
    }
    merged_runs = [
        *old.get("merged_runs", []),
        {
            "methods": sorted({r["method"] for r in new["rows"]}),
            "wall_seconds": new["wall_seconds"],
            "machine": new["machine"],
        },
    ]
    return {**old, "rows": rows, "_shown": shown, "merged_runs": merged_runs}
