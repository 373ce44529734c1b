"""One selection (molkrr.selection): the grid search core, its result, and one grid-edge warning per selection."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from molkrr import MolecularKRR
from molkrr.cli._shared import _friendly
from molkrr.errors import InvalidInputError, ShapeMismatchError
from molkrr.force_selection import select_force_hyperparameters, select_local_energy_hyperparameters
from molkrr.model import FitSteps
from molkrr.representations import CoulombMatrix, FCHL19
from molkrr.selection import (
    GridEdgeWarning,
    SelectionResult,
    choose_from_scores,
    search_grid,
    select_hyperparameters,
)

from test_force_training import toy_molecules


def _edge_warnings(func):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = func()
    return result, [w for w in caught if issubclass(w.category, GridEdgeWarning)]


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 4))
    return X, np.sin(X[:, 0]) + 0.3 * X[:, 1]


@pytest.fixture(scope="module")
def toy():
    return toy_molecules(30, seed=0)


def test_energy_selection_on_the_edge_warns_exactly_once(problem):
    X, y = problem
    # σ far too small everywhere and λ at most 1e-2: both chosen on an edge, one warning naming both
    sel, caught = _edge_warnings(lambda: select_hyperparameters(X, y, sigmas=[0.01, 0.02, 0.04], lams=[1e-8, 1e-2]))
    assert sel.sigma == 0.04
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert "sigma=0.04" in str(caught[0].message)


def test_energy_selection_inside_the_grid_does_not_warn():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 4))
    y = np.sin(2 * X[:, 0]) + 0.3 * rng.normal(size=60)  # noisy: the optimum has a finite σ and a real ridge
    sel, caught = _edge_warnings(lambda: select_hyperparameters(
        X, y, sigmas=[0.3, 1.0, 3.0, 10.0, 30.0], lams=[1e-10, 1e-6, 1e-3, 1e-1, 10.0]))
    assert (sel.sigma, sel.lam) == (1.0, 0.1) and caught == []


def test_force_selection_on_the_edge_warns_exactly_once(toy):
    rep = FCHL19(elements=[1, 6, 8], form="atomic", nRs2=6, nRs3=4).fit(toy)
    sel, caught = _edge_warnings(lambda: select_force_hyperparameters(
        rep, toy[:25], toy.energies[:25], targets="energy+forces", sigmas=[0.05, 0.1], lams=[1e-8], lam_forces=[1e-8]))
    assert isinstance(sel, SelectionResult) and sel.sigma == 0.1 and sel.lam_forces == 1e-8
    assert len(caught) == 1 and "sigma=0.1" in str(caught[0].message)
    assert len(sel.table) == 2 and sel.scores.shape == (2, 1)


def test_local_energy_and_model_fit_warn_once_per_selection(toy):
    rep = FCHL19(elements=[1, 6, 8], form="atomic", nRs2=6, nRs3=4).fit(toy)
    _, caught = _edge_warnings(lambda: select_local_energy_hyperparameters(
        rep, toy, toy.energies, sigmas=[0.01, 0.02], lams=[1e-8, 1e-6]))
    assert len(caught) == 1
    model = MolecularKRR(CoulombMatrix(variant="unsorted"), sigma=None, lam=None)
    _, caught = _edge_warnings(lambda: model.fit(toy[:25]))
    assert len(caught) <= 1  # MolecularKRR.fit runs one selection: at most one warning


def test_search_grid_takes_the_first_least_finite_cell():
    scores = np.array([[3.0, np.nan, 1.0], [1.0, np.inf, 2.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GridEdgeWarning)
        sel = choose_from_scores([1.0, 2.0], [1e-6, 1e-4, 1e-2], scores)
    assert (sel.sigma, sel.lam, sel.score) == (1.0, 1e-2, 1.0)  # σ-major order: the first of the ties
    assert np.isinf(sel.scores[0, 1]) and np.isinf(sel.scores[1, 1])
    with pytest.raises(InvalidInputError, match="no hyperparameter cell"):
        choose_from_scores([1.0], [1e-6, 1e-4], [[np.nan, np.inf]])
    with pytest.raises(ShapeMismatchError):
        choose_from_scores([1.0, 2.0], [1e-6], [[1.0]])
    # ridges relative to each σ (force selection): the λ grid is kept per σ, and the edge is judged at the chosen σ
    rows = [([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [5.0, 4.0, 6.0]), ([10.0, 20.0, 30.0], [1.0, 2.0, 3.0], [7.0, 8.0, 9.0])]
    sel, caught = _edge_warnings(lambda: search_grid([1.0, 2.0], iter(rows)))
    assert (sel.sigma, sel.lam, sel.lam_forces) == (1.0, 2.0, 2.0) and sel.lams.shape == (2, 3)
    assert len(caught) == 1 and "lam=" not in str(caught[0].message)  # only σ is on its edge
    _, caught = _edge_warnings(lambda: choose_from_scores([1.0, 2.0], [1e-6, 1e-4], [[2.0, 1.0], [3.0, 3.0]], warn=False))
    assert caught == []


def test_the_cli_shows_one_warning_line_per_selection(capsys, problem):
    X, y = problem

    @_friendly
    def command():
        return select_hyperparameters(X, y, sigmas=[0.01, 0.02], lams=[1e-8, 1e-6])

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        command()
    err = capsys.readouterr().err
    assert err.count("warning: selected") == 1 and "GridEdgeWarning" not in err, err


class _RecordingSteps(FitSteps):
    def __init__(self):
        self.calls = []

    def features(self, rep, mols, *, progress=False):
        self.calls.append("features")
        return super().features(rep, mols, progress=progress)

    def solve(self, krr, X, y, *, progress=False):
        self.calls.append("solve")
        return super().solve(krr, X, y, progress=progress)


class _RemoteSteps(_RecordingSteps):
    in_memory = False


def test_fit_steps_are_the_hook_of_the_one_fit_path(toy):
    steps = _RecordingSteps()
    kw = dict(representation=CoulombMatrix(variant="unsorted"), sigma=20.0, lam=1e-6)
    a = MolecularKRR(**kw).fit(toy[:25], steps=steps)
    b = MolecularKRR(**kw).fit(toy[:25])
    assert steps.calls == ["features", "solve"]
    np.testing.assert_array_equal(a.predict(toy[25:]), b.predict(toy[25:]))
    assert (a.sigma_, a.lam_, a.krr_.solver_) == (b.sigma_, b.lam_, b.krr_.solver_)
    with pytest.raises(InvalidInputError, match="sigma and lam"):  # features elsewhere: no selection possible
        MolecularKRR(CoulombMatrix(variant="unsorted"), sigma=None).fit(toy[:25], steps=_RemoteSteps())
    with pytest.raises(InvalidInputError, match="global representation"):
        MolecularKRR(FCHL19(elements=[1, 6, 8], form="atomic", nRs2=6, nRs3=4), sigma=3.0, lam=1e-6).fit(
            toy[:25], steps=_RemoteSteps())


def test_a_solver_outside_fit_hands_its_solution_over_publicly(problem):
    from molkrr import KernelRidge
    from molkrr.solvers.registry import SolverFit

    X, y = problem
    ref = KernelRidge("gaussian", 1.0, 1e-6, solver="cholesky").fit(X, y)
    other = KernelRidge("gaussian", 1.0, 1e-6).set_fitted_solution(
        SolverFit(X_fit=ref.X_fit_, alpha=ref.alpha_, lam=ref.lam_), solver="cholesky", y_mean=ref.y_mean_)
    np.testing.assert_array_equal(other.predict(X[:5]), ref.predict(X[:5]))
    assert other.n_features_in_ == X.shape[1] and other.solver_ == "cholesky"
    with pytest.raises(ShapeMismatchError):
        KernelRidge().set_fitted_solution(SolverFit(X_fit=X, alpha=y[:3], lam=1e-6), solver="cholesky", y_mean=0.0)
