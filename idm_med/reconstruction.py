"""File-to-file reconstruction: the public entry points of :mod:`idm_med.pipeline`.

Every input goes through one pipeline, :func:`~idm_med.pipeline.reconstruct` (read →
measure → method → write). The four ``reconstruct_<format>`` functions below are thin
wrappers that name the format's measurement options and force its reader; :func:`get_format`
and :func:`default_output` tell the CLI what an input is and where its result goes.

Methods (see :func:`~idm_med.methods.make_method`): ``"pinv"`` (``A†y``: zero-filled MRI,
least-squares CT), ``"tv"`` (TV + range–null-space baseline, training free), ``"idm"`` (an
IDM checkpoint directory or model name), ``"ddnm"`` and ``"sr3"``.
"""

from __future__ import annotations

from pathlib import Path

from .acquisition import MeasurementSettings
from .datasets.readers import (
    READERS,
    DicomReader,
    FastMRIReader,
    ImageFileReader,
    ImageReader,
    NiftiReader,
    select_reader,
)
from .methods import METHODS, IDMMethod, Method, make_method
from .outputs import OUTPUTS
from .pipeline import ReconstructionResult, reconstruct, run_slices, solve

__all__ = [
    "METHODS",
    "READERS",
    "IDMMethod",
    "Method",
    "ReconstructionResult",
    "default_output",
    "detect_format",
    "get_format",
    "make_method",
    "reconstruct",
    "reconstruct_dicom",
    "reconstruct_fastmri",
    "reconstruct_image",
    "reconstruct_nifti",
    "run_slices",
    "solve",
]


def reconstruct_fastmri(
    path: str | Path,
    out: str | Path,
    method: Method,
    acceleration: float | None = 4.0,
    center_fraction: float = 0.08,
    mask_type: str = "random",
    slices: list[int] | None = None,
    *,
    calib_width: int | None = None,
    batch_size: int = 1,
    device: str = "cpu",
    overwrite: bool = False,
) -> ReconstructionResult:
    """Reconstruct a fastMRI ``.h5`` volume and write it the way fastMRI does (magnitude,
    centre-cropped to the header's recon size, dataset ``reconstruction``) to ``out``
    (an ``.h5`` path) or ``out/<input name>``.

    Fully sampled files are undersampled retrospectively with the mask seeded from the
    file name; already undersampled files use their own mask.
    """
    settings = MeasurementSettings(
        acceleration=acceleration,
        center_fraction=center_fraction,
        mask_type=mask_type,
        calib_width=calib_width,
        slices=slices,
    )
    return reconstruct(
        path,
        out,
        method,
        settings,
        reader=FastMRIReader(),
        batch_size=batch_size,
        device=device,
        overwrite=overwrite,
    )


def reconstruct_dicom(
    path: str | Path,
    out_dir: str | Path,
    method: Method,
    n_views: int = 60,
    noise_level: float = 0.0,
    seed: int = 0,
    *,
    batch_size: int = 1,
    device: str = "cpu",
    overwrite: bool = False,
) -> ReconstructionResult:
    """Simulate a sparse-view scan of a CT DICOM series and write the reconstruction as a
    new DICOM series (HU) into the folder ``out_dir`` (new, or one this writer filled
    before and ``overwrite``). Metrics are on normalised attenuation."""
    settings = MeasurementSettings(n_views=n_views, noise_level=noise_level, seed=seed)
    return reconstruct(
        path,
        out_dir,
        method,
        settings,
        reader=DicomReader(),
        batch_size=batch_size,
        device=device,
        overwrite=overwrite,
    )


def reconstruct_nifti(
    path: str | Path,
    out_path: str | Path,
    method: Method,
    axis: int = 2,
    acceleration: float = 4.0,
    center_fraction: float = 0.08,
    slices: list[int] | None = None,
    seed: int = 0,
    *,
    batch_size: int = 1,
    device: str = "cpu",
    overwrite: bool = False,
) -> ReconstructionResult:
    """Simulate single-coil Cartesian undersampling of every slice along ``axis`` of a
    magnitude NIfTI volume, reconstruct, and write a NIfTI with the same affine to
    ``out_path`` (a ``.nii``/``.nii.gz`` path) or ``out_path/<input name>``.

    Slices not in ``slices`` (default: all) are copied unchanged.
    """
    settings = MeasurementSettings(
        acceleration=acceleration,
        center_fraction=center_fraction,
        seed=seed,
        axis=axis,
        slices=slices,
    )
    return reconstruct(
        path,
        out_path,
        method,
        settings,
        reader=NiftiReader(),
        batch_size=batch_size,
        device=device,
        overwrite=overwrite,
    )


def reconstruct_image(
    path: str | Path,
    out_path: str | Path,
    method: Method,
    operator: str = "gaussian_cs",
    *,
    device: str = "cpu",
    overwrite: bool = False,
    **operator_kwargs,
) -> ReconstructionResult:
    """Measure a PNG/TIFF/NumPy image with ``operator`` (e.g. ``ratio=0.1`` for
    ``gaussian_cs``, ``missing_ratio=0.5`` for ``inpainting``), reconstruct, and write the
    result in the format of ``out_path`` (a file, or ``out_path/<input name>``)."""
    settings = MeasurementSettings(operator=operator, operator_kwargs=operator_kwargs)
    reader = ImageFileReader()
    return reconstruct(
        path, out_path, method, settings, reader=reader, device=device, overwrite=overwrite
    )


def get_format(path: str | Path) -> ImageReader:
    """The reader of an input, by suffix, or by content for a DICOM folder (its ``name``
    is the format: ``"fastmri"``, ``"dicom"``, ``"nifti"`` or ``"image"``)."""
    return select_reader(path)


def detect_format(path: str | Path) -> str:
    """``"fastmri"``, ``"dicom"``, ``"nifti"`` or ``"image"`` from a path."""
    return select_reader(path).name


def default_output(input_path: str | Path, output: str | Path, method: str) -> Path:
    """Where ``idm-med reconstruct`` writes: ``output`` itself when it names a file of the
    input's format, else ``output/<name with the method>`` (fastMRI: ``output/<method>/<name>``
    so fastMRI's evaluation finds the input's file name; DICOM: a new series folder
    ``output/<series>_<method>/``)."""
    input_path, output = Path(input_path), Path(output)
    reader = select_reader(input_path)
    if reader.suffixes and output.name.lower().endswith(reader.suffixes):
        return output
    return output / OUTPUTS[reader.name].output_name(input_path, method)
