"""CoulombMatrix: equality with qmllib, analytic VJP/Jacobian vs finite differences, errors, padding."""

from __future__ import annotations

import numpy as np
import pytest

from molkrr.errors import (
    CoincidentAtomsError,
    NonFiniteCoordinatesError,
    RepresentationSizeError,
    InvalidInputError,
    ShapeMismatchError,
)
from molkrr.molecules import Molecules
from molkrr.representations.base import Representation
from molkrr.representations.coulomb import CoulombMatrix, _coulomb_matrices, _row_norm_order

qmllib_reps = pytest.importorskip("qmllib.representations")

VARIANTS = ["unsorted", "sorted", "eigenvalues"]


# ---------------------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def qm9(qm9_rows) -> Molecules:
    # QM9 is ordered by size, so rows near 30000 give molecules of 15-27 atoms
    return qm9_rows(list(range(300)) + list(range(30000, 30100)))


def _random_molecule(rng: np.random.Generator, n: int, min_dist: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    while True:
        R = rng.uniform(-1.5, 1.5, (n, 3)) * n ** (1 / 3)
        d = np.linalg.norm(R[:, None] - R[None], axis=-1) + 10 * np.eye(n)
        if d.min() > min_dist:
            return rng.choice([1, 6, 7, 8, 9], n), R


@pytest.fixture(scope="module")
def random_mols() -> Molecules:
    rng = np.random.default_rng(42)
    return Molecules.from_list(*zip(*[_random_molecule(rng, n) for n in [2, 7, 4, 7, 11, 1, 5]]))


def _qmllib(variant: str, Z: np.ndarray, R: np.ndarray, size: int) -> np.ndarray:
    Z = Z.astype(np.float64)
    if variant == "eigenvalues":
        return qmllib_reps.generate_coulomb_matrix_eigenvalue(Z, R, size=size)
    sorting = "row-norm" if variant == "sorted" else "unsorted"
    return qmllib_reps.generate_coulomb_matrix(Z, R, size=size, sorting=sorting)


def _qmllib_batch(variant: str, mols: Molecules, size: int) -> np.ndarray:
    """qmllib features of every molecule, with one OpenMP thread: its threaded row-norm reduction
    sums in a run-dependent order, so exact ties (e.g. QM9 row 22) would otherwise be broken at random."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="openmp"):
        return np.array([_qmllib(variant, Z, R, size) for Z, R in mols])


def _well_separated(mols: Molecules, variant: str) -> np.ndarray:
    """Indices of molecules whose sort keys have no near-ties, so that ±1e-5 Å finite differences
    neither reorder them nor see a large curvature: squared row norms at least 0.1 (e²/Å)² apart
    (a 1e-5 Å step moves them by < 1e-2), eigenvalues of the padded matrix at least 0.05 e²/Å apart."""
    keep = []
    for i, (Z, R) in enumerate(mols):
        C, _ = _coulomb_matrices(Z[None].astype(float), R[None])
        if variant == "eigenvalues":
            keys, gap = np.concatenate([np.linalg.eigvalsh(C[0]), [0.0]]), 0.05  # padding zeros count
        elif variant == "sorted":
            keys, gap = np.sum(C[0] ** 2, axis=1), 0.1
        else:
            keep.append(i)
            continue
        if len(keys) < 2 or np.min(np.diff(np.sort(keys))) > gap:
            keep.append(i)
    return np.array(keep)


def _fd_vjp(rep: CoulombMatrix, mols: Molecules, G: np.ndarray, h: float = 1e-5) -> list[np.ndarray]:
    """Central differences of E = Σ G·X(R) for every coordinate (all perturbed copies in one batch)."""
    out = []
    for i, (Z, R) in enumerate(mols):
        n = len(Z)
        shifted = []
        for a in range(n):
            for x in range(3):
                for sign in (1.0, -1.0):
                    Rs = R.copy()
                    Rs[a, x] += sign * h
                    shifted.append(Rs)
        X = rep.transform(Molecules.from_list([Z] * len(shifted), shifted))
        E = X @ G[i]
        out.append(((E[0::2] - E[1::2]) / (2 * h)).reshape(n, 3))
    return out


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


# ---------------------------------------------------------------------------------------- values
@pytest.mark.parametrize("variant", VARIANTS)
def test_values_match_qmllib_random(variant, random_mols):
    size = 12
    X = CoulombMatrix(variant, size=size).fit(random_mols).transform(random_mols)
    Q = _qmllib_batch(variant, random_mols, size)
    assert X.shape == Q.shape
    np.testing.assert_allclose(X, Q, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_values_match_qmllib_qm9(variant, qm9):
    rep = CoulombMatrix(variant, size=29).fit(qm9)
    X = rep.transform(qm9)
    Q = _qmllib_batch(variant, qm9, 29)
    np.testing.assert_allclose(X, Q, rtol=1e-12, atol=1e-12)


# Molecules on a grid with exact row-norm ties between non-equivalent atoms: the sorted vector
# depends on the tie-break, and qmllib puts the higher input index first.
TIE_MOLECULES = [
    ([6, 6, 1, 6, 6, 6], [[2, 0, 1], [2, 2, 1], [1, 1, 0], [0, 1, 2], [2, 2, 0], [0, 2, 2]]),
    ([1, 1, 1, 1, 1], [[1, 2, 0], [2, 1, 2], [2, 2, 2], [0, 2, 0], [1, 0, 0]]),
    ([6, 6, 6, 6], [[0, 0, 1], [2, 1, 1], [1, 2, 0], [1, 0, 2]]),
    ([1, 1, 6, 1, 6, 1], [[1, 0, 1], [2, 1, 2], [1, 2, 1], [0, 0, 2], [1, 0, 2], [2, 2, 1]]),
]


def test_sorted_tie_breaking_matches_qmllib():
    mols = Molecules.from_list([np.array(z) for z, _ in TIE_MOLECULES], [np.array(r, float) for _, r in TIE_MOLECULES])
    X = CoulombMatrix("sorted", size=8).fit(mols).transform(mols)
    Q = _qmllib_batch("sorted", mols, 8)
    np.testing.assert_allclose(X, Q, rtol=1e-12, atol=1e-12)
    # the test is able to fail: the other tie-break (lower index first) gives different vectors
    differs = 0
    for (Z, R), q in zip(mols, Q):
        C, _ = _coulomb_matrices(Z[None].astype(float), R[None])
        norms = np.sum(C[0] ** 2, axis=1)
        alt = np.argsort(-norms, kind="stable")
        n = len(Z)
        differs += not np.allclose(C[0][np.ix_(alt, alt)][np.tril_indices(n)], q[: n * (n + 1) // 2])
    assert differs == len(mols)


def test_derivative_permutation_is_the_transform_permutation(qm9):
    """vjp/jacobian use the vectorised _row_norm_order; transform uses the compiled kernel."""
    mols = Molecules.from_list(
        [Z for Z, _ in qm9] + [np.array(z) for z, _ in TIE_MOLECULES],
        [R for _, R in qm9] + [np.array(r, float) for _, r in TIE_MOLECULES],
    )
    X = CoulombMatrix("sorted").fit(mols).transform(mols)
    for i, (Z, R) in enumerate(mols):
        C, _ = _coulomb_matrices(Z[None].astype(float), R[None])
        p = _row_norm_order(C)[0]
        n = len(Z)
        np.testing.assert_array_equal(C[0][np.ix_(p, p)][np.tril_indices(n)], X[i, : n * (n + 1) // 2])


def test_eigenvalue_padding_sorts_zeros_between_signs():
    Z = np.array([6, 1, 1, 1, 1])
    R = np.array([[0.0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]])
    mols = Molecules.from_list([Z], [R])
    X = CoulombMatrix("eigenvalues", size=8).fit(mols).transform(mols)[0]
    vals = np.linalg.eigvalsh(_coulomb_matrices(Z[None].astype(float), R[None])[0][0])
    assert (vals < 0).any()  # CH4 has negative eigenvalues
    n_pos = int((vals > 0).sum())
    np.testing.assert_array_equal(X[n_pos : n_pos + 3], 0.0)
    np.testing.assert_allclose(np.sort(X[X != 0]), np.sort(vals), rtol=1e-12)
    assert np.all(np.diff(X) <= 0)


def test_padding_small_molecule_in_larger_size(random_mols):
    small = random_mols[2]  # 4 atoms
    for variant in ("unsorted", "sorted"):
        tight = CoulombMatrix(variant).fit(small).transform(small)[0]
        wide_rep = CoulombMatrix(variant, size=9).fit(small)
        wide = wide_rep.transform(small)[0]
        assert wide_rep.n_features_ == 45 and tight.shape == (10,)
        np.testing.assert_array_equal(wide[:10], tight)
        np.testing.assert_array_equal(wide[10:], 0.0)
        # derivative: cotangent entries on the padding do not matter
        G = np.random.default_rng(0).normal(size=(1, 45))
        G0 = G.copy()
        G0[:, 10:] = 0
        np.testing.assert_array_equal(wide_rep.vjp(small, G)[0], wide_rep.vjp(small, G0)[0])
        J = wide_rep.jacobian(small)[0]
        assert J.shape == (45, 4, 3)
        np.testing.assert_array_equal(J[10:], 0.0)


def test_fit_learns_size_and_feature_count(random_mols):
    rep = CoulombMatrix().fit(random_mols)
    assert rep.size_ == 11 and rep.n_features_ == 66
    assert CoulombMatrix("eigenvalues").fit(random_mols).n_features_ == 11
    assert CoulombMatrix("unsorted", size=20).fit(random_mols).n_features_ == 210
    assert isinstance(rep, Representation)


@pytest.mark.parametrize("variant", ["sorted", "eigenvalues"])
def test_permutation_invariance(variant, qm9):
    mols = qm9.subset(_well_separated(qm9, variant)[::8][:12])
    rng = np.random.default_rng(3)
    perms = [rng.permutation(n) for n in mols.n_atoms]
    shuffled = Molecules.from_list([Z[p] for (Z, _), p in zip(mols, perms)], [R[p] for (_, R), p in zip(mols, perms)])
    rep = CoulombMatrix(variant, size=29).fit(mols)
    np.testing.assert_allclose(rep.transform(shuffled), rep.transform(mols), rtol=1e-12, atol=1e-12)
    G = rng.normal(size=(len(mols), rep.n_features_))
    for g, gs, p in zip(rep.vjp(mols, G), rep.vjp(shuffled, G), perms):
        np.testing.assert_allclose(gs, g[p], rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------- derivatives
@pytest.mark.parametrize("variant", VARIANTS)
def test_vjp_matches_finite_differences_qm9(variant, qm9):
    idx = _well_separated(qm9, variant)
    small, large = idx[idx < 300], idx[idx >= 300]  # 3-12 atoms and 14-22 atoms
    mols = qm9.subset(np.concatenate([small[[0, len(small) // 2, -1]], large[[0, len(large) // 2, -1]]]))
    rep = CoulombMatrix(variant, size=29).fit(mols)
    G = np.random.default_rng(4).normal(size=(len(mols), rep.n_features_))
    for g, fd in zip(rep.vjp(mols, G), _fd_vjp(rep, mols, G)):
        assert _rel_err(g, fd) <= 1e-6


@pytest.mark.parametrize("variant", VARIANTS)
def test_krr_forces_compose_as_in_docs(variant, qm9):
    """docs/forces.md §5: E = Σ_m α_m k(A x(R), A x_m), F = −VJP_R(G_z A) with the Gaussian gradient
    G_z = −Σ_m α_m k (z − z_m)/σ², against central differences of E (the kernel is written out here
    so the check depends only on the formulas in the docs)."""
    rng = np.random.default_rng(7)
    train = qm9[100:130]
    query = qm9.subset(300 + _well_separated(qm9[300:360], variant)[:3])
    rep = CoulombMatrix(variant, size=29).fit(train)
    A = rng.normal(size=(5, rep.n_features_)) / np.sqrt(rep.n_features_)
    Zt = rep.transform(train) @ A.T
    alpha = rng.normal(size=len(train))
    sigma = 2.0 * np.median(np.linalg.norm(Zt[:, None] - Zt[None], axis=-1))

    def energy(mols: Molecules) -> np.ndarray:
        Z = rep.transform(mols) @ A.T
        K = np.exp(-np.sum((Z[:, None] - Zt[None]) ** 2, axis=-1) / (2 * sigma**2))
        return K @ alpha

    Z = rep.transform(query) @ A.T
    K = np.exp(-np.sum((Z[:, None] - Zt[None]) ** 2, axis=-1) / (2 * sigma**2))
    Gz = -((K * alpha) @ np.ones(len(train)))[:, None] * Z / sigma**2 + (K * alpha) @ Zt / sigma**2
    forces = [-g for g in rep.vjp(query, Gz @ A)]
    h = 1e-5
    for (numbers, R), F in zip(query, forces):
        fd = np.zeros_like(R)
        for a in range(len(numbers)):
            for x in range(3):
                Rp, Rm = R.copy(), R.copy()
                Rp[a, x] += h
                Rm[a, x] -= h
                Ep, Em = energy(Molecules.from_list([numbers, numbers], [Rp, Rm]))
                fd[a, x] = -(Ep - Em) / (2 * h)
        assert _rel_err(F, fd) <= 1e-6


# ---------------------------------------------------------------------------------------- errors
def test_too_large_molecule_raises(random_mols):
    """transform/vjp/jacobian refusals are contract checks (test_contract_representations.py); here: fit and the message."""
    rep = CoulombMatrix("sorted", size=5).fit(random_mols[[0, 2]])
    with pytest.raises(RepresentationSizeError, match="11 atoms"):
        rep.transform(random_mols[4])
    with pytest.raises(RepresentationSizeError):
        CoulombMatrix(size=5).fit(random_mols)


@pytest.mark.parametrize("params", [{"variant": "row-norm"}, {"size": 0}, {"size": 2.5}, {"size": True}])
def test_bad_parameters_raise_in_fit(params, random_mols):
    rep = CoulombMatrix(**params)  # __init__ only stores
    with pytest.raises(ValueError):
        rep.fit(random_mols)


@pytest.mark.parametrize("variant", VARIANTS)
def test_coincident_atoms_raise_even_without_validation(variant):
    Z = np.array([6, 1, 1])
    R = np.array([[0.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0]])
    mols = Molecules(Z, R, [0, 3], validate=False)
    rep = CoulombMatrix(variant, size=3).fit(mols)
    with np.errstate(all="raise"):
        with pytest.raises(CoincidentAtomsError):
            rep.transform(mols)
        with pytest.raises(CoincidentAtomsError):
            rep.vjp(mols, np.ones((1, rep.n_features_)))


def test_non_finite_positions_raise_even_without_validation():
    mols = Molecules([6, 1], [[0.0, 0, 0], [np.nan, 0, 0]], [0, 2], validate=False)
    for variant in VARIANTS:
        rep = CoulombMatrix(variant, size=2).fit(mols)
        with pytest.raises(NonFiniteCoordinatesError):
            rep.transform(mols)
        with pytest.raises(NonFiniteCoordinatesError):
            rep.vjp(mols, np.ones((1, rep.n_features_)))


