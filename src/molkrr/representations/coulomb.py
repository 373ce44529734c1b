"""The Coulomb matrix (Rupp et al., PRL 108, 058301, 2012) with analytic vector–Jacobian products.

For a molecule with atomic numbers Z (n,) and positions R (n, 3) in Å::

    C_ii = 0.5 Z_i^2.4          C_ij = Z_i Z_j / r_ij,   r_ij = ‖R_i − R_j‖  (i ≠ j)

Variants (the feature layouts are those of qmllib, so the vectors are interchangeable):

``'unsorted'``
    the lower triangle of the size×size matrix (row-major, diagonal included, atoms in input
    order, zero padding) — size·(size+1)/2 features; qmllib ``generate_coulomb_matrix(...,
    sorting="unsorted")``.
``'sorted'``
    atoms permuted by descending row norm ‖C_i‖₂ first, then the lower triangle; qmllib
    ``generate_coulomb_matrix(..., sorting="row-norm")``. Ties are broken as qmllib does: among
    equal norms the atom with the *higher* input index comes first (the row norms are summed in
    qmllib's order, diagonal first, then partners in increasing index, so exact ties are the same
    ties). ``'sorted'`` is the default.
``'eigenvalues'``
    the eigenvalues of the size×size zero-padded matrix, sorted in descending order — size
    features; qmllib ``generate_coulomb_matrix_eigenvalue``. Note that padding contributes zero
    eigenvalues that sort *between* the positive and negative eigenvalues of C (Coulomb
    matrices have negative eigenvalues), not after them.

Differentiability
-----------------
``'unsorted'`` is smooth wherever no two atoms coincide. ``'sorted'`` is differentiated as the
fixed permutation found at the evaluation point; this is exact where that order does not change
(no ties among row norms). Where two row norms cross the sorted vector itself generally jumps
(entries change places unless the two atoms are equivalent). ``'eigenvalues'`` uses
dλ_k/dC = v_k v_kᵀ (Hellmann–Feynman), exact for non-degenerate eigenvalues; at a degeneracy the
sorted eigenvalues are continuous but not differentiable and the result depends on the
eigenvectors LAPACK returns. The padding zeros have zero derivative. The derivation is in
``docs/forces.md``.
"""

from __future__ import annotations

import functools

from typing import Any

import numpy as np
from numba import njit
from sklearn.base import clone

from .._validation import check_choice, check_int
from ..errors import (
    CoincidentAtomsError,
    InvalidInputError,
    NonFiniteCoordinatesError,
    RepresentationSizeError,
)
from ..molecules import MIN_INTERATOMIC_DISTANCE, Molecules, as_molecules
from ..schema import MAX_MODEL_ATOMS, Choice, Int, Schema, fail
from .base import Representation
from .registry import register_representation

__all__ = ["CoulombMatrix"]

#: Accepted values of ``variant``.
VARIANTS = ("unsorted", "sorted", "eigenvalues")

#: Upper bound on m·n² (molecules × atoms²) per vectorised chunk of equal-size molecules: each
#: (m, n, n) temporary of the eigenvalue transform and of vjp then stays at 2 MiB.
_CHUNK_ELEMENTS = 1 << 18


@register_representation("cm-eigenvalues", variant="eigenvalues", description="Coulomb-matrix eigenvalues, sorted")
@register_representation("cm-unsorted", variant="unsorted", description="Coulomb matrix, atoms in input order")
@register_representation("cm-sorted", variant="sorted", description="Coulomb matrix, rows sorted by norm")
class CoulombMatrix(Representation):
    """Coulomb matrix representation: unsorted, row-norm sorted, or its eigenvalue spectrum.

    Parameters
    ----------
    variant : {'unsorted', 'sorted', 'eigenvalues'}
        Feature layout (see the module docstring); default ``'sorted'``.
    size : int or None
        Largest molecule (number of atoms) the features can hold. None: learned in ``fit`` as the
        largest molecule seen.

    Attributes
    ----------
    size_ : int
        The size in use.
    n_features_ : int
        size_·(size_+1)/2 for the matrix variants, size_ for ``'eigenvalues'``.

    Notes
    -----
    Units: positions in Å, so features are in e²/Å (atomic charges times inverse Å) and the
    derivatives returned by :meth:`vjp` / :meth:`jacobian` are per Å.
    """

    limits_size = True

    def __init__(self, variant: str = "sorted", size: int | None = None) -> None:
        self.variant = variant
        self.size = size

    def sized_for(self, max_atoms: int, max_element_counts: Any) -> "CoulombMatrix":
        """An unfitted copy with ``size=max_atoms`` (see :meth:`Representation.sized_for`)."""
        return clone(self).set_params(size=int(max_atoms))

    # ------------------------------------------------------------------ fit / transform
    def fit(self, molecules: Any, y: Any = None) -> "CoulombMatrix":
        """Learn ``size_`` (the largest molecule, unless ``size`` is given) and ``n_features_``."""
        self._check_params()
        mols = as_molecules(molecules)
        largest = int(mols.n_atoms.max())
        if self.size is None:
            size = largest
        else:
            size = int(self.size)
            if largest > size:
                raise RepresentationSizeError(
                    f"molecule {int(np.argmax(mols.n_atoms))} has {largest} atoms, more than size={size}"
                )
        self.size_ = size
        self.n_features_ = size if self.variant == "eigenvalues" else size * (size + 1) // 2
        return self

    def transform(self, molecules: Any) -> np.ndarray:
        """Feature matrix, shape (n_molecules, n_features_), in e²/Å.

        Raises RepresentationSizeError for a molecule with more than ``size_`` atoms and
        CoincidentAtomsError for two atoms closer than ``MIN_INTERATOMIC_DISTANCE``.
        """
        mols = self._checked(molecules)
        X = np.zeros((len(mols), self.n_features_))
        if self.variant == "eigenvalues":
            for n, idx in mols.by_size().items():
                for chunk in _chunks(idx, n):
                    Z, R = mols.stacked(chunk)
                    C, _ = _coulomb_matrices(Z.astype(np.float64), R)
                    X[chunk] = _padded_spectrum(np.linalg.eigvalsh(C), self.size_)[0]
        else:
            bad = _matrix_features(
                mols.numbers, mols.positions, mols.offsets, self.variant == "sorted", MIN_INTERATOMIC_DISTANCE**2, X
            )
            if bad >= 0:
                _coulomb_matrices(*(a[None].astype(np.float64) for a in mols.molecule(bad)))  # raises
                raise CoincidentAtomsError(f"molecule {bad} has coincident atoms")  # pragma: no cover
        return X

    # ------------------------------------------------------------------ derivatives
    def vjp(self, molecules: Any, G: Any) -> list[np.ndarray]:
        """Vector–Jacobian product: G = ∂E/∂X, shape (n_molecules, n_features_) → ∂E/∂R per molecule.

        Returns one (n_atoms_i, 3) array per molecule, in (unit of E)/Å, without building the
        Jacobian. Every off-diagonal entry C_ij depends on R_i and on R_j,
        ∂C_ij/∂R_i = −Z_i Z_j (R_i − R_j)/r_ij³ = −∂C_ij/∂R_j, so atom a collects a term from each
        pair it belongs to:  ∂E/∂R_a = −Σ_j W_aj C_aj (R_a − R_j)/r_aj²  with W = Γ + Γᵀ and
        Γ = ∂E/∂C (the cotangent scattered back onto the matrix entries). For ``'sorted'`` Γ is
        the cotangent mapped back through the permutation at R (valid where the order does not
        change); for ``'eigenvalues'`` Γ = Σ_k g_k v_k v_kᵀ (non-degenerate eigenvalues).
        """
        mols = self._checked(molecules)
        G = self._check_cotangent(mols, G)
        if not np.isfinite(G).all():
            raise InvalidInputError("cotangent G contains NaN or infinity")
        out: list[np.ndarray] = [np.empty(0)] * len(mols)
        for n, idx in mols.by_size().items():
            for chunk in _chunks(idx, n):
                Z, R = mols.stacked(chunk)
                Z = Z.astype(np.float64)
                C, d2 = _coulomb_matrices(Z, R)
                gamma = self._cotangent_on_matrix(C, G[chunk])
                W = gamma + gamma.transpose(0, 2, 1)
                K = W * C / d2  # d2 has ones on the diagonal; the diagonal of K is cleared below
                diag = np.arange(n)
                K[:, diag, diag] = 0.0
                grad = K @ R - K.sum(axis=2)[:, :, None] * R  # −Σ_j K_aj (R_a − R_j)
                for k, i in enumerate(chunk):
                    out[i] = grad[k]
        return out

    def feature_support(self, molecules: Any) -> int | None:
        """Leading features that can be non-zero: the rows of the largest molecule in the batch.

        The lower triangle is stored row by row, so a molecule of m atoms fills only the first
        m(m+1)/2 features; the rest is padding, constant 0. (None for 'eigenvalues'.)
        """
        if self.variant == "eigenvalues":
            return None
        m = int(as_molecules(molecules).n_atoms.max())
        return m * (m + 1) // 2

    def jacobian(self, molecules: Any) -> list[np.ndarray]:
        """Explicit ∂X/∂R, one (n_features_, n_atoms_i, 3) array per molecule (per Å).

        Built entry by entry from ∂C_ij/∂R (and v_k v_kᵀ for eigenvalues), independently of
        :meth:`vjp`; meant for tests and small molecules (memory n_features_ · n_atoms · 3).
        """
        mols = self._checked(molecules)
        out = []
        for i in range(len(mols)):
            Z, R = mols.molecule(i)
            Z = Z.astype(np.float64)
            n = len(Z)
            C, _ = _coulomb_matrices(Z[None], R[None])
            # dC[i, j, a, :] = ∂C_ij/∂R_a, nonzero only for a ∈ {i, j}, i ≠ j
            dC = np.zeros((n, n, n, 3))
            for p in range(n):
                for q in range(n):
                    if p != q:
                        diff = R[p] - R[q]
                        d = -Z[p] * Z[q] * diff / np.linalg.norm(diff) ** 3
                        dC[p, q, p] += d
                        dC[p, q, q] -= d
            J = np.zeros((self.n_features_, n, 3))
            if self.variant == "eigenvalues":
                vals, vecs = np.linalg.eigh(C[0])
                _, order = _padded_spectrum(vals[None], self.size_)
                for k, src in enumerate(order[0]):
                    if src < n:  # a padding zero has zero derivative
                        v = vecs[:, src]
                        J[k] = np.einsum("i,j,ijax->ax", v, v, dC)
            else:
                perm = _row_norm_order(C)[0] if self.variant == "sorted" else np.arange(n)
                f = 0
                for a in range(n):
                    for b in range(a + 1):
                        J[f] = dC[perm[a], perm[b]]
                        f += 1
            out.append(J)
        return out

    @classmethod
    def model_file_schema(cls) -> Schema:
        """The fields a model file holds for a CoulombMatrix, and their checks (:mod:`molkrr.schema`)."""
        return _SCHEMA

    # ------------------------------------------------------------------ helpers
    def _check_params(self) -> None:
        check_choice(self.variant, "variant", VARIANTS)
        if self.size is not None:
            check_int(self.size, "size", 1)

    def _checked(self, molecules: Any) -> Molecules:
        mols = self._check_input(molecules)
        self._check_fitted_sizes()
        if not np.isfinite(mols.positions).all():  # possible with Molecules(..., validate=False)
            raise NonFiniteCoordinatesError("positions contain NaN or infinity")
        too_big = mols.n_atoms > self.size_
        if too_big.any():
            i = int(np.flatnonzero(too_big)[0])
            raise RepresentationSizeError(
                f"molecule {i} has {int(mols.n_atoms[i])} atoms but this CoulombMatrix holds at most "
                f"size_={self.size_}; fit on larger molecules or pass a larger size"
            )
        return mols

    def _check_fitted_sizes(self) -> None:
        """The compiled loops write size_(size_+1)/2 features per row: n_features_ must be exactly that."""
        size = self.size_
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise RepresentationSizeError(f"size_ must be a positive integer, got {size!r}; fit again")
        expected = size if self.variant == "eigenvalues" else size * (size + 1) // 2
        if self.n_features_ != expected or self.variant not in VARIANTS:
            raise RepresentationSizeError(
                f"n_features_={self.n_features_!r} does not match variant={self.variant!r} and size_={size} "
                f"({expected} features); fit again"
            )

    def _cotangent_on_matrix(self, C: np.ndarray, G: np.ndarray) -> np.ndarray:
        """Γ = ∂E/∂C (m, n, n) from G = ∂E/∂X (m, n_features_) for molecules with matrices C."""
        m, n, _ = C.shape
        if self.variant == "eigenvalues":
            vals, V = np.linalg.eigh(C)
            _, order = _padded_spectrum(vals, self.size_)
            g = np.empty((m, self.size_))
            np.put_along_axis(g, order, G, axis=1)  # g[src] = G[position of src]
            g = g[:, :n]  # drop the padding zeros, whose derivative is zero
            return (V * g[:, None, :]) @ V.transpose(0, 2, 1)
        ta, tb = _tril_indices(n)
        gamma = np.zeros((m, n, n))
        if self.variant == "sorted":
            perm = _row_norm_order(C)
            rows = perm[:, ta]
            cols = perm[:, tb]
            gamma[np.arange(m)[:, None], rows, cols] = G[:, : len(ta)]
        else:
            gamma[:, ta, tb] = G[:, : len(ta)]
        return gamma


# ------------------------------------------------------------------ model files
def _check_size(size_, where, node) -> None:
    size = node.params["size"]
    if size is not None and size_ != size:
        raise fail(where, f"is {size_} but the parameter size is {size}")


def _check_n_features(n_features, where, node) -> None:
    variant, size_ = node.params["variant"], node.fitted["size_"]
    expected = size_ if variant == "eigenvalues" else size_ * (size_ + 1) // 2
    if n_features != expected:
        raise fail(where, f"is {n_features}, but a {variant} Coulomb matrix of size_={size_} has {expected} features")


_SCHEMA = Schema(
    params={"variant": Choice(VARIANTS), "size": Int(1, MAX_MODEL_ATOMS, none_ok=True)},
    fitted={"size_": Int(1, MAX_MODEL_ATOMS, then=_check_size), "n_features_": Int(1, then=_check_n_features)},
)


@njit(cache=True)
def _matrix_features(numbers, positions, offsets, sort, min_d2, X):  # pragma: no cover - compiled
    """Fill X (n_molecules, size(size+1)/2) with unsorted or row-norm-sorted lower triangles.

    Works on the ragged batch directly (one scratch matrix, no stacking). Mirrors qmllib's
    arithmetic: distances summed x, y, z in order, Z_i Z_j / r, squared row norms accumulated
    diagonal first then partners by increasing index, and the order built by repeatedly sending
    the first (lowest-index) minimum to the back. Returns -1, or the index of the first molecule
    with two atoms closer than sqrt(min_d2) (X is then incomplete).
    """
    size = 0
    for mol in range(offsets.shape[0] - 1):
        size = max(size, offsets[mol + 1] - offsets[mol])
    C = np.empty((size, size))
    norms = np.empty(size)
    perm = np.empty(size, dtype=np.int64)
    for mol in range(offsets.shape[0] - 1):
        s = offsets[mol]
        n = offsets[mol + 1] - s
        for i in range(n):
            zi = float(numbers[s + i])
            C[i, i] = 0.5 * zi**2.4
            for j in range(i + 1, n):
                dx = positions[s + j, 0] - positions[s + i, 0]
                dy = positions[s + j, 1] - positions[s + i, 1]
                dz = positions[s + j, 2] - positions[s + i, 2]
                d2 = dx * dx + dy * dy + dz * dz
                if d2 < min_d2:
                    return mol
                c = zi * float(numbers[s + j]) / np.sqrt(d2)
                C[i, j] = c
                C[j, i] = c
        if sort:
            for i in range(n):
                acc = C[i, i] * C[i, i]
                for j in range(n):
                    if j != i:
                        acc += C[i, j] * C[i, j]
                norms[i] = acc
            for k in range(n):
                best = 0
                for j in range(1, n):
                    if norms[j] < norms[best]:
                        best = j
                perm[n - 1 - k] = best
                norms[best] = np.inf
        else:
            for i in range(n):
                perm[i] = i
        f = 0
        for a in range(n):
            pa = perm[a]
            for b in range(a + 1):
                X[mol, f] = C[pa, perm[b]]
                f += 1
    return -1


def _chunks(idx: np.ndarray, n: int) -> list[np.ndarray]:
    """Split molecule indices of one size n into chunks of at most _CHUNK_ELEMENTS / n² molecules."""
    per = max(1, _CHUNK_ELEMENTS // (n * n))
    return [idx[s : s + per] for s in range(0, len(idx), per)]


def _coulomb_matrices(Z: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coulomb matrices of m molecules of n atoms.

    Z (m, n) float, R (m, n, 3) in Å → C (m, n, n) in e²/Å and the squared distances
    d2 (m, n, n) in Å² with ones on the diagonal. Raises CoincidentAtomsError.
    """
    C, d2, bad = _stacked_matrices(
        np.ascontiguousarray(Z, dtype=np.float64), np.ascontiguousarray(R, dtype=np.float64), MIN_INTERATOMIC_DISTANCE**2
    )
    if bad >= 0:
        n = Z.shape[1]
        close = d2[bad] + 10.0 * np.eye(n) < MIN_INTERATOMIC_DISTANCE**2
        a, b = np.argwhere(close)[0]
        raise CoincidentAtomsError(
            f"atoms {a} and {b} of a molecule are {np.sqrt(d2[bad, a, b]):.3g} Å apart "
            f"(minimum {MIN_INTERATOMIC_DISTANCE} Å)"
        )
    return C, d2


@njit(cache=True)
def _stacked_matrices(Z, R, min_d2):  # pragma: no cover - compiled
    """C (m, n, n), d2 (m, n, n) with a unit diagonal, and -1 or the first molecule with a too-short distance."""
    m, n = Z.shape
    C = np.empty((m, n, n))
    d2 = np.empty((m, n, n))
    bad = -1
    for k in range(m):
        for i in range(n):
            C[k, i, i] = 0.5 * Z[k, i] ** 2.4
            d2[k, i, i] = 1.0
            for j in range(i + 1, n):
                dx = R[k, j, 0] - R[k, i, 0]
                dy = R[k, j, 1] - R[k, i, 1]
                dz = R[k, j, 2] - R[k, i, 2]
                r2 = dx * dx + dy * dy + dz * dz
                if r2 < min_d2 and bad < 0:
                    bad = k
                c = Z[k, i] * Z[k, j] / np.sqrt(max(r2, min_d2))
                C[k, i, j] = c
                C[k, j, i] = c
                d2[k, i, j] = r2
                d2[k, j, i] = r2
    return C, d2, bad


def _row_norm_order(C: np.ndarray) -> np.ndarray:
    """(m, n) permutations sorting atoms by descending row norm, ties broken as qmllib does.

    qmllib repeatedly moves the first (lowest-index) minimum to the back, i.e. the reverse of a
    stable ascending sort. The squared norms are accumulated in qmllib's order (diagonal first,
    then partners by increasing index) so that exact ties come out as the same ties.
    """
    m, n, _ = C.shape
    diag = np.arange(n)
    C2 = C * C
    norms = C2[:, diag, diag].copy()
    C2[:, diag, diag] = 0.0  # adding an exact zero leaves the running sum unchanged
    for j in range(n):
        norms += C2[:, :, j]
    return np.argsort(norms, axis=1, kind="stable")[:, ::-1]


def _padded_spectrum(vals: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Descending spectrum of the size×size zero-padded matrix from the n eigenvalues (m, n).

    Returns (X (m, size), order (m, size)): X[:, k] is eigenvalue order[:, k] of the padded
    matrix, where indices < n are the given eigenvalues and indices ≥ n the padding zeros.
    """
    m, n = vals.shape
    full = np.concatenate([vals, np.zeros((m, size - n))], axis=1)
    order = np.argsort(-full, axis=1, kind="stable")
    return np.take_along_axis(full, order, axis=1), order


@functools.lru_cache(maxsize=64)
def _tril_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """np.tril_indices(n), computed once per size (read-only arrays): one molecule's VJP is a few µs."""
    ta, tb = np.tril_indices(n)
    ta.flags.writeable = False
    tb.flags.writeable = False
    return ta, tb
