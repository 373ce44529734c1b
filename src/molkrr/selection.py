"""Choosing σ and λ on a grid: the one search behind every fit path, its result and its grid-edge warning.

:func:`search_grid` is the core: it takes, for each σ of the grid in turn, the ridges tried there and their
validation errors, picks the cell with the least error (the first one on ties, σ-major order), warns once
(:class:`GridEdgeWarning`) when the choice lies on an edge of its grid, and returns a :class:`SelectionResult`.
What a cell costs is the caller's:

* :func:`select_hyperparameters` (energies on feature rows, or any samples through its ``gram`` hook such as
  molecules under the local kernel): one eigendecomposition per (σ, fold) scores every λ;
* :func:`molkrr.force_selection.select_force_hyperparameters` (derivative observations): one Gram matrix per
  σ, one Cholesky per (λ, λ_F) cell.

``MolecularKRR.fit``, the CLI's validation frames, the paper pipeline, the metric comparison and the Dask
sweep (:func:`molkrr.solvers.dask.validation_selection`) all go through here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidInputError, ShapeMismatchError
from .kernels import Kernel, make_kernel, squared_distances

#: The λ grid searched when λ is not given.
DEFAULT_LAMS = (1e-10, 1e-8, 1e-6, 1e-4, 1e-2)


class GridEdgeWarning(UserWarning):
    """A selected hyperparameter lies on the edge of its grid: the optimum may lie beyond it."""


@dataclass
class SelectionResult:
    """Outcome of a grid selection: the best (σ, λ[, λ_F]), its validation error and the whole table.

    sigma : the chosen σ (None for a kernel without a length scale); lam : the chosen ridge (energy rows);
    score : its validation MAE; sigmas : (n_sigmas,) the σ grid (NaN without a length scale);
    lams : (n_lams,) the λ grid, or (n_sigmas, n_lams) where the ridges are relative to each σ's kernel
    matrix (force selection); scores : (n_sigmas, n_lams) validation MAE (inf for a cell that failed).
    Force selection adds lam_forces (the chosen ridge of the gradient rows), lams_forces (as lams) and
    table: one row (σ, λ, λ_F, energy MAE, force MAE or NaN) per cell fitted.
    """

    sigma: float | None
    lam: float
    score: float
    sigmas: np.ndarray
    lams: np.ndarray
    scores: np.ndarray = field(repr=False)
    lam_forces: float | None = None
    lams_forces: np.ndarray | None = field(default=None, repr=False)
    table: list[tuple[float, float, float, float, float]] = field(default_factory=list, repr=False)


# ----------------------------------------------------------------------------- the core
def search_grid(
    sigmas: Any,
    cells: Iterable[tuple[Any, Any, Any]],
    *,
    has_length_scale: bool = True,
    progress: bool = False,
    table: list | None = None,
    warn: bool = True,
) -> SelectionResult:
    """The best cell of a (σ, λ[, λ_F]) grid, with one :class:`GridEdgeWarning` if it lies on an edge.

    sigmas : (n_sigmas,) the σ grid (NaN entries when the kernel has no length scale).
    cells : for each σ in turn (consumed lazily, so a caller may build one kernel matrix at a time),
        ``(lams (n_lams,), lams_forces (n_lams,) or None, scores (n_lams,))``: the ridges tried at that σ
        and their validation errors; a non-finite score marks a cell that failed. Every σ tries as many cells.
    table : rows to keep in the result (force selection's per-cell energy and force errors).
    warn : False for a grid whose choice lies on an edge by design (a local step, ``molkrr.paper.tune_krr``).
    Raises :class:`~molkrr.errors.InvalidInputError` when no cell has a finite score.
    """
    sigmas = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    steps: Iterable = cells
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(cells, desc="selecting sigma, lambda", unit="sigma", total=sigmas.size)
    lam_rows, lamf_rows, score_rows = [], [], []
    for lams, lams_f, scores in steps:
        lam_rows.append(np.asarray(lams, dtype=np.float64).reshape(-1))
        lamf_rows.append(None if lams_f is None else np.asarray(lams_f, dtype=np.float64).reshape(-1))
        score_rows.append(np.asarray(scores, dtype=np.float64).reshape(-1))
    if len(score_rows) != sigmas.size or len({r.size for r in score_rows}) != 1:
        raise ShapeMismatchError("search_grid needs one row of cells per sigma, each with as many cells")
    scores = np.vstack(score_rows)
    scores[~np.isfinite(scores)] = np.inf
    lam_grid = np.vstack(lam_rows)
    lamf_grid = None if lamf_rows[0] is None else np.vstack(lamf_rows)
    i, j = np.unravel_index(np.argmin(scores), scores.shape)
    if not np.isfinite(scores[i, j]):
        raise InvalidInputError("no hyperparameter cell could be fitted: every cell of the grid failed to factorise "
                                "or gave a non-finite validation error")
    same_lams = bool((lam_grid == lam_grid[0]).all()) and (lamf_grid is None or bool((lamf_grid == lamf_grid[0]).all()))
    result = SelectionResult(
        sigma=float(sigmas[i]) if has_length_scale else None,
        lam=float(lam_grid[i, j]),
        score=float(scores[i, j]),
        sigmas=sigmas,
        lams=lam_grid[0] if same_lams else lam_grid,
        scores=scores,
        lam_forces=None if lamf_grid is None else float(lamf_grid[i, j]),
        lams_forces=None if lamf_grid is None else (lamf_grid[0] if same_lams else lamf_grid),
        table=list(table or []),
    )
    if warn:
        warn_on_grid_edges(result, lam_grid[i], None if lamf_grid is None else lamf_grid[i])
    return result


def choose_from_scores(sigmas: Any, lams: Any, scores: Any, *, has_length_scale: bool = True,
                       warn: bool = True) -> SelectionResult:
    """:func:`search_grid` over a score table already computed: scores (n_sigmas, n_lams) for lams (n_lams,)."""
    lams = np.asarray(lams, dtype=np.float64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64)
    sigmas = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if scores.shape != (sigmas.size, lams.size):
        raise ShapeMismatchError(f"scores of shape {scores.shape} for {sigmas.size} sigmas and {lams.size} lambdas")
    return search_grid(sigmas, ((lams, None, row) for row in scores), has_length_scale=has_length_scale, warn=warn)


def warn_on_grid_edges(result: SelectionResult, lams_here: Any, lams_forces_here: Any = None) -> None:
    """One :class:`GridEdgeWarning` naming every hyperparameter chosen on an edge of its grid (none if none).

    lams_here, lams_forces_here : the ridges tried at the chosen σ. A grid of one value has no edge.
    """
    axes = [("sigma", result.sigmas, result.sigma), ("lam", lams_here, result.lam)]
    if lams_forces_here is not None:
        axes.append(("lam_forces", lams_forces_here, result.lam_forces))
    found = []
    for name, grid, value in axes:
        if value is None:
            continue
        grid = np.unique(np.asarray(grid, dtype=np.float64))
        grid = grid[np.isfinite(grid)]
        if grid.size > 1 and value in (grid[0], grid[-1]):
            found.append(f"{name}={value:.4g} on the edge of its grid [{grid[0]:.3g} … {grid[-1]:.3g}]")
    if found:
        warnings.warn("selected " + ", ".join(found) + ": the optimum may lie beyond it; widen the grid",
                      GridEdgeWarning, stacklevel=4)


# ----------------------------------------------------------------------------- splits
def validation_folds(n: int, *, cv: int | None = None, validation_fraction: float = 0.2, validation_rows: Any = None,
                     random_state: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """(perm (n,), the validation rows of each fold): given ``validation_rows``, else a random split of
    ``validation_fraction`` (``cv=None``), else ``cv`` folds of a random permutation (seed ``random_state``)."""
    if cv is None and not 0 < validation_fraction < 1:
        raise InvalidInputError(f"validation_fraction must lie in (0, 1), got {validation_fraction}")
    rng = np.random.default_rng(random_state)
    perm = rng.permutation(n)
    if validation_rows is not None:
        val_rows = np.unique(np.asarray(validation_rows, dtype=np.int64).reshape(-1))
        if val_rows.size == 0 or val_rows.size >= n or val_rows[0] < 0 or val_rows[-1] >= n:
            raise InvalidInputError(f"validation_rows must be between 1 and n-1 = {n - 1} distinct row indices in [0, {n})")
        return perm, [val_rows]
    if cv is None:
        n_val = min(max(1, int(round(validation_fraction * n))), n - 1)
        return perm, [perm[:n_val]]
    if cv < 2 or cv > n:
        raise InvalidInputError(f"cv must be between 2 and n={n}, got {cv}")
    return perm, np.array_split(perm, cv)


# ----------------------------------------------------------------------------- energies: one eigendecomposition per σ
def default_sigmas(X: np.ndarray, kernel: "str | Kernel" = "gaussian", n: int = 11, random_state: int = 0) -> np.ndarray:
    """A log-spaced σ grid around the median pairwise distance of (a subsample of) X: median × 2^[−3, 7].

    The upper end reaches ~100× the median: tuned Gaussian σ on QM9 features sit near 13× it.
    """
    rng = np.random.default_rng(random_state)
    sub = X[rng.choice(X.shape[0], size=min(X.shape[0], 1000), replace=False)]
    d2 = squared_distances(sub, sub)[np.triu_indices(sub.shape[0], 1)]
    if make_kernel(kernel).name == "laplacian":
        from scipy.spatial.distance import pdist

        med = float(np.median(pdist(sub, "cityblock")))
    else:
        med = float(np.sqrt(np.median(d2)))
    med = med if med > 0 else 1.0
    return med * 2.0 ** np.linspace(-3, 7, n)


def select_hyperparameters(
    X: Any,
    y: Any,
    *,
    kernel: "str | Kernel" = "gaussian",
    sigmas: Any = None,
    lams: Any = DEFAULT_LAMS,
    cv: int | None = None,
    validation_fraction: float = 0.2,
    center: bool = True,
    random_state: int = 0,
    progress: bool = False,
    validation_rows: Any = None,
    gram: Callable[[list[Kernel]], Any] | None = None,
) -> SelectionResult:
    """Choose (σ, λ) by mean absolute error on a validation split (``cv=None``) or by k-fold CV.

    One eigendecomposition K = QΛQᵀ per (σ, fold) serves every λ: α(λ) = Q (Λ + λ)⁻¹ Qᵀ y.
    X : (n, d) features, y : (n,) targets; kernel : a name or a kernel object. Kernels without a
    length scale (``Linear``) have only λ selected (``sigma`` of the result is then None).
    validation_rows : indices of the rows that form the validation set (the others train); replaces
    the random split and ``cv``, for a given train/validation split.
    gram : the hook for samples that are not feature rows (e.g. molecules under the local kernel,
        :func:`molkrr.local_gram.local_kernel_matrices`): ``gram(kernels)`` returns the (n, n) kernel
        matrix of the n samples for each kernel (one per σ); X is then unused (may be None) and
        ``sigmas`` must be given for kernels with a length scale.
    A choice on the edge of its grid warns once (:class:`GridEdgeWarning`). Returns a :class:`SelectionResult`.
    """
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    base_kernel = make_kernel(kernel)
    if gram is None:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] != y.shape[0]:
            raise ShapeMismatchError(f"X of shape {X.shape} and y of shape {y.shape} do not match")
        if not np.isfinite(X).all():
            raise InvalidInputError("X and y must not contain NaN or infinity")
    elif sigmas is None and base_kernel.has_length_scale:
        raise InvalidInputError("select_hyperparameters with a gram hook needs sigmas")
    if not np.isfinite(y).all():
        raise InvalidInputError("X and y must not contain NaN or infinity")
    if y.shape[0] < 2:
        raise InvalidInputError(f"need at least 2 samples to select hyperparameters, got {y.shape[0]}")
    perm, folds = validation_folds(y.shape[0], cv=cv, validation_fraction=validation_fraction,
                                   validation_rows=validation_rows, random_state=random_state)
    if not base_kernel.has_length_scale:
        sigmas = np.array([np.nan])  # one "σ" row: only λ is selected
    elif sigmas is None:
        sigmas = default_sigmas(X, base_kernel)
    else:
        sigmas = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    lams = np.asarray(lams, dtype=np.float64).reshape(-1)
    if lams.size == 0 or not (np.isfinite(lams).all() and (lams >= 0).all()):
        raise InvalidInputError(f"lams must be finite numbers ≥ 0, got {lams}")
    if sigmas.size == 0:
        raise InvalidInputError("sigmas must not be empty")
    kernels = [base_kernel.with_sigma(float(s)) if base_kernel.has_length_scale else base_kernel for s in sigmas]
    for k in kernels:
        if k.has_length_scale:
            k.checked_sigma()  # rejects σ ≤ 0, NaN, inf before any work

    def cells():
        for K in _kernel_matrices(base_kernel, kernels, X, gram):
            yield lams, None, eigen_scores(K, y, perm, folds, lams, center)
            del K

    return search_grid(sigmas, cells(), has_length_scale=base_kernel.has_length_scale, progress=progress)


def eigen_scores(K: np.ndarray, y: np.ndarray, perm: np.ndarray, folds: list[np.ndarray], lams: np.ndarray,
                 center: bool) -> np.ndarray:
    """Mean validation MAE over the folds (n_lams,) of KRR on the kernel matrix K (n, n), every λ from one
    eigendecomposition of each fold's training block."""
    scores = np.zeros(len(lams))
    for val in folds:
        train = np.setdiff1d(perm, val, assume_unique=True)
        y_tr = y[train]
        mean = y_tr.mean() if center else 0.0
        w, Q = np.linalg.eigh(K[np.ix_(train, train)])
        qy = Q.T @ (y_tr - mean)
        KvQ = K[np.ix_(val, train)] @ Q
        for j, lam in enumerate(lams):
            pred = KvQ @ (qy / np.maximum(w + lam, np.finfo(float).tiny)) + mean
            scores[j] += np.mean(np.abs(pred - y[val])) / len(folds)
    return scores


def _kernel_matrices(base: Kernel, kernels: list[Kernel], X: Any, gram: Any):
    """The (n, n) kernel matrix of each kernel in turn: from the hook, or from σ-free distances computed once."""
    if gram is not None:
        yield from gram(kernels)
        return
    D = base.distances(X, X)
    K = np.empty_like(D)
    for k in kernels:
        K[...] = D
        yield k.from_distances(K)


__all__ = ["DEFAULT_LAMS", "GridEdgeWarning", "SelectionResult", "choose_from_scores", "default_sigmas",
           "eigen_scores", "search_grid", "select_hyperparameters", "validation_folds", "warn_on_grid_edges"]
