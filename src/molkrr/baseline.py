"""Energy baselines: the prior mean a KRR model's energies are fitted around.

``"elements"`` is the *dressed-atom* baseline, E₀(M) = Σ_z n_z(M) e_z: one energy per element, fitted
by least squares on the training energies (minimum-norm solution when compositions are collinear,
e.g. MD frames of one molecule, where it reduces to a constant). A Gaussian local kernel sums
bounded terms per atom; an energy that grows with the number of atoms is what it cannot represent,
so local models need this baseline on data of varying composition. It has no coordinate dependence:
forces are unchanged.

``"mean"`` (and None) leave the energies as they are: the KRR then subtracts their mean when its
``center`` is set. ``"auto"`` is ``"elements"`` for local (atom-centred) representations and ``"mean"``
for global ones (measured on QM9 in docs/local-kernels.md: essential for the local FCHL19 kernel, no
help for the global one).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InvalidInputError

#: Accepted values of ``MolecularKRR(baseline=...)``.
BASELINES = ("auto", "elements", "mean", None)


def check_baseline(value: Any) -> Any:
    """``value`` if it is one of :data:`BASELINES`, else :class:`InvalidInputError`."""
    if value is not None and (not isinstance(value, str) or value not in BASELINES):
        raise InvalidInputError(f"baseline must be one of 'auto', 'elements', 'mean' or None, got {value!r:.60}")
    return value


def resolve_baseline(value: Any, local: bool) -> str:
    """The baseline actually used: 'elements' or 'mean' ('auto' → 'elements' for local representations)."""
    value = check_baseline(value)
    if value == "auto":
        return "elements" if local else "mean"
    return "elements" if value == "elements" else "mean"


def element_counts(mols: Any, elements: np.ndarray) -> np.ndarray:
    """Counts n_z per molecule, shape (n_molecules, len(elements)); atoms of other elements are not counted."""
    elements = np.asarray(elements, dtype=np.int64)
    col = np.searchsorted(elements, mols.numbers)
    col = np.minimum(col, max(len(elements) - 1, 0))
    known = elements[col] == mols.numbers if len(elements) else np.zeros(len(mols.numbers), dtype=bool)
    mol = np.repeat(np.arange(len(mols)), mols.n_atoms)
    counts = np.zeros((len(mols), len(elements)))
    np.add.at(counts, (mol[known], col[known]), 1.0)
    return counts


def fit_element_energies(mols: Any, energies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(elements (n_el,) sorted atomic numbers, e (n_el,) energy per atom) minimising ‖y − C e‖₂.

    Minimum-norm least squares (SVD, relative cut-off 1e-12): compositions that do not vary in some
    direction (one molecule's MD frames) leave that direction of e at zero norm.
    """
    elements = np.unique(mols.numbers).astype(np.int64)
    C = element_counts(mols, elements)
    y = np.asarray(energies, dtype=np.float64).reshape(-1)
    if y.shape[0] != C.shape[0]:
        raise InvalidInputError(f"{y.shape[0]} energies for {C.shape[0]} molecules")
    e, *_ = np.linalg.lstsq(C, y, rcond=1e-12)
    return elements, e


def baseline_energies(mols: Any, elements: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Σ_z n_z e_z per molecule, shape (n_molecules,); elements without a fitted energy count 0."""
    if len(elements) == 0:
        return np.zeros(len(mols))
    return element_counts(mols, elements) @ np.asarray(e, dtype=np.float64)


__all__ = ["BASELINES", "baseline_energies", "check_baseline", "element_counts", "fit_element_energies",
           "resolve_baseline"]
