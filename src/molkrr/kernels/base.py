"""The kernel protocol: values, gradients and second-derivative blocks of k(a, b) on feature vectors.

A kernel is a small object holding its hyperparameters (``sigma`` for those with a length scale), as
scikit-learn's GP kernels are. :class:`Kernel` is the protocol every kernel follows;
:class:`StationaryKernel` implements all of it for kernels of the squared Euclidean distance,
k(a, b) = g(u) with u = ‖a − b‖²/σ², from the one-dimensional *profile* g and its derivatives, so a
new kernel of that family is a ``profile`` method and a name.

Derivatives used across molkrr (δ = a − b):

* ∂k/∂a = (2/σ²) g′(u) δ;
* ∂²k/∂a∂bᵀ = −(2/σ²) g′(u) I − (4/σ⁴) g″(u) δδᵀ, returned compactly as the two coefficient
  matrices (c₁, c₂) of :meth:`StationaryKernel.second_derivative_coefficients` — never as
  (n_a, n_b, d, d) arrays;
* the metric-learning objectives use g and g′ of the scaled squared distance of embedded rows
  (:mod:`molkrr.kernels.blocks`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from ..errors import InvalidInputError, NotDifferentiableError, ShapeMismatchError
from ..schema import Schema, Sigma
from .blocks import ROW_BLOCK, active_squared_distances, check_pair, squared_distances


class Kernel(BaseEstimator):
    """Protocol of a kernel k(a, b) on rows of feature matrices.

    Attributes (class level): ``name`` (registry name), ``has_length_scale`` (σ exists and is
    selected by :func:`molkrr.krr.select_hyperparameters`), ``differentiable`` (∂k/∂a exists, so
    forces and metric learning work), ``twice_differentiable`` (the second-derivative blocks exist,
    so force training works).
    """

    name = "kernel"
    has_length_scale = True
    differentiable = True
    twice_differentiable = False

    def __init__(self, sigma: float | None = None) -> None:
        self.sigma = sigma

    # -- hyperparameters -------------------------------------------------------------------------
    def with_sigma(self, sigma: float | None) -> "Kernel":
        """A copy with length scale σ (unchanged for kernels without one)."""
        if not self.has_length_scale:
            return self
        return type(self)(**{**self.get_params(deep=False), "sigma": sigma})

    def checked_sigma(self) -> float:
        """σ as a checked positive float (raises if unset or invalid)."""
        return check_sigma(self.sigma)

    @classmethod
    def model_file_schema(cls) -> Schema:
        """A kernel in a model file (:mod:`molkrr.schema`): its σ, where it has one; no fitted attributes."""
        return Schema(params={"sigma": Sigma(none_ok=True)} if "sigma" in cls._get_param_names() else {})

    # -- values ----------------------------------------------------------------------------------
    def __call__(self, A: np.ndarray, B: np.ndarray | None = None) -> np.ndarray:
        """Kernel matrix (n_a, n_b) between the rows of A and B (B = A if omitted: exactly symmetric)."""
        A = np.asarray(A, dtype=np.float64)
        return self.from_distances(self.distances(A, A if B is None else B))

    def distances(self, A: np.ndarray, B: np.ndarray, *, b_sqnorms: np.ndarray | None = None) -> np.ndarray:
        """The σ-free pairwise quantity the kernel is a function of, (n_a, n_b) (r², r₁ or a·b).

        b_sqnorms : ‖b_m‖² if known (used by the Euclidean kernels, ignored by the others).
        """
        raise NotImplementedError

    def from_distances(self, D: np.ndarray) -> np.ndarray:
        """Kernel values from :meth:`distances`' output; may overwrite and return D.

        Computing D once and calling this for many σ is how (σ, λ) selection stays cheap.
        """
        raise NotImplementedError

    # -- first derivatives -----------------------------------------------------------------------
    def gradient(self, A: np.ndarray, B: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """∂/∂a_i Σ_m w_m k(a_i, b_m), shape (n_a, d)."""
        return self.value_and_gradient(A, B, weights)[1]

    def value_and_gradient(
        self,
        A: np.ndarray,
        B: np.ndarray,
        weights: np.ndarray,
        *,
        b_sqnorms: np.ndarray | None = None,
        n_active: int | None = None,
        b_columns: Callable[[], np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(Σ_m w_m k(a_i, b_m) of shape (n_a,), its gradient ∂/∂a_i of shape (n_a, d)) from ONE kernel evaluation.

        b_sqnorms : ‖b_m‖² (n_b,) if known (Euclidean kernels use it to skip a pass over B).
        n_active : a promise that A[:, n_active:] is zero and that the caller ignores gradient columns
            from n_active on (they are returned as 0): then only B[:, :n_active] is read, which is what
            makes one-molecule forces from a large training set cheap (padded Coulomb matrices).
        b_columns : a callable returning Bᵀ as a C-contiguous (d, n_b) array (e.g. cached by a model);
            kernels with a single-query path may read it when few features are active.
        """
        raise NotDifferentiableError(f"kernel {self.name!r} has no gradient")

    # -- second derivatives ----------------------------------------------------------------------
    def second_derivative_coefficients(self, A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(c₁, c₂), both (n_a, n_b): ∂²k(a_i, b_j)/∂a_i∂b_jᵀ = c₁[i, j] I + c₂[i, j] (a_i − b_j)(a_i − b_j)ᵀ."""
        raise NotDifferentiableError(f"kernel {self.name!r} has no second derivative blocks")

    def __repr__(self, N_CHAR_MAX: int = 700) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params(deep=False).items())
        return f"{type(self).__name__}({params})"

    def __eq__(self, other: Any) -> bool:
        return type(self) is type(other) and self.get_params(deep=False) == other.get_params(deep=False)

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.get_params(deep=False).items()))))


class StationaryKernel(Kernel):
    """k(a, b) = g(u), u = ‖a − b‖²/σ²: everything follows from :meth:`profile`."""

    differentiable = True
    twice_differentiable = True

    def profile(self, u: np.ndarray, order: int = 0, xp: Any = np) -> tuple[np.ndarray, ...]:
        """(g(u),) for order 0, (g, g′) for 1, (g, g′, g″) for 2; u ≥ 0 is the scaled squared distance.

        xp : the array namespace (numpy, or torch for the torch backend): profiles use only
            ``xp.exp``, ``xp.sqrt`` and arithmetic, so one formula serves every backend.
        """
        raise NotImplementedError

    def distances(self, A, B, *, b_sqnorms=None):
        return squared_distances(A, B, b_sqnorms=b_sqnorms)

    def from_distances(self, D):
        D *= 1.0 / self.checked_sigma()**2
        return self.profile(D)[0]

    def value_and_gradient(self, A, B, weights, *, b_sqnorms=None, n_active=None, b_columns=None):
        A, B, w = check_gradient_args(A, B, weights)
        s2 = self.checked_sigma()**2
        Ap, Bp, D = active_squared_distances(A, B, b_sqnorms, n_active)
        D *= 1.0 / s2
        g, g1 = self.profile(D, 1)
        value = g @ w
        g1 *= (2.0 / s2) * w[None, :]  # ∂/∂a Σ w k = Σ w (2/σ²) g′ (a − b)
        grad = np.zeros_like(A)
        grad[:, : Ap.shape[1]] = Ap * g1.sum(axis=1)[:, None] - g1 @ Bp
        return value, grad

    def gradient_coefficients(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        """g₁ of shape (n_a, n_b) with ∂k(a_i, b_j)/∂a_i = g₁[i, j] (a_i − b_j) (and ∂/∂b_j the opposite)."""
        A, B = check_pair(A, B)
        s2 = self.checked_sigma()**2
        D = squared_distances(A, B)
        D *= 1.0 / s2
        g1 = self.profile(D, 1)[1]
        g1 *= 2.0 / s2
        return g1

    def second_derivative_coefficients(self, A, B):
        A, B = check_pair(A, B)
        s2 = self.checked_sigma()**2
        D = squared_distances(A, B)
        D *= 1.0 / s2
        _, g1, g2 = self.profile(D, 2)
        g1 *= -2.0 / s2
        g2 *= -4.0 / s2**2
        return g1, g2


def check_sigma(sigma: Any) -> float:
    """σ as a positive finite float, else :class:`InvalidInputError`."""
    if sigma is None:
        raise InvalidInputError("sigma is not set: give the kernel a length scale (or let fit select it)")
    try:
        s = float(sigma)
    except (TypeError, ValueError):
        raise InvalidInputError(f"sigma must be a positive finite number, got {sigma!r}") from None
    if not np.isfinite(s) or s <= 0:
        raise InvalidInputError(f"sigma must be a positive finite number, got {sigma!r}")
    return s


def check_gradient_args(A: Any, B: Any, weights: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A as 2-D, B, weights as a vector of len(B)) as float64, else a typed error."""
    A = np.atleast_2d(np.asarray(A, dtype=np.float64))
    B = np.asarray(B, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if B.ndim != 2 or A.shape[1] != B.shape[1]:
        raise ShapeMismatchError(f"feature matrices of shapes {A.shape} and {B.shape} do not match")
    if w.shape[0] != B.shape[0]:
        raise ShapeMismatchError(f"{w.shape[0]} weights for {B.shape[0]} reference rows")
    return A, B, w


__all__ = ["ROW_BLOCK", "Kernel", "StationaryKernel", "check_gradient_args", "check_sigma"]
