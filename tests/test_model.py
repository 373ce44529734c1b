"""MolecularKRR end to end: energies, analytic forces against finite differences, selection, errors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, KFold

from molkrr import CoulombMatrix, MolecularKRR, Molecules
from molkrr.datasets import load_qm9
from molkrr.errors import InvalidInputError, NotDifferentiableError, ShapeMismatchError
from molkrr.model import finite_difference_forces
from molkrr.representations import make_representation
from molecule_factory import random_molecules

# sizes that hold every QM9 molecule, so that a model fitted on a few can predict any other
QM9_SIZES = {"cm": {"size": 29}, "bo": {"bag_sizes": {1: 20, 6: 9, 7: 7, 8: 5, 9: 6}}}
KERNELS = ["gaussian", "laplacian", "matern32", "matern52", "linear"]
REPRESENTATIONS = ["cm-unsorted", "cm-sorted", "cm-eigenvalues", "bob", "fchl19"]


@pytest.fixture(scope="module")
def qm9():
    return load_qm9(300, seed=11, unit="kcal/mol")




def sigma_for(model_rep, kernel, X):
    """A kernel width of the order of the typical feature distance (keeps k away from 0 and 1)."""
    d = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))
    return float(np.median(d[d > 0]))


def assert_forces_match_fd(model, molecules, rtol=1e-6, h=1e-4):
    _, forces = model.predict_energies_and_forces(molecules)
    for i in range(len(molecules)):
        F = forces[i]
        F_fd = finite_difference_forces(model, molecules[i], h=h)
        assert F.shape == (molecules.n_atoms[i], 3)
        scale = np.abs(F_fd).max()
        assert scale > 0
        err = np.abs(F - F_fd).max() / scale
        assert err <= rtol, f"molecule {i}: relative force error {err:.2e}"


def coulomb(z, r):
    d = np.linalg.norm(r[:, None] - r[None], axis=-1)
    np.fill_diagonal(d, 1.0)
    C = np.outer(z, z) / d
    np.fill_diagonal(C, 0.5 * z**2.4)
    return C


def order_margin(rep_name: str, z: np.ndarray, r: np.ndarray) -> float:
    """How far a molecule is from a change of order in a sorted representation (inf if none)."""
    z = z.astype(float)
    C = coulomb(z, r)
    if rep_name == "cm-sorted":
        return float(np.min(np.diff(np.sort(np.linalg.norm(C, axis=1)))))
    if rep_name == "cm-eigenvalues":
        return float(np.min(np.diff(np.linalg.eigvalsh(C))))
    if rep_name == "bob":
        iu = np.triu_indices(len(z), 1)
        keys = np.minimum(z[iu[0]], z[iu[1]]) * 1000 + np.maximum(z[iu[0]], z[iu[1]])
        gaps = [np.diff(np.sort(C[iu][keys == k])) for k in np.unique(keys)]
        gaps = np.concatenate([g for g in gaps if g.size] or [np.array([np.inf])])
        return float(gaps.min())
    return np.inf


def smooth_test_molecules(mols: Molecules, rep_name: str, count: int) -> Molecules:
    """Molecules whose sorted order cannot change within a finite-difference step (margin ≫ h·|∂/∂R|)."""
    keep = [i for i in range(len(mols)) if order_margin(rep_name, *mols.molecule(i)) > 1e-3]
    assert len(keep) >= count, f"only {len(keep)} molecules far from an order change for {rep_name}"
    return mols[keep[:count]]


@pytest.mark.parametrize("rep_name", REPRESENTATIONS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_forces_match_finite_differences_qm9(qm9, rep_name, kernel):
    train, test = qm9[:40], smooth_test_molecules(qm9[40:], rep_name, 2)
    rep = make_representation(rep_name, **QM9_SIZES.get(rep_name[:2], {}))
    X = rep.fit(train).transform(train)
    sigma = sigma_for(rep, kernel, X)
    # the linear kernel is rank-deficient (n_train > rank): a ridge on the scale of K keeps α well conditioned
    lam = 1e-3 * np.mean(np.sum(X**2, axis=1)) if kernel == "linear" else 1e-6
    model = MolecularKRR(rep, kernel=kernel, sigma=sigma, lam=lam).fit(train)
    # sorted representations: a step far below the distance to the nearest change of order
    assert_forces_match_fd(model, test, h=1e-4 if rep_name in ("cm-unsorted", "fchl19") else 1e-5)


@pytest.mark.parametrize("variant", ["unsorted", "sorted", "eigenvalues"])
@pytest.mark.parametrize("kernel", ["gaussian", "matern52", "laplacian"])
def test_forces_match_finite_differences_random(variant, kernel):
    mols = random_molecules(25, seed=3)
    rep = CoulombMatrix(variant).fit(mols)
    sigma = sigma_for(rep, kernel, rep.transform(mols))
    model = MolecularKRR(CoulombMatrix(variant), kernel=kernel, sigma=sigma, lam=1e-8).fit(mols[:20])
    assert_forces_match_fd(model, mols[20:])


def test_forces_are_translation_invariant_and_sum_to_zero(qm9):
    model = MolecularKRR(CoulombMatrix("unsorted", size=29), sigma=400.0, lam=1e-8).fit(qm9[:40])
    mol = qm9[45]
    (F,) = model.predict_forces(mol)
    np.testing.assert_allclose(F.sum(axis=0), 0.0, atol=1e-9 * np.abs(F).max())
    (F2,) = model.predict_forces(mol.with_positions(mol.positions + [1.0, -2.0, 0.5]))
    np.testing.assert_allclose(F2, F, rtol=1e-9, atol=1e-9 * np.abs(F).max())


def test_predict_equals_explicit_krr_formula(qm9):
    train, test = qm9[:40], qm9[40:]
    model = MolecularKRR(CoulombMatrix("sorted", size=29), kernel="gaussian", sigma=300.0, lam=1e-6).fit(train)
    X = model.representation_.transform(train)
    Xq = model.representation_.transform(test)
    K = np.exp(-((X[:, None] - X[None]) ** 2).sum(-1) / (2 * 300.0**2))
    y = train.energies
    alpha = np.linalg.solve(K + 1e-6 * np.eye(len(y)), y - y.mean())
    Kq = np.exp(-((Xq[:, None] - X[None]) ** 2).sum(-1) / (2 * 300.0**2))
    np.testing.assert_allclose(model.predict(test), Kq @ alpha + y.mean(), rtol=1e-9)


def test_learns_qm9_better_than_the_mean():
    mols = load_qm9(700, seed=5)
    model = MolecularKRR(CoulombMatrix("sorted", size=29), kernel="laplacian", sigma=None, lam=None).fit(mols[:500])
    mae = np.mean(np.abs(model.predict(mols[500:]) - mols.energies[500:]))
    baseline = np.mean(np.abs(mols.energies[500:] - mols.energies[:500].mean()))
    assert mae < 0.2 * baseline
    assert model.sigma_ > 0 and model.lam_ > 0


def test_accepts_ase_atoms_and_explicit_energies(qm9):
    atoms = qm9[:30].to_ase()
    model = MolecularKRR(CoulombMatrix(size=29), sigma=300.0).fit(atoms, qm9.energies[:30])
    np.testing.assert_array_equal(model.predict(atoms[:3]), model.predict(qm9[:3]))


def test_gridsearchcv_on_molecules(qm9):
    # molecules of H, C, N, O only: a fold whose validation part holds an element (F) that its training
    # part lacks is refused (UnseenElementError) and scored NaN by scikit-learn
    hcno = qm9[np.flatnonzero([np.isin(z, (1, 6, 7, 8)).all() for z, _ in qm9[:80]])[:60]]
    grid = GridSearchCV(
        MolecularKRR(CoulombMatrix("sorted", size=29), kernel="laplacian", lam=1e-8),
        {"sigma": [100.0, 1000.0, 10000.0]},
        cv=KFold(3),
        scoring="neg_mean_absolute_error",
    ).fit(hcno, hcno.energies)
    assert grid.best_params_["sigma"] in (100.0, 1000.0, 10000.0)
    assert np.isfinite(grid.best_score_)


def test_errors(qm9):
    with pytest.raises(ShapeMismatchError):
        MolecularKRR(CoulombMatrix(), sigma=1.0).fit(qm9[:10], np.zeros(9))
    with pytest.raises(ShapeMismatchError):
        MolecularKRR(CoulombMatrix(), sigma=1.0).fit(qm9[:10].with_labels(energies=None))
    with pytest.raises(InvalidInputError):
        MolecularKRR(CoulombMatrix(), sigma=1.0).fit(qm9[:10], np.full(10, np.nan))
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        MolecularKRR().predict(qm9[:2])


def test_not_differentiable_representation_is_reported(qm9):
    model = MolecularKRR(CoulombMatrix(size=29), sigma=300.0).fit(qm9[:20])
    model.representation_.differentiable = False
    with pytest.raises(NotDifferentiableError):
        model.predict_forces(qm9[:1])


def test_padded_coulomb_forces_skip_padding_but_stay_exact(qm9):
    """Forces with the padding shortcut (feature_support) equal those computed over every feature."""
    model = MolecularKRR(CoulombMatrix("unsorted", size=29), sigma=400.0, lam=1e-8).fit(qm9[:60])
    mols = qm9[60:64]
    assert model.representation_.feature_support(mols) < model.representation_.n_features_
    _, fast = model.predict_energies_and_forces(mols)
    Z = model.features(mols)
    G = model.krr_.predict_with_gradient(Z)[1]  # every column
    slow = [-g for g in model.representation_.vjp(mols, G)]
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9 * np.abs(b).max())


@pytest.mark.parametrize("rep_name", ["cm-unsorted", "fchl19"])
def test_forces_through_a_learned_metric_match_finite_differences(qm9, rep_name):
    """E(R) = KRR(A x(R)): the forces pass through Aᵀ (rectangular A), checked end to end."""
    from molkrr import MLKRR

    rep = make_representation(rep_name, **QM9_SIZES.get(rep_name[:2], {}))
    X = rep.fit(qm9[:60]).transform(qm9[:60])
    sigma = sigma_for(rep, "gaussian", X)
    metric = MLKRR(n_components=12, init="pca", sigma=sigma, max_iter=4, shuffle_every=2, random_state=0)
    model = MolecularKRR(rep, kernel="gaussian", sigma=sigma, lam=1e-6, metric=metric).fit(qm9[:60])
    A = model.metric_.components_
    assert A.shape == (12, X.shape[1])
    np.testing.assert_allclose(model.features(qm9[60:62]), rep.transform(qm9[60:62]) @ A.T, rtol=1e-12)
    assert_forces_match_fd(model, qm9[60:62], h=1e-4)


def test_prefit_metric_is_used_as_is(qm9):
    from molkrr import MLKRR

    rep = CoulombMatrix("unsorted", size=29)
    X = rep.fit(qm9[:50]).transform(qm9[:50])
    metric = MLKRR(n_components=5, init="pca", sigma=50.0, max_iter=2, random_state=0).fit(X, qm9.energies[:50])
    model = MolecularKRR(rep, sigma=50.0, metric=metric, prefit_metric=True).fit(qm9[:50])
    np.testing.assert_array_equal(model.metric_.components_, metric.components_)
    assert model.metric_ is not metric


def test_model_with_metric_round_trips_through_a_file(qm9, tmp_path):
    from molkrr import MLKRR, load_model

    metric = MLKRR(n_components=6, init="pca", sigma=50.0, max_iter=2, random_state=0, callback=lambda info: False)
    model = MolecularKRR(CoulombMatrix("sorted", size=29), sigma=50.0, metric=metric).fit(qm9[:40])
    model.save(tmp_path / "m.npz")
    back = load_model(tmp_path / "m.npz")
    assert back.metric.callback is None  # behaviour is not saved, data is
    e1, f1 = model.predict_energies_and_forces(qm9[40:43])
    e2, f2 = back.predict_energies_and_forces(qm9[40:43])
    np.testing.assert_array_equal(e1, e2)
    for a, b in zip(f1, f2):
        np.testing.assert_array_equal(a, b)


def test_five_point_finite_differences_agree_with_analytic_forces(qm9):
    model = MolecularKRR(CoulombMatrix("unsorted", size=29), sigma=400.0, lam=1e-8).fit(qm9[:40])
    (F,) = model.predict_forces(qm9[50])
    F4 = finite_difference_forces(model, qm9[50], h=1e-3, points=4)
    assert np.abs(F - F4).max() <= 1e-7 * np.abs(F).max()
    with pytest.raises(ValueError):
        finite_difference_forces(model, qm9[50], points=3)


def test_atomic_representation_selects_the_local_kernel(qm9):
    """One row per atom is the local kernel (molkrr.derivative_krr; tests in test_local_kernel.py)."""
    from molkrr import FCHL19
    from molkrr.derivative_krr import DerivativeKRR

    model = MolecularKRR(FCHL19(form="atomic"), sigma=1.0).fit(qm9[:5])
    assert isinstance(model.krr_, DerivativeKRR) and model.predict(qm9[:2]).shape == (2,)


@pytest.mark.parametrize("rep_name", ["cm-unsorted", "fchl19"])
def test_one_molecule_forces_through_the_single_query_kernel_match_finite_differences(qm9, monkeypatch, rep_name):
    """One molecule against a large training set takes the single-query kernel path; forced on here."""
    import molkrr.kernels as kernels

    train, test = qm9[:40], qm9[40:43]
    rep = make_representation(rep_name, **QM9_SIZES.get(rep_name[:2], {}))
    sigma = sigma_for(rep, "gaussian", rep.fit(train).transform(train))
    model = MolecularKRR(rep, kernel="gaussian", sigma=sigma, lam=1e-6).fit(train)
    monkeypatch.setattr(kernels, "SINGLE_QUERY_MIN_ROWS", 1)
    for i in range(len(test)):
        energy, (F,) = model.predict_energies_and_forces(test[i])
        F_fd = finite_difference_forces(model, test[i], h=1e-4)
        assert np.abs(F - F_fd).max() <= 1e-6 * np.abs(F_fd).max()
        np.testing.assert_allclose(energy, model.predict(test[i]), rtol=1e-12)
