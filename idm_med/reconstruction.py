"""Reconstruction pipelines: file in → (image, operator, measurement) → method → file out.

One function per input format. Each reads with :mod:`idm_med.datasets`, builds the
operator that describes the (real or simulated) measurement, runs a *method* — any
callable ``method(y, operator) -> x`` — slice by slice, and writes the result in the
input's format, with metrics when a reference exists.

Methods (see :func:`make_method`): ``"pinv"`` (``A†y``: zero-filled MRI, least-squares
CT), ``"tv"`` (TV + range–null-space baseline, training free) and ``"idm"`` (an IDM
checkpoint directory).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import metrics
from .classical import tv_rnd_reconstruct
from .datasets import dicom, fastmri, images, nifti
from .operators import Operator, make_operator

logger = logging.getLogger(__name__)

Method = Callable[[torch.Tensor, Operator], torch.Tensor]
METHODS = ("pinv", "tv", "idm")


@dataclass
class ReconstructionResult:
    """What a pipeline produced: the output path, the reconstruction (as written, before
    format-specific encoding), the baseline ``A†y`` and the reference when there is one,
    and the metrics of both against the reference."""

    output: Path
    reconstruction: np.ndarray
    pinv: np.ndarray
    reference: np.ndarray | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    pinv_metrics: dict[str, float] = field(default_factory=dict)


def make_method(name: str, checkpoint: str | Path | None = None, **kwargs) -> Method:
    """Build a reconstruction method by name.

    Args:
        name: ``"pinv"``, ``"tv"`` or ``"idm"``.
        checkpoint: local directory of an IDM checkpoint (``save_pretrained`` output);
            required for ``"idm"``.
        kwargs: passed to :func:`~idm_med.classical.tv_rnd_reconstruct` for ``"tv"``.
    """
    if name == "pinv":
        return lambda y, op: op.A_pinv(y)
    if name == "tv":
        return lambda y, op: tv_rnd_reconstruct(
            y, op, complex_channels=op.image_shape[0] == 2, progress=False, **kwargs
        )
    if name == "idm":
        if checkpoint is None:
            raise ValueError("method 'idm' needs checkpoint=<directory of a trained IDM model>")
        from .model import IDM  # heavy import only when used

        model = IDM.from_pretrained(str(checkpoint)).eval()

        def run(y: torch.Tensor, op: Operator) -> torch.Tensor:
            with torch.no_grad():
                return model(y, op)

        return run
    raise ValueError(f"unknown method {name!r}; expected one of {METHODS}")


def _evaluate(result: ReconstructionResult) -> ReconstructionResult:
    if result.reference is not None:
        result.metrics = metrics.evaluate(result.reference, result.reconstruction)
        result.pinv_metrics = metrics.evaluate(result.reference, result.pinv)
    return result


def _magnitude(x: torch.Tensor) -> np.ndarray:
    """``(B, 2, H, W)`` real/imag → ``(B, H, W)`` magnitude."""
    return torch.linalg.vector_norm(x.detach(), dim=1).cpu().numpy()


# -- fastMRI ---------------------------------------------------------------------------
def reconstruct_fastmri(
    path: str | Path,
    out_dir: str | Path,
    method: Method,
    acceleration: float | None = 4.0,
    center_fraction: float = 0.08,
    mask_type: str = "random",
    slices: list[int] | None = None,
) -> ReconstructionResult:
    """Reconstruct a fastMRI ``.h5`` volume and write ``out_dir/<name>.h5`` the way fastMRI
    does (magnitude, centre-cropped to the header's recon size).

    Fully sampled files are undersampled retrospectively with the mask seeded from the
    file name; already undersampled files use their own mask.
    """
    recon, pinv, refs, info = [], [], [], None
    for item in tqdm(
        fastmri.iter_volume(path, acceleration, center_fraction, mask_type, slices=slices),
        desc=Path(path).name,
        unit="slice",
    ):
        info = item.info
        op = make_operator(**item.operator_config)
        y = item.measurement
        crop = info.crop_size
        recon.append(fastmri.center_crop(_magnitude(method(y, op))[0], crop))
        pinv.append(fastmri.center_crop(_magnitude(op.A_pinv(y))[0], crop))
        if item.target is not None:
            refs.append(fastmri.center_crop(np.asarray(item.target), crop))
    if info is None:
        raise ValueError(f"{path}: no slice selected")
    out = fastmri.write_reconstruction(
        fastmri.reconstruction_path(out_dir, path),
        np.stack(recon),
        attrs={"acceleration": float(acceleration or 0), "center_fraction": center_fraction},
    )
    reference = np.stack(refs) if len(refs) == len(recon) else None
    return _evaluate(ReconstructionResult(out, np.stack(recon), np.stack(pinv), reference))


# -- CT DICOM ---------------------------------------------------------------------------
def reconstruct_dicom(
    path: str | Path,
    out_dir: str | Path,
    method: Method,
    n_views: int = 60,
    noise_level: float = 0.0,
    seed: int = 0,
) -> ReconstructionResult:
    """Simulate a sparse-view scan of a CT DICOM series and write the reconstruction as a
    new DICOM series (HU) in ``out_dir``. Metrics are on normalised attenuation."""
    volume = dicom.read_dicom_series(path)
    sim = dicom.simulate_sparse_view(volume, n_views, noise_level=noise_level, seed=seed)
    op = sim.operator
    recon, pinv = [], []
    for i in tqdm(range(len(sim.sinogram)), desc="CT slices", unit="slice"):
        y = sim.sinogram[i : i + 1]
        recon.append(method(y, op)[0, 0].detach().numpy())
        pinv.append(op.A_pinv(y)[0, 0].detach().numpy())
    recon_arr = np.stack(recon)
    hu = dicom.attenuation_to_hu(recon_arr.clip(0.0, 1.0))
    out = dicom.write_dicom_series(
        hu, volume, out_dir, description=f"idm-med sparse-view {n_views} views", overwrite=True
    )
    reference = sim.image[:, 0].numpy()
    return _evaluate(ReconstructionResult(Path(out), recon_arr, np.stack(pinv), reference))


# -- NIfTI -------------------------------------------------------------------------------
def reconstruct_nifti(
    path: str | Path,
    out_path: str | Path,
    method: Method,
    axis: int = 2,
    acceleration: float = 4.0,
    center_fraction: float = 0.08,
    slices: list[int] | None = None,
    seed: int = 0,
) -> ReconstructionResult:
    """Simulate single-coil Cartesian undersampling of every slice along ``axis`` of a
    magnitude NIfTI volume, reconstruct, and write a NIfTI with the same affine.

    Slices not in ``slices`` (default: all) are copied unchanged.
    """
    volume = nifti.read_nifti(path)
    data = nifti.extract_slices(volume.data, axis=axis)  # (S, H, W)
    scale = float(np.abs(data).max()) or 1.0
    indices = range(len(data)) if slices is None else slices
    op = make_operator(
        "mri",
        image_size=data.shape[1:],
        acceleration=acceleration,
        center_fraction=center_fraction,
        seed=seed,
    )
    out = data.copy()
    recon, pinv, refs = [], [], []
    for i in tqdm(indices, desc=Path(path).name, unit="slice"):
        x = torch.zeros(1, 2, *data.shape[1:])
        x[0, 0] = torch.from_numpy(data[i] / scale)
        y = op.A(x)
        rec = _magnitude(method(y, op))[0] * scale
        out[i] = rec
        recon.append(rec)
        pinv.append(_magnitude(op.A_pinv(y))[0] * scale)
        refs.append(data[i])
    header = volume.header.copy()
    header.set_data_dtype(np.float32)  # reconstructions are not integer-valued
    written = nifti.write_nifti(out_path, nifti.stack_slices(out, axis=axis), volume.affine, header)
    result = ReconstructionResult(Path(written), np.stack(recon), np.stack(pinv), np.stack(refs))
    return _evaluate(result)


# -- plain images ------------------------------------------------------------------------
def reconstruct_image(
    path: str | Path,
    out_path: str | Path,
    method: Method,
    operator: str = "gaussian_cs",
    **operator_kwargs,
) -> ReconstructionResult:
    """Measure a PNG/TIFF/NumPy image with ``operator`` (e.g. ``ratio=0.1`` for
    ``gaussian_cs``, ``missing_ratio=0.5`` for ``inpainting``), reconstruct, and write the
    result in the output path's format."""
    image = images.read_image(path)[None]  # (1, 1, H, W) luma in [0, 1]
    op = make_operator(operator, image_size=tuple(image.shape[-2:]), **operator_kwargs)
    y = op.A(image)
    recon = method(y, op).clamp(0.0, 1.0)
    written = images.write_image(out_path, recon[0])
    result = ReconstructionResult(
        Path(written),
        recon[0, 0].detach().numpy(),
        op.A_pinv(y)[0, 0].clamp(0.0, 1.0).detach().numpy(),
        image[0, 0].numpy(),
    )
    return _evaluate(result)


def detect_format(path: str | Path) -> str:
    """``"fastmri"``, ``"dicom"``, ``"nifti"`` or ``"image"`` from a path."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    name = path.name.lower()
    if path.is_dir() or name.endswith(".dcm"):
        return "dicom"
    if name.endswith((".h5", ".hdf5")):
        return "fastmri"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(tuple(images.IMAGE_SUFFIXES)):
        return "image"
    raise ValueError(
        f"{path}: cannot tell the format; expected a fastMRI .h5, a DICOM folder or .dcm, "
        f"a NIfTI .nii/.nii.gz or an image {images.IMAGE_SUFFIXES}"
    )
