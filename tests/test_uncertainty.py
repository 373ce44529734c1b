"""Predictive uncertainty (molkrr.uncertainty): the posterior std of energy-trained KRR and of its forces.

References used here do not share code with the implementation: scikit-learn's GaussianProcessRegressor
(energies), a dense formula with np.linalg.solve on kernel values and derivatives written out in the test
(forces), and central differences of the GP posterior covariance of energies (forces).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF

from molkrr import CoulombMatrix, MolecularKRR, load_model
from molkrr.calculator import MolkrrCalculator
from molkrr.datasets import read_frames
from molkrr.datasets.md import shipped_trajectory_path
from molkrr.errors import MolkrrError, UncertaintyNotSupportedError
from molkrr.kernels import Matern
from molkrr.krr import KernelRidge
from molkrr.representations import make_representation
from molkrr.uncertainty import gp_scale, krr_std

SIGMA_CM = 60.0  # Coulomb-matrix features of ethanol: ~250× their median pairwise distance, as selected on this data


@pytest.fixture(scope="module")
def frames():
    return read_frames(shipped_trajectory_path())[0]


@pytest.fixture(scope="module")
def train(frames):
    return frames[np.arange(0, 800, 20)]  # 40 frames, 10 fs apart


@pytest.fixture(scope="module")
def model(train):
    return MolecularKRR(CoulombMatrix("unsorted"), sigma=SIGMA_CM, lam=1e-4, energy_unit="eV").fit(train)


def _features_problem(seed=0, n=60, d=5):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.sin(X).sum(axis=1) + 0.1 * rng.normal(size=n)
    Xq = np.vstack([rng.normal(size=(20, d)), 3 * rng.normal(size=(10, d))])
    return X, y, Xq


# ------------------------------------------------------------------------------------ energies
@pytest.mark.parametrize("center", [True, False])
def test_energy_std_equals_sklearn_gaussian_process(center):
    X, y, Xq = _features_problem()
    sigma, lam = 1.5, 1e-3
    krr = KernelRidge("gaussian", sigma, lam, center=center).fit(X, y)
    pred, std = krr.predict(Xq, return_std=True)
    np.testing.assert_array_equal(pred, krr.predict(Xq))
    yc = y - (y.mean() if center else 0.0)
    gp = GaussianProcessRegressor(RBF(sigma, "fixed"), alpha=lam, optimizer=None, normalize_y=False).fit(X, yc)
    mean, std_gp = gp.predict(Xq, return_std=True)
    s2 = yc @ gp.alpha_ / len(y)  # the maximum-likelihood scale of the GP: (y−ȳ)ᵀ(K+λI)⁻¹(y−ȳ)/n
    assert gp_scale(krr) == pytest.approx(s2, rel=1e-10)
    np.testing.assert_allclose(pred, mean + (y.mean() if center else 0.0), rtol=1e-10)
    np.testing.assert_allclose(std, np.sqrt(s2) * std_gp, rtol=1e-8, atol=0)


def test_energy_std_of_a_molecular_model_equals_sklearn_on_its_features(model, train, frames):
    queries = frames[[3, 900, 1499]]
    E, std = model.predict(queries, return_std=True)
    np.testing.assert_array_equal(E, model.predict(queries))
    X, Xq = model.features(train), model.features(queries)
    yc = train.energies - train.energies.mean()
    gp = GaussianProcessRegressor(RBF(SIGMA_CM, "fixed"), alpha=model.lam_, optimizer=None, normalize_y=False).fit(X, yc)
    _, std_gp = gp.predict(Xq, return_std=True)
    np.testing.assert_allclose(std, np.sqrt(yc @ gp.alpha_ / len(yc)) * std_gp, rtol=1e-8, atol=0)


def test_multi_output_std_scales_each_column_by_its_own_scale():
    X, y, Xq = _features_problem(1)
    Y = np.column_stack([y, 3 * y + 1])
    krr = KernelRidge("gaussian", 1.5, 1e-3).fit(X, Y)
    _, std = krr.predict(Xq, return_std=True)
    single = KernelRidge("gaussian", 1.5, 1e-3).fit(X, y).predict(Xq, return_std=True)[1]
    assert std.shape == (len(Xq), 2)
    np.testing.assert_allclose(std[:, 0], single, rtol=1e-10)
    np.testing.assert_allclose(std[:, 1], 3 * single, rtol=1e-10)  # s² scales with y², the kernel part not at all


def test_std_vanishes_at_training_points_and_grows_away_from_them():
    X, y, _ = _features_problem(2)
    krr = KernelRidge("gaussian", 1.5, 1e-10).fit(X, y)
    s = np.sqrt(gp_scale(krr))
    _, at_train = krr.predict(X, return_std=True)
    assert at_train.max() < 1e-3 * s
    direction = np.random.default_rng(3).normal(size=X.shape[1])
    direction /= np.linalg.norm(direction)
    far = X[0] + np.outer([0.0, 0.3, 1.0, 3.0, 10.0, 100.0], direction)
    _, std = krr.predict(far, return_std=True)
    assert np.all(np.diff(std) > 0)
    assert std[-1] == pytest.approx(s, rel=1e-12)  # prior std far from the data: s √k(x, x) = s


def test_energy_std_is_small_at_training_molecules_for_small_lambda(train):
    m = MolecularKRR(CoulombMatrix("unsorted"), sigma=10.0, lam=1e-10, energy_unit="eV").fit(train[:20])
    stretched = train[0].with_positions(train[0].positions * 1.3)
    _, std = m.predict(train[:20], return_std=True)
    _, std_far = m.predict(stretched, return_std=True)
    s = np.sqrt(gp_scale(m.krr_))
    assert std.max() < 1e-3 * s < std_far[0]


# ------------------------------------------------------------------------------------ forces
def _dense_force_variance(model, mol):
    """s² (J_icᵀ H J_ic − g_icᵀ (K + λI)⁻¹ g_ic) written out for a Gaussian or Matérn kernel and a linear metric."""
    kernel = model.krr_.kernel_
    X = model.krr_.X_fit_
    z = model.features(mol)[0]
    Jx = model.representation_.jacobian(mol)[0]  # (d, n_atoms, 3)
    A = np.eye(Jx.shape[0]) if model.metric_ is None else model.metric_.components_
    J = A @ Jx.reshape(Jx.shape[0], -1)  # (c, 3N)
    sigma = kernel.sigma
    diff = X[:, None, :] - X[None, :, :]
    r2 = np.einsum("ijk,ijk->ij", diff, diff)
    delta = z[None, :] - X  # (n, c)
    rq2 = np.einsum("ij,ij->i", delta, delta)
    if kernel.name == "gaussian":
        K = np.exp(-r2 / (2 * sigma**2))
        dk = -np.exp(-rq2 / (2 * sigma**2))[:, None] * delta / sigma**2  # ∂k(z, x_m)/∂z
        prior = 1 / sigma**2
    else:  # Matérn 5/2: k = (1 + ρ + ρ²/3) e^−ρ, ρ = √5 r/σ; ∂k/∂z = −(5/3σ²)(1 + ρ) e^−ρ (z − x_m)
        rho = np.sqrt(5 * r2) / sigma
        K = (1 + rho + rho**2 / 3) * np.exp(-rho)
        rq = np.sqrt(5 * rq2) / sigma
        dk = -(5 / (3 * sigma**2)) * ((1 + rq) * np.exp(-rq))[:, None] * delta
        prior = 5 / (3 * sigma**2)
    lam = model.krr_.lam_
    y = model.krr_.alpha_ @ (K + lam * np.eye(len(X)))  # the centred targets (K + λI) α
    s2 = y @ np.linalg.solve(K + lam * np.eye(len(X)), y) / len(X)
    g = dk @ J  # (n, 3N)
    var = prior * np.einsum("ck,ck->k", J, J) - np.einsum("nk,nk->k", g, np.linalg.solve(K + lam * np.eye(len(X)), g))
    return s2 * var.reshape(-1, 3)


@pytest.mark.parametrize("variant", ["gaussian", "matern52", "metric"])
def test_force_std_equals_a_dense_reference(train, frames, variant):
    if variant == "metric":  # a learned linear map z = A x: here PCA's, used as given
        X = CoulombMatrix("unsorted").fit(train).transform(train)
        metric = PCA(n_components=20).fit(X)
        m = MolecularKRR(CoulombMatrix("unsorted"), sigma=SIGMA_CM, lam=1e-4, metric=metric, prefit_metric=True).fit(train)
    else:
        kernel = "gaussian" if variant == "gaussian" else Matern(nu=2.5)
        m = MolecularKRR(CoulombMatrix("unsorted"), kernel=kernel, sigma=SIGMA_CM, lam=1e-4).fit(train)
    queries = frames[[7, 1000, 1400]]
    E, F, E_std, F_std = m.predict_energies_and_forces(queries, return_std=True)
    E0, F0 = m.predict_energies_and_forces(queries)
    np.testing.assert_array_equal(E, E0)
    for a, b in zip(F, F0):
        np.testing.assert_array_equal(a, b)
    assert E_std.shape == (3,) and [f.shape for f in F_std] == [(9, 3)] * 3
    np.testing.assert_allclose(E_std, m.predict(queries, return_std=True)[1], rtol=1e-12)
    for i in range(3):
        ref = np.sqrt(np.maximum(_dense_force_variance(m, queries[i]), 0))
        np.testing.assert_allclose(F_std[i], ref, rtol=1e-8, atol=1e-10 * ref.max())


def test_force_std_equals_finite_differences_of_the_posterior_covariance(model, frames):
    """var[∂E/∂R_ic] = ∂²C(R, R')/∂R_ic∂R'_ic at R' = R, C the posterior covariance of energies (central differences)."""
    krr = model.krr_
    X = krr.X_fit_
    sigma, lam = krr.kernel_.sigma, krr.lam_
    K = np.exp(-((X[:, None] - X[None]) ** 2).sum(-1) / (2 * sigma**2)) + lam * np.eye(len(X))
    s2 = gp_scale(krr)

    def k(a, b):
        return np.exp(-((a - b) ** 2).sum(-1) / (2 * sigma**2))

    def cov(za, zb):
        ka, kb = k(za[None], X), k(zb[None], X)
        return s2 * (k(za, zb) - ka @ np.linalg.solve(K, kb))

    mol = frames[1100]
    _, _, _, (F_std,) = model.predict_energies_and_forces(mol, return_std=True)
    h = 1e-3
    R = mol.positions
    for atom, c in [(0, 0), (2, 1), (5, 2), (8, 0)]:
        E = np.zeros_like(R)
        E[atom, c] = h
        zp, zm = (model.features(mol.with_positions(R + s * E))[0] for s in (1, -1))
        second = (cov(zp, zp) - cov(zp, zm) - cov(zm, zp) + cov(zm, zm)) / (4 * h * h)
        assert np.sqrt(second) == pytest.approx(F_std[atom, c], rel=1e-4)


def test_force_std_grows_towards_the_prior_away_from_the_training_data(train):
    """Relative to the prior std s √(c₁ ‖J_ic‖²) (the Jacobian itself shrinks as a molecule is stretched)."""
    sigma = 10.0
    m = MolecularKRR(CoulombMatrix("unsorted"), sigma=sigma, lam=1e-4, energy_unit="eV").fit(train)
    s2 = gp_scale(m.krr_)
    ratios = []
    for factor in (1.0, 1.05, 1.2, 1.5, 3.0):
        mol = train[0].with_positions(train[0].positions * factor)
        _, _, _, (F_std,) = m.predict_energies_and_forces(mol, return_std=True)
        J = m.representation_.jacobian(mol)[0].reshape(45, -1)
        prior = np.sqrt(s2 * np.einsum("ck,ck->k", J, J) / sigma**2).reshape(-1, 3)
        ratios.append(np.median(F_std / prior))
        assert np.all(F_std <= prior * (1 + 1e-12))
    assert np.all(np.diff(ratios) > 0) and ratios[0] < 0.5 and ratios[-1] == pytest.approx(1, abs=1e-3)


# ------------------------------------------------------------------------------------ the factor
def test_round_trip_gives_the_same_std_and_the_factor_is_not_in_the_file(model, frames, tmp_path):
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = load_model(path)
    assert "_posterior" not in loaded.krr_.__dict__  # rebuilt on first use
    n = len(model.krr_.X_fit_)
    with np.load(path, allow_pickle=False) as npz:
        assert not any(npz[k].shape == (n, n) for k in npz.files)
    queries = frames[[10, 1300]]
    a = model.predict_energies_and_forces(queries, return_std=True)
    b = loaded.predict_energies_and_forces(queries, return_std=True)
    np.testing.assert_allclose(b[2], a[2], rtol=1e-12)
    for fa, fb in zip(a[3], b[3]):
        np.testing.assert_allclose(fb, fa, rtol=1e-10, atol=1e-12 * fa.max())


def test_refit_never_reads_a_stale_factor():
    X, y, Xq = _features_problem(4)
    krr = KernelRidge("gaussian", 1.5, 1e-3).fit(X, y)
    krr.predict(Xq, return_std=True)
    krr.set_params(lam=1e-1, sigma=2.0).fit(X, y)  # the same X object: X_fit_ may be the same array
    fresh = KernelRidge("gaussian", 2.0, 1e-1).fit(X.copy(), y)
    np.testing.assert_allclose(krr.predict(Xq, return_std=True)[1], fresh.predict(Xq, return_std=True)[1], rtol=1e-12)
    krr.set_params(sigma=3.0)  # changed after fit without refitting: the factor follows σ (and the stale α stays)
    rebuilt = krr.predict(Xq, return_std=True)[1]
    assert not np.allclose(rebuilt, fresh.predict(Xq, return_std=True)[1])


# ------------------------------------------------------------------------------------ unsupported cases
def test_unsupported_models_raise_a_typed_error(train):
    X, y, Xq = _features_problem(5)
    falkon = KernelRidge("gaussian", 1.5, 1e-3, solver="falkon", n_centers=20).fit(X, y)
    with pytest.raises(UncertaintyNotSupportedError, match="falkon"):
        falkon.predict(Xq, return_std=True)
    lap = MolecularKRR(CoulombMatrix("unsorted"), kernel="laplacian", sigma=500.0, lam=1e-6).fit(train[:10])
    lap.predict(train[:2], return_std=True)  # energies: any kernel
    with pytest.raises(UncertaintyNotSupportedError, match="laplacian"):
        lap.predict_energies_and_forces(train[:2], return_std=True)
    sparse = MolecularKRR(make_representation("fchl19-local"), sigma=2.0, lam=1e-6, n_sparse=20).fit(train[:5])
    with pytest.raises(UncertaintyNotSupportedError, match="sparse") as info:
        sparse.predict(train[:2], return_std=True)
    assert isinstance(info.value, NotImplementedError) and isinstance(info.value, MolkrrError)
    with pytest.raises(UncertaintyNotSupportedError, match="sparse"):
        sparse.predict_energies_and_forces(train[:2], return_std=True)


def test_krr_std_rejects_wrong_feature_shapes(model):
    with pytest.raises(MolkrrError):
        krr_std(model.krr_, np.zeros((2, 3)))


# ------------------------------------------------------------------------------------ calculator
def test_calculator_reports_std_only_when_asked(model, frames):
    atoms = frames[1200].to_ase()[0]
    atoms.calc = MolkrrCalculator(model)
    atoms.get_forces()
    assert "energy_std" not in atoms.calc.results and "energy_std" not in atoms.calc.implemented_properties
    calc = MolkrrCalculator(model, uncertainty=True)
    atoms.calc = calc
    _, _, E_std, (F_std,) = model.predict_energies_and_forces(frames[1200], return_std=True)
    assert calc.get_property("energy_std", atoms) == pytest.approx(E_std[0], rel=1e-12)  # the model's unit is eV
    np.testing.assert_allclose(calc.get_property("forces_std", atoms), F_std, rtol=1e-12)
    assert calc.n_model_calls == 1
    kcal = MolkrrCalculator(model, uncertainty=True, energy_unit="kcal/mol")
    atoms.calc = kcal
    assert kcal.get_property("energy_std", atoms) == pytest.approx(E_std[0] * 0.0433641043, rel=1e-8)


def test_calculator_refuses_uncertainty_for_an_unsupported_model(train):
    sparse = MolecularKRR(make_representation("fchl19-local"), sigma=2.0, lam=1e-6, n_sparse=20,
                          energy_unit="eV").fit(train[:5])
    MolkrrCalculator(sparse)  # fine without
    with pytest.raises(UncertaintyNotSupportedError, match="sparse"):
        MolkrrCalculator(sparse, uncertainty=True)


def test_calculator_gives_energy_std_only_where_force_std_is_not_available(train, frames):
    lap = MolecularKRR(CoulombMatrix("unsorted"), kernel="laplacian", sigma=500.0, lam=1e-6, energy_unit="eV").fit(train[:10])
    calc = MolkrrCalculator(lap, uncertainty=True)
    assert "energy_std" in calc.implemented_properties and "forces_std" not in calc.implemented_properties
    atoms = frames[1200].to_ase()[0]
    atoms.calc = calc
    atoms.get_forces()  # forces as usual
    assert calc.get_property("energy_std", atoms) == pytest.approx(lap.predict(frames[1200], return_std=True)[1][0], rel=1e-12)


# ------------------------------------------------------------------------------------ DerivativeKRR models
# Local kernels and force targets (molkrr.derivative_uncertainty). The reference below builds the joint
# covariance of the training rows ([E, Qᵀ∇E] per molecule, Q the rigid-motion complement) and of a query's
# Cartesian rows [E, ∂E/∂R] from raw features and raw Jacobians, with the Gaussian kernel's derivatives written
# out, and takes the Schur complement with np.linalg.solve: no code shared with the implementation.
from molecule_factory import random_molecules  # noqa: E402

from molkrr import FCHL19, Molecules  # noqa: E402
from molkrr.derivative_krr import rigid_complement  # noqa: E402

LOCAL_HYPER = {"sigma": 2.036, "lam": 3.65e-5, "lam_forces": 3.66e-6}  # molkrr demo-md's, for ethanol


def _dense_rows(rep, mols, project, with_forces):
    """Per molecule (X (n_env, d), labels (n_env,), J (n_env, d, q or 3n) or None), from raw features."""
    X = rep.transform(mols)
    local = getattr(rep, "form", None) == "atomic"
    jac = rep.jacobian(mols) if with_forces else None
    out, start = [], 0
    for m in range(len(mols)):
        n = int(mols.n_atoms[m])
        cnt = n if local else 1
        labels = mols.numbers[mols.atom_slice(m)] if local else np.zeros(1, dtype=int)
        J = None
        if with_forces:
            J = np.asarray(jac[m]).reshape(cnt, X.shape[1], 3 * n)
            if project:
                J = J @ rigid_complement(mols.positions[mols.atom_slice(m)])
        out.append((X[start : start + cnt], labels, J))
        start += cnt
    return out


def _dense_cov(A, B, sigma, energy_a, energy_b):
    """Covariance of molecule A's rows [E?, ∇?] with B's under the Gaussian kernel, Σ over same-label pairs."""
    XA, lA, JA = A
    XB, lB, JB = B
    delta = XA[:, None, :] - XB[None, :, :]  # x_e − x_f
    s2 = sigma**2
    k = np.exp(-(delta**2).sum(-1) / (2 * s2)) * (lA[:, None] == lB[None, :])
    kinds_a = (["E"] if energy_a else []) + (["F"] if JA is not None else [])
    kinds_b = (["E"] if energy_b else []) + (["F"] if JB is not None else [])
    blocks = []
    for ka in kinds_a:
        row = []
        for kb in kinds_b:
            if ka == "E" and kb == "E":
                row.append(np.array([[k.sum()]]))
            elif ka == "F" and kb == "E":  # Σ J_eᵀ ∂k/∂x_e, ∂k/∂x_e = −δ k/σ²
                row.append(np.einsum("edq,efd,ef->q", JA, -delta / s2, k)[:, None])
            elif ka == "E":  # Σ J_fᵀ ∂k/∂x_f, ∂k/∂x_f = δ k/σ²
                row.append(np.einsum("fdq,efd,ef->q", JB, delta / s2, k)[None, :])
            else:  # Σ J_eᵀ (I/σ² − δδᵀ/σ⁴) k J_f
                U, V = np.einsum("edq,efd->efq", JA, delta), np.einsum("fdp,efd->efp", JB, delta)
                row.append(np.einsum("edq,ef,fdp->qp", JA, k / s2, JB) - np.einsum("efq,ef,efp->qp", U, k / s2**2, V))
        blocks.append(np.hstack(row))
    return np.vstack(blocks)


class _DenseGP:
    """The GP posterior of a MolecularKRR with a DerivativeKRR, rebuilt densely from its training molecules."""

    def __init__(self, model, train):
        targets = model.targets
        self.rep, self.sigma = model.representation_, model.sigma_
        self.energy, forces = targets != "forces", targets != "energy"
        self.T = _dense_rows(self.rep, train, True, forces)
        K = np.block([[_dense_cov(a, b, self.sigma, self.energy, self.energy) for b in self.T] for a in self.T])
        diag = np.concatenate([[model.lam_] * self.energy + [model.lam_forces_] * (t[2].shape[2] if forces else 0)
                               for t in self.T])
        self.A = K + np.diag(diag)
        y = []
        for i in range(len(train)):
            if self.energy:
                y.append([train.energies[i] - train.energies.mean()])  # baseline 'mean', center=True
            if forces:
                s = train.atom_slice(i)
                y.append(-train.forces[s].reshape(-1) @ rigid_complement(train.positions[s]))
        y = np.concatenate(y)
        self.s2 = y @ np.linalg.solve(self.A, y) / len(y)

    def cov(self, mol_a, mol_b, with_forces=True):
        """Posterior covariance of the rows [E, ∂E/∂R (Cartesian)?] of two single molecules."""
        qa = _dense_rows(self.rep, mol_a, False, with_forces)[0]
        qb = _dense_rows(self.rep, mol_b, False, with_forces)[0]
        ka = np.hstack([_dense_cov(qa, t, self.sigma, True, self.energy) for t in self.T])
        kb = np.hstack([_dense_cov(qb, t, self.sigma, True, self.energy) for t in self.T])
        return self.s2 * (_dense_cov(qa, qb, self.sigma, True, True) - ka @ np.linalg.solve(self.A, kb.T))

    def std(self, mol):
        """(energy std, force std (n_atoms, 3)) of one molecule."""
        sd = np.sqrt(np.maximum(np.diagonal(self.cov(mol, mol)), 0))
        return sd[0], sd[1:].reshape(-1, 3)


@pytest.fixture(scope="module")
def small_set():
    mols = random_molecules(4, 3)
    forces = np.random.default_rng(0).normal(size=mols.positions.shape)
    mols = Molecules(mols.numbers, mols.positions, mols.offsets, mols.energies, forces)
    train = mols[:3]
    rng = np.random.default_rng(1)
    near = train[0].with_positions(train[0].positions + 0.05 * rng.normal(size=train[0].positions.shape))
    return train, [near, mols[3]]  # queries: a perturbed training molecule, and another molecule


@pytest.mark.parametrize("form, targets", [("atomic", "energy+forces"), ("atomic", "forces"), ("atomic", "energy"),
                                           ("global", "energy+forces"), ("global", "forces")])
def test_derivative_std_equals_a_dense_gp_reference(small_set, form, targets):
    train, queries = small_set
    rep = FCHL19(form=form, elements=(1, 6, 7, 8), rcut=6.0, acut=6.0)
    m = MolecularKRR(rep, sigma=3.0 if form == "atomic" else 10.0, lam=1e-3, lam_forces=1e-2, targets=targets,
                     baseline="mean").fit(train)
    ref = _DenseGP(m, train)
    assert m.krr_.gp_scale_ == pytest.approx(ref.s2, rel=1e-10)
    E, F, E_std, F_std = m.predict_energies_and_forces(Molecules.concatenate(queries), return_std=True)
    E0, F0 = m.predict_energies_and_forces(Molecules.concatenate(queries))
    np.testing.assert_array_equal(E, E0)
    np.testing.assert_allclose(m.predict(Molecules.concatenate(queries), return_std=True)[1], E_std, rtol=1e-12)
    for i, q in enumerate(queries):
        e_ref, f_ref = ref.std(q)
        scale = max(e_ref, f_ref.max())
        np.testing.assert_allclose(E_std[i], e_ref, rtol=0, atol=1e-8 * scale)
        np.testing.assert_allclose(F_std[i], f_ref, rtol=0, atol=1e-8 * scale)
    # the near query is informed by the training data: its std lies well below the prior's
    q0 = _dense_rows(m.representation_, queries[0], False, True)[0]
    prior = np.sqrt(ref.s2 * np.diagonal(_dense_cov(q0, q0, m.sigma_, True, True)))
    informed = F_std[0].ravel() / prior[1:] if targets != "energy" else E_std[0] / prior[0]
    assert np.median(informed) < 0.5


def test_derivative_force_std_equals_finite_differences_of_the_posterior_covariance(small_set):
    """var[∂E/∂R_ic] = ∂²C(R, R')/∂R_ic∂R'_ic at R' = R, C the posterior covariance of energies (central
    differences); the reference's own prior term against central differences of the summed kernel."""
    train, queries = small_set
    rep = FCHL19(form="atomic", elements=(1, 6, 7, 8), rcut=6.0, acut=6.0)
    m = MolecularKRR(rep, sigma=3.0, lam=1e-3, lam_forces=1e-2, targets="energy+forces", baseline="mean").fit(train)
    ref = _DenseGP(m, train)
    rep = m.representation_
    mol = queries[0]
    _, _, _, (F_std,) = m.predict_energies_and_forces(mol, return_std=True)
    q0 = _dense_rows(rep, mol, False, True)[0]
    prior = np.diagonal(_dense_cov(q0, q0, m.sigma_, True, True))[1:].reshape(-1, 3)
    h = 1e-3
    R = mol.positions
    for atom, c in [(0, 0), (1, 2), (2, 1)]:
        step = np.zeros_like(R)
        step[atom, c] = h
        plus, minus = mol.with_positions(R + step), mol.with_positions(R - step)

        def k(a, b):  # prior covariance of the energies, Σ over same-element environment pairs
            return _dense_cov(_dense_rows(rep, a, False, False)[0], _dense_rows(rep, b, False, False)[0], m.sigma_,
                              True, True)[0, 0]

        def C(a, b):
            return ref.cov(a, b, with_forces=False)[0, 0]

        fd_prior = (k(plus, plus) - k(plus, minus) - k(minus, plus) + k(minus, minus)) / (4 * h * h)
        assert fd_prior == pytest.approx(prior[atom, c], rel=1e-5)
        fd = (C(plus, plus) - C(plus, minus) - C(minus, plus) + C(minus, minus)) / (4 * h * h)
        assert np.sqrt(fd) == pytest.approx(F_std[atom, c], rel=1e-4)


@pytest.fixture(scope="module")
def local_model(frames):
    train = frames[np.arange(0, 800, 100)]  # 8 frames, 50 fs apart
    return MolecularKRR(make_representation("fchl19-local"), targets="energy+forces", energy_unit="eV",
                        **LOCAL_HYPER).fit(train), train


def test_derivative_std_vanishes_at_training_frames_and_tends_to_the_prior(frames):
    train = frames[np.arange(0, 800, 100)]
    m = MolecularKRR(make_representation("fchl19-local"), targets="energy+forces", sigma=0.5, lam=1e-9,
                     lam_forces=1e-9).fit(train)  # a narrow kernel: a stretched molecule is far from every frame
    s = np.sqrt(m.krr_.gp_scale_)
    _, _, E_std, F_std = m.predict_energies_and_forces(train[:3], return_std=True)
    assert E_std.max() < 1e-3 * s and max(f.max() for f in F_std) < 1e-3 * s
    rep, ratios = m.representation_, []
    for factor in (1.0, 1.1, 1.5, 3.0):
        mol = frames[1400].with_positions(frames[1400].positions * factor)
        q = _dense_rows(rep, mol, False, True)[0]
        prior = np.sqrt(m.krr_.gp_scale_ * np.diagonal(_dense_cov(q, q, m.sigma_, True, True)))
        _, _, (e, ), (f, ) = m.predict_energies_and_forces(mol, return_std=True)
        assert e <= prior[0] * (1 + 1e-10) and np.all(f.ravel() <= prior[1:] * (1 + 1e-10) + 1e-12 * prior.max())
        ratios.append((e / prior[0], np.median(f.ravel() / prior[1:])))
    energy, force = np.array(ratios).T
    assert np.all(np.diff(energy) > 0) and np.all(np.diff(force) > 0)
    assert energy[0] < 0.1 and force[0] < 0.5 and energy[-1] > 0.99 and force[-1] > 0.999


def test_derivative_round_trip_gives_the_same_std_and_the_factor_is_rebuilt(local_model, frames, tmp_path,
                                                                              monkeypatch):
    m, train = local_model
    queries = frames[[850, 1200, 1499]]
    kept = m.predict_energies_and_forces(queries, return_std=True)
    path = tmp_path / "local.npz"
    m.save(path)
    loaded = load_model(path)
    assert "_posterior" not in loaded.krr_.__dict__  # never saved: rebuilt on first use
    with np.load(path, allow_pickle=False) as npz:
        n_rows = len(train) * (1 + 21)
        assert not any(npz[k].ndim == 2 and npz[k].shape[0] >= n_rows and npz[k].shape[1] >= n_rows for k in npz.files)
    rebuilt = loaded.predict_energies_and_forces(queries, return_std=True)
    np.testing.assert_allclose(rebuilt[2], kept[2], rtol=0, atol=1e-10 * kept[2].max())
    for a, b in zip(kept[3], rebuilt[3]):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-10 * a.max())
    # a factor too large to keep after fit is rebuilt from the training geometries, to the same std
    import molkrr.linalg

    monkeypatch.setattr(molkrr.linalg, "KEEP_FACTOR_MAX_BYTES", 0)
    refit = clone(m).fit(train)
    assert "_posterior" not in refit.krr_.__dict__
    np.testing.assert_allclose(refit.predict(queries, return_std=True)[1], kept[2], rtol=0, atol=1e-10 * kept[2].max())


def test_derivative_std_follows_changed_parameters_and_refits(local_model, frames):
    m, train = local_model
    m = clone(m).fit(train)
    queries = frames[[900, 1300]]
    before = m.predict(queries, return_std=True)[1]
    m.krr_.set_params(lam=1e-2)  # changed after fit: the factor follows λ (s² stays fit's)
    assert not np.allclose(m.predict(queries, return_std=True)[1], before)
    m.fit(train)
    np.testing.assert_allclose(m.predict(queries, return_std=True)[1], before, rtol=1e-10)


def test_models_saved_without_training_geometries_load_and_refuse_the_std(local_model, frames, tmp_path):
    import copy

    m, _ = local_model
    old = copy.deepcopy(m)
    for key in ("train_numbers_", "train_positions_", "train_offsets_"):
        delattr(old, key)  # as a file written before the predictive std of DerivativeKRR models
    del old.krr_.gp_scale_
    old.krr_.__dict__.pop("_posterior", None)
    path = tmp_path / "old.npz"
    old.save(path)
    loaded = load_model(path)
    np.testing.assert_allclose(loaded.predict(frames[[900]]), m.predict(frames[[900]]), rtol=1e-12)
    with pytest.raises(UncertaintyNotSupportedError, match="refit"):
        loaded.predict(frames[[900]], return_std=True)


def test_calculator_reports_the_std_of_a_local_force_model(local_model, frames):
    m, _ = local_model
    calc = MolkrrCalculator(m, uncertainty=True)
    assert {"energy_std", "forces_std"} <= set(calc.implemented_properties)
    atoms = frames[1250].to_ase()[0]
    atoms.calc = calc
    _, _, E_std, (F_std,) = m.predict_energies_and_forces(frames[1250], return_std=True)
    assert calc.get_property("energy_std", atoms) == pytest.approx(E_std[0], rel=1e-12)
    np.testing.assert_allclose(calc.get_property("forces_std", atoms), F_std, rtol=1e-12)
    atoms.get_forces()
    assert calc.n_model_calls == 1
