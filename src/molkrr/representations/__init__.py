"""Molecular representations (see :mod:`molkrr.representations.base` for the protocol)."""

from __future__ import annotations

from typing import Any

from .base import Representation

#: Names accepted by :func:`make_representation` (and the CLI's ``--representation``).
REPRESENTATIONS = ("cm-sorted", "cm-unsorted", "cm-eigenvalues", "bob", "fchl19", "fchl19-local")


def make_representation(name: str, **params: Any) -> Representation:
    """The representation called ``name`` (one of :data:`REPRESENTATIONS`), unfitted."""
    if name.startswith("cm-"):
        from .coulomb import CoulombMatrix

        variant = name[3:]
        if variant in ("sorted", "unsorted", "eigenvalues"):
            return CoulombMatrix(variant=variant, **params)
    elif name == "bob":
        from .bob import BagOfBonds

        return BagOfBonds(**params)
    elif name in ("fchl19", "fchl19-global"):
        from .fchl19 import FCHL19

        return FCHL19(form="global", **params)
    elif name in ("fchl19-atomic", "fchl19-local"):  # one row per atom: MolecularKRR uses the local kernel
        from .fchl19 import FCHL19

        return FCHL19(form="atomic", **params)
    raise ValueError(f"unknown representation {name!r}; choose one of {', '.join(REPRESENTATIONS)}")


def __getattr__(name: str) -> Any:  # lazy: importing numba kernels only when a class is used
    if name == "CoulombMatrix":
        from .coulomb import CoulombMatrix

        return CoulombMatrix
    if name == "BagOfBonds":
        from .bob import BagOfBonds

        return BagOfBonds
    if name == "FCHL19":
        from .fchl19 import FCHL19

        return FCHL19
    raise AttributeError(name)


__all__ = ["REPRESENTATIONS", "BagOfBonds", "CoulombMatrix", "FCHL19", "Representation", "make_representation"]
