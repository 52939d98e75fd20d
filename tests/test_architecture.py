"""The import rule of the README's Architecture section, read from the source (ast):
operators import nothing of the project; datasets (readers/writers) import no operator;
the acquisition layer is what joins them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("idm_med", "operators", "datasets", "benchmarks")


def _imports(path: Path, package: str) -> list[tuple[str, int]]:
    """Absolute names of every module ``path`` imports (module level or inside functions),
    relative imports resolved against ``package`` (its dotted name once installed)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = package.split(".")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            found.append((module, node.lineno))
            # ``from . import x`` may import submodule x
            found += [(f"{module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _package_files(folder: str, installed_as: str) -> list[tuple[Path, str]]:
    files = sorted((ROOT / folder).glob("*.py"))
    assert files, f"no modules in {folder}/"
    return [(f, installed_as) for f in files]


def _violations(folder: str, installed_as: str, forbidden) -> list[str]:
    bad = []
    for path, package in _package_files(folder, installed_as):
        for module, line in _imports(path, package):
            if forbidden(module):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


def _is_project(module: str) -> bool:
    return module.split(".")[0] in PROJECT


def test_operators_import_nothing_of_the_project() -> None:
    own = "idm_med.operators"
    bad = _violations(
        "operators", own, lambda m: _is_project(m) and not (m == own or m.startswith(own + "."))
    )
    assert not bad, "\n".join(bad)


def test_datasets_import_no_operator() -> None:
    def operator(module: str) -> bool:
        return module.startswith(("idm_med.operators", "operators"))

    bad = _violations("datasets", "idm_med.datasets", operator)
    assert not bad, "\n".join(bad)


def test_readers_import_nothing_above_datasets() -> None:
    """Readers and writers use only datasets/ itself; the one module that reaches up is the
    training corpus (:mod:`idm_med.datasets.corpus`), which gives CT images in the
    acquisition layer's attenuation units."""
    own = "idm_med.datasets"
    allowed = {"corpus.py": "idm_med.acquisition.ct"}
    bad = []
    for path, package in _package_files("datasets", own):
        for module, line in _imports(path, package):
            upward = _is_project(module) and not module.startswith(own)
            if upward and not module.startswith(allowed.get(path.name, "\0")):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "source,expected",
    [
        ("from ..operators.mri import fft2c", "idm_med.operators.mri"),
        ("from idm_med.operators import make_operator", "idm_med.operators"),
        ("import operators.mri", "operators.mri"),
        ("def f():\n    from ..operators import x", "idm_med.operators"),
    ],
)
def test_the_scan_sees_every_import_form(tmp_path: Path, source: str, expected: str) -> None:
    path = tmp_path / "m.py"
    path.write_text(source)
    assert expected in [m for m, _ in _imports(path, "idm_med.datasets")]
