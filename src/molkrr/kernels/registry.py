"""The kernel registry: names → factories taking ``sigma``. A kernel module registers itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: name → factory(sigma=None) returning a kernel object. Filled by ``@register`` in each kernel module.
KERNELS: dict[str, Callable[..., Any]] = {}


def register(name: str) -> Callable:
    """Class or factory decorator: make ``name`` a registered kernel (CLI choices, model files, σ grids)."""

    def deco(factory: Callable) -> Callable:
        KERNELS[name] = factory
        return factory

    return deco
