"""FCHL19: equality with qmllib (values, Jacobians), VJP against G·J and central finite differences."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from molkrr.errors import InvalidInputError, ShapeMismatchError, UnknownElementError
from molkrr.molecules import Molecules
from molkrr.representations.fchl19 import FCHL19

qmllib_reps = pytest.importorskip("qmllib.representations")
generate_fchl19 = qmllib_reps.generate_fchl19

ELEMENTS = [1, 6, 7, 8, 9]


@pytest.fixture(scope="module")
def qm9(qm9_rows) -> list[tuple[np.ndarray, np.ndarray]]:
    # small (CH4, NH3, ...) to 19-atom molecules with all five elements among them
    rows = [0, 1, 2, 5, 21, 150, 402, 777, 1234, 1999, 2470, 2999]
    return list(qm9_rows(rows))


@pytest.fixture(scope="module")
def batch(qm9) -> Molecules:
    return Molecules.from_list([z for z, _ in qm9], [r for _, r in qm9])


def _qml(z, r, gradients=False, **kw):
    return generate_fchl19(z, r, elements=kw.pop("elements", ELEMENTS), gradients=gradients, **kw)


def _displaced_batch(z, r, h):
    """Molecules with every coordinate displaced by ±h: order (atom, xyz, sign)."""
    zs, rs = [], []
    for a, c, s in itertools.product(range(len(z)), range(3), (1.0, -1.0)):
        rr = r.copy()
        rr[a, c] += s * h
        zs.append(z)
        rs.append(rr)
    return Molecules.from_list(zs, rs)


def _fd_vjp(rep, z, r, G, h=1e-5):
    """Central differences of E(R) = Σ G·X(R); G of the shape transform returns for one molecule."""
    X = rep.transform(_displaced_batch(z, r, h))
    n = len(z)
    if rep.form == "global":
        E = X @ G.ravel()
    else:
        E = np.einsum("maf,af->m", X.reshape(-1, n, X.shape[1]), G)
    E = E.reshape(n, 3, 2)
    return (E[..., 0] - E[..., 1]) / (2 * h)


# ----------------------------------------------------------------------------------------- values
def test_n_features_and_shapes(batch):
    rep = FCHL19().fit(batch)
    assert rep.n_features_ == 720
    assert rep.transform(batch).shape == (len(batch), 720)
    ra = FCHL19(form="atomic").fit(batch)
    assert ra.transform(batch).shape == (len(batch.numbers), 720)
    assert FCHL19(elements=[1, 6], nRs2=3, nRs3=4, nFourier=2).fit(batch[:1]).n_features_ == 2 * 3 + 3 * 4 * 4


def test_global_values_equal_qmllib(qm9, batch):
    X = FCHL19().fit(batch).transform(batch)
    for (z, r), x in zip(qm9, X):
        ref = _qml(z, r).sum(axis=0)
        np.testing.assert_allclose(x, ref, rtol=1e-10, atol=1e-10)


def test_atomic_values_equal_qmllib_and_sum_to_global(qm9, batch):
    XA = FCHL19(form="atomic").fit(batch).transform(batch)
    for i, (z, r) in enumerate(qm9):
        np.testing.assert_allclose(XA[batch.atom_slice(i)], _qml(z, r), rtol=1e-10, atol=1e-10)
    XG = FCHL19().fit(batch).transform(batch)
    np.testing.assert_allclose(np.add.reduceat(XA, batch.offsets[:-1], axis=0), XG, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "params",
    [
        dict(nRs2=7, nRs3=5, nFourier=2, eta2=0.5, eta3=1.3, zeta=1.1, two_body_decay=1.2, three_body_decay=0.9,
             three_body_weight=3.0),
        dict(rcut=3.0, acut=2.5),  # cut-offs inside the molecule
        dict(eta3=12.0),  # no Gaussian recurrence (eta3·acut² ≥ 500)
        dict(elements=[8, 1, 6, 7, 9]),  # block order follows `elements`
    ],
)
def test_other_parameters_equal_qmllib(qm9, batch, params):
    params = dict(params)
    elements = params.get("elements", ELEMENTS)
    X = FCHL19(**params).fit(batch).transform(batch)
    qparams = {k: v for k, v in params.items() if k != "elements"}
    for (z, r), x in zip(qm9[4:], X[4:]):
        np.testing.assert_allclose(x, _qml(z, r, elements=elements, **qparams).sum(axis=0), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------- Jacobians
def test_global_jacobian_equals_qmllib(qm9, batch):
    sel = [0, 3, 7, 11]
    Js = FCHL19().fit(batch).jacobian(batch[sel])
    for i, J in zip(sel, Js):
        z, r = qm9[i]
        _, grad = _qml(z, r, gradients=True)
        assert J.shape == (720, len(z), 3)
        np.testing.assert_allclose(J, grad.sum(axis=0), rtol=1e-9, atol=1e-9)


def test_atomic_jacobian_equals_qmllib(qm9, batch):
    sel = [4, 9]
    Js = FCHL19(form="atomic").fit(batch).jacobian(batch[sel])
    for i, J in zip(sel, Js):
        z, r = qm9[i]
        _, grad = _qml(z, r, gradients=True)
        assert J.shape == (len(z), 720, len(z), 3)
        np.testing.assert_allclose(J, grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "form, params",
    [
        # default parameters: test_contract_representations.py (fchl19, fchl19-atomic)
        ("global", dict(nRs2=7, nRs3=5, nFourier=3, zeta=1.1, two_body_decay=1.2, three_body_decay=0.9)),
        ("global", dict(rcut=3.0, acut=2.5)),
        ("global", dict(eta3=12.0)),
    ],
)
def test_vjp_matches_finite_differences(qm9, form, params):
    z, r = qm9[9]
    mol = Molecules.from_list([z], [r])
    rep = FCHL19(form=form, **params).fit(mol)
    X = rep.transform(mol)
    G = np.random.default_rng(1).normal(size=X.shape)
    v = rep.vjp(mol, G)[0]
    fd = _fd_vjp(rep, z, r, G)
    assert np.linalg.norm(v - fd) <= 1e-6 * np.linalg.norm(fd)


# ----------------------------------------------------------------------------------------- cut-offs
def _far_apart() -> tuple[np.ndarray, np.ndarray]:
    """Water, a methane 6 Å away (within acut of some atoms, beyond it for others) and an HF 20 Å away."""
    z = np.array([8, 1, 1, 6, 1, 1, 1, 1, 9, 1])
    r = np.array([
        [0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0],
        [6.0, 0.5, 0.3], [7.09, 0.5, 0.3], [5.64, 1.53, 0.3], [5.64, -0.01, 1.19], [5.64, -0.01, -0.59],
        [20.0, 1.0, -1.0], [20.92, 1.0, -1.0],
    ])
    return z, r


def test_atoms_beyond_the_cutoff(qm9):
    z, r = _far_apart()
    mol = Molecules.from_list([z], [r])
    for form in ("global", "atomic"):
        rep = FCHL19(form=form).fit(mol)
        X = rep.transform(mol)
        _, grad = _qml(z, r, gradients=True)
        ref = _qml(z, r)
        np.testing.assert_allclose(X, ref.sum(axis=0, keepdims=True) if form == "global" else ref, rtol=1e-10,
                                   atol=1e-10)
        J = rep.jacobian(mol)[0]
        np.testing.assert_allclose(J, grad.sum(axis=0) if form == "global" else grad, rtol=1e-9, atol=1e-9)
        G = np.random.default_rng(2).normal(size=X.shape)
        v = rep.vjp(mol, G)[0]
        # the HF fragment feels nothing from the rest: its force is that of the isolated HF molecule
        iso = Molecules.from_list([z[8:]], [r[8:]])
        if form == "global":
            np.testing.assert_allclose(v[8:], rep.vjp(iso, G)[0], rtol=1e-12, atol=1e-14)
        fd = _fd_vjp(rep, z, r, G)
        assert np.linalg.norm(v - fd) <= 1e-6 * np.linalg.norm(fd)
    # features of the isolated fragments add up
    rep = FCHL19().fit(mol)
    parts = Molecules.from_list([z[:8], z[8:]], [r[:8], r[8:]])
    np.testing.assert_allclose(rep.transform(mol)[0], rep.transform(parts).sum(axis=0), rtol=1e-12, atol=1e-12)


def test_small_and_linear_molecules():
    mols = Molecules.from_list(
        [[1], [1, 9], [8, 6, 8]],
        [[[0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.92, 0.0, 0.0]], [[-1.16, 0, 0], [0.0, 0, 0], [1.16, 0, 0]]],
    )
    rep = FCHL19().fit(mols)
    X = rep.transform(mols)
    assert np.all(X[0] == 0.0)
    for i, (z, r) in enumerate(mols):
        np.testing.assert_allclose(X[i], _qml(z, r).sum(axis=0), rtol=1e-10, atol=1e-10)
    V = rep.vjp(mols, np.ones_like(X))
    assert np.all(V[0] == 0.0)
    assert all(np.isfinite(v).all() for v in V)
    # CO2 is symmetric: the O atoms feel opposite forces along the axis, none across it
    np.testing.assert_allclose(V[2][0], -V[2][2], atol=1e-12)
    np.testing.assert_allclose(V[2][:, 1:], 0.0, atol=1e-12)
    J = rep.jacobian(mols[2])[0]
    assert np.isfinite(J).all()


# ----------------------------------------------------------------------------------------- errors & API
def test_unknown_element_raises(batch):
    sulfur = Molecules.from_list([[16, 1, 1]], [[[0, 0, 0], [1.34, 0, 0], [0, 1.34, 0]]])
    with pytest.raises(UnknownElementError, match="16"):
        FCHL19().fit(sulfur)
    with pytest.raises(UnknownElementError, match="16"):
        FCHL19().fit(batch).transform(sulfur)
    # with sulfur among the elements it works, and matches qmllib's default element list
    rep_s = FCHL19(elements=[1, 6, 7, 8, 16]).fit(sulfur)
    z, r = next(iter(sulfur))
    np.testing.assert_allclose(rep_s.transform(sulfur)[0], generate_fchl19(z, r).sum(axis=0), rtol=1e-10, atol=1e-10)


def test_bad_parameters_and_cotangents(batch):
    for bad in (dict(form="pairwise"), dict(nRs2=0), dict(eta3=-1.0), dict(rcut=np.nan), dict(elements=[1, 1]),
                dict(elements=[0, 6]), dict(elements=[])):
        with pytest.raises(ValueError):
            FCHL19(**bad).fit(batch)
    ra = FCHL19(form="atomic").fit(batch)
    with pytest.raises(ShapeMismatchError):
        ra.vjp(batch, np.zeros((len(batch), 720)))


def test_sklearn_conventions(batch):
    rep = FCHL19(nRs2=5, form="atomic").fit(batch)
    fitted = {k: v for k, v in vars(rep).items() if k.endswith("_") and not k.startswith("_")}
    assert set(fitted) == {"n_features_", "elements_"}
    # changing a parameter after fit is honoured (no stale cached kernel arguments)
    x5 = rep.transform(batch[:1])
    rep.set_params(nRs2=6, form="global").fit(batch)
    assert rep.transform(batch[:1]).shape == (1, rep.n_features_) and rep.n_features_ == x5.shape[1] + 5
    # a size-changing parameter without refitting is refused (never writes past the fitted width)
    rep.set_params(nRs3=3)
    with pytest.raises(NotFittedError, match="fit again"):
        rep.transform(batch[:1])
