"""Name → operator class registry, so operators can be rebuilt from a config dict."""

from __future__ import annotations

from typing import Any

from .base import Operator

OPERATORS: dict[str, type[Operator]] = {}


def register_operator(cls: type[Operator]) -> type[Operator]:
    """Class decorator: add ``cls`` to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} must set a non-empty class attribute `name`")
    if cls.name in OPERATORS and OPERATORS[cls.name] is not cls:
        raise ValueError(f"operator name {cls.name!r} is already registered")
    OPERATORS[cls.name] = cls
    return cls


def make_operator(name: str, **kwargs: Any) -> Operator:
    """Build a registered operator: ``make_operator(**op.config)`` rebuilds ``op``.

    >>> op = make_operator("gaussian_cs", image_size=64, ratio=0.25)
    """
    if name not in OPERATORS:
        raise ValueError(f"unknown operator name {name!r}; expected one of {sorted(OPERATORS)}")
    return OPERATORS[name](**kwargs)


def available_operators() -> list[str]:
    return sorted(OPERATORS)
