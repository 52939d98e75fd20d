"""Reconstruction methods behind one interface, ``method(y, operator) -> x̂``.

A :class:`MethodSpec` names a callable ``fn(y, operator, **params)``, its default
parameters, the grid its tunable parameters are searched over (:mod:`.tuning`), and which
operators it applies to. :func:`make_method` binds parameters and returns the plain
two-argument method the pipelines and benchmark suites call. Adding a method, learned
or not, is one :func:`register` call::

    register(MethodSpec("idm", run_idm, params={"checkpoint": path},
                        applies=lambda op: op.name == "mri", label="IDM (T=3)"))

Built in: ``pinv`` (A†y; zero-filled MRI), ``fbp`` (CT), ``tv`` (TV least squares by
Chambolle–Pock, every operator), ``wavelet`` (l1-wavelet FISTA), ``sart`` (CT),
``bart_tv`` / ``bart_l1`` (BART ``pics``, MRI, only when the binary is on PATH),
``bicubic`` (super-resolution) and ``tv_rnd`` (the earlier TV denoising +
range–null-space baseline).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..classical import tv_rnd_reconstruct
from ..operators import Operator
from .bart import bart_available, bart_pics
from .sart import is_parallel_beam_ct, sart
from .tv import tv_least_squares
from .wavelet import l1_wavelet

Method = Callable[[torch.Tensor, Operator], torch.Tensor]


def _always(operator: Operator) -> bool:
    return True


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Attributes:
        name: registry key.
        fn: ``fn(y, operator, **params) -> x̂`` with ``x̂`` shaped ``(B, *image_shape)``.
        params: default keyword parameters.
        grid: tunable parameter → candidate values (empty: nothing to tune).
        applies: whether the method can run on an operator.
        available: whether its dependencies are present (e.g. an external binary).
        label: name in result tables.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    params: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    applies: Callable[[Operator], bool] = _always
    available: Callable[[], bool] = lambda: True
    label: str = ""


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec, replace: bool = False) -> MethodSpec:
    """Add ``spec`` to :data:`METHODS` (``replace`` to overwrite an existing name)."""
    if spec.name in METHODS and not replace:
        raise ValueError(f"method {spec.name!r} is already registered")
    METHODS[spec.name] = spec
    return spec


def get(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {sorted(METHODS)}")
    return METHODS[name]


def make_method(name: str, **params: Any) -> Method:
    """The two-argument method ``name`` with its defaults overridden by ``params``."""
    spec = get(name)
    bound = {**spec.params, **params}
    signature = inspect.signature(spec.fn).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.values())
    unknown = set(params) - set(list(signature)[2:])
    if unknown and not takes_any:
        raise ValueError(f"method {name!r} has no parameter(s) {sorted(unknown)}")
    return lambda y, operator: spec.fn(y, operator, **bound)


def applicable(operator: Operator, names: list[str] | None = None) -> list[str]:
    """Registered (or the given) methods that apply to ``operator`` and are available."""
    names = list(METHODS) if names is None else names
    return [n for n in names if get(n).applies(operator) and get(n).available()]


def _is(*names: str) -> Callable[[Operator], bool]:
    return lambda op: op.name in names


def _pinv(y: torch.Tensor, operator: Operator) -> torch.Tensor:
    return operator.A_pinv(y)


def _fbp(y: torch.Tensor, operator: Operator, filter_name: str = "ramp") -> torch.Tensor:
    return operator.fbp(y, filter_name).clamp_min(0.0)


def _bicubic(y: torch.Tensor, operator: Operator) -> torch.Tensor:
    """Bicubic interpolation of the low-resolution image to the operator's image size."""
    size = tuple(operator.image_shape[-2:])
    return torch.nn.functional.interpolate(y, size=size, mode="bicubic", align_corners=False)


def _tv_rnd(y: torch.Tensor, operator: Operator, weight: float = 0.02) -> torch.Tensor:
    complex_channels = operator.image_shape[0] == 2
    return tv_rnd_reconstruct(
        y, operator, weight, complex_channels=complex_channels, progress=False
    )


LAMBDAS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
for _spec in (
    MethodSpec("pinv", _pinv, label="A†y"),
    MethodSpec(
        "fbp",
        _fbp,
        {"filter_name": "ramp"},
        applies=lambda op: hasattr(op, "fbp"),
        grid={"filter_name": ["ramp", "shepp-logan", "hann"]},
        label="FBP",
    ),
    MethodSpec("bicubic", _bicubic, applies=_is("superres"), label="bicubic"),
    MethodSpec(
        "tv",
        tv_least_squares,
        {"lam": 1e-3, "n_iter": 300},
        {"lam": LAMBDAS},
        label="TV (Chambolle–Pock)",
    ),
    MethodSpec(
        "wavelet",
        l1_wavelet,
        {"lam": 1e-3, "n_iter": 200},
        {"lam": LAMBDAS},
        applies=_is("mri", "gaussian_cs"),
        label="l1-wavelet (FISTA)",
    ),
    MethodSpec(
        "sart",
        sart,
        {"n_iter": 3, "relaxation": 0.15},
        {"n_iter": [5, 10, 20, 40], "relaxation": [0.15, 0.3, 0.6]},
        applies=is_parallel_beam_ct,
        label="SART",
    ),
    MethodSpec(
        "bart_tv",
        bart_pics,
        {"lam": 1e-3, "regulariser": "tv"},
        {"lam": [1e-5, *LAMBDAS]},
        applies=_is("mri"),
        available=bart_available,
        label="BART pics TV",
    ),
    MethodSpec(
        "bart_l1",
        bart_pics,
        {"lam": 1e-3, "regulariser": "l1"},
        {"lam": [1e-5, *LAMBDAS]},
        applies=_is("mri"),
        available=bart_available,
        label="BART pics l1-wavelet",
    ),
    MethodSpec(
        "tv_rnd",
        _tv_rnd,
        {"weight": 0.02},
        {"weight": [0.02, 0.1, 0.5, 2.0]},
        label="TV-RND (denoise + projection)",
    ),
):
    register(_spec)

__all__ = ["METHODS", "Method", "MethodSpec", "applicable", "get", "make_method", "register"]
