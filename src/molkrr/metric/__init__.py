"""Metric learning: linear maps x ↦ A x learned for kernel regression.

* :class:`MLKRR` — metric learning for kernel ridge regression (Fabregat et al. 2022).
* :class:`MLKR` — metric learning for (Nadaraya–Watson) kernel regression (Weinberger & Tesauro 2007).
* :func:`mlkrr_loss_and_grad`, :func:`mlkr_loss_and_grad` — the objectives with closed-form gradients.

Kernel convention: k(a, b) = exp(−‖A(a − b)‖²/(2σ²)). Derivations: docs/mlkrr.md.
"""

from .base import MetricLearner
from .mlkr import MLKR, mlkr_loss_and_grad
from .mlkrr import MLKRR, mlkrr_loss_and_grad

__all__ = ["MLKR", "MLKRR", "MetricLearner", "mlkr_loss_and_grad", "mlkrr_loss_and_grad"]
