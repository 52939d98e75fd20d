"""Learned methods the suites compare when their checkpoints ship with the package.

Registering a learned method is one :func:`idm_med.baselines.register` call with the same
``(y, operator) -> x̂`` interface as the baselines; nothing is loaded until it runs.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

from idm_med import baselines
from idm_med.operators import Operator


@cache
def _idm(name: str):
    from idm_med.pretrained import pretrained_path
    from idm_med.reconstruction import make_method

    return make_method("idm", checkpoint=pretrained_path(name))


def _shipped(name: str) -> bool:
    from idm_med.pretrained import list_pretrained

    return name in list_pretrained()


def _run_mri_4x(y: torch.Tensor, operator: Operator) -> torch.Tensor:
    return _idm("mri_4x")(y, operator)


def register_shipped() -> None:
    """Register the shipped IDM checkpoints (idempotent)."""
    if "idm_mri_4x" not in baselines.METHODS:
        baselines.register(
            baselines.MethodSpec(
                "idm_mri_4x",
                _run_mri_4x,
                # A single-coil model: the checkpoint refuses multi-coil operators.
                applies=lambda op: op.name == "mri" and getattr(op, "coil_maps", None) is None,
                available=lambda: _shipped("mri_4x"),
                label="IDM mri_4x (T=3)",
            )
        )


# -- the diffusion family (issue: DDNM on the shipped prior, IDM fine-tuned from it) ---------
#: Models trained for the ablations, outside the package (weights committed with their log).
ABLATION_MODELS = Path(__file__).parent / "ablation_models"
#: Shipped IDM models of the diffusion family, by operator name.
IDM_BY_OPERATOR = {
    "gaussian_cs": "idm_cs",
    "mri": "idm_mri",
    "inpainting": "idm_inpainting",
    "superres": "idm_superres",
    "ct": "idm_ct",
}


#: Shipped SR3 models (conditional diffusion, one task each), by operator name.
SR3_BY_OPERATOR = {"superres": "sr3_superres"}


def _run_sr3(y: torch.Tensor, operator: Operator, steps: int = 100) -> torch.Tensor:
    from idm_med.diffusion_methods import sr3_method
    from idm_med.pretrained import pretrained_path

    return sr3_method(pretrained_path(SR3_BY_OPERATOR[operator.name]), steps=steps)(y, operator)


def _run_ddnm(y: torch.Tensor, operator: Operator, steps: int = 100) -> torch.Tensor:
    from idm_med.diffusion_methods import ddnm_method

    return ddnm_method(steps=steps)(y, operator)


def _idm_at(path: Path, noise_sigma: float = 0.0):
    from idm_med.reconstruction import make_method

    return make_method("idm", checkpoint=path, noise_sigma=noise_sigma)


def _run_idm_family(y: torch.Tensor, operator: Operator, noise_sigma: float = 0.0) -> torch.Tensor:
    """The shipped model of ``operator``; a noisy setting tells it its ``noise_sigma``
    (:attr:`benchmarks.suite.Setting.noise_sigma`)."""
    from idm_med.pretrained import pretrained_path

    path = str(pretrained_path(IDM_BY_OPERATOR[operator.name]))
    return _cached_idm(path, noise_sigma)(y, operator)


def _ablation_idm(suffix: str, label: str) -> baselines.MethodSpec:
    """IDM with the ablation model ``ablation_models/<shipped model>_<suffix>`` of the
    operator (``scratch``: the recipe from random weights; ``stage1``: the shipped model's
    first stage), for operators that have one."""

    def path(operator: Operator) -> Path:
        return ABLATION_MODELS / f"{IDM_BY_OPERATOR[operator.name]}_{suffix}"

    return baselines.MethodSpec(
        f"idm_{suffix}",
        lambda y, operator: _cached_idm(str(path(operator)))(y, operator),
        applies=lambda op: op.name in IDM_BY_OPERATOR and path(op).is_dir(),
        label=label,
    )


@cache
def _cached_idm(path: str, noise_sigma: float = 0.0):
    return _idm_at(Path(path), noise_sigma)


#: Supervised U-Nets post-processing A†y, by operator name: the "train a reconstruction
#: network from scratch" baseline, with IDM's data and loss and as many iterations as the
#: shipped IDM model (``scripts/train_idm.py --architecture postprocessing_unet``).
POSTPROCESSING_UNET_BY_OPERATOR = {
    "gaussian_cs": "postprocessing_unet_cs",
    "mri": "postprocessing_unet_mri",
    "ct": "postprocessing_unet_ct",
    "superres": "postprocessing_unet_superres",
    "inpainting": "postprocessing_unet_inpainting",
}


def _postprocessing_unet_path(operator: Operator) -> Path | None:
    name = POSTPROCESSING_UNET_BY_OPERATOR.get(operator.name)
    path = ABLATION_MODELS / name if name else None
    return path if path is not None and (path / "config.json").is_file() else None


@cache
def _postprocessing_unet(path: str):
    from idm_med.postprocessing_unet import PostProcessingUNet

    return PostProcessingUNet.from_pretrained(path).eval()


def _run_postprocessing_unet(y: torch.Tensor, operator: Operator) -> torch.Tensor:
    with torch.no_grad():
        return _postprocessing_unet(str(_postprocessing_unet_path(operator)))(y, operator)


def _prior_shipped() -> bool:
    return _shipped("prior_gray")


def register_diffusion() -> None:
    """Register DDNM (shipped prior), SR3 (shipped SR3 models), IDM fine-tuned from the
    prior, the ablation models (first stage, from scratch) and the supervised U-Net on A†y
    where it was trained (idempotent)."""
    specs = [
        baselines.MethodSpec(
            "ddnm",
            _run_ddnm,
            params={"steps": 100},
            available=_prior_shipped,
            label="DDNM (100 steps, prior)",
        ),
        baselines.MethodSpec(
            "sr3",
            _run_sr3,
            params={"steps": 100},
            applies=lambda op: op.name in SR3_BY_OPERATOR and _shipped(SR3_BY_OPERATOR[op.name]),
            label="SR3 (DDIM 100 steps)",
        ),
        baselines.MethodSpec(
            "idm",
            _run_idm_family,
            applies=lambda op: op.name in IDM_BY_OPERATOR and _shipped(IDM_BY_OPERATOR[op.name]),
            label="IDM (T=3, from prior)",
        ),
        # Both at 600 iterations: the prior against random weights at equal cost.
        _ablation_idm("stage1", "IDM (T=3, from prior, 600 it.)"),
        _ablation_idm("scratch", "IDM (T=3, from scratch, 600 it.)"),
        baselines.MethodSpec(
            "unet",
            _run_postprocessing_unet,
            applies=lambda op: _postprocessing_unet_path(op) is not None,
            label="supervised U-Net on A†y (from scratch)",
        ),
    ]
    for spec in specs:
        if spec.name not in baselines.METHODS:
            baselines.register(spec)
