"""What a trained model may be applied to: the elements it was trained on.

A kernel model knows nothing about an element it never saw: a Coulomb-matrix model asked about
sulfur returns the training mean, an FCHL19 model whose element list includes nitrogen returns a
confident number for a nitrogen compound although no training molecule had one. So
:class:`~molkrr.MolecularKRR` records the elements of its training set in ``elements_`` (saved with
the model) and refuses molecules with any other element with an
:class:`~molkrr.errors.UnseenElementError` naming the element and the molecule.

Opting in: :func:`allow_elements` adds elements to a fitted model's ``elements_`` where its
representation is defined for them (any element for a Coulomb matrix; the fitted bags for Bag of
Bonds; the element list for FCHL19). The choice is explicit and is saved with the model. The CLI's
``molkrr predict --allow-element N`` and ``MolkrrCalculator(..., allow_elements=["N"])`` do the same.

The size a padded representation was fitted for (``CoulombMatrix.size_``, the Bag-of-Bonds bags)
is recorded by the representation itself; larger molecules raise
:class:`~molkrr.errors.RepresentationSizeError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from .errors import UnknownElementError, UnseenElementError
from .molecules import MAX_ATOMIC_NUMBER, Molecules

__all__ = ["allow_elements", "check_elements", "element_number", "supported_elements", "training_elements"]


def element_number(element: Any) -> int:
    """Atomic number of ``element`` given as a symbol ('N'), a number (7) or a numeric string ('7').

    Raises UnknownElementError("unknown element 'Xx'") for anything else.
    """
    from ase.data import atomic_numbers

    if isinstance(element, (int, np.integer)) and not isinstance(element, (bool, np.bool_)):
        z = int(element)
    elif isinstance(element, str) and element.strip().lstrip("+-").isdigit():
        z = int(element.strip())
    elif isinstance(element, str) and element.strip() in atomic_numbers and element.strip() != "X":
        z = int(atomic_numbers[element.strip()])
    else:
        raise UnknownElementError(f"unknown element {element!r}")
    if not 1 <= z <= MAX_ATOMIC_NUMBER:
        raise UnknownElementError(f"unknown element {element!r}: atomic numbers run from 1 to {MAX_ATOMIC_NUMBER}")
    return z


def element_symbol(z: int) -> str:
    """Chemical symbol of atomic number z ('Z=0' style text outside 1..118)."""
    from ase.data import chemical_symbols

    z = int(z)
    return chemical_symbols[z] if 1 <= z <= MAX_ATOMIC_NUMBER else f"Z={z}"


def training_elements(molecules: Molecules) -> np.ndarray:
    """The distinct atomic numbers of a batch, ascending (int64)."""
    return np.unique(molecules.numbers).astype(np.int64)


def supported_elements(representation: Any) -> np.ndarray | None:
    """Atomic numbers a fitted representation is defined for, or None when it is defined for every element."""
    from .representations.bob import BagOfBonds
    from .representations.fchl19 import FCHL19

    if isinstance(representation, (BagOfBonds, FCHL19)):
        return np.asarray(representation.elements_, dtype=np.int64)
    return None


def check_elements(model: Any, molecules: Molecules) -> None:
    """Raise UnseenElementError if ``molecules`` hold an element outside ``model.elements_``."""
    allowed = getattr(model, "elements_", None)
    if allowed is None:  # a model built by hand, not by fit or load_model
        return
    numbers = molecules.numbers
    if numbers.size and numbers.min() < 0:
        raise UnseenElementError(f"atomic number {int(numbers.min())} is not an element")
    table = np.zeros(max(int(numbers.max(initial=0)), int(np.max(allowed, initial=0))) + 1, dtype=bool)
    table[np.asarray(allowed, dtype=np.int64)] = True  # a lookup table: cheaper than np.isin for one molecule
    unseen = ~table[numbers]
    if not unseen.any():
        return
    atom = int(np.flatnonzero(unseen)[0])
    mol = int(np.searchsorted(molecules.offsets, atom, side="right") - 1)
    z = int(molecules.numbers[atom])
    trained = ", ".join(element_symbol(e) for e in allowed)
    raise UnseenElementError(
        f"molecule {mol} contains {element_symbol(z)}, an element this model was not trained on (trained on "
        f"{trained}); to predict anyway where the representation is defined for it, opt in with "
        f"molkrr.applicability.allow_elements(model, [{element_symbol(z)!r}]) or --allow-element {element_symbol(z)}"
    )


def allow_elements(model: Any, elements: Iterable[Any]) -> Any:
    """Let a fitted MolecularKRR predict for ``elements`` it was not trained on; returns the model.

    Each element (symbol or atomic number) must be one the model's representation is defined for;
    otherwise UnknownElementError. The extended ``elements_`` is saved with the model.
    """
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(model)
    if isinstance(elements, (str, int, np.integer)):
        elements = [elements]
    numbers = [element_number(e) for e in elements]
    supported = supported_elements(model.representation_)
    for z, e in zip(numbers, elements):
        if supported is not None and z not in supported:
            raise UnknownElementError(
                f"the model's {type(model.representation_).__name__} is not defined for {element_symbol(z)} (it knows "
                f"{', '.join(element_symbol(s) for s in supported)}): {e!r} cannot be allowed"
            )
    current = getattr(model, "elements_", np.zeros(0, dtype=np.int64))
    model.elements_ = np.union1d(current, np.asarray(numbers, dtype=np.int64)).astype(np.int64)
    return model
