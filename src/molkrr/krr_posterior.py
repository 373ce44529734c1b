"""The GP posterior of a fitted exact :class:`~molkrr.krr.KernelRidge` at feature rows: the kept Cholesky
factor, the maximum-likelihood scale s², and the energy and force std (the convention is stated once, in
:mod:`molkrr.uncertainty`, which re-exports these names and adds the molecule level).

The factor L
------------
``KernelRidge.fit`` (exact solver, numpy backend) keeps L in memory (:func:`remember_factor`, under
:data:`POSTERIOR_KEY` of the estimator's ``__dict__``) when it is at most :data:`KEEP_FACTOR_MAX_BYTES`;
otherwise, after ``load_model``, after a fit on another backend or when σ, λ or the training rows changed,
L is rebuilt from the stored training features on first use (one n×n kernel matrix and one Cholesky, as in
``fit``). L is never written to model files.

Layering: ``krr.py`` and ``uncertainty.py`` import this module; it imports no estimator module and reads a
KernelRidge only through its fitted attributes (``X_fit_``, ``alpha_``, ``lam_``, ``kernel_``, ``solver_``),
so the imports point one way (``tests/test_import_graph.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg as sla
from scipy.linalg.blas import dtrmv
from sklearn.utils.validation import check_is_fitted

from .errors import ShapeMismatchError, UncertaintyNotSupportedError
from .kernels import StationaryKernel
from .linalg import KEEP_FACTOR_MAX_BYTES, gemm, spd_factor  # the size limit: molkrr.linalg

__all__ = [
    "KEEP_FACTOR_MAX_BYTES",
    "POSTERIOR_KEY",
    "SOLVE_BLOCK",
    "check_exact",
    "forget_factor",
    "gp_scale",
    "krr_energy_and_force_std",
    "krr_std",
    "posterior_factor",
    "remember_factor",
]

#: Columns (query rows, or force components) per triangular solve: bounds the (n_train, block) temporaries.
SOLVE_BLOCK = 2048
POSTERIOR_KEY = "_posterior"  # KernelRidge.__dict__ entry: (X_fit_, lam_, kernel_, L, s²); private, so never saved


# ------------------------------------------------------------------------------------ the factor
def remember_factor(krr: Any, L: np.ndarray) -> None:
    """Called by ``KernelRidge.fit`` with the factor it solved with (lower triangle of a C-ordered L)."""
    krr.__dict__.pop(POSTERIOR_KEY, None)
    if L.nbytes <= KEEP_FACTOR_MAX_BYTES:
        krr.__dict__[POSTERIOR_KEY] = (krr.X_fit_, krr.lam_, krr.kernel_, L, _scale(L, krr.alpha_))


def forget_factor(krr: Any) -> None:
    """Drop a kept factor (``KernelRidge.fit`` calls it first: a refit never reads a stale one)."""
    krr.__dict__.pop(POSTERIOR_KEY, None)


def posterior_factor(krr: Any) -> tuple[np.ndarray, np.ndarray]:
    """(L, s²) of a fitted exact KernelRidge: L's lower triangle is the Cholesky factor of K + λ_I (λ = ``lam_``,
    the ridge fit used, jitter included); s² the maximum-likelihood scale, a float (or (t,) for y of shape (n, t))."""
    check_exact(krr)
    kernel = krr.kernel_
    cached = krr.__dict__.get(POSTERIOR_KEY)
    if cached is not None and cached[0] is krr.X_fit_ and cached[1] == krr.lam_ and cached[2] == kernel:
        return cached[3], cached[4]
    krr.__dict__.pop(POSTERIOR_KEY, None)
    X = krr.X_fit_
    L, lam = spd_factor(lambda: kernel(X), float(krr.lam_))  # warns (JitterWarning) if lam_ no longer suffices
    entry = (X, krr.lam_, kernel, L, _scale(L, krr.alpha_))
    krr.__dict__[POSTERIOR_KEY] = entry
    return entry[3], entry[4]


def gp_scale(krr: Any) -> Any:
    """s² = (y − ȳ)ᵀ (K + λI)⁻¹ (y − ȳ) / n of a fitted exact KernelRidge (see the module docstring)."""
    return posterior_factor(krr)[1]


def _scale(L: np.ndarray, alpha: np.ndarray) -> Any:
    # (y − ȳ) = (K + λI) α = L Lᵀ α, so (y − ȳ)ᵀ (K + λI)⁻¹ (y − ȳ) = αᵀ L Lᵀ α = ‖Lᵀ α‖²
    U = L.T  # F-ordered, upper triangle = Lᵀ: BLAS reads it in place
    cols = alpha.reshape(alpha.shape[0], -1)
    s2 = np.array([np.dot(v, v) for v in (dtrmv(U, np.ascontiguousarray(c), lower=0) for c in cols.T)])
    s2 /= alpha.shape[0]
    return float(s2[0]) if alpha.ndim == 1 else s2


def _solve_lower(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """L⁻¹ B for the factor of :func:`posterior_factor` (B of shape (n, k))."""
    return sla.solve_triangular(L.T, B, trans="T", lower=False, check_finite=False)


def check_exact(krr: Any) -> None:
    """Raise :class:`~molkrr.errors.UncertaintyNotSupportedError` unless ``krr`` is a fitted KernelRidge of an
    exact solver (the registry's ``exact`` flag): only then is α the GP posterior's (K + λI)⁻¹ (y − ȳ)."""
    check_is_fitted(krr)
    from .solvers.registry import get_solver

    solver = get_solver(getattr(krr, "solver_", "cholesky"))
    if not solver.exact:  # e.g. 'falkon': α over centres, not the GP posterior's (K + λI)⁻¹ y
        raise UncertaintyNotSupportedError(
            f"predictive std is not supported yet for solver={solver.name!r} ({solver.description}): "
            "fit with solver='cholesky'"
        )


# ------------------------------------------------------------------------------------ feature level
def _self_kernel(kernel: Any, Z: np.ndarray) -> np.ndarray:
    """k(z_i, z_i) for every row (n_q,)."""
    if isinstance(kernel, StationaryKernel):
        return np.full(Z.shape[0], float(kernel.profile(np.zeros(1))[0][0]))
    return np.array([kernel(Z[i : i + 1])[0, 0] for i in range(Z.shape[0])])  # B is A: an exact zero distance


def _variance_scale(s2: Any, var: np.ndarray) -> np.ndarray:
    np.maximum(var, 0.0, out=var)  # round-off can take it below 0 at training points
    return np.sqrt(var[:, None] * s2[None, :]) if np.ndim(s2) else np.sqrt(s2 * var)


def krr_std(krr: Any, Z: Any) -> np.ndarray:
    """Posterior std of a fitted exact :class:`~molkrr.krr.KernelRidge` at feature rows Z (n_q, d):
    shape (n_q,), or (n_q, t) for a model fitted on y of shape (n, t). In the unit of y."""
    L, s2 = posterior_factor(krr)
    Z = _as_rows(krr, Z)
    kernel = krr.kernel_
    var = _self_kernel(kernel, Z)
    for start in range(0, Z.shape[0], SOLVE_BLOCK):
        stop = min(start + SOLVE_BLOCK, Z.shape[0])
        Kb = kernel.from_distances(kernel.distances(Z[start:stop], krr.X_fit_, b_sqnorms=krr._train_sq_norms()))
        V = _solve_lower(L, Kb.T)
        var[start:stop] -= np.einsum("ij,ij->j", V, V)
    return _variance_scale(s2, var)


def krr_energy_and_force_std(krr: Any, Z: Any, jacobians: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """(energy std (n_q,), force std: one (n_atoms_i, 3) array per row) of a fitted exact single-output
    KernelRidge with a stationary kernel, at features Z (n_q, c) with ∂z_i/∂R = ``jacobians[i]`` of shape
    (c, n_atoms_i, 3)."""
    L, s2 = posterior_factor(krr)
    if np.ndim(s2):
        raise ShapeMismatchError("force std needs a single-output model (y of shape (n,))")
    kernel = krr.kernel_
    if not isinstance(kernel, StationaryKernel):
        raise UncertaintyNotSupportedError(
            f"force std is not supported for the {kernel.name!r} kernel: it needs ∂²k/∂z∂z' at coincident points "
            "(a stationary kernel: gaussian, matern32, matern52)"
        )
    Z = _as_rows(krr, Z)
    if len(jacobians) != Z.shape[0]:
        raise ShapeMismatchError(f"{len(jacobians)} Jacobians for {Z.shape[0]} feature rows")
    X = krr.X_fit_
    sigma2 = kernel.checked_sigma() ** 2
    c1 = -2.0 / sigma2 * float(kernel.profile(np.zeros(1), 1)[1][0])  # ∂²k/∂z∂z'ᵀ at z' = z is c₁ I
    energy_std = krr_std(krr, Z)
    force_var = []
    # group molecules so that each triangular solve has at most SOLVE_BLOCK right-hand sides
    i = 0
    while i < Z.shape[0]:
        group, cols = [], 0
        while i < Z.shape[0] and (not group or cols + jacobians[i][0].size <= SOLVE_BLOCK):
            J = np.asarray(jacobians[i], dtype=np.float64)
            if J.ndim != 3 or J.shape[0] != Z.shape[1] or J.shape[2] != 3:
                raise ShapeMismatchError(f"Jacobian {i} has shape {J.shape}, expected ({Z.shape[1]}, n_atoms, 3)")
            group.append((i, np.ascontiguousarray(J.reshape(J.shape[0], -1))))
            cols += J.shape[1] * 3
            i += 1
        G = np.empty((X.shape[0], cols))
        prior, at = [], 0
        for row, J in group:
            g1 = kernel.gradient_coefficients(Z[row : row + 1], X)[0]  # ∂k(z, z_m)/∂z = g1_m (z − z_m)
            P = gemm(X, J)  # (n, 3N): z_m · J_ic, by scipy's BLAS like the solve (one BLAS pool, molkrr.linalg)
            P -= Z[row] @ J
            P *= -g1[:, None]  # g1_m (z − z_m) · J_ic
            G[:, at : at + J.shape[1]] = P
            prior.append(c1 * np.einsum("ck,ck->k", J, J))
            at += J.shape[1]
        W = _solve_lower(L, G)
        var = np.concatenate(prior) - np.einsum("ij,ij->j", W, W)
        at = 0
        for row, J in group:
            force_var.append(var[at : at + J.shape[1]].reshape(-1, 3))
            at += J.shape[1]
    return energy_std, [_variance_scale(s2, v.reshape(-1)).reshape(v.shape) for v in force_var]


def _as_rows(krr: Any, Z: Any) -> np.ndarray:
    Z = np.ascontiguousarray(np.atleast_2d(np.asarray(Z, dtype=np.float64)))
    if Z.ndim != 2 or Z.shape[1] != krr.X_fit_.shape[1]:
        raise ShapeMismatchError(f"features must have shape (n, {krr.X_fit_.shape[1]}), got {Z.shape}")
    return Z
