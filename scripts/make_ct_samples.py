"""Build the bundled CT and natural-image samples in ``datasets/samples/``.

Outputs:

* ``ct_head/slice_000{1..4}.dcm``: an ASSEMBLED 4-slice CT series, 256×256, made from the
  single 512×512 head CT section ``693_UNCR.dcm`` of pydicom-data (uncompressed original,
  HU = stored − 1024). Pixels outside the 245 mm reconstruction circle (padding value,
  −3024 HU) are set to −1024 HU (air). Slice ``k`` is the 2×2 block average of that
  section with the blocks offset by ``OFFSETS[k]`` original pixels (edge rows/columns
  replicated), so each slice is a genuine anti-aliased 256² sampling of the same real
  section and the four differ by sub-pixel shifts (0.48 mm) — not different anatomy. The
  slices are stacked 5 mm apart (the source SliceThickness) from the source position,
  with the source orientation and a 0.957 mm pixel (same 245 mm field of view). HU are
  multiples of 0.25 and stored exactly (RescaleSlope 0.25). The SeriesDescription says
  the series is assembled.
* ``natural/*.png``: 256×256 8-bit grayscale images from scikit-image's bundled data
  (centre square crop, anti-aliased resize, BT.601 luma for colour). ``camera.png`` is
  an EVALUATION-ONLY image (cameraman, a classic CS test image): never train on it.
* ``NOTICE.ct``: sources and licences of the above.

Deterministic (fixed UIDs derived from a constant, no timestamps):
``python scripts/make_ct_samples.py [--out DIR]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import textwrap
from pathlib import Path

import numpy as np
import skimage.data
import torch
from pydicom.data import get_testdata_file
from skimage.transform import resize

from idm_med.datasets.atomic import atomic_path
from idm_med.datasets.dicom import CTVolume, read_dicom_series, write_dicom_series
from idm_med.datasets.images import rgb_to_luma, write_image
from idm_med.datasets.samples import SAMPLES_DIR

logger = logging.getLogger("make_ct_samples")

CT_SOURCE = "693_UNCR.dcm"
OFFSETS = ((0, 0), (1, 1), (0, 1), (1, 0))  # block offsets (rows, cols) in source pixels
SLICE_SPACING_MM = 5.0
AIR_HU = -1024.0
CT_DESCRIPTION = "ASSEMBLED from 1 slice (693_UNCR): 4 shifted 2x2 averages"
UID_ENTROPY = "idm-med bundled sample ct_head v1"
NATURAL_SIZE = 256
#: output name -> (skimage.data loader, use)
NATURAL = {
    "camera.png": ("camera", "EVALUATION ONLY (held out: never train on it)"),
    "astronaut.png": ("astronaut", "may be used for training and examples"),
    "coins.png": ("coins", "may be used for training and examples"),
    "brick.png": ("brick", "may be used for training and examples"),
}
NATURAL_LICENCES = {
    "camera": "CC0 by the photographer (Lav Varshney), per skimage.data.camera's docstring",
    "astronaut": "public domain (NASA photograph), per skimage.data.astronaut's docstring",
    "coins": "no known copyright restrictions (Brooklyn Museum), per skimage.data.coins",
    "brick": "CC0 (CC0Textures), per skimage.data.brick's docstring",
}

NOTICE_HEAD = """\
CT and natural-image sample files in this folder (made by scripts/make_ct_samples.py)
===================================================================================

ct_head/slice_0001.dcm ... slice_0004.dcm
    Derived from 693_UNCR.dcm of the pydicom-data package (PyPI "pydicom-data", MIT
    licence for the package; obtained with pydicom.data.get_testdata_file). The file is
    an anonymised head CT section whose PatientID is "CQ500-CT-310", i.e. it comes from
    the CQ500 head CT data set of qure.ai, which, to our knowledge, its publishers
    distribute under CC BY-NC-SA 4.0 (attribution, non-commercial, share-alike): check
    that licence before redistributing these files, in particular commercially.
    The series is ASSEMBLED from that single section (not a real multi-slice
    acquisition): four 256x256 2x2 block averages of the section with sub-pixel block
    offsets, stacked 5 mm apart, pixels outside the reconstruction circle set to air
    (-1024 HU). Its SeriesDescription says so; ImageType is DERIVED\\SECONDARY. Patient
    and study tags are the (already anonymised) ones of the source file.

"""


def block_average(hu: np.ndarray, offset: tuple[int, int], factor: int = 2) -> np.ndarray:
    """Mean over ``factor``×``factor`` blocks starting at ``offset`` (edges replicated)."""
    oy, ox = offset
    padded = np.pad(hu, ((0, oy), (0, ox)), mode="edge")[oy:, ox:]
    rows, cols = padded.shape
    blocks = padded.reshape(rows // factor, factor, cols // factor, factor)
    return blocks.mean(axis=(1, 3))


def build_ct_head(out_dir: Path) -> CTVolume:
    """Write the assembled ``ct_head`` series; returns its reference geometry."""
    path = get_testdata_file(CT_SOURCE, download=False)  # never fetch at run time
    if path is None:
        raise SystemExit(f"{CT_SOURCE} not found: pip install pydicom-data")
    source = read_dicom_series(path)
    hu = np.maximum(source.hu[0].astype(np.float64), AIR_HU)  # padding (-3024 HU) -> air
    volume = np.stack([block_average(hu, offset) for offset in OFFSETS]).astype(np.float32)

    # In-plane geometry of a 2x2 average over the same field of view, then 4 positions.
    one = source.with_hu(volume[:1])
    positions = (
        one.positions[0]
        + SLICE_SPACING_MM * np.arange(len(OFFSETS))[:, None] * (one.normal[None, :])
    )
    reference = dataclasses.replace(
        one,
        hu=volume,
        positions=positions,
        spacing=(SLICE_SPACING_MM, *one.spacing[1:]),
        slice_thickness=SLICE_SPACING_MM,
    )
    write_dicom_series(
        volume,
        reference,
        out_dir,
        description=CT_DESCRIPTION,
        quantisation_step=0.25,  # 2x2 means of integer HU are multiples of 1/4: exact
        series_number=1,
        uid_entropy=UID_ENTROPY,
        overwrite=True,
    )
    logger.info("wrote %s: %s HU in [%g, %g]", out_dir, volume.shape, volume.min(), volume.max())
    return reference


def natural_image(loader: str, size: int = NATURAL_SIZE) -> torch.Tensor:
    """A skimage.data image as ``(1, size, size)`` luma in [0, 1] (centre square crop)."""
    image = np.asarray(getattr(skimage.data, loader)(), dtype=np.float64) / 255.0
    if image.ndim == 3:
        rgb = torch.from_numpy(np.moveaxis(image[..., :3], -1, 0).copy())
        image = rgb_to_luma(rgb)[0].numpy()
    rows, cols = image.shape
    side = min(rows, cols)
    top, left = (rows - side) // 2, (cols - side) // 2
    image = image[top : top + side, left : left + side]
    if side != size:
        image = resize(image, (size, size), order=1, anti_aliasing=True, mode="reflect")
    return torch.from_numpy(np.clip(image, 0.0, 1.0))[None]


def build_natural(out_dir: Path) -> list[str]:
    lines = []
    for name, (loader, use) in NATURAL.items():
        image = natural_image(loader)
        write_image(out_dir / name, image)
        logger.info("wrote %s", out_dir / name)
        text = (
            f'skimage.data.{loader}() from the scikit-image package (PyPI "scikit-image", '
            f"BSD-3-Clause; image licence: {NATURAL_LICENCES[loader]}); centre square crop, "
            f"resized to {NATURAL_SIZE}x{NATURAL_SIZE}, BT.601 luma, 8-bit PNG. Use: {use}."
        )
        body = textwrap.fill(text, width=88, initial_indent="    ", subsequent_indent="    ")
        lines.append(f"natural/{name}\n{body}\n")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=SAMPLES_DIR, help="samples folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    build_ct_head(args.out / "ct_head")
    lines = build_natural(args.out / "natural")
    notice = NOTICE_HEAD + "\n".join(lines)
    with atomic_path(args.out / "NOTICE.ct") as tmp:
        tmp.write_text(notice, encoding="utf-8")
    logger.info("wrote %s", args.out / "NOTICE.ct")


if __name__ == "__main__":
    main()
