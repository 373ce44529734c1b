"""Adding a compute backend is one class and one factory entry (docs/architecture.md, files to touch).

The backend built here is the numpy one under another name: everything that is not ``"numpy"`` runs the
algorithms written against the array operations (:mod:`molkrr.metric._array_objectives`) and the
backend's KRR solve, so a new backend needs nothing beyond its operations. Tolerances are relative to the
largest entry of the numpy result.
"""

from __future__ import annotations

import numpy as np
import pytest

import molkrr.backends as backends
from molkrr import MLKR, MLKRR, KernelRidge
from molkrr.backends.numpy_backend import NumpyBackend


class ArrayOpsBackend(NumpyBackend):
    """A new backend: numpy's operations, not named numpy, streamed in small blocks."""

    name = "arrayops"
    block_rows = 5


@pytest.fixture
def new_backend(monkeypatch):
    monkeypatch.setitem(backends._FACTORIES, "arrayops", lambda device, dtype: ArrayOpsBackend())
    yield "arrayops"
    backends._CACHE.pop(("arrayops", None, None), None)


def close_to(a, b, rtol=1e-10):
    a, b = np.asarray(a), np.asarray(b)
    assert np.abs(a - b).max() <= rtol * np.abs(b).max()


@pytest.mark.parametrize("kernel", ["gaussian", "matern52"])
def test_a_new_backend_runs_krr_and_metric_learning(new_backend, kernel):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 4))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1]
    common = dict(sigma=2.0, lam=1e-4, max_iter=3, shuffle_every=2, random_state=0, kernel=kernel)
    ref = MLKRR(**common).fit(X, y)
    m = MLKRR(**common, backend=new_backend).fit(X, y)
    close_to(m.components_, ref.components_, 1e-8)
    ref = KernelRidge(kernel, 2.0, 1e-3).fit(X, y)
    k = KernelRidge(kernel, 2.0, 1e-3, backend=new_backend).fit(X, y)
    close_to(k.predict(X[:7]), ref.predict(X[:7]))
    close_to(k.predict_gradient(X[:7]), ref.predict_gradient(X[:7]))
    if kernel == "gaussian":
        ref = MLKR(sigma=2.0, max_iter=3).fit(X, y)
        close_to(MLKR(sigma=2.0, max_iter=3, backend=new_backend).fit(X, y).components_, ref.components_, 1e-8)
