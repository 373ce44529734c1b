"""The solver registry (molkrr.solvers.registry): names, 'auto', and adding a solver as one new module."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import molkrr
import molkrr.solvers as solvers
from molkrr import KernelRidge
from molkrr.errors import InvalidInputError, UncertaintyNotSupportedError
from molkrr.solvers import falkon as fk
from molkrr.solvers import registry

HERE = Path(__file__).parent
EXAMPLE = "dense-solve"


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((60, 4))
    return X, np.sin(X).sum(axis=1), rng.standard_normal((7, 4))


def test_names_and_the_places_that_read_them():
    assert registry.solver_names() == ("cholesky", "falkon")
    assert registry.solver_names(include_auto=True) == fk.SOLVERS == ("auto", "cholesky", "falkon")
    assert registry.get_solver("cholesky").exact and not registry.get_solver("falkon").exact
    assert registry.get_solver("falkon").params == ("n_centers", "cg_tol", "cg_max_iter", "random_state")
    from molkrr.cli import train

    (option,) = [p for p in train.params if p.name == "solver"]
    assert tuple(option.type.choices) == registry.solver_names(include_auto=True)
    with pytest.raises(InvalidInputError, match=r"unknown solver 'lu'; choose one of \['auto', 'cholesky', 'falkon'\]"):
        registry.get_solver("lu")


def test_auto_resolves_through_the_registry(monkeypatch):
    assert registry.resolve_solver("auto", 100).name == "cholesky" == fk.auto_solver("auto", 100)
    assert registry.resolve_solver("auto", 10**6).name == "falkon"  # an n x n matrix of 8 TB
    monkeypatch.setattr(fk, "AUTO_MAX_EXACT_N", 50)
    assert registry.resolve_solver("auto", 51).name == "falkon" and registry.resolve_solver("falkon", 5).name == "falkon"


def test_registration_rules(monkeypatch):
    monkeypatch.setattr(registry, "_SOLVERS", dict(registry._SOLVERS))
    spec = registry.get_solver("falkon")
    registry.register_solver("falkon", spec.fit, params=spec.params)  # the same function again: accepted
    with pytest.raises(ValueError, match="already registered"):
        registry.register_solver("falkon", lambda *a, **k: None)
    for bad in ("auto", "Dense", "two words", ""):
        with pytest.raises(ValueError):
            registry.register_solver(bad, spec.fit)


def test_a_solver_that_reads_a_missing_parameter_is_refused(monkeypatch, problem):
    X, y, _ = problem
    monkeypatch.setattr(registry, "_SOLVERS", dict(registry._SOLVERS))
    registry.register_solver("needs-rank", registry.get_solver("cholesky").fit, params=("rank",))
    with pytest.raises(InvalidInputError, match="reads the parameter 'rank'"):
        KernelRidge(sigma=1.0, solver="needs-rank").fit(X, y)


@pytest.fixture
def example_solver(tmp_path, monkeypatch):
    """tests/example_solver.py dropped into the solvers package as a new module."""
    folder = tmp_path / "extra"
    folder.mkdir()
    shutil.copy(HERE / "example_solver.py", folder / "dense_solve.py")
    monkeypatch.setattr(solvers, "__path__", [*solvers.__path__, str(folder)])
    monkeypatch.setattr(registry, "_SOLVERS", dict(registry._SOLVERS))
    monkeypatch.setattr(registry, "_discovered", False)
    yield folder
    sys.modules.pop("molkrr.solvers.dense_solve", None)


def test_a_new_solver_is_one_new_module(example_solver, problem, tmp_path):
    """No other file changes: the registry finds the module; KernelRidge, MolecularKRR, model files, the
    predictive std and `molkrr train --solver` follow."""
    X, y, Xq = problem
    assert EXAMPLE in registry.solver_names()
    exact = KernelRidge("gaussian", 1.5, 1e-6, solver="cholesky").fit(X, y)
    new = KernelRidge("gaussian", 1.5, 1e-6, solver=EXAMPLE).fit(X, y)
    assert new.solver_ == EXAMPLE
    np.testing.assert_allclose(new.predict(Xq), exact.predict(Xq), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(new.predict(Xq, return_std=True)[1], exact.predict(Xq, return_std=True)[1], rtol=1e-6)
    # a whole molecular model, saved and loaded (the file checks read the registry)
    mols = molkrr.datasets.read_xyz(HERE / "data" / "inputs" / "good" / "train.extxyz")
    model = molkrr.MolecularKRR(molkrr.CoulombMatrix(), sigma=20.0, solver=EXAMPLE, energy_unit="eV").fit(mols)
    model.save(tmp_path / "m.npz")
    loaded = molkrr.load_model(tmp_path / "m.npz")
    assert loaded.solver == EXAMPLE and loaded.krr_.solver_ == EXAMPLE
    np.testing.assert_array_equal(loaded.predict(mols), model.predict(mols))
    # the command line, in a fresh process whose solvers package holds the new module
    code = (
        "import sys, molkrr.solvers as s; s.__path__.append(sys.argv[1]); "
        "from molkrr.cli import main; main(sys.argv[2:])"
    )
    train = HERE / "data" / "inputs" / "good" / "train.extxyz"
    out = subprocess.run(
        [sys.executable, "-c", code, str(example_solver), "train", "--xyz", str(train), "--unit", "eV", "--sigma", "20",
         "--solver", EXAMPLE, "-o", str(tmp_path / "cli.npz"), "-q"],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    assert molkrr.load_model(tmp_path / "cli.npz").krr_.solver_ == EXAMPLE


def test_inexact_solvers_refuse_the_predictive_std(problem):
    X, y, Xq = problem
    model = KernelRidge("gaussian", 1.5, 1e-3, solver="falkon", n_centers=20).fit(X, y)
    with pytest.raises(UncertaintyNotSupportedError, match=r"solver='falkon' \(Nyström KRR\)"):
        model.predict(Xq, return_std=True)
