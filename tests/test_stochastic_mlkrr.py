"""Stochastic MLKRR (batches drawn from the whole training set), early stopping and iterate averaging."""

from __future__ import annotations

import numpy as np
import pytest

from molkrr.errors import InvalidInputError, ModelFileError
from molkrr.metric import MLKRR
from molkrr.persistence import load_model, save_model


def problem(n=120, n_val=60, seed=0):
    """y depends on features 0 and 1 only; features 2..5 are larger-variance noise."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n + n_val, 6))
    X[:, 2:] *= 2.0
    y = np.sin(1.5 * X[:, 0]) + 0.5 * X[:, 1] ** 2
    return X[:n], y[:n], X[n:], y[n:]


def test_split_draws_batches_from_the_whole_training_set():
    est = MLKRR(batch_size=40, alpha_fraction=0.25)
    seen = set()
    for s in range(30):
        ia, iA = est.split(200, s, seed=7)
        assert len(ia) == 10 and len(iA) == 30 and not set(ia) & set(iA)
        seen |= set(ia) | set(iA)
        # a function of (seed, segment) only
        ja, jA = MLKRR(batch_size=40, alpha_fraction=0.25).split(200, s, seed=7)
        np.testing.assert_array_equal(ia, ja)
        np.testing.assert_array_equal(iA, jA)
    assert len(seen) > 190  # over the run the metric sees (nearly) all n rows
    assert not np.array_equal(est.split(200, 0, 7)[0], est.split(200, 1, 7)[0])


def test_batch_size_at_least_n_is_the_full_batch_split():
    for s in range(3):
        for a, b in zip(MLKRR(batch_size=500).split(90, s, 3), MLKRR().split(90, s, 3)):
            np.testing.assert_array_equal(a, b)


def test_stochastic_fit_learns_and_uses_batches_only():
    X, y, Xv, yv = problem()
    sizes = []
    import molkrr.metric.mlkrr as mod

    real = mod._mlkrr

    def spy(A, Xa, ya, XA, yA, *a, **k):
        sizes.append((Xa.shape[0], XA.shape[0]))
        return real(A, Xa, ya, XA, yA, *a, **k)

    mod._mlkrr = spy
    try:
        est = MLKRR(batch_size=50, sigma=3.0, lam=1e-6, alpha_fraction=0.4, max_iter=40, shuffle_every=10,
                    random_state=0, validation_every=5).fit(X, y, validation_data=(Xv, yv))
    finally:
        mod._mlkrr = real
    assert set(sizes) == {(20, 30)}
    h = est.history_
    assert min(h["val_mae"]) < 0.8 * h["val_mae"][0]


def test_stochastic_validation_is_a_krr_on_one_fixed_reference_batch():
    """The recorded validation MAE is that of scikit-learn's KRR on the reference rows in the learned metric
    (the same rows in every segment), so MAEs of different segments compare."""
    from sklearn.kernel_ridge import KernelRidge as SkKRR

    X, y, Xv, yv = problem()
    est = MLKRR(batch_size=50, sigma=3.0, lam=1e-6, alpha_fraction=0.4, max_iter=12, shuffle_every=4,
                random_state=0, validation_every=4).fit(X, y, validation_data=(Xv, yv))
    ref = est.reference_rows(X.shape[0], est.seed_)
    assert len(ref) == 50 and len(set(ref)) == 50
    np.testing.assert_array_equal(ref, MLKRR(batch_size=50).reference_rows(X.shape[0], est.seed_))
    assert not np.array_equal(ref, est.split(X.shape[0], 0, est.seed_)[0])
    A, s = est.components_, est.sigma_
    sk = SkKRR(kernel="rbf", gamma=1.0 / (2 * s**2), alpha=est.lam).fit(X[ref] @ A.T, y[ref] - est.y_offset_)
    mae = np.mean(np.abs(sk.predict(Xv @ A.T) + est.y_offset_ - yv))
    assert est.history_["val_iteration"][-1] == est.n_iter_
    np.testing.assert_allclose(est.history_["val_mae"][-1], mae, rtol=1e-8)
    np.testing.assert_array_equal(MLKRR().reference_rows(30, 0), np.arange(30))


def test_early_stopping_keeps_the_best_validated_components_and_patience_stops(tmp_path):
    X, y, Xv, yv = problem()
    kept = {}

    def cb(info):
        if info["val_mae"] is not None:
            kept[info["iteration"]] = (info["val_mae"], info["components"])
        return False

    est = MLKRR(batch_size=60, sigma=3.0, lam=1e-6, max_iter=40, shuffle_every=5, random_state=1,
                validation_every=2, early_stopping=True, callback=cb).fit(X, y, validation_data=(Xv, yv))
    best_it = min(kept, key=lambda i: kept[i][0])
    assert est.best_iteration_ == best_it and est.best_val_mae_ == kept[best_it][0]
    np.testing.assert_array_equal(est.components_, kept[best_it][1])
    save_model(est, tmp_path / "early.npz")  # where the components were taken is saved with them
    back = load_model(tmp_path / "early.npz")
    assert back.best_iteration_ == best_it and back.best_val_mae_ == est.best_val_mae_
    np.testing.assert_array_equal(back.transform(Xv), est.transform(Xv))

    # patience: stop after that many validation points without improvement (a forced plateau here)
    vals = iter([3.0, 2.0, 2.5, 2.6, 2.7, 1.0] + [0.5] * 100)
    import molkrr.metric.driver as drv

    est2 = MLKRR(batch_size=60, sigma=3.0, lam=1e-6, max_iter=40, shuffle_every=5, random_state=1,
                 validation_every=1, early_stopping=True, patience=3)
    try:
        drv.np = _FakeNp(vals)
        est2.fit(X, y, validation_data=(Xv, yv))
    finally:
        drv.np = np
    assert est2.n_iter_ == 5 and est2.best_iteration_ == 2
    with pytest.raises(InvalidInputError, match="early_stopping needs validation_data"):
        MLKRR(early_stopping=True, max_iter=2).fit(X, y)
    with pytest.raises(InvalidInputError, match="patience"):
        MLKRR(early_stopping=True, patience=0, max_iter=2).fit(X, y, validation_data=(Xv, yv))
    with pytest.raises(InvalidInputError, match="averaging"):
        MLKRR(averaging=1.0, max_iter=2).fit(X, y)
    with pytest.raises(InvalidInputError, match="batch_size"):
        MLKRR(batch_size=1, max_iter=2).fit(X, y)


class _FakeNp:
    """numpy with ``mean`` replaced by a scripted sequence (the validation MAEs the driver sees)."""

    def __init__(self, values):
        self._values = values

    def __getattr__(self, name):
        return getattr(np, name)

    def mean(self, *a, **k):
        return next(self._values)


def test_averaging_returns_the_moving_average_of_the_iterates():
    X, y, Xv, yv = problem(n=60)
    seen = []
    est = MLKRR(batch_size=40, sigma=3.0, lam=1e-6, max_iter=8, shuffle_every=4, random_state=2, averaging=0.5,
                callback=lambda info: seen.append(info["components"]) and False).fit(X, y)
    avg = np.eye(6)
    for A in seen:
        avg = 0.5 * avg + 0.5 * A
    np.testing.assert_allclose(est.components_, avg, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("options", [dict(early_stopping=True, patience=50), dict(averaging=0.8)])
def test_stochastic_checkpoint_resume_is_exact(tmp_path, options):
    X, y, Xv, yv = problem()
    kw = dict(batch_size=50, sigma=3.0, lam=1e-6, max_iter=12, shuffle_every=3, random_state=5, validation_every=2,
              **options)
    ref = MLKRR(**kw).fit(X, y, validation_data=(Xv, yv))
    path = tmp_path / "ck.npz"
    MLKRR(**{**kw, "max_iter": 6}).fit(X, y, validation_data=(Xv, yv), checkpoint=path)
    resumed = MLKRR(**kw).fit(X, y, validation_data=(Xv, yv), checkpoint=path)
    np.testing.assert_allclose(resumed.components_, ref.components_, rtol=0, atol=1e-12)
    assert resumed.history_["val_mae"] == pytest.approx(ref.history_["val_mae"], abs=1e-12)
    with pytest.raises(ModelFileError, match="other parameters"):
        MLKRR(**{**kw, "batch_size": 40}).fit(X, y, validation_data=(Xv, yv), checkpoint=path)


def test_auto_sigma_is_a_multiple_of_the_median_distance():
    from molkrr.metric.driver import AUTO_SIGMA_MEDIANS

    X, y, _, _ = problem(n=80)
    est = MLKRR(max_iter=0).fit(X, y)
    d = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))[np.triu_indices(80, 1)]
    assert est.sigma == "auto" and est.sigma_ == pytest.approx(AUTO_SIGMA_MEDIANS * np.median(d), rel=1e-6)
    assert MLKRR(max_iter=0, sigma=2.5).fit(X, y).sigma_ == 2.5
