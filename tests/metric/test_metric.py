"""Tests of molkrr.metric: MLKRR / MLKR objectives, gradients, estimators, checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from molkrr.errors import InvalidInputError, ModelFileError, MolkrrError, ShapeMismatchError
from molkrr.metric import MLKR, MLKRR, mlkr_loss_and_grad, mlkrr_loss_and_grad
from molkrr.metric.driver import _Objective

# ----------------------------------------------------------------------------------------------
# brute-force references (explicit loops over pairs, explicit inverse: fine for tiny data)
# ----------------------------------------------------------------------------------------------


def _gauss(P, Q, A, sigma):
    D = (P @ A.T)[:, None, :] - (Q @ A.T)[None, :, :]
    return np.exp(-(D**2).sum(-1) / (2.0 * sigma**2))


def brute_mlkrr(A, Xa, ya, XA, yA, sigma, lam):
    alpha = np.linalg.inv(_gauss(Xa, Xa, A, sigma) + lam * np.eye(len(ya))) @ ya
    r = _gauss(XA, Xa, A, sigma) @ alpha - yA
    return float(r @ r)


def brute_mlkr(A, X, y, sigma):
    K = _gauss(X, X, A, sigma)
    np.fill_diagonal(K, 0.0)
    yhat = K @ y / K.sum(axis=1)
    return float(((yhat - y) ** 2).sum())


def fd_grad(f, A, h=1e-5):
    G = np.zeros_like(A)
    for idx in np.ndindex(A.shape):
        E = np.zeros_like(A)
        E[idx] = h
        G[idx] = (f(A + E) - f(A - E)) / (2 * h)
    return G


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(b))


@pytest.fixture
def split_data():
    rng = np.random.default_rng(3)
    d = 6
    Xa, XA = rng.standard_normal((14, d)), rng.standard_normal((11, d))
    ya, yA = rng.standard_normal(14), rng.standard_normal(11)
    return Xa, ya, XA, yA


# ----------------------------------------------------------------------------------------------
# MLKRR objective
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [6, 3])
@pytest.mark.parametrize("lam", [1e-3, 0.5])
def test_mlkrr_loss_matches_bruteforce_and_gradient_matches_fd(split_data, c, lam):
    Xa, ya, XA, yA = split_data
    A = np.random.default_rng(c).standard_normal((c, 6)) * 0.4
    sigma = 1.3
    loss, grad = mlkrr_loss_and_grad(A, Xa, ya, XA, yA, sigma, lam)
    assert grad.shape == A.shape
    assert loss == pytest.approx(brute_mlkrr(A, Xa, ya, XA, yA, sigma, lam), rel=1e-10)
    g_fd = fd_grad(lambda B: mlkrr_loss_and_grad(B, Xa, ya, XA, yA, sigma, lam)[0], A)
    assert rel(grad, g_fd) < 1e-6


def test_mlkrr_memory_layout_does_not_matter(split_data):
    Xa, ya, XA, yA = split_data
    A = np.random.default_rng(2).standard_normal((4, 6)) * 0.4
    ref = mlkrr_loss_and_grad(A, Xa, ya, XA, yA, 1.1, 1e-2)
    F = mlkrr_loss_and_grad(np.asfortranarray(A), np.asfortranarray(Xa), ya, np.asfortranarray(XA), yA, 1.1, 1e-2)
    big = np.zeros((2 * Xa.shape[0], 12))
    big[::2, ::2] = Xa
    S = mlkrr_loss_and_grad(A, big[::2, ::2], ya[::-1][::-1], XA[::-1][::-1], yA, 1.1, 1e-2)  # strided views
    for other in (F, S):
        assert other[0] == pytest.approx(ref[0], rel=1e-12)
        # other memory layouts take other BLAS kernels: round-off relative to the largest gradient entry
        np.testing.assert_allclose(other[1], ref[1], rtol=0, atol=1e-10 * np.abs(ref[1]).max())


def test_mlkrr_sigma_gradient_matches_fd(split_data):
    Xa, ya, XA, yA = split_data
    A = np.random.default_rng(0).standard_normal((4, 6)) * 0.4
    sigma, lam, h = 0.9, 1e-2, 1e-6
    _, _, gs = mlkrr_loss_and_grad(A, Xa, ya, XA, yA, sigma, lam, return_sigma_grad=True)
    f = lambda s: mlkrr_loss_and_grad(A, Xa, ya, XA, yA, s, lam)[0]  # noqa: E731
    assert gs == pytest.approx((f(sigma + h) - f(sigma - h)) / (2 * h), rel=1e-6)


def test_mlkrr_unequal_split_sizes_and_tiny_lambda():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((40, 5))
    y = np.sin(X[:, 0]) + X[:, 1]
    A = np.eye(5) * 0.7
    loss, grad = mlkrr_loss_and_grad(A, X[:30], y[:30], X[30:], y[30:], 1.5, 1e-9)
    assert loss == pytest.approx(brute_mlkrr(A, X[:30], y[:30], X[30:], y[30:], 1.5, 1e-9), rel=1e-6)
    g_fd = fd_grad(lambda B: mlkrr_loss_and_grad(B, X[:30], y[:30], X[30:], y[30:], 1.5, 1e-9)[0], A, h=1e-6)
    assert rel(grad, g_fd) < 1e-5  # λ = 1e-9 makes α large: FD itself is less accurate


def test_mlkrr_blocked_path_large_alpha_set():
    """n_α = 700: several row blocks, the lazily mapped Cholesky buffer, threaded exp."""
    rng = np.random.default_rng(8)
    Xa, XA = rng.standard_normal((700, 4)), rng.standard_normal((300, 4))
    ya, yA = np.sin(Xa[:, 0]) + Xa[:, 1], np.sin(XA[:, 0]) + XA[:, 1]
    A = rng.standard_normal((3, 4)) * 0.5
    loss, grad = mlkrr_loss_and_grad(A, Xa, ya, XA, yA, 1.0, 1e-3)
    assert loss == pytest.approx(brute_mlkrr(A, Xa, ya, XA, yA, 1.0, 1e-3), rel=1e-8)
    for k in range(2):  # directional derivatives
        D = rng.standard_normal(A.shape)
        # five-point stencil with a larger step: round-off ε|L|/h stays far below the tolerance on any BLAS
        # (h = 1e-6 central differences failed at 1.2e-6 relative with one OpenBLAS thread)
        h = 1e-4
        f = [mlkrr_loss_and_grad(A + t * h * D, Xa, ya, XA, yA, 1.0, 1e-3)[0] for t in (2, 1, -1, -2)]
        fd = (-f[0] + 8 * f[1] - 8 * f[2] + f[3]) / (12 * h)
        assert np.sum(grad * D) == pytest.approx(fd, rel=1e-6)


def test_objective_wrapper_log_sigma_gradient(split_data):
    """The L-BFGS objective on [A.ravel(), log σ] has the right last gradient component."""
    Xa, ya, XA, yA = split_data
    from molkrr.metric.mlkrr import _mlkrr

    obj = _Objective(lambda A, s: _mlkrr(A, Xa, ya, XA, yA, s, 1e-2), (3, 6), 1.0, learn_sigma=True)
    x = np.append(np.random.default_rng(1).standard_normal(18) * 0.4, np.log(1.2))
    f0, g = obj(x)
    h = 1e-6
    e = np.zeros_like(x)
    e[-1] = h
    assert g[-1] == pytest.approx((obj(x + e)[0] - obj(x - e)[0]) / (2 * h), rel=1e-6)
    e = np.zeros_like(x)
    e[4] = h
    assert g[4] == pytest.approx((obj(x + e)[0] - obj(x - e)[0]) / (2 * h), rel=1e-6)


def test_not_positive_definite_is_a_typed_error():
    from molkrr.errors import NumericalError
    from molkrr.metric.mlkrr import _factor_upper

    H = np.array([[1.0, 0.0], [2.0, 1.0]])  # lower triangle of an indefinite matrix
    with pytest.raises(NumericalError, match="lam"):
        _factor_upper(H)


def test_mlkrr_function_typed_errors(split_data):
    Xa, ya, XA, yA = split_data
    A = np.eye(6)
    with pytest.raises(ShapeMismatchError):
        mlkrr_loss_and_grad(np.eye(5), Xa, ya, XA, yA, 1.0, 1e-3)
    with pytest.raises(ShapeMismatchError):
        mlkrr_loss_and_grad(A, Xa, ya[:-1], XA, yA, 1.0, 1e-3)
    bad = XA.copy()
    bad[2, 3] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        mlkrr_loss_and_grad(A, Xa, ya, bad, yA, 1.0, 1e-3)
    with pytest.raises(InvalidInputError):
        mlkrr_loss_and_grad(A, Xa, ya, XA, yA, 0.0, 1e-3)
    with pytest.raises(InvalidInputError):
        mlkrr_loss_and_grad(A, Xa, ya, XA, yA, 1.0, -1.0)
    with pytest.raises(ValueError):  # typed errors are also ValueErrors
        mlkrr_loss_and_grad(A, Xa, np.full_like(ya, np.inf), XA, yA, 1.0, 1e-3)


# ----------------------------------------------------------------------------------------------
# MLKR objective, and equality with metric-learn
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [5, 2])
def test_mlkr_loss_matches_bruteforce_and_gradient_matches_fd(c):
    rng = np.random.default_rng(11)
    X = rng.standard_normal((25, 5))
    y = rng.standard_normal(25)
    A = rng.standard_normal((c, 5)) * 0.5
    loss, grad, gs = mlkr_loss_and_grad(A, X, y, 1.1, return_sigma_grad=True)
    assert loss == pytest.approx(brute_mlkr(A, X, y, 1.1), rel=1e-10)
    assert rel(grad, fd_grad(lambda B: mlkr_loss_and_grad(B, X, y, 1.1)[0], A)) < 1e-6
    h = 1e-6
    f = lambda s: mlkr_loss_and_grad(A, X, y, s)[0]  # noqa: E731
    assert gs == pytest.approx((f(1.1 + h) - f(1.1 - h)) / (2 * h), rel=1e-6)


@pytest.fixture
def metric_learn_shimmed(monkeypatch):
    """metric-learn 0.7.0 passes force_all_finite, renamed ensure_all_finite in scikit-learn 1.8+."""
    metric_learn = pytest.importorskip("metric_learn")
    import metric_learn._util as mlu

    def rename(fn):
        def wrapped(*args, **kwargs):
            if "force_all_finite" in kwargs:
                kwargs["ensure_all_finite"] = kwargs.pop("force_all_finite")
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(mlu, "check_array", rename(mlu.check_array))
    monkeypatch.setattr(mlu, "check_X_y", rename(mlu.check_X_y))
    return metric_learn


def test_mlkr_equals_metric_learn(metric_learn_shimmed):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((30, 4))
    y = X[:, 0] ** 2 + 0.3 * X[:, 1]
    A0 = np.eye(4) + 0.1 * rng.standard_normal((4, 4))
    sigma = np.sqrt(0.5)  # metric-learn: exp(−‖A(a−b)‖²)

    theirs = metric_learn_shimmed.MLKR(init=A0.copy(), max_iter=15)
    theirs.n_iter_ = 0
    cost, g_theirs = theirs._loss(A0.ravel(), X, y)
    loss, g_ours = mlkr_loss_and_grad(A0, X, y, sigma)
    assert loss == pytest.approx(cost, rel=1e-10)
    assert rel(g_ours.ravel(), g_theirs) < 1e-10

    theirs.fit(X, y)
    ours = MLKR(init=A0.copy(), sigma=sigma, max_iter=15).fit(X, y)
    assert 0 < ours.n_iter_ <= 15
    # two implementations' L-BFGS paths: differences relative to the largest entry of A, not to each entry
    np.testing.assert_allclose(ours.components_, theirs.components_, rtol=0, atol=1e-6 * np.abs(theirs.components_).max())


# ----------------------------------------------------------------------------------------------
# estimators
# ----------------------------------------------------------------------------------------------


def relevant_feature_problem(n=160, n_val=100, seed=0):
    """y depends on features 0 and 1 only; features 2..7 are larger-variance noise."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n + n_val, 8))
    X[:, 2:] *= 2.0
    y = np.sin(1.5 * X[:, 0]) + 0.5 * X[:, 1] ** 2
    return X[:n], y[:n], X[n:], y[n:]


def krr_mae(Xtr, ytr, Xte, yte, A, sigma, lam=1e-6):
    K = _gauss(Xtr, Xtr, A, sigma)
    alpha = np.linalg.solve(K + lam * np.eye(len(ytr)), ytr - ytr.mean())
    return float(np.mean(np.abs(_gauss(Xte, Xtr, A, sigma) @ alpha + ytr.mean() - yte)))


def test_mlkrr_learns_relevant_features_and_lowers_validation_error():
    X, y, Xv, yv = relevant_feature_problem()
    est = MLKRR(sigma=3.0, lam=1e-6, max_iter=60, shuffle_every=15, random_state=0, validation_every=5)
    est.fit(X, y, validation_data=(Xv, yv))
    A = est.components_
    assert A.shape == (8, 8)
    before = krr_mae(X, y, Xv, yv, np.eye(8), 3.0)
    after = krr_mae(X, y, Xv, yv, A, est.sigma_)
    assert after < 0.6 * before
    col = np.linalg.norm(A, axis=0)
    # started at 1 everywhere: the relevant features gain weight, the noise features lose it
    assert col[0] > 1.5 and col[1] > col[2:].max() and col[2:].max() < 0.6
    h = est.history_
    assert h["val_mae"][-1] < h["val_mae"][0]
    assert len(h["loss"]) == est.n_iter_ == len(h["seconds"]) <= 60
    assert h["val_iteration"] == [i for i in h["iteration"] if i % 5 == 0]
    json.dumps(h)  # JSON-friendly


def test_mlkr_lowers_loss_and_learn_sigma():
    X, y, Xv, yv = relevant_feature_problem(n=80, n_val=40)
    est = MLKR(sigma=2.0, max_iter=30, learn_sigma=True, validation_every=10)
    est.fit(X, y, validation_data=(Xv, yv))
    assert est.history_["loss"][-1] < 0.5 * mlkr_loss_and_grad(np.eye(8), X, y, 2.0)[0]
    assert est.sigma_ != 2.0 and est.history_["sigma"][-1] == est.sigma_


def test_mlkrr_learn_sigma_changes_sigma():
    X, y, _, _ = relevant_feature_problem(n=60)
    est = MLKRR(sigma=3.0, lam=1e-6, max_iter=10, learn_sigma=True, random_state=1).fit(X, y)
    assert est.sigma_ != 3.0


def test_estimator_api_and_attributes():
    X, y, Xv, _ = relevant_feature_problem(n=50, n_val=7)
    est = MLKRR(n_components=3, init="pca", max_iter=4, shuffle_every=2, random_state=0)
    with pytest.raises(NotFittedError):
        est.transform(X)
    assert est.fit(X, y) is est
    assert est.components_.shape == (3, 8)
    Z = est.transform(Xv)
    np.testing.assert_allclose(Z, Xv @ est.components_.T)
    M = est.get_mahalanobis_matrix()
    np.testing.assert_allclose(M, est.components_.T @ est.components_)
    assert np.linalg.eigvalsh(M).min() > -1e-12
    assert est.n_features_in_ == 8 and isinstance(est.sigma_, float) and est.n_iter_ <= 4
    assert est.fit_transform(X, y).shape == (50, 3)
    for init in ("identity", "random", np.eye(3, 8)):
        assert MLKRR(n_components=3, init=init, max_iter=2).fit(X, y).components_.shape == (3, 8)
    assert MLKR(n_components=2, init="random", max_iter=2, random_state=0).fit(X, y).transform(X).shape == (50, 2)


def test_estimator_is_deterministic_given_random_state():
    X, y, _, _ = relevant_feature_problem(n=40)
    a = MLKRR(max_iter=6, shuffle_every=2, random_state=4).fit(X, y).components_
    b = MLKRR(max_iter=6, shuffle_every=2, random_state=4).fit(X, y).components_
    np.testing.assert_array_equal(a, b)


def test_estimator_typed_errors():
    X, y, _, _ = relevant_feature_problem(n=30)
    Xn = X.copy()
    Xn[3, 1] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        MLKRR(max_iter=1).fit(Xn, y)
    yn = y.copy()
    yn[0] = np.inf
    with pytest.raises(InvalidInputError):
        MLKR(max_iter=1).fit(X, yn)
    with pytest.raises(ShapeMismatchError):
        MLKRR(max_iter=1).fit(X, y[:-1])
    with pytest.raises(ShapeMismatchError):
        MLKRR(max_iter=1).fit(X[:, 0], y)
    with pytest.raises(ShapeMismatchError):
        MLKRR(init=np.eye(7), max_iter=1).fit(X, y)
    est = MLKRR(max_iter=1).fit(X, y)
    with pytest.raises(ShapeMismatchError):
        est.transform(X[:, :5])
    with pytest.raises(InvalidInputError):
        est.transform(Xn)
    with pytest.raises(InvalidInputError):
        MLKRR(alpha_fraction=1.0).fit(X, y)
    with pytest.raises(InvalidInputError):
        MLKRR(sigma=-1).fit(X, y)
    with pytest.raises(InvalidInputError):
        MLKRR(init="nonsense").fit(X, y)
    with pytest.raises(InvalidInputError):
        MLKRR().fit(X, None)
    with pytest.raises(ShapeMismatchError):
        MLKRR(max_iter=1).fit(X, y, validation_data=(X[:, :3], y))
    assert issubclass(InvalidInputError, MolkrrError)


def test_verbose_progress_bar(capsys):
    X, y, _, _ = relevant_feature_problem(n=30)
    MLKRR(max_iter=2, verbose=1).fit(X, y)
    assert "MLKRR" in capsys.readouterr().err


def test_callback_can_stop_and_receives_info():
    X, y, _, _ = relevant_feature_problem(n=40)
    seen = []

    def cb(info):
        seen.append(info["iteration"])
        assert info["components"].shape == (8, 8)
        return info["iteration"] >= 3

    est = MLKRR(max_iter=20, shuffle_every=10, tol=1e-30, callback=cb).fit(X, y)
    assert est.n_iter_ == 3 and seen == [1, 2, 3]


# ----------------------------------------------------------------------------------------------
# checkpoint / resume
# ----------------------------------------------------------------------------------------------


def test_checkpoint_resume_in_process(tmp_path):
    X, y, _, _ = relevant_feature_problem(n=50)
    kw = dict(max_iter=12, shuffle_every=3, random_state=2, tol=1e-12, sigma=3.0, lam=1e-6)
    full = MLKRR(**kw).fit(X, y)
    path = tmp_path / "ckpt.npz"
    MLKRR(**{**kw, "max_iter": 6}).fit(X, y, checkpoint=path, checkpoint_every=3)
    assert path.exists() and not any(p.name.startswith("ckpt.npz.tmp") for p in tmp_path.iterdir())
    resumed = MLKRR(**kw).fit(X, y, checkpoint=path)
    np.testing.assert_array_equal(resumed.components_, full.components_)
    assert resumed.history_["iteration"] == full.history_["iteration"]
    assert resumed.history_["loss"] == full.history_["loss"]
    # a checkpoint refuses other data and other parameters
    with pytest.raises(ModelFileError):
        MLKRR(**kw).fit(X[:-1], y[:-1], checkpoint=path)
    with pytest.raises(ModelFileError):
        MLKRR(**{**kw, "lam": 1e-3}).fit(X, y, checkpoint=path)
    (tmp_path / "junk.npz").write_bytes(b"not an npz")
    with pytest.raises(ModelFileError):
        MLKRR(**kw).fit(X, y, checkpoint=tmp_path / "junk.npz")


_KILL_SCRIPT = """
import sys, time
import numpy as np
from molkrr.metric import MLKRR
rng = np.random.default_rng(0)
X = rng.standard_normal((50, 6))
y = np.sin(X[:, 0]) + X[:, 1] ** 2
MLKRR(**{kw}, callback=lambda info: time.sleep(0.03)).fit(X, y, checkpoint=sys.argv[1])
print("finished")
"""


def test_checkpoint_survives_sigkill(tmp_path):
    kw = dict(max_iter=30, shuffle_every=3, random_state=5, tol=1e-12, sigma=2.0, lam=1e-6)
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(_KILL_SCRIPT).replace("{kw}", repr(kw)))
    path = tmp_path / "state.npz"
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not path.exists():
            assert proc.poll() is None, "fit finished before any checkpoint was written"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    from molkrr.metric.checkpoints import read_checkpoint

    n_done = read_checkpoint(path)[1]["n_iter"]
    assert 0 < n_done < 30

    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 6))
    y = np.sin(X[:, 0]) + X[:, 1] ** 2
    resumed = MLKRR(**kw).fit(X, y, checkpoint=path)
    full = MLKRR(**kw).fit(X, y)
    assert resumed.n_iter_ == full.n_iter_ == 30
    np.testing.assert_allclose(resumed.components_, full.components_, rtol=1e-12, atol=1e-12)
    assert resumed.history_["iteration"] == list(range(1, 31))
