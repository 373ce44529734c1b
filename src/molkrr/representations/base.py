"""The representation protocol: molecules → feature vectors, and gradients back to coordinates.

A representation is a scikit-learn transformer on :class:`~molkrr.Molecules`:

* ``fit(molecules)`` learns sizes (largest molecule, elements, bag sizes) and sets ``n_features_``;
* ``transform(molecules)`` → X, shape (n_molecules, n_features_);
* ``vjp(molecules, G)`` with G = ∂E/∂X, shape (n_molecules, n_features_) → ∂E/∂R as one
  (n_atoms_i, 3) array per molecule, *without* building the Jacobian (reverse mode by hand);
* ``jacobian(molecules)`` → one explicit ∂X/∂R array of shape (n_features_, n_atoms_i, 3) per
  molecule (for tests and for users who want it).

Positions are in Å, so derivatives are per Å. Representations that sort (sorted Coulomb matrix,
Bag of Bonds) are differentiable only where the order does not change; their derivative is that of
the fixed permutation at the evaluation point.

Persistence (:mod:`molkrr.persistence`) stores ``get_params()`` as JSON and every fitted attribute
(ending in ``_``) that is a number, a string, a list of numbers or a numpy array: keep fitted state
in that form. A representation declares how a model file's copy of its fields is checked with a
classmethod ``model_file_schema()`` (:mod:`molkrr.schema`); without one, its fitted attributes are
accepted as they are (finite arrays, no pickle).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.utils.validation import check_is_fitted

from ..errors import ShapeMismatchError
from ..molecules import Molecules, as_molecules


class Representation(TransformerMixin, BaseEstimator):
    """Base class of molecular representations (see the module docstring for the protocol)."""

    #: whether ``vjp``/``jacobian`` are available
    differentiable: bool = True
    #: whether ``transform`` refuses elements the fitted representation does not know (UnknownElementError)
    limits_elements: bool = False
    #: whether ``transform`` refuses molecules larger than the fitted size (RepresentationSizeError)
    limits_size: bool = False

    def fit(self, molecules: Any, y: Any = None) -> "Representation":
        """Learn the sizes this representation needs from ``molecules``; returns self."""
        raise NotImplementedError

    def transform(self, molecules: Any) -> np.ndarray:
        """Feature matrix of shape (n_molecules, n_features_)."""
        raise NotImplementedError

    def vjp(self, molecules: Any, G: np.ndarray) -> list[np.ndarray]:
        """Vector–Jacobian product: G (n_molecules, n_features_) = ∂E/∂X → list of ∂E/∂R (n_atoms_i, 3)."""
        raise NotImplementedError

    def jacobian(self, molecules: Any) -> list[np.ndarray]:
        """Explicit Jacobians ∂X/∂R, one (n_features_, n_atoms_i, 3) array per molecule."""
        raise NotImplementedError

    def feature_support(self, molecules: Any) -> int | None:
        """p such that features p.. are zero for these molecules and do not depend on positions, or None.

        Lets force evaluation skip those columns of the training set (padded representations).
        """
        return None

    def sized_for(self, max_atoms: int, max_element_counts: Mapping[int, int]) -> "Representation":
        """An unfitted copy sized to hold every molecule of a data set, e.g. all of QM9.

        Parameters
        ----------
        max_atoms : int
            Atoms in the largest molecule of the data set.
        max_element_counts : mapping of int to int
            Atomic number → the most atoms of that element in one molecule of the data set.

        Representations with size parameters (Coulomb-matrix size, Bag-of-Bonds bag sizes)
        override this; the default is a plain clone, for representations whose features do not
        depend on the molecules' sizes.
        """
        return clone(self)

    # -------------------------------------------------------------- helpers for subclasses
    def _check_input(self, molecules: Any) -> Molecules:
        check_is_fitted(self)
        mols = as_molecules(molecules)
        mols.check_structure()  # compiled loops index through offsets: never trust a batch built unchecked
        return mols

    def _check_cotangent(self, molecules: Molecules, G: Any) -> np.ndarray:
        G = np.asarray(G, dtype=np.float64)
        if G.ndim == 1:
            G = G[None, :]
        if G.shape != (len(molecules), self.n_features_):
            raise ShapeMismatchError(
                f"cotangent G must have shape ({len(molecules)}, {self.n_features_}), got {G.shape}"
            )
        return G

    def __sklearn_tags__(self):  # molecules, not 2-D arrays, are the input
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.requires_fit = True
        return tags
