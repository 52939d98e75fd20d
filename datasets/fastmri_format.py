"""The fastMRI ``.h5`` file format: dataset names, the file error, the ISMRMRD header.

What a fastMRI file holds (one volume):

==========================  ==============================================================
``kspace``                  complex64, ``(slices, H, W)`` single-coil or
                            ``(slices, coils, H, W)`` multi-coil; centred k-space, columns
                            ``W`` are the phase-encode lines that masks select
``reconstruction_esc``      float32 ``(slices, h, w)``, single-coil target (optional)
``reconstruction_rss``      float32 ``(slices, h, w)``, multi-coil RSS target (optional)
``mask``                    ``(W,)`` sampled columns of prospectively undersampled files
``ismrmrd_header``          ISMRMRD XML; ``encoding/encodedSpace/matrixSize`` ``(x, y, z)``
                            is the k-space grid and ``encoding/reconSpace/matrixSize`` the
                            size ``(h, w) = (x, y)`` targets and submissions are cropped to
attrs                       ``max``, ``norm`` (of the target volume), ``acquisition``,
                            ``patient_id``, ...
==========================  ==============================================================

As in fastMRI, the header's ``x`` is the row (readout, ``H``) axis and ``y`` the column
(phase-encode, ``W``) axis. The reader is :mod:`idm_med.datasets.fastmri`, the writers
:mod:`idm_med.datasets.fastmri_write`.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.utils import FastMRIKeys

ISMRMRD_NAMESPACE = "http://www.ismrm.org/ISMRMRD"
KSPACE_KEY = str(FastMRIKeys.KSPACE)
MASK_KEY = str(FastMRIKeys.MASK)
HEADER_KEY = "ismrmrd_header"
ESC_KEY = "reconstruction_esc"
RSS_KEY = str(FastMRIKeys.RECON)
TARGET_KEYS = (ESC_KEY, RSS_KEY)
RECONSTRUCTION_KEY = "reconstruction"

PathLike = str | os.PathLike


class FastMRIFileError(ValueError):
    """A fastMRI file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: PathLike, problem: str) -> None:
        super().__init__(f"{os.fspath(path)}: {problem}")
        self.path = Path(path)
        self.problem = problem


# -- ISMRMRD header -------------------------------------------------------------------
def make_ismrmrd_header(
    encoding_size: Sequence[int],
    recon_size: Sequence[int],
    fov_mm: Sequence[float] | None = None,
) -> bytes:
    """A minimal valid ISMRMRD header (XML bytes) with the encoding and recon matrices.

    Args:
        encoding_size: ``(x, y)`` or ``(x, y, z)`` of the k-space grid (``x = H``, ``y = W``).
        recon_size: ``(x, y)`` or ``(x, y, z)`` of the target / submission crop.
        fov_mm: field of view ``(x, y, z)`` in mm of the encoded space; 1 mm pixels if
            omitted. The recon FOV scales with the matrix so the pixel size is shared.
    """
    enc = _size3(encoding_size, "encoding_size")
    rec = _size3(recon_size, "recon_size")
    fov = tuple(float(v) for v in (fov_mm if fov_mm is not None else enc))
    if len(fov) != 3:
        raise ValueError(f"fov_mm must be (x, y, z), got {fov_mm!r}")
    rec_fov = (fov[0] * rec[0] / enc[0], fov[1] * rec[1] / enc[1], fov[2])

    ET.register_namespace("", ISMRMRD_NAMESPACE)

    def sub(parent: ET.Element, tag: str, text: Any = None) -> ET.Element:
        el = ET.SubElement(parent, f"{{{ISMRMRD_NAMESPACE}}}{tag}")
        if text is not None:
            el.text = str(text)
        return el

    def xyz(parent: ET.Element, tag: str, values: Sequence[Any]) -> None:
        el = sub(parent, tag)
        for axis, value in zip("xyz", values, strict=True):
            sub(el, axis, value)

    root = ET.Element(f"{{{ISMRMRD_NAMESPACE}}}ismrmrdHeader")
    encoding = sub(root, "encoding")
    for space, matrix, fov_values in (("encodedSpace", enc, fov), ("reconSpace", rec, rec_fov)):
        el = sub(encoding, space)
        xyz(el, "matrixSize", matrix)
        xyz(el, "fieldOfView_mm", fov_values)
    limits = sub(encoding, "encodingLimits")
    step1 = sub(limits, "kspace_encoding_step_1")
    sub(step1, "minimum", 0)
    sub(step1, "maximum", enc[1] - 1)
    sub(step1, "center", enc[1] // 2)
    sub(encoding, "trajectory", "cartesian")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def parse_ismrmrd_header(xml: bytes | str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(encoding_size, recon_size)``, each ``(x, y, z)``, from an ISMRMRD header.

    Raises ``ValueError`` if the XML is malformed or lacks the matrix sizes. The
    namespace is matched with a wildcard, so headers with or without it parse alike.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ValueError(f"ismrmrd_header is not valid XML ({exc})") from exc

    def matrix(space: str) -> tuple[int, int, int]:
        path = f"{{*}}encoding/{{*}}{space}/{{*}}matrixSize"
        el = root.find(path)
        if el is None:
            raise ValueError(f"ismrmrd_header has no encoding/{space}/matrixSize")
        try:
            return tuple(int(el.find(f"{{*}}{axis}").text) for axis in "xyz")  # type: ignore[union-attr,arg-type,return-value]
        except (AttributeError, TypeError, ValueError) as exc:
            raise ValueError(f"ismrmrd_header {space}/matrixSize needs integer x, y, z") from exc

    return matrix("encodedSpace"), matrix("reconSpace")


def _size3(size: Sequence[int], argument: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in size)
    if len(values) == 2:
        values = (*values, 1)
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"{argument} must be 2 or 3 positive ints, got {size!r}")
    return values  # type: ignore[return-value]
