"""The learn-metric pipeline: tune plain KRR, learn a metric, re-tune KRR on A x, compare on a test set.

Both KRRs are tuned (σ, λ) on the same validation set and trained on the same training set, so the
comparison measures the metric, not the tuning.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..kernels import Kernel
from ..krr import KernelRidge
from ..selection import DEFAULT_LAMS, select_hyperparameters


@dataclass
class MetricComparison:
    """Outcome of :func:`compare_metrics` (MAEs in the units of y)."""

    learner: Any
    plain: KernelRidge
    learned: KernelRidge
    mae_plain: float
    mae_learned: float
    seconds_learning: float
    extra: dict = field(default_factory=dict)

    @property
    def change(self) -> float:
        """Relative change of the test MAE, mae_learned / mae_plain − 1 (negative: the metric helps)."""
        return self.mae_learned / self.mae_plain - 1.0


def tuned_krr(X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, *, kernel: "str | Kernel" = "gaussian",
              progress: bool = False) -> KernelRidge:
    """KernelRidge with (σ, λ) chosen by MAE on (X_val, y_val), then trained on (X, y)."""
    Xall = np.vstack([X, X_val])
    yall = np.concatenate([y, y_val])
    n = X.shape[0]
    sel = _select_on_block(Xall, yall, n, kernel, progress)
    return KernelRidge(kernel, sel.sigma, sel.lam).fit(X, y)


def _select_on_block(Xall, yall, n_train, kernel, progress):
    # select_hyperparameters draws its validation split at random; here the split is given: the
    # training rows first, the validation rows after them.
    return select_hyperparameters(Xall, yall, kernel=kernel, lams=DEFAULT_LAMS, validation_rows=np.arange(n_train, len(yall)),
                                  progress=progress)


def compare_metrics(
    learner: Any,
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    *,
    kernel: "str | Kernel" = "gaussian",
    sigma_from_plain: bool = True,
    fit_params: dict | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> MetricComparison:
    """Tune plain KRR, fit ``learner`` (MLKRR or MLKR) on (X, y), re-tune KRR on X Aᵀ, compare test MAEs.

    sigma_from_plain : start the learner at the tuned plain KRR's σ (sets ``learner.sigma``).
    fit_params : extra arguments of ``learner.fit`` (e.g. ``checkpoint``); validation_data is passed.
    log : called with one line per step (e.g. ``click.echo``).
    """
    say = log or (lambda _msg: None)
    plain = tuned_krr(X, y, X_val, y_val, kernel=kernel, progress=progress)
    say(f"plain KRR: sigma = {plain.sigma:.4g}, lambda = {plain.lam:.1e}")
    mae_plain = float(np.mean(np.abs(plain.predict(X_test) - y_test)))
    if sigma_from_plain and plain.sigma is not None:
        learner.set_params(sigma=plain.sigma)
    t0 = time.perf_counter()
    learner.fit(X, y, validation_data=(X_val, y_val), **(fit_params or {}))
    seconds = time.perf_counter() - t0
    Z, Zv, Zt = (learner.transform(a) for a in (X, X_val, X_test))
    learned = tuned_krr(Z, y, Zv, y_val, kernel=kernel, progress=progress)
    say(f"KRR on A x: sigma = {learned.sigma:.4g}, lambda = {learned.lam:.1e}")
    mae_learned = float(np.mean(np.abs(learned.predict(Zt) - y_test)))
    return MetricComparison(learner, plain, learned, mae_plain, mae_learned, seconds)
