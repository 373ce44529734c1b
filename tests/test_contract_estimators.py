"""The scikit-learn estimator contract (sklearn.utils.estimator_checks) for every molkrr estimator on arrays.

One parametrised suite, as scikit-learn's own ``parametrize_with_checks``: each estimator below passes
every check scikit-learn applies to its kind (regressor, transformer). The metric learners run a few
iterations only: the checks are about the API (cloning, input validation, fitted state), not accuracy.
A new estimator joins by being added to ``ESTIMATORS``.
"""

from __future__ import annotations

import warnings

from sklearn.utils.estimator_checks import parametrize_with_checks

from molkrr import MLKR, MLKRR, KernelRidge

ESTIMATORS = [
    KernelRidge(),
    KernelRidge(kernel="matern52", sigma=2.0, lam=1e-6),
    KernelRidge(kernel="linear", lam=1e-6),
    MLKRR(max_iter=3, shuffle_every=2),
    MLKR(max_iter=3),
]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_estimator_contract(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SkipTestWarning (array-API checks without array_api_strict)
        check(estimator)
