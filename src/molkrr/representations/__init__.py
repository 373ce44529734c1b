"""Molecular representations (see :mod:`molkrr.representations.base` for the protocol).

Every representation class registers its names in :mod:`molkrr.representations.registry`; the
names and classes here are read from it, lazily: importing this package loads no representation
module (and so none of their numba kernels) until a name or class is asked for.
"""

from __future__ import annotations

from typing import Any

from .base import Representation
from .registry import (
    get_spec,
    make_representation,
    molecular_representation_names,
    register_representation,
    representation_classes,
    representation_names,
)


_API = [
    "Representation",
    "get_spec",
    "make_representation",
    "molecular_representation_names",
    "register_representation",
    "representation_classes",
    "representation_names",
]


def __getattr__(name: str) -> Any:
    if name == "__all__":  # computed, so that a new representation module needs no edit here
        return ["REPRESENTATIONS", *_API, *sorted(representation_classes())]
    if name == "REPRESENTATIONS":
        # names MolecularKRR and the CLI accept: one feature row per molecule
        return molecular_representation_names()
    classes = representation_classes() if name[:1].isupper() else {}
    if name in classes:
        return classes[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"REPRESENTATIONS"} | set(representation_classes()))
