"""The benchmark-suite framework: settings × methods on held-out images → tables, JSON, figures.

A :class:`Suite` names its settings (one operator each), the registered methods it
compares (:mod:`idm_med.baselines`), how an image becomes the operator's input and how a
reconstruction is displayed and scored. :func:`run_suite` measures every applicable
method on every test image of every setting — with the parameters chosen for that
setting by ``python -m benchmarks tune`` on validation images (``results/tuning.json``) —
and :func:`write_results` writes ``<suite>.md``, ``<suite>.json`` and the figures.
Measurements are noiseless unless a setting adds noise (:attr:`Setting.noise`).
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import data, figures
from benchmarks.machine import describe_machine, report_header
from benchmarks.measure import timed
from benchmarks.suite_merge import panels_path, save_panels
from idm_med import baselines
from idm_med.baselines.tuning import load_tuning, tuned_params
from idm_med.datasets.atomic import atomic_path
from idm_med.operators import Operator

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
TUNING = RESULTS / "tuning.json"


@dataclass(frozen=True)
class Setting:
    """One measurement setting: ``make_operator(size)`` builds its operator for
    ``size × size`` images; ``ratio`` (measurements per unknown) and ``group`` place it
    in the PSNR-vs-ratio figure."""

    name: str
    #: ``make_operator(size)``; a setting may take operator overrides by keyword too
    #: (the MRI settings: ``pinv_rtol``, scanned by ``benchmarks.sense_cutoff``)
    make_operator: Callable[..., Operator]
    ratio: float
    group: str = ""
    #: ``noise(y, seed) -> noisy y``; ``None``: noiseless measurements
    noise: Callable[[torch.Tensor, int], torch.Tensor] | None = None
    #: the noise level per real measurement component that methods taking a
    #: ``noise_sigma`` parameter (IDM) are told, as a scanner's noise pre-scan would
    noise_sigma: float = 0.0

    def known_noise(self, method: str) -> dict[str, float]:
        """``{"noise_sigma": σ}`` for a noisy setting and a method whose function takes
        ``noise_sigma``; ``{}`` otherwise."""
        fn = baselines.get(method).fn
        if self.noise_sigma > 0 and "noise_sigma" in inspect.signature(fn).parameters:
            return {"noise_sigma": self.noise_sigma}
        return {}

    def measure(self, op: Operator, x: torch.Tensor, seed: int) -> torch.Tensor:
        """The measurement ``y = A x`` of one image, plus the setting's noise drawn with
        ``seed`` (:func:`measure_test_images` and :func:`benchmarks.tune.validation_cases` give
        every image its own)."""
        y = op.A(x)
        return y if self.noise is None else self.noise(y, seed)


@dataclass(frozen=True)
class Suite:
    """A benchmark suite (see the module docstring).

    ``encode(image, index)`` turns a ``(H, W)`` array into the operator's ``(1, C, H, W)``
    input; ``decode`` maps a reconstruction back to a ``(H, W)`` array; ``score(gt, pred)``
    scores ``(slices, H, W)`` volumes of one source; ``columns`` are the table's metric
    columns ``(key, header, format)``; ``fixed`` holds per-method parameters that are not
    tuned (e.g. a positivity constraint); ``grids`` replaces a method's registered tuning
    grid for this suite.
    """

    name: str
    title: str
    modality: str
    settings: tuple[Setting, ...]
    methods: tuple[str, ...]
    encode: Callable[[np.ndarray, int], torch.Tensor]
    decode: Callable[[torch.Tensor], np.ndarray]
    score: Callable[[np.ndarray, np.ndarray], dict[str, float]]
    columns: tuple[tuple[str, str, str], ...]
    notes: str = ""
    fixed: dict[str, dict[str, Any]] = field(default_factory=dict)
    grids: dict[str, dict[str, list[Any]]] = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    """How much of a suite to run: image size, sources and slices per source, settings
    (``None``: all) and extra parameters forced on every method (tests shorten solvers)."""

    size: int = 256
    max_sources: int | None = None
    max_slices: int | None = None
    settings: tuple[str, ...] | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def quick(cls) -> RunConfig:
        return cls(size=128, max_sources=2, max_slices=1)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def method_params(suite: Suite, setting: str, method: str, tuning: dict) -> tuple[dict, bool]:
    """``(parameters, tuned?)``: the tuned choice, else the registered defaults."""
    chosen = tuned_params(tuning, suite.name, setting, method)
    spec = baselines.get(method)
    params = {**spec.params, **suite.fixed.get(method, {}), **(chosen or {})}
    if chosen is None and baselines.get(method).grid:
        logger.warning("%s / %s / %s: not tuned, using defaults", suite.name, setting, method)
    return params, chosen is not None or not baselines.get(method).grid


def _measure(suite, setting, op, method, params, sources) -> tuple[dict, dict]:
    run = baselines.make_method(method, **params)
    per_source, seconds, peaks, shown = {}, [], [], {}
    for src, cases in sources.items():
        preds = []
        for _x, y in cases:
            rec, sec, peak = timed(run, y, op)
            preds.append(suite.decode(rec))
            seconds.append(sec)
            peaks.append(peak)
        gt = np.stack([suite.decode(x) for x, _ in cases])
        per_source[src] = suite.score(gt, np.stack(preds))
        shown[src] = preds[0]
    keys = list(next(iter(per_source.values())))
    row = {
        "setting": setting.name,
        "method": method,
        "label": baselines.get(method).label or method,
        "params": params,
        **{k: float(np.mean([m[k] for m in per_source.values()])) for k in keys},
        "seconds": float(np.mean(seconds)),
        "peak_mib": float(max(peaks)) / 2**20,
        "per_source": per_source,
    }
    return row, shown


def measure_test_images(
    suite: Suite, setting: Setting, op: Operator, test: dict[str, list[np.ndarray]]
) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """``{source: [(x, y)]}``: the test images ``test`` encoded and measured in
    ``setting``. The MRI phase and the noise are seeded by a running index over all test
    images, so no two of them share a phase field or a noise draw (the validation draws,
    :func:`benchmarks.tune.validation_cases`, start at 1000)."""
    cases, index = {}, 0
    for src, imgs in test.items():
        cases[src] = []
        for im in imgs:
            x = suite.encode(im, index)
            cases[src].append((x, setting.measure(op, x, index)))
            index += 1
    return cases


def run_suite(suite: Suite, config: RunConfig, tuning: dict | None = None) -> dict[str, Any]:
    """Measure the suite; returns the JSON payload (rows, data, machine, timings)."""
    tuning = load_tuning(TUNING) if tuning is None else tuning
    test = data.images(suite.modality, "test", config.size, config.max_sources, config.max_slices)
    rows, shown_all, t0 = [], {}, time.perf_counter()
    for setting in suite.settings:
        if config.settings is not None and setting.name not in config.settings:
            continue
        op = setting.make_operator(config.size)
        sources = measure_test_images(suite, setting, op, test)
        gts = {src: suite.decode(cases[0][0]) for src, cases in sources.items()}
        shown = {"reference": gts}
        for method in baselines.applicable(op, list(suite.methods)):
            params, tuned = method_params(suite, setting.name, method, tuning)
            params = {**params, **setting.known_noise(method), **config.overrides.get(method, {})}
            row, recs = _measure(suite, setting, op, method, params, sources)
            row["tuned"] = tuned
            rows.append(row)
            shown[row["label"]] = recs
            logger.info("%s | %s | %s", setting.name, row["label"], _fmt(row, suite.columns))
        shown_all[setting.name] = shown
    return {
        "suite": suite.name,
        "machine": describe_machine(),
        "config": {k: v for k, v in vars(config).items() if k != "overrides"},
        "test_data": {src: len(imgs) for src, imgs in test.items()},
        "wall_seconds": time.perf_counter() - t0,
        "rows": rows,
        "_shown": shown_all,
    }


def _fmt(row: dict, columns) -> str:
    return "  ".join(f"{h} {row[k]:{f}}" for k, h, f in columns)


def summary(suite: Suite, rows: list[dict]) -> list[str]:
    """Markdown lines: per setting, the best method by the first two metric columns and
    its margin over A†y and over the runner-up."""
    (k1, h1, f1), (k2, h2, f2) = suite.columns[:2]
    out = [
        "## Summary",
        "",
        f"| setting | best by {h1} | margin over A†y / runner-up | best by {h2} |",
        "|---|---|---|---|",
    ]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        sel = sorted((r for r in rows if r["setting"] == setting), key=lambda r: -r[k1])
        base = next((r for r in sel if r["method"] == "pinv"), sel[-1])
        runner = sel[1] if len(sel) > 1 else sel[0]
        best2 = max(sel, key=lambda r: r[k2])
        out.append(
            f"| {setting} | {sel[0]['label']} ({sel[0][k1]:{f1}}) | "
            f"+{sel[0][k1] - base[k1]:.2f} / +{sel[0][k1] - runner[k1]:.2f} | "
            f"{best2['label']} ({best2[k2]:{f2}}) |"
        )
    return [*out, ""]


def _noise_note(suite: Suite) -> str:
    noisy = [s.name for s in suite.settings if s.noise is not None]
    if not noisy:
        return "Noiseless measurements. "
    return f"Noiseless measurements except in {', '.join(noisy)} (noise as below). "


def to_markdown(suite: Suite, payload: dict, command: str) -> str:
    """The results table, one section per setting, best value per column in bold."""
    from idm_med.datasets import corpus

    val = ", ".join(corpus.names(suite.modality, "val"))
    test = ", ".join(f"{k} ({n})" for k, n in payload["test_data"].items())
    size = payload["config"]["size"]
    lines = [
        *report_header(
            suite.title,
            command,
            payload["machine"],
            command_note=" (parameters from `benchmarks/results/tuning.json`, "
            "regenerated by `python -m benchmarks tune`)",
        ),
        "",
        f"Test images ({size}², slices per source): {test}. Tuning (validation) images: {val}.",
        _noise_note(suite) + suite.notes,
        "",
    ]
    lines += summary(suite, payload["rows"])
    header = [h for _, h, _ in suite.columns] + ["s / slice", "peak MiB", "parameters"]
    for setting in dict.fromkeys(r["setting"] for r in payload["rows"]):
        rows = [r for r in payload["rows"] if r["setting"] == setting]
        best = {k: max(r[k] for r in rows) for k, _, _ in suite.columns if k != "nmse"}
        lines += [f"## {setting}", "", "| method | " + " | ".join(header) + " |"]
        lines.append("|---" * (len(header) + 1) + "|")
        for r in rows:
            cells = []
            for k, _, f in suite.columns:
                text = f"{r[k]:{f}}"
                cells.append(f"**{text}**" if k in best and r[k] == best[k] else text)
            params = (
                ", ".join(
                    f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in r["params"].items()
                )
                or "–"
            )
            params += "" if r["tuned"] else " (untuned)"
            cells += [f"{r['seconds']:.2f}", f"{r['peak_mib']:.0f}", params]
            lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
        lines += ["", f"![{setting}]({suite.name}_{slug(setting)}.png)", ""]
    lines += [f"![PSNR vs sampling ratio]({suite.name}_psnr.png)", ""]
    return "\n".join(lines)


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_results(suite: Suite, payload: dict, out_dir: Path, command: str) -> Path:
    """Write ``<suite>.md``, ``<suite>.json`` and the figures into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = payload.pop("_shown")
    save_panels(panels_path(out_dir, suite.name), shown)  # for a later --merge
    payload["command"] = command
    for setting, panels in shown.items():
        figures.reconstruction_grid(
            panels, f"{suite.title}: {setting}", out_dir / f"{suite.name}_{slug(setting)}.png"
        )
    ratios = {s.name: (s.ratio, s.group) for s in suite.settings}
    figures.psnr_vs_ratio(payload["rows"], ratios, out_dir / f"{suite.name}_psnr.png", suite.title)
    _write_text(out_dir / f"{suite.name}.json", json.dumps(payload, indent=1))
    md = out_dir / f"{suite.name}.md"
    _write_text(md, to_markdown(suite, payload, command))
    logger.info("wrote %s", md)
    return md
