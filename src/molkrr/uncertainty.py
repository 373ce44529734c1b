"""Predictive uncertainty of energy-trained kernel ridge regression: the posterior standard deviation.

The convention, stated here once
--------------------------------
KRR with kernel k, ridge λ and training targets y (centred: y − ȳ, ȳ the training mean, or 0 with
``center=False``) is the posterior mean of a Gaussian process

    f ~ GP(ȳ, s² k),   observed as y_m = f(x_m) + ε_m,   ε_m ~ N(0, s² λ),

since the mean ȳ + k_xᵀ (K + λI)⁻¹ (y − ȳ) does not depend on s². The scale s² is the one number
KRR does not fix; molkrr takes the **maximum-likelihood scale** of this GP for the fitted σ and λ,

    s² = (y − ȳ)ᵀ (K + λI)⁻¹ (y − ȳ) / n   (= αᵀ (K + λI) α / n = ‖Lᵀα‖² / n, L Lᵀ = K + λI),

and the noise variance of one training observation is then s² λ. The standard deviations returned are
those of the *model's* energy f(x) (the latent function, as scikit-learn's
``GaussianProcessRegressor.predict(return_std=True)``), not of a new noisy observation:

    var[E(x)]       = s² (k(x, x) − k_xᵀ (K + λI)⁻¹ k_x),
    var[∂E/∂R_ic]   = s² (J_icᵀ H J_ic − g_icᵀ (K + λI)⁻¹ g_ic),   std of the force F_ic = −∂E/∂R_ic,

with z = A x(R) the features the KRR sees, J_ic = ∂z/∂R_ic (n_components,) from the representation's
``jacobian`` and the metric's A, H = ∂²k(z, z′)/∂z∂z′ᵀ at z′ = z (c₁ I for a stationary kernel,
c₁ = −2 g′(0)/σ²: 1/σ² for the Gaussian) and g_ic = ∂k_x/∂R_ic = G J_ic, G_m = ∂k(z, z_m)/∂z. Both
are computed with triangular solves against the Cholesky factor L (never an inverse). Not included: the
uncertainty of ȳ, of σ and λ, and of s² itself. Energies are in the model's ``energy_unit``, force
standard deviations in energy_unit/Å.

The factor L
------------
``KernelRidge.fit`` (exact solver, numpy backend) keeps L in memory when it is at most
:data:`KEEP_FACTOR_MAX_BYTES`; otherwise, after ``load_model``, after a fit on another backend or when
σ, λ or the training rows changed, L is rebuilt from the stored training features on first use (one
n×n kernel matrix and one Cholesky, as in ``fit``). L is never written to model files.

Supported: :class:`~molkrr.krr.KernelRidge` with the exact solver, any kernel for energies, a
stationary kernel (Gaussian, Matérn) for forces; :class:`~molkrr.MolecularKRR` with a global
representation and ``targets='energy'``, and every exact :class:`~molkrr.derivative_krr.DerivativeKRR`
model (force targets, local kernels: :mod:`molkrr.derivative_uncertainty`, the same convention with the
training rows of derivative observations). Anything else (sparse models, ``solver='falkon'``, model files
without training geometries) raises :class:`~molkrr.errors.UncertaintyNotSupportedError`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg as sla
from scipy.linalg.blas import dtrmv
from sklearn.utils.validation import check_is_fitted

from .errors import NotDifferentiableError, ShapeMismatchError, UncertaintyNotSupportedError
from .kernels import StationaryKernel
from .linalg import KEEP_FACTOR_MAX_BYTES, gemm, spd_factor  # the size limit: molkrr.linalg

__all__ = [
    "KEEP_FACTOR_MAX_BYTES",
    "check_supported",
    "energy_and_force_std",
    "energy_std",
    "gp_scale",
    "krr_energy_and_force_std",
    "krr_std",
    "posterior_factor",
    "predict_energies_and_forces_with_std",
    "predict_with_std",
]

#: Columns (query rows, or force components) per triangular solve: bounds the (n_train, block) temporaries.
SOLVE_BLOCK = 2048
_KEY = "_posterior"  # KernelRidge.__dict__ entry: (X_fit_, lam_, kernel_, L, s²); private, so never saved


# ------------------------------------------------------------------------------------ the factor
def remember_factor(krr: Any, L: np.ndarray) -> None:
    """Called by ``KernelRidge.fit`` with the factor it solved with (lower triangle of a C-ordered L)."""
    krr.__dict__.pop(_KEY, None)
    if L.nbytes <= KEEP_FACTOR_MAX_BYTES:
        krr.__dict__[_KEY] = (krr.X_fit_, krr.lam_, krr.kernel_, L, _scale(L, krr.alpha_))


def forget_factor(krr: Any) -> None:
    """Drop a kept factor (``KernelRidge.fit`` calls it first: a refit never reads a stale one)."""
    krr.__dict__.pop(_KEY, None)


def posterior_factor(krr: Any) -> tuple[np.ndarray, np.ndarray]:
    """(L, s²) of a fitted exact KernelRidge: L's lower triangle is the Cholesky factor of K + λ_I (λ = ``lam_``,
    the ridge fit used, jitter included); s² the maximum-likelihood scale, a float (or (t,) for y of shape (n, t))."""
    _check_krr(krr)
    kernel = krr.kernel_
    cached = krr.__dict__.get(_KEY)
    if cached is not None and cached[0] is krr.X_fit_ and cached[1] == krr.lam_ and cached[2] == kernel:
        return cached[3], cached[4]
    krr.__dict__.pop(_KEY, None)
    X = krr.X_fit_
    L, lam = spd_factor(lambda: kernel(X), float(krr.lam_))  # warns (JitterWarning) if lam_ no longer suffices
    entry = (X, krr.lam_, kernel, L, _scale(L, krr.alpha_))
    krr.__dict__[_KEY] = entry
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


def _check_krr(krr: Any) -> None:
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


# ------------------------------------------------------------------------------------ molecule level
def check_supported(model: Any, *, forces: bool = False) -> None:
    """Raise :class:`~molkrr.errors.UncertaintyNotSupportedError` unless a fitted MolecularKRR can give the
    posterior std of its energies (and, with ``forces=True``, of its forces)."""
    from .krr import KernelRidge

    check_is_fitted(model)
    krr = model.krr_
    if not isinstance(krr, KernelRidge):  # force targets, local kernels: molkrr.derivative_uncertainty
        from .derivative_uncertainty import check_supported as check_derivative

        check_derivative(model, forces=forces)
        return
    _check_krr(krr)
    if forces:
        if not getattr(model.representation_, "differentiable", False):
            raise NotDifferentiableError(f"{type(model.representation_).__name__} has no derivative with respect to positions")
        if not isinstance(krr.kernel_, StationaryKernel):
            raise UncertaintyNotSupportedError(
                f"force std is not supported for the {krr.kernel_.name!r} kernel (use gaussian, matern32 or matern52)"
            )


def energy_std(model: Any, molecules: Any) -> np.ndarray:
    """Posterior std of a fitted MolecularKRR's energies (n_molecules,), in its energy unit."""
    check_supported(model)
    if _is_derivative(model):
        from .applicability import check_elements
        from .derivative_uncertainty import posterior_std
        from .molecules import as_molecules

        mols = as_molecules(molecules)
        check_elements(model, mols)  # refuse elements not seen in training, as predict does
        return posterior_std(model, mols, forces=False)[0]
    return krr_std(model.krr_, model.features(molecules))


def _is_derivative(model: Any) -> bool:
    from .krr import KernelRidge

    return not isinstance(model.krr_, KernelRidge)


def energy_and_force_std(model: Any, molecules: Any) -> tuple[np.ndarray, list[np.ndarray]]:
    """(energy std (n_molecules,), force std: one (n_atoms_i, 3) array per molecule) of a fitted MolecularKRR."""
    from .molecules import as_molecules

    check_supported(model, forces=True)
    mols = as_molecules(molecules)
    if _is_derivative(model):
        from .applicability import check_elements
        from .derivative_uncertainty import posterior_std

        check_elements(model, mols)  # refuse elements not seen in training, as predict does
        return posterior_std(model, mols, forces=True)
    Z = model.features(mols)
    A = None if model.metric_ is None else np.asarray(model.metric_.components_, dtype=np.float64)
    jac = []
    for Jx in model.representation_.jacobian(mols):  # (d, n_atoms, 3): ∂x/∂R, then ∂z/∂R = A ∂x/∂R
        jac.append(Jx if A is None else (A @ Jx.reshape(Jx.shape[0], -1)).reshape(A.shape[0], *Jx.shape[1:]))
    return krr_energy_and_force_std(model.krr_, Z, jac)


def predict_with_std(model: Any, molecules: Any) -> tuple[np.ndarray, np.ndarray]:
    """(energies, energy std), both (n_molecules,): ``model.predict`` and the posterior std."""
    check_supported(model)
    return model.predict(molecules), energy_std(model, molecules)


def predict_energies_and_forces_with_std(model: Any, molecules: Any) -> tuple[np.ndarray, list, np.ndarray, list]:
    """(energies, forces, energy std (n_molecules,), force std: one (n_atoms_i, 3) array per molecule):
    ``model.predict_energies_and_forces`` and the posterior stds."""
    from .molecules import as_molecules

    check_supported(model, forces=True)
    mols = as_molecules(molecules)
    energies, forces = model.predict_energies_and_forces(mols)
    return (energies, forces, *energy_and_force_std(model, mols))
