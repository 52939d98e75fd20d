"""Write files and folders so that a failure never leaves a half-written output behind,
and never write over a user's input.

The one place in idm-med that writes atomically:

- :func:`atomic_path` — a temporary file beside the target, renamed onto it on success;
- :func:`atomic_directory` — the same for a whole folder (a DICOM series, a checkpoint);
- :func:`atomic_write_text` — a small text/JSON file;
- :func:`check_output` — refuse an output that is an input, holds an input, or exists
  (without ``overwrite``).

Folders these helpers create for an output are removed again when the write fails, so a
failure leaves the file system as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

PathLike = str | os.PathLike


class OutputExistsError(FileExistsError):
    """The output exists and ``overwrite`` was not given; the message names it."""


class OutputIsInputError(ValueError):
    """The output would replace (or be written inside) an input."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _parents(path: Path) -> Iterator[None]:
    """Create the missing parent folders of ``path``; remove them again on failure."""
    missing = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for folder in missing:  # innermost first; only folders that are still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    On any exception (Ctrl-C included) the temporary file and the folders created for it
    are removed and ``path`` is untouched.

    >>> with atomic_path("out.h5") as tmp:
    ...     write_something(tmp)
    """
    path = Path(path)
    with _parents(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            yield tmp_path
            # mkstemp creates the file private (0600); give it the usual umask-based mode.
            if tmp_path.is_file():
                tmp_path.chmod(0o666 & ~_umask())
            os.replace(tmp_path, path)
        finally:
            if tmp_path.exists():
                tmp_path.unlink()


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8). Returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _nonempty(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


@contextlib.contextmanager
def atomic_directory(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a new temporary folder beside ``path``; on success it becomes ``path``.

    An existing non-empty ``path`` is replaced only with ``overwrite=True`` (otherwise
    :class:`OutputExistsError` is raised before anything is written): the previous
    ``path`` is moved aside to ``.<name>.old``, the new one renamed in, then the old one
    removed, so at every instant either the old or the new complete folder exists (a crash
    in between leaves ``.<name>.old``, which :func:`recover_directory` puts back). On
    failure the temporary folder (and any parent created for it) is removed and ``path``
    is untouched.
    """
    path = Path(path)
    if _nonempty(path) and not overwrite:
        raise OutputExistsError(f"{path}: exists and is not empty (use --overwrite)")
    with _parents(path):
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private (0700)
        try:
            yield tmp
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            if path.exists():
                path.rename(old)
            tmp.rename(path)
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)


def recover_directory(path: PathLike) -> bool:
    """Put back a folder left as ``.<name>.old`` by an interrupted
    :func:`atomic_directory` (``path`` itself missing). Returns whether it did."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and old.is_dir():
        old.rename(path)
        return True
    return False


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output(output: PathLike, inputs: Iterable[PathLike], overwrite: bool = False) -> Path:
    """Refuse an output that would destroy data; return it resolved.

    Raises :class:`OutputIsInputError` when ``output`` (after resolving links and ``..``)
    is one of ``inputs``, lies inside an input folder (a DICOM series), or is a folder
    that holds an input (replacing it would delete the input), whatever ``overwrite`` says;
    and :class:`OutputExistsError` when ``output`` exists and ``overwrite`` is false.
    """
    out = Path(output).expanduser().resolve()
    for item in inputs:
        src = Path(item).expanduser().resolve()
        if out == src or (src.is_dir() and _inside(out, src)) or _inside(src, out):
            raise OutputIsInputError(
                f"{output}: would write over the input {item}; choose another --output"
            )
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{output}: already exists (use --overwrite to replace it)")
    return out
