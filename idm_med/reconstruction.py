"""Reconstruction pipelines: file in → (image, operator, measurement) → method → file out.

Every format follows the same path: read with :mod:`idm_med.datasets`, build the operator
that describes the (real or simulated) measurement, run a *method* — any callable
``method(y, operator) -> x`` — on batches of slices (``A†y`` computed once per slice and
reused by the method), and write the result in the input's format, atomically, with
metrics when a reference exists. :data:`FORMATS` maps inputs to their pipeline by suffix
or content (:func:`detect_format`).

Outputs never replace an input and never replace an existing output unless
``overwrite=True`` (:func:`idm_med.datasets.atomic.check_output`); a failure at any point
leaves nothing behind.

Methods (see :func:`make_method`): ``"pinv"`` (``A†y``: zero-filled MRI, least-squares
CT), ``"tv"`` (TV + range–null-space baseline, training free) and ``"idm"`` (an IDM
checkpoint directory or model name).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import metrics
from .classical import tv_rnd_reconstruct
from .datasets import dicom, fastmri, images, nifti
from .datasets.atomic import check_output
from .operators import Operator, make_operator

logger = logging.getLogger(__name__)

Method = Callable[[torch.Tensor, Operator], torch.Tensor]
METHODS = ("pinv", "tv", "idm", "ddnm", "sr3")


@dataclass
class ReconstructionResult:
    """What a pipeline produced: the output path, the reconstruction (as written, before
    format-specific encoding) ``(S, H, W)``, the baseline ``A†y`` and the reference when
    there is one, and the metrics of both against the reference."""

    output: Path
    reconstruction: np.ndarray
    pinv: np.ndarray
    reference: np.ndarray | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    pinv_metrics: dict[str, float] = field(default_factory=dict)
    mask: np.ndarray | None = None


class IDMMethod:
    """An IDM checkpoint as a method; checks on first use per operator that the model
    fits the data (:func:`idm_med.checkpoints.check_fit`)."""

    def __init__(self, checkpoint: str | Path, device: str = "cpu", allow_mismatch=False):
        from .checkpoints import ModelInfo, load_idm, resolve_checkpoint

        path = resolve_checkpoint(checkpoint)
        self.info = ModelInfo.read(path, "path")
        self.model = load_idm(path).to(device)
        self.allow_mismatch = allow_mismatch
        self._checked: set[int] = set()

    def __call__(self, y: torch.Tensor, op: Operator) -> torch.Tensor:
        from .checkpoints import check_fit

        if id(op) not in self._checked:
            check_fit(self.info, dict(op.config), op.image_shape[0], self.allow_mismatch)
            self._checked.add(id(op))
        with torch.no_grad():
            return self.model(y, op)


def make_method(
    name: str,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    allow_mismatch: bool = False,
    **kwargs,
) -> Method:
    """Build a reconstruction method by name.

    Args:
        name: ``"pinv"``, ``"tv"``, ``"idm"``, ``"ddnm"`` (training-free, on a diffusion
            prior) or ``"sr3"`` (a trained SR3 model).
        checkpoint: IDM checkpoint directory or model name (``idm-med models``), required
            for ``"idm"``; the prior directory for ``"ddnm"`` (default: the shipped prior);
            the SR3 directory for ``"sr3"``.
        device: where the IDM model runs.
        allow_mismatch: run an IDM model on data it was not trained for (with a warning).
        kwargs: passed to :func:`~idm_med.classical.tv_rnd_reconstruct` for ``"tv"``, to
            :func:`~idm_med.diffusion_methods.ddnm_method` / ``sr3_method`` otherwise
            (``progress=True`` shows the iterations inside each slice).
    """
    if name == "pinv":
        return lambda y, op: op.A_pinv(y)
    if name == "tv":
        kwargs.setdefault("progress", False)
        return lambda y, op: tv_rnd_reconstruct(
            y, op, complex_channels=op.image_shape[0] == 2, **kwargs
        )
    if name == "idm":
        if checkpoint is None:
            raise ValueError("method 'idm' needs checkpoint=<directory of a trained IDM model>")
        return IDMMethod(checkpoint, device=device, allow_mismatch=allow_mismatch)
    if name == "ddnm":
        from .diffusion_methods import ddnm_method

        return ddnm_method(checkpoint, **kwargs)
    if name == "sr3":
        from .diffusion_methods import sr3_method

        if checkpoint is None:
            raise ValueError("method 'sr3' needs checkpoint=<directory of a trained SR3 model>")
        return sr3_method(checkpoint, **kwargs)
    raise ValueError(f"unknown method {name!r}; expected one of {METHODS}")


# -- the shared slice loop ---------------------------------------------------------------
@contextlib.contextmanager
def _pinv_once(op: Operator, y: torch.Tensor, pinv: torch.Tensor) -> Iterator[None]:
    """While active, ``op.A_pinv(y)`` for this very ``y`` returns ``pinv`` (no second CG
    solve inside the method); other arguments are solved as usual."""
    solve = op.A_pinv

    def cached(arg: torch.Tensor) -> torch.Tensor:
        return pinv if arg is y else solve(arg)

    op.A_pinv = cached  # instance attribute shadows the method
    try:
        yield
    finally:
        del op.A_pinv


def solve(method: Method, op: Operator, y: torch.Tensor, device: str = "cpu"):
    """``(method(y, op), A†y)`` for a batch ``y`` ``(B, *op.measurement_shape)``, on
    ``device``, returned on the CPU; ``A†y`` is computed once and reused by the method."""
    op = op.to(device)
    y = y.to(device)
    with torch.no_grad():
        pinv = op.A_pinv(y)
    with _pinv_once(op, y, pinv):
        x = method(y, op)
    return x.detach().cpu(), pinv.detach().cpu()


def run_slices(
    items: Iterable[tuple[Operator, torch.Tensor]],
    method: Method,
    batch_size: int = 1,
    device: str = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Run ``method`` over ``(operator, y (1, ...))`` pairs, batching up to ``batch_size``
    consecutive slices that share one operator object; yields per-slice
    ``(x (1, ...), A†y (1, ...))`` in order."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    pending: list[torch.Tensor] = []
    current: Operator | None = None

    def flush() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, pinv = solve(method, current, torch.cat(pending), device)
        yield from zip(x.split(1), pinv.split(1), strict=True)

    for op, y in items:
        if pending and (op is not current or len(pending) == batch_size):
            yield from flush()
            pending = []
        current = op
        pending.append(y)
    if pending:
        yield from flush()


def _evaluate(result: ReconstructionResult) -> ReconstructionResult:
    if result.reference is not None:
        result.metrics = metrics.evaluate(result.reference, result.reconstruction)
        result.pinv_metrics = metrics.evaluate(result.reference, result.pinv)
    return result


def _magnitude(x: torch.Tensor) -> np.ndarray:
    """``(B, 2, H, W)`` real/imag → ``(B, H, W)`` magnitude."""
    return torch.linalg.vector_norm(x.detach(), dim=1).cpu().numpy()


def _target(out: str | Path, input_path: str | Path, suffixes: tuple[str, ...]) -> Path:
    """``out`` itself when it names a file of the format, else ``out/<input name>``."""
    out = Path(out)
    return out if out.name.lower().endswith(suffixes) else out / Path(input_path).name


# -- fastMRI ---------------------------------------------------------------------------
def _fastmri_items(
    path: str | Path, seen: list, **kwargs
) -> Iterator[tuple[Operator, torch.Tensor]]:
    """``(operator, y)`` per slice; slices with the same mask and no coil maps share one
    operator (so they batch). ``seen`` collects the slices' metadata on the way."""
    operators: dict[tuple, Operator] = {}
    for item in fastmri.iter_volume(path, **kwargs):
        config = item.operator_config
        key = None
        if config["coil_maps"] is None:
            key = tuple((k, v) for k, v in config.items() if k != "mask")
            key += (item.mask.numpy().tobytes(),)
        op = operators.get(key) if key is not None else None
        if op is None:
            op = make_operator(**config)
            if key is not None:
                operators[key] = op
        seen.append(item)
        yield op, item.measurement


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
    target = check_output(_target(out, path, (".h5", ".hdf5")), [path], overwrite)
    info = fastmri.read_volume_info(path)
    total = len(slices) if slices is not None else info.num_slices
    sl: list[fastmri.ReconstructionSlice] = []
    items = _fastmri_items(
        path,
        sl,
        acceleration=acceleration,
        center_fraction=center_fraction,
        mask_type=mask_type,
        calib_width=calib_width,
        slices=slices,
    )
    crop = info.crop_size
    recon, pinv = [], []
    for x, p in tqdm(
        run_slices(items, method, batch_size, device), total=total, desc=info.fname, unit="slice"
    ):
        recon.append(fastmri.center_crop(_magnitude(x)[0], crop))
        pinv.append(fastmri.center_crop(_magnitude(p)[0], crop))
    if not sl:
        raise ValueError(f"{path}: no slice selected")
    refs = [fastmri.center_crop(np.asarray(s.target), crop) for s in sl if s.target is not None]
    written = fastmri.write_reconstruction(
        target,
        np.stack(recon),
        attrs={"acceleration": float(acceleration or 0), "center_fraction": center_fraction},
    )
    reference = np.stack(refs) if len(refs) == len(recon) else None
    result = ReconstructionResult(written, np.stack(recon), np.stack(pinv), reference)
    result.mask = sl[0].mask.numpy()
    return _evaluate(result)


# -- CT DICOM ---------------------------------------------------------------------------
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
    target = check_output(out_dir, [path], overwrite)
    volume = dicom.read_dicom_series(path)
    sim = dicom.simulate_sparse_view(volume, n_views, noise_level=noise_level, seed=seed)
    op = sim.operator
    items = ((op, sim.sinogram[i : i + 1]) for i in range(len(sim.sinogram)))
    recon, pinv = [], []
    for x, p in tqdm(
        run_slices(items, method, batch_size, device),
        total=len(sim.sinogram),
        desc="CT slices",
        unit="slice",
    ):
        recon.append(x[0, 0].numpy())
        pinv.append(p[0, 0].numpy())
    recon_arr = np.stack(recon)
    hu = dicom.attenuation_to_hu(recon_arr.clip(0.0, 1.0))
    written = dicom.write_dicom_series(
        hu,
        volume,
        target,
        description=f"idm-med sparse-view {n_views} views",
        overwrite=overwrite,
    )
    reference = sim.image[:, 0].numpy()
    return _evaluate(ReconstructionResult(Path(written), recon_arr, np.stack(pinv), reference))


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
    target = check_output(_target(out_path, path, (".nii", ".nii.gz")), [path], overwrite)
    volume = nifti.read_nifti(path)
    data = nifti.extract_slices(volume.data, axis=axis)  # (S, H, W)
    scale = float(np.abs(data).max()) or 1.0
    indices = list(range(len(data)) if slices is None else slices)
    op = make_operator(
        "mri",
        image_size=data.shape[1:],
        acceleration=acceleration,
        center_fraction=center_fraction,
        seed=seed,
    )

    def items() -> Iterator[tuple[Operator, torch.Tensor]]:
        for i in indices:
            x = torch.zeros(1, 2, *data.shape[1:])
            x[0, 0] = torch.from_numpy(data[i] / scale)
            yield op, op.A(x)

    out = data.copy()
    recon, pinv = [], []
    runs = run_slices(items(), method, batch_size, device)
    for i, (x, p) in zip(
        indices, tqdm(runs, total=len(indices), desc=Path(path).name), strict=True
    ):
        out[i] = _magnitude(x)[0] * scale
        recon.append(out[i])
        pinv.append(_magnitude(p)[0] * scale)
    header = volume.header.copy()
    header.set_data_dtype(np.float32)  # reconstructions are not integer-valued
    written = nifti.write_nifti(target, nifti.stack_slices(out, axis=axis), volume.affine, header)
    refs = np.stack([data[i] for i in indices])
    result = ReconstructionResult(Path(written), np.stack(recon), np.stack(pinv), refs)
    result.mask = op.mask.numpy() if hasattr(op, "mask") else None
    return _evaluate(result)


# -- plain images ------------------------------------------------------------------------
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
    target = check_output(_target(out_path, path, images.IMAGE_SUFFIXES), [path], overwrite)
    image = images.read_image(path)[None]  # (1, 1, H, W) luma in [0, 1]
    op = make_operator(operator, image_size=tuple(image.shape[-2:]), **operator_kwargs)
    x, p = solve(method, op, op.A(image), device)
    recon = x.clamp(0.0, 1.0)
    written = images.write_image(target, recon[0])
    result = ReconstructionResult(
        Path(written),
        recon[0, 0].numpy(),
        p[0, 0].clamp(0.0, 1.0).numpy(),
        image[0, 0].numpy(),
    )
    return _evaluate(result)


# -- formats -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Format:
    """One input format: how to recognise it and how to name a method's output."""

    name: str
    verify: Callable[[Path], bool]
    output_name: Callable[[Path, str], str]  # (input, method) -> name inside --output


def _is_dicom_folder(path: Path) -> bool:
    if not path.is_dir():
        return path.name.lower().endswith(".dcm")
    files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    return (
        bool(files)
        and not any(_format_of_file(p) for p in files)
        and any(p.suffix.lower() in ("", ".dcm", ".ima") for p in files)
    )


def _series_name(path: Path, method: str) -> str:
    return f"{path.name if path.is_dir() else path.parent.name}_{method}"


def _with_method(path: Path, method: str) -> str:
    """``brain.nii.gz`` → ``brain_<method>.nii.gz``."""
    n = 7 if path.name.lower().endswith(".nii.gz") else len(path.suffix)
    stem, suffix = path.name[: len(path.name) - n], path.name[len(path.name) - n :]
    return f"{stem}_{method}{suffix}"


FORMATS: tuple[Format, ...] = (
    Format(
        "fastmri",
        lambda p: p.is_file() and p.name.lower().endswith((".h5", ".hdf5")),
        lambda p, m: f"{m}/{p.name}",
    ),
    Format(
        "nifti",
        lambda p: p.is_file() and p.name.lower().endswith((".nii", ".nii.gz")),
        _with_method,
    ),
    Format(
        "image",
        lambda p: p.is_file() and p.name.lower().endswith(images.IMAGE_SUFFIXES),
        _with_method,
    ),
    Format("dicom", _is_dicom_folder, _series_name),
)


def _format_of_file(path: Path) -> Format | None:
    return next((f for f in FORMATS[:3] if f.verify(path)), None)


def get_format(path: str | Path) -> Format:
    """The :class:`Format` of an input, by suffix, or by content for a DICOM folder."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    found = next((f for f in FORMATS if f.verify(path)), None)
    if found is None:
        raise ValueError(
            f"{path}: cannot tell the format; expected a fastMRI .h5, a DICOM folder or .dcm, "
            f"a NIfTI .nii/.nii.gz or an image {images.IMAGE_SUFFIXES}"
        )
    return found


def detect_format(path: str | Path) -> str:
    """``"fastmri"``, ``"dicom"``, ``"nifti"`` or ``"image"`` from a path."""
    return get_format(path).name


def default_output(input_path: str | Path, output: str | Path, method: str) -> Path:
    """Where ``idm-med reconstruct`` writes: ``output`` itself when it names a file of the
    input's format, else ``output/<name with the method>`` (fastMRI: ``output/<method>/<name>``
    so fastMRI's evaluation finds the input's file name; DICOM: a new series folder
    ``output/<series>_<method>/``)."""
    input_path, output = Path(input_path), Path(output)
    fmt = get_format(input_path)
    if fmt.name != "dicom" and _format_of_file_name(output) == fmt.name:
        return output
    return output / fmt.output_name(input_path, method)


def _format_of_file_name(path: Path) -> str | None:
    name = path.name.lower()
    suffixes = {
        "fastmri": (".h5", ".hdf5"),
        "nifti": (".nii", ".nii.gz"),
        "image": images.IMAGE_SUFFIXES,
    }
    return next((k for k, s in suffixes.items() if name.endswith(s)), None)
