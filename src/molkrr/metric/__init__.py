"""Metric learning: linear maps x ↦ A x learned for kernel regression.

* :class:`MLKRR` — metric learning for kernel ridge regression (Fabregat et al. 2022), with any
  stationary kernel of :mod:`molkrr.kernels` (Gaussian by default, Matérn 3/2 and 5/2).
* :class:`MLKR` — metric learning for (Nadaraya–Watson) kernel regression (Weinberger & Tesauro 2007).
* :func:`mlkrr_loss_and_grad`, :func:`mlkr_loss_and_grad` — the objectives with closed-form gradients.
* :func:`compare_metrics` — the learn-metric pipeline: tune plain KRR, learn A, re-tune, compare.

Modules: ``base_metric`` (the transformer mixin), ``driver`` (segmented L-BFGS-B), ``checkpoints``,
``_util`` (input checks), ``mlkrr``, ``mlkr``, ``pipeline``. Derivations: docs/mlkrr.md.
"""

from .base_metric import MetricLearner
from .mlkr import MLKR, mlkr_loss_and_grad
from .mlkrr import MLKRR, mlkrr_loss_and_grad
from .pipeline import MetricComparison, compare_metrics

__all__ = ["MLKR", "MLKRR", "MetricComparison", "MetricLearner", "compare_metrics", "mlkr_loss_and_grad",
           "mlkrr_loss_and_grad"]
