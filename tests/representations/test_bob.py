"""Bag of Bonds: equality with qmllib, vjp against the explicit Jacobian and finite differences, errors."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from sklearn.base import clone
from threadpoolctl import threadpool_limits

from molkrr.errors import InvalidInputError, RepresentationSizeError, ShapeMismatchError, UnknownElementError
from molkrr.molecules import Molecules
from molkrr.representations.bob import BagOfBonds

qmllib_reps = pytest.importorskip("qmllib.representations")

SYMBOL = {1: "H", 6: "C", 7: "N", 8: "O", 9: "F", 16: "S"}


def random_molecules(n_mol: int, seed: int, max_atoms: int = 12, elements=(1, 6, 7, 8, 9)) -> Molecules:
    """Random molecules: atoms on a jittered grid (no coincident atoms, no ties in any bag)."""
    rng = np.random.default_rng(seed)
    zs, rs = [], []
    grid = np.array(list(itertools.product(range(4), repeat=3)), dtype=float) * 1.3
    for _ in range(n_mol):
        n = int(rng.integers(1, max_atoms + 1))
        zs.append(rng.choice(elements, size=n))
        rs.append(grid[rng.choice(len(grid), size=n, replace=False)] + rng.uniform(-0.3, 0.3, size=(n, 3)))
    return Molecules.from_list(zs, rs)


@pytest.fixture(scope="module")
def qm9(qm9_rows) -> Molecules:
    return qm9_rows(range(20000, 20150))  # 150 consecutive QM9 rows (all in qm9_part1.csv)


def qmllib_bob(mols: Molecules, rep: BagOfBonds) -> np.ndarray:
    # qmllib orders bags by a stable sort of asize on size: give it ascending atomic numbers
    asize = {SYMBOL[int(z)]: int(s) for z, s in zip(rep.elements_, rep.bag_sizes_)}
    with threadpool_limits(1, user_api="openmp"):  # OpenMP barriers are slow on a busy 2-core machine
        return np.array([qmllib_reps.generate_bob(z, r, None, size=30, asize=asize) for z, r in mols])


def vjp_via_jacobian(rep: BagOfBonds, mols: Molecules, G: np.ndarray) -> list[np.ndarray]:
    return [np.einsum("f,fnc->nc", g, J) for g, J in zip(G, rep.jacobian(mols))]


# ---------------------------------------------------------------------- values
@pytest.mark.parametrize("seed", [0, 1])
def test_values_equal_qmllib_random(seed):
    mols = random_molecules(60, seed)
    rep = BagOfBonds().fit(mols)
    X = rep.transform(mols)
    assert X.shape == (60, rep.n_features_)
    np.testing.assert_allclose(X, qmllib_bob(mols, rep), rtol=1e-12, atol=1e-12)


def test_values_equal_qmllib_with_padding_and_tied_bag_sizes():
    # equal bag sizes for several elements exercise the tie rule of the bag order
    mols = random_molecules(30, 5, max_atoms=6, elements=(1, 6, 8, 16))
    rep = BagOfBonds(bag_sizes={"H": 6, "C": 6, "O": 4, "S": 6}).fit(mols)
    np.testing.assert_allclose(rep.transform(mols), qmllib_bob(mols, rep), rtol=1e-12, atol=1e-12)
    padded = BagOfBonds(bag_padding=2).fit(mols)
    assert np.all(padded.bag_sizes_ == BagOfBonds().fit(mols).bag_sizes_ + 2)
    np.testing.assert_allclose(padded.transform(mols), qmllib_bob(mols, padded), rtol=1e-12, atol=1e-12)


def test_values_equal_qmllib_qm9(qm9):
    rep = BagOfBonds().fit(qm9)
    X = rep.transform(qm9)
    np.testing.assert_allclose(X, qmllib_bob(qm9, rep), rtol=1e-12, atol=1e-12)
    # a subset transformed alone gives the same rows (grouping by size must not mix molecules)
    np.testing.assert_array_equal(rep.transform(qm9[7:9]), X[7:9])


def test_bag_layout_and_sorting():
    # CH4 with bag sizes C:1, H:4 → [C | CC (empty) | CH ×4 | H ×4 | HH ×6]
    r = np.array([[0, 0, 0], [1.0, 0, 0], [0, 1.1, 0], [0, 0, 1.2], [-1.3, 0, 0]])
    mols = Molecules.from_list([np.array([6, 1, 1, 1, 1])], [r])
    rep = BagOfBonds().fit(mols)
    x = rep.transform(mols)[0]
    assert rep.n_features_ == 1 + 0 + 4 + 4 + 6 == len(x)
    sl = rep.bag_slices()
    assert list(sl) == [(6,), (6, 6), (6, 1), (1,), (1, 1)]
    assert x[sl[(6,)]] == pytest.approx([0.5 * 6**2.4])
    np.testing.assert_allclose(x[sl[(6, 1)]], [6 / 1.0, 6 / 1.1, 6 / 1.2, 6 / 1.3])
    np.testing.assert_allclose(x[sl[(1,)]], [0.5] * 4)
    hh = x[sl[(1, 1)]]
    assert np.all(np.diff(hh) <= 0)
    assert hh[0] == pytest.approx(1 / np.hypot(1.0, 1.1))


def test_bag_size_parameter_forms_agree():
    mols = random_molecules(10, 3, elements=(1, 6, 8))
    learned = BagOfBonds().fit(mols)
    sizes = dict(zip(learned.elements_.tolist(), learned.bag_sizes_.tolist()))
    forms = [
        BagOfBonds(bag_sizes=sizes),
        BagOfBonds(bag_sizes={SYMBOL[z]: s for z, s in sizes.items()}),
        BagOfBonds(bag_sizes=json.loads(json.dumps(sizes))),  # JSON turns keys into strings
        BagOfBonds(elements=["O", "C", "H"], bag_sizes=[sizes[8], sizes[6], sizes[1]]),
        BagOfBonds(elements=[8, 1, 6]),
    ]
    X = learned.transform(mols)
    for rep in forms:
        rep.fit(mols)
        np.testing.assert_array_equal(rep.elements_, [1, 6, 8])
        np.testing.assert_array_equal(rep.bag_sizes_, learned.bag_sizes_)
        np.testing.assert_array_equal(rep.transform(mols), X)
    # extra element in `elements` gets an empty bag (bag size 0 learned) and no features
    extra = BagOfBonds(elements=[1, 6, 8, 9]).fit(mols)
    assert extra.n_features_ == learned.n_features_
    np.testing.assert_array_equal(extra.transform(mols), X)
    # estimator conventions
    assert clone(learned).get_params() == learned.get_params()


# ---------------------------------------------------------------------- derivatives
def test_vjp_equals_G_times_jacobian_qm9(qm9):
    mols = qm9[:40]
    rep = BagOfBonds().fit(qm9)
    G = np.random.default_rng(3).normal(size=(len(mols), rep.n_features_))
    grads = rep.vjp(mols, G)
    assert [g.shape for g in grads] == [(n, 3) for n in mols.n_atoms]
    for a, b in zip(grads, vjp_via_jacobian(rep, mols, G)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def _fd_gradient(rep: BagOfBonds, mols: Molecules, G: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """Central differences of E = Σ G ⊙ X with respect to all flat coordinates, (n_total_atoms, 3)."""
    R0 = mols.positions
    out = np.zeros_like(R0)
    for a, c in itertools.product(range(R0.shape[0]), range(3)):
        Rp, Rm = R0.copy(), R0.copy()
        Rp[a, c] += h
        Rm[a, c] -= h
        Ep = np.sum(G * rep.transform(mols.with_positions(Rp)))
        Em = np.sum(G * rep.transform(mols.with_positions(Rm)))
        out[a, c] = (Ep - Em) / (2 * h)
    return out


def _min_gap_within_bags(rep: BagOfBonds, X: np.ndarray) -> float:
    gaps = [np.inf]
    for key, s in rep.bag_slices().items():
        if len(key) == 2 and s.stop - s.start > 1:
            v = X[:, s]
            d = -np.diff(v, axis=1)
            gaps.append(d[(v[:, 1:] > 0)].min(initial=np.inf))
    return float(min(gaps))


def test_vjp_matches_finite_differences_qm9(qm9):
    rep = BagOfBonds().fit(qm9)
    X = rep.transform(qm9)
    # pick molecules whose bag entries are well separated (symmetric molecules have ties)
    ok = [i for i in range(len(qm9)) if _min_gap_within_bags(rep, X[i : i + 1]) > 1e-3][:2]
    assert ok
    mols = qm9[ok]
    G = np.random.default_rng(7).normal(size=(len(mols), rep.n_features_))
    analytic = np.concatenate(rep.vjp(mols, G))
    numeric = _fd_gradient(rep, mols, G)
    assert np.linalg.norm(analytic - numeric) <= 1e-6 * np.linalg.norm(numeric)


def test_single_atom():
    rep = BagOfBonds().fit(random_molecules(8, 9))
    one = Molecules.from_list([np.array([8])], [np.zeros((1, 3))])
    x = rep.transform(one)
    assert np.count_nonzero(x) == 1 and x[0, rep.bag_slices()[(8,)].start] == pytest.approx(0.5 * 8**2.4)
    assert rep.vjp(one, np.ones((1, rep.n_features_)))[0].shape == (1, 3)
    assert np.all(rep.vjp(one, np.ones((1, rep.n_features_)))[0] == 0)


# ---------------------------------------------------------------------- errors
def test_bag_overflow_raises():
    rep = BagOfBonds().fit(Molecules.from_list([np.array([6, 1, 1])], [np.eye(3)]))
    big = Molecules.from_list([np.array([6, 1, 1, 1])], [np.vstack([np.eye(3), np.ones(3)])])
    with pytest.raises(RepresentationSizeError, match="3 atoms of H.*holds 2"):
        rep.transform(big)
    with pytest.raises(RepresentationSizeError):  # fixed bag sizes too small for the training set
        BagOfBonds(bag_sizes={"C": 1, "H": 1}).fit(big)


def test_unknown_element_raises():
    rep = BagOfBonds().fit(Molecules.from_list([np.array([6, 1])], [np.eye(2, 3)]))
    other = Molecules.from_list([np.array([6, 1]), np.array([6, 8])], [np.eye(2, 3), np.eye(2, 3)])
    with pytest.raises(UnknownElementError, match="molecule 1 contains element O"):
        rep.transform(other)
    with pytest.raises(UnknownElementError):
        BagOfBonds(elements=["C", "H"]).fit(other)
    with pytest.raises(UnknownElementError):
        BagOfBonds(elements=["Xx"]).fit(other)


def test_bad_parameters_raise():
    mols = random_molecules(3, 0, elements=(1, 6))
    with pytest.raises(ValueError):
        BagOfBonds(bag_sizes=[3, 4]).fit(mols)  # sequence without elements
    with pytest.raises(ShapeMismatchError):
        BagOfBonds(elements=[1, 6], bag_sizes=[3]).fit(mols)
    with pytest.raises(ValueError):
        BagOfBonds(elements=[1, 6], bag_sizes={"H": 3, "O": 2}).fit(mols)
    with pytest.raises(ValueError):
        BagOfBonds(bag_sizes={"H": -1, "C": 2}).fit(mols)
    with pytest.raises(ValueError):
        BagOfBonds(bag_sizes={"H": "many", "C": 2}).fit(mols)
    with pytest.raises(ValueError):
        BagOfBonds(bag_sizes={"H": 2.5, "C": 2}).fit(mols)
    with pytest.raises(ValueError):
        BagOfBonds(bag_padding=-1).fit(mols)


def test_exact_ties_use_the_same_permutation_in_vjp_and_jacobian():
    # square-planar CH4: the four C–H and the H–H bags have exactly equal entries
    r = np.array([[0, 0, 0], [1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]])
    mols = Molecules.from_list([np.array([6, 1, 1, 1, 1])], [r])
    rep = BagOfBonds().fit(mols)
    G = np.random.default_rng(0).normal(size=(1, rep.n_features_))
    np.testing.assert_allclose(rep.vjp(mols, G)[0], vjp_via_jacobian(rep, mols, G)[0], rtol=1e-12, atol=1e-12)
