"""A complete representation in one module, as a new one would be written (used by test_registry.py).

Two smooth global features, x = [Σ_{i<j} exp(−r_ij²/2), Σ_{i<j} Z_i Z_j / r_ij]. The registry test
copies this file into the representations package and checks that nothing else needs an edit: the
name appears in the registry, the class in ``molkrr`` and in the model-file allow-list (its fields checked
by the schema it declares), and the contract suite passes. It is not imported by the package itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from molkrr.molecules import Molecules
from molkrr.representations.base import Representation
from molkrr.representations.registry import register_representation
from molkrr.schema import Int, Number, Schema


@register_representation("pair-sums", description="Two pair sums (a worked example, not for production)")
class PairSums(Representation):
    """Σ exp(−r²/2) and Σ Z_i Z_j / r over atom pairs: (n_molecules, 2)."""

    def __init__(self, width: float = 1.0) -> None:
        self.width = width

    def fit(self, molecules: Any, y: Any = None) -> "PairSums":
        if not self.width > 0:
            raise ValueError(f"width must be positive, got {self.width!r}")
        self.n_features_ = 2
        return self

    def _pairs(self, mols: Molecules, i: int):
        Z, R = mols.molecule(i)
        a, b = np.triu_indices(len(Z), 1)
        d = R[a] - R[b]
        r = np.linalg.norm(d, axis=1)
        return Z, a, b, d, r

    def transform(self, molecules: Any) -> np.ndarray:
        mols = self._check_input(molecules)
        X = np.zeros((len(mols), 2))
        for i in range(len(mols)):
            Z, a, b, _, r = self._pairs(mols, i)
            X[i] = np.exp(-0.5 * (r / self.width) ** 2).sum(), (Z[a] * Z[b] / r).sum()
        return X

    def jacobian(self, molecules: Any) -> list[np.ndarray]:
        mols = self._check_input(molecules)
        out = []
        for i in range(len(mols)):
            Z, a, b, d, r = self._pairs(mols, i)
            J = np.zeros((2, len(Z), 3))
            # ∂x/∂R_a for each pair: f'(r) d / r, and the opposite for R_b
            w = np.stack([-np.exp(-0.5 * (r / self.width) ** 2) / self.width**2, -Z[a] * Z[b] / r**3])
            for k in range(2):
                np.add.at(J[k], a, w[k][:, None] * d)
                np.add.at(J[k], b, -w[k][:, None] * d)
            out.append(J)
        return out

    def vjp(self, molecules: Any, G: np.ndarray) -> list[np.ndarray]:
        mols = self._check_input(molecules)
        G = self._check_cotangent(mols, G)
        if not np.isfinite(G).all():
            from molkrr.errors import InvalidInputError

            raise InvalidInputError("cotangent G contains NaN or infinity")
        return [np.einsum("f,fac->ac", g, J) for g, J in zip(G, self.jacobian(mols))]

    @classmethod
    def model_file_schema(cls) -> Schema:
        """How a model file's copy of this representation is checked on load (molkrr.schema)."""
        return Schema(params={"width": Number(lo=0.0, lo_open=True)}, fitted={"n_features_": Int(2, 2)})
