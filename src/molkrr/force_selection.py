"""Fitting MolecularKRR with derivative observations, and choosing σ and λ on held-out forces.

:func:`select_force_hyperparameters` fits on the first frames of the training set and scores on a
later block of it (MD frames are correlated: a random split would leak), by force MAE when forces
are trained and energy MAE otherwise. One Gram matrix is built per σ and re-factorised per λ.
The ridges are searched as multiples of the mean diagonal of the energy and gradient blocks (one
relative grid for both), so the grid does not depend on the energy unit. The search itself, its result
and the one :class:`GridEdgeWarning` for a choice on the edge of its grid are :mod:`molkrr.selection`'s.

:meth:`molkrr.MolecularKRR.fit` takes its derivative-observation branch from here:
:func:`derivative_hyperparameters` (the σ, λ, λ_F it was given, the others selected) and
:func:`fit_derivative_krr` (the fitted :class:`~molkrr.derivative_krr.DerivativeKRR`); the model sets its own
fitted attributes.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .derivative_krr import (
    DerivativeKRR,
    check_targets,
    environments,
    fit_molecules,
    gram_matrix,
    observations,
    row_layout,
    training_environments,
)
from .errors import InvalidInputError, NotDifferentiableError, ShapeMismatchError
from .kernels import make_kernel
from .linalg import spd_factor, spd_solve
from .molecules import Molecules
from .selection import DEFAULT_LAMS, GridEdgeWarning, SelectionResult, search_grid, select_hyperparameters

#: Relative ridges (multiples of the mean diagonal of the energy / gradient blocks).
DEFAULT_RELATIVE_LAMS = (1e-10, 1e-8, 1e-6, 1e-4, 1e-2)
#: σ grid as multiples of the median distance between training environments of the same element.
DEFAULT_SIGMA_FACTORS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
#: At most this many frames are fitted per grid point, and at most ``MAX_VALIDATION`` scored.
MAX_SELECTION_TRAIN = 100
MAX_VALIDATION = 100
#: Energy-only models (local kernel on QM9): molecules taking part in σ/λ selection, and the σ grid
#: as multiples of the median environment distance (local FCHL19 on QM9: σ ≈ 4–8 × the median at 1,000 molecules).
MAX_ENERGY_SELECTION = 2000
DEFAULT_ENERGY_SIGMA_FACTORS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


#: The result of :func:`select_force_hyperparameters` (the one selection result, :mod:`molkrr.selection`).
ForceSelection = SelectionResult


def select_force_hyperparameters(
    rep: Any,
    mols: Molecules,
    energies: np.ndarray,
    *,
    kernel: Any = "gaussian",
    targets: str = "energy+forces",
    sigmas: Any = None,
    lams: Any = None,
    lam_forces: Any = None,
    center: bool = True,
    validation_fraction: float = 0.2,
    max_train: int = MAX_SELECTION_TRAIN,
    progress: bool = False,
    score: str = "validation",
) -> SelectionResult:
    """Choose σ, λ, λ_F by validation error on a later block of ``mols`` (a fitted representation), or by the
    GP evidence of all of them.

    sigmas : grid of σ (default: :data:`DEFAULT_SIGMA_FACTORS` × the median environment distance).
    lams, lam_forces : grids of absolute ridges for the energy and gradient rows; when both are None
        one relative grid (:data:`DEFAULT_RELATIVE_LAMS` × each block's mean diagonal) is searched.
        A grid of one value fixes that ridge.
    The search is :func:`molkrr.selection.search_grid` (one :class:`GridEdgeWarning` for a choice on an edge).
    score : 'validation' (force MAE, or energy MAE for energy targets, on the later block) or 'evidence':
        no held-out frames — every frame (at most ``max_train``, evenly spaced) is fitted and the score is the
        negative log marginal likelihood per row of the GP of :mod:`molkrr.uncertainty`, with its
        maximum-likelihood scale: ½ log s² + (1/n) Σ log L_ii (+ const), s² = yᵀ(K + Λ)⁻¹y / n. For frames that
        are not a fair sample of where the model will be used (on-the-fly learning labels the hard ones,
        :mod:`molkrr.active`), so that no block of them is a fair validation set.
    Returns a :class:`molkrr.selection.SelectionResult` with ``lam_forces`` and ``table`` (one row
    (σ, λ, λ_F, energy MAE, force MAE or NaN) per cell fitted; with 'evidence' (σ, λ, λ_F, score, NaN)).
    """
    if score not in ("validation", "evidence"):
        raise InvalidInputError(f"score must be 'validation' or 'evidence', got {score!r}")
    targets = check_targets(targets)
    base = make_kernel(kernel)
    if targets != "energy" and not base.twice_differentiable:
        raise NotDifferentiableError(f"kernel {base.name!r} has no second derivatives: force training needs one")
    n = len(mols)
    if n < 3:
        raise ShapeMismatchError(f"selecting hyperparameters needs at least 3 training molecules, got {n}")
    evidence = score == "evidence"
    n_val = 0 if evidence else min(MAX_VALIDATION, max(1, int(round(validation_fraction * n))))
    n_fit = n - n_val
    fit_idx = np.unique(np.linspace(0, n_fit - 1, min(n_fit, max_train)).round().astype(int))
    val_idx = np.arange(n_fit, n)
    fit_mols, e_fit = mols.subset(fit_idx), energies[fit_idx]
    env, grads = training_environments(rep, fit_mols, targets)
    if not evidence:
        val_mols, e_val = mols.subset(val_idx), energies[val_idx]
        val_env = environments(rep, val_mols)
    if sigmas is None:
        if not base.has_length_scale:
            sigmas = [None]
        else:
            sigmas = [f * median_environment_distance(env) for f in DEFAULT_SIGMA_FACTORS]
    sigmas = list(np.atleast_1d(sigmas)) if sigmas is not None else [None]
    rows = row_layout(env, targets)
    y, e_rows, offset = observations(env, e_fit, grads, targets, rows, center)
    f_rows = ~e_rows
    relative = lams is None and lam_forces is None
    model = DerivativeKRR(base, None, 0.0, 0.0, targets, center)
    table: list[tuple[float, float, float, float, float]] = []

    def cells():  # per σ: one Gram matrix, one Cholesky per (λ, λ_F) cell
        for sigma in sigmas:
            kern = base.with_sigma(sigma)
            model.set_params(kernel=kern, sigma=sigma)
            K = gram_matrix(kern, env, targets, rows)
            de = float(np.mean(np.diagonal(K)[e_rows])) if e_rows.any() else 1.0
            df = float(np.mean(np.diagonal(K)[f_rows])) if f_rows.any() else 1.0
            le = [r * de for r in DEFAULT_RELATIVE_LAMS] if lams is None else list(np.atleast_1d(lams))
            lf = [r * df for r in DEFAULT_RELATIVE_LAMS] if lam_forces is None else list(np.atleast_1d(lam_forces))
            if targets == "energy":
                lf = lf[:1]
            if targets == "forces":
                le = le[:1]
            if relative and targets == "energy+forces":  # one relative grid for both kinds of rows
                pairs = list(zip(le, lf))
            else:
                pairs = [(a, b) for a in le for b in lf]
            scores = np.full(len(pairs), np.inf)
            for c, (lam_e, lam_f) in enumerate(pairs):
                diag = np.where(e_rows, lam_e, lam_f)
                try:
                    L, _ = spd_factor(lambda: _with_diagonal(K, diag), 0.0)
                except Exception:  # a cell that cannot be factorised is skipped (score inf, no table row)
                    continue
                coef = spd_solve(L, y)
                if evidence:  # the profile negative log marginal likelihood per row (the ML scale s²)
                    nll = 0.5 * np.log(float(y @ coef) / len(y)) + float(np.sum(np.log(np.diagonal(L)))) / len(y)
                    del L
                    table.append((float(sigma) if sigma is not None else float("nan"), lam_e, lam_f, nll, float("nan")))
                    scores[c] = nll
                    if progress:
                        print(f"  sigma={sigma:.4g} lam={lam_e:.2e} lam_forces={lam_f:.2e}: -log evidence per row "
                              f"{nll:.6g}", file=sys.stderr)
                    continue
                del L
                model.set_solution(env, coef, rows, offset=offset, energies=e_fit)
                e_mae, f_mae = _validation_errors(rep, model, val_mols, val_env, e_val, targets)
                table.append((float(sigma) if sigma is not None else float("nan"), lam_e, lam_f, e_mae, f_mae))
                scores[c] = f_mae if targets != "energy" else e_mae
                if progress:
                    print(f"  sigma={sigma:.4g} lam={lam_e:.2e} lam_forces={lam_f:.2e}: energy MAE {e_mae:.4g}, "
                          f"force MAE {f_mae:.4g}", file=sys.stderr)
            del K
            yield [p[0] for p in pairs], [p[1] for p in pairs], scores

    grid = [float(s) if s is not None else float("nan") for s in sigmas]
    return search_grid(grid, cells(), has_length_scale=sigmas[0] is not None, table=table)


def derivative_hyperparameters(
    rep: Any,
    mols: Molecules,
    energies: np.ndarray,
    *,
    kernel: Any,
    targets: str,
    sigma: float | None,
    lam: float | None,
    lam_forces: float | None,
    center: bool = True,
    progress: bool = False,
) -> tuple[float | None, float, float]:
    """(σ, λ, λ_F) of a derivative-observation or local-kernel model: the given ones, the others selected
    (energies only: :func:`select_local_energy_hyperparameters`; force targets: :func:`select_force_hyperparameters`).

    rep : the fitted representation; energies (n_mol,) what the model fits (after its baseline). A ridge the
    targets do not use (λ_F for 'energy', λ for 'forces') defaults to 0.
    """
    targets = check_targets(targets)
    kernel = make_kernel(kernel)
    lam_f = lam_forces
    if targets == "energy":
        lam_f = 0.0 if lam_f is None else lam_f
    if targets == "forces":
        lam = 0.0 if lam is None else lam
    need = (kernel.has_length_scale and sigma is None) or lam is None or lam_f is None
    if need and targets == "energy":  # energies only: one Gram per σ grid, one eigendecomposition per σ
        sel = select_local_energy_hyperparameters(
            rep, mols, energies, kernel=kernel, sigmas=None if sigma is None else [sigma],
            lams=None if lam is None else [lam], center=center, progress=progress)
        sigma, lam = sel.sigma, sel.lam
        if progress:
            print(f"selected sigma={sigma}, lam={lam:.3g} (validation MAE {sel.score:.4g})", file=sys.stderr)
    elif need:
        sel = select_force_hyperparameters(
            rep, mols, energies, kernel=kernel, targets=targets,
            sigmas=None if sigma is None else [sigma],
            lams=None if lam is None else [lam],
            lam_forces=None if lam_f is None else [lam_f],
            center=center, progress=progress)
        sigma, lam, lam_f = sel.sigma, sel.lam, sel.lam_forces
        if progress:
            print(f"selected sigma={sigma}, lam={lam:.3g}, lam_forces={lam_f:.3g} (validation MAE {sel.score:.4g})",
                  file=sys.stderr)
    return (float(sigma) if kernel.has_length_scale else None), float(lam), float(lam_f)


def fit_derivative_krr(
    rep: Any,
    mols: Molecules,
    energies: np.ndarray,
    *,
    kernel: Any,
    sigma: float | None,
    lam: float,
    lam_forces: float,
    targets: str,
    center: bool = True,
    n_sparse: int | None = None,
    progress: bool = False,
    backend: Any = None,
) -> DerivativeKRR:
    """The fitted :class:`DerivativeKRR` of :meth:`molkrr.MolecularKRR.fit`'s derivative-observation branch (force
    targets, local kernels) at given σ, λ, λ_F: the exact solve, or ``n_sparse`` inducing environments
    (:mod:`molkrr.solvers.sparse_local`, energies only). rep : the fitted representation; energies (n_mol,);
    backend : factorises and solves the exact system (:meth:`DerivativeKRR.fit`)."""
    targets = check_targets(targets)
    kernel = make_kernel(kernel).with_sigma(sigma)
    if n_sparse is not None:  # inducing environments (molkrr.solvers.sparse_local)
        from .solvers.sparse_local import fit_sparse_energies

        if targets != "energy":
            raise InvalidInputError("n_sparse (sparse local KRR) trains on energies only so far: use targets='energy'")
        fit = fit_sparse_energies(rep, mols, energies, kernel=kernel, lam=lam, n_sparse=n_sparse, center=center,
                                  progress=progress)
        return DerivativeKRR(kernel, sigma, lam, lam_forces, targets, center).set_environment_weights(
            fit["X"], fit["labels"], fit["beta"], fit["offset"])
    return fit_molecules(rep, mols, kernel=kernel, sigma=sigma, lam=lam, lam_forces=lam_forces, targets=targets,
                         center=center, energies=energies, progress=progress, backend=backend)


def select_local_energy_hyperparameters(
    rep: Any,
    mols: Molecules,
    energies: np.ndarray,
    *,
    kernel: Any = "gaussian",
    sigmas: Any = None,
    lams: Any = None,
    center: bool = True,
    validation_fraction: float = 0.2,
    max_molecules: int = MAX_ENERGY_SELECTION,
    progress: bool = False,
) -> SelectionResult:
    """σ and λ of an energy-trained model on environments (local kernel), by validation MAE.

    At most ``max_molecules`` molecules, evenly spaced, take part: the last ``validation_fraction`` of
    them validate (a later block, as for MD frames; QM9 draws are in random order). The kernel
    matrices of all σ come from one pass of distance GEMMs (:func:`molkrr.local_gram.local_kernel_matrices`)
    and :func:`molkrr.selection.select_hyperparameters` scores every λ from one eigendecomposition per σ.
    sigmas : default :data:`DEFAULT_ENERGY_SIGMA_FACTORS` × the median same-element environment distance;
    lams : default :data:`molkrr.selection.DEFAULT_LAMS`. Returns a :class:`molkrr.selection.SelectionResult`.
    """
    from .local_gram import local_kernel_matrices

    n = len(mols)
    if n < 3:
        raise ShapeMismatchError(f"selecting hyperparameters needs at least 3 training molecules, got {n}")
    idx = np.unique(np.linspace(0, n - 1, min(n, max_molecules)).round().astype(int))
    env = environments(rep, mols.subset(idx))
    base = make_kernel(kernel)
    if sigmas is None and base.has_length_scale:
        sigmas = [f * median_environment_distance(env) for f in DEFAULT_ENERGY_SIGMA_FACTORS]
    n_val = min(len(idx) - 1, max(1, int(round(validation_fraction * len(idx)))))
    return select_hyperparameters(
        None, np.asarray(energies, dtype=np.float64)[idx], kernel=base, sigmas=sigmas,
        lams=DEFAULT_LAMS if lams is None else lams, center=center, progress=progress,
        validation_rows=np.arange(len(idx) - n_val, len(idx)),
        gram=lambda kernels: local_kernel_matrices(kernels, env))


# ------------------------------------------------------------------------------------ helpers
def median_environment_distance(env: Any, max_rows: int = 2000) -> float:
    """Median distance between environments of the same label (a subsample of at most max_rows): the scale of
    the σ grids here and of on-the-fly learning's first σ (:mod:`molkrr.active`)."""
    idx = np.unique(np.linspace(0, env.X.shape[0] - 1, min(env.X.shape[0], max_rows)).round().astype(int))
    X, lab = env.X[idx], env.labels[idx]
    d2 = np.sum(X**2, 1)[:, None] + np.sum(X**2, 1)[None, :] - 2 * X @ X.T
    mask = (lab[:, None] == lab[None, :]) & ~np.eye(len(idx), dtype=bool)
    vals = np.sqrt(np.clip(d2[mask], 0, None))
    vals = vals[vals > 0]
    return float(np.median(vals)) if vals.size else 1.0


def _with_diagonal(K: np.ndarray, diag: np.ndarray) -> np.ndarray:
    M = K.copy()
    np.einsum("ii->i", M)[:] += diag
    return M


def _validation_errors(rep, model, val_mols, val_env, e_val, targets) -> tuple[float, float]:
    if targets == "energy":
        return float(np.mean(np.abs(model.predict_env(val_env) - e_val))), float("nan")
    from .derivative_krr import predict_energies_and_forces

    E, F = predict_energies_and_forces(rep, model, val_mols)
    f_mae = float(np.mean(np.abs(np.concatenate(F) - val_mols.forces)))
    return float(np.mean(np.abs(E - e_val))), f_mae


__all__ = ["DEFAULT_ENERGY_SIGMA_FACTORS", "DEFAULT_RELATIVE_LAMS", "DEFAULT_SIGMA_FACTORS", "ForceSelection",
           "GridEdgeWarning", "MAX_ENERGY_SELECTION", "derivative_hyperparameters", "fit_derivative_krr",
           "median_environment_distance", "select_force_hyperparameters", "select_local_energy_hyperparameters"]
