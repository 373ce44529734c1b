"""The FALKON solver with the training set sharded across the workers of a ``dask.distributed`` Client.

Needs the ``dask`` extra (``pip install molkrr[dask]``). The algorithm is :mod:`molkrr.solvers.falkon`'s,
split where the data is:

* each worker holds shards of the training rows X_s (computed there from molecules by
  :func:`shard_features`, or scattered from the client) and builds and keeps its own kernel blocks
  K_s = k(X_s, C) (a :class:`~molkrr.solvers.falkon.NystromBlocks` living in the worker's memory);
* the client holds only m-sized things: the centres C (m, d), K_mm and the preconditioner (m×m), the CG
  vectors (m,);
* every CG iteration is one map-reduce: the client sends the m-vector V to every shard, each shard returns
  K_sᵀ(K_s V) (m,), and the client adds them. Over the network per iteration and worker: 8·m bytes out and
  8·m bytes back per shard (plus Dask's task overhead), independent of n.

Set-up moves the shards' molecules (or feature rows) to the workers once, and the centres (m·d numbers) to
every worker once. Results equal the single-process :func:`~molkrr.solvers.falkon.falkon_solve` up to the
order of floating-point sums.

:class:`DaskFitSteps` hands these steps to :meth:`molkrr.MolecularKRR.fit` (its ``steps`` hook), so a Dask fit is
the model's own fit path (:func:`fit_molecular_krr_dask`). Also here: :func:`submit_sweep`, which runs any function
over a list of parameter sets (σ, λ, seeds) as Dask tasks, :func:`validation_sweep`, a (σ, λ) validation grid with
one task per σ, and :func:`validation_selection`, its best cell chosen by :mod:`molkrr.selection`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInputError, ShapeMismatchError
from .falkon import (
    BLOCK_ROWS,
    DEFAULT_MAX_ITER,
    DEFAULT_TOL,
    FalkonResult,
    NystromBlocks,
    check_solver_args,
    choose_centers,
    default_n_centers,
    preconditioned_cg,
)

try:  # the extra is optional: importing this module without it gives a clear error on use
    from distributed import Client, Future, wait
except ImportError:  # pragma: no cover - exercised only without the extra
    Client = Future = wait = None  # type: ignore[assignment,misc]


def _require_dask() -> None:
    if Client is None:  # pragma: no cover
        raise ImportError("the Dask solver needs the 'dask' extra: pip install 'molkrr[dask]'")


# ----------------------------------------------------------------------------- worker-side functions
def _transform(rep: Any, mols: Any) -> np.ndarray:
    return np.ascontiguousarray(rep.transform(mols), dtype=np.float64)


def _n_rows(X: np.ndarray) -> int:
    return int(X.shape[0])


def _rows(X: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(X[idx])


def _build_blocks(kernel: Any, X: np.ndarray, centers: np.ndarray, block_rows: int, store: bool, dtype: Any) -> NystromBlocks:
    return NystromBlocks(kernel, np.ascontiguousarray(X, dtype=np.float64), centers, block_rows=block_rows, store=store, dtype=dtype)


def _rmatvec(blocks: NystromBlocks, y: np.ndarray) -> np.ndarray:
    return blocks.rmatvec(np.asarray(y, dtype=np.float64))


def _gram_matvec(blocks: NystromBlocks, V: np.ndarray) -> np.ndarray:
    return blocks.gram_matvec(V)


def _held_bytes(blocks: NystromBlocks) -> int:
    return blocks.nbytes


# ----------------------------------------------------------------------------- sharding
def _n_shards(client: Any, n_shards: int | None) -> int:
    if n_shards is not None:
        if int(n_shards) < 1:
            raise InvalidInputError(f"n_shards must be ≥ 1, got {n_shards}")
        return int(n_shards)
    return max(1, len(client.scheduler_info()["workers"]))


def scatter_shards(client: Any, X: Any, n_shards: int | None = None) -> list[Any]:
    """Split the rows of X (n, ...) into contiguous shards and scatter them, spread over the workers.

    Returns a list of futures, in row order. n_shards defaults to the number of workers.
    """
    _require_dask()
    X = np.asarray(X)
    bounds = np.linspace(0, X.shape[0], _n_shards(client, n_shards) + 1).astype(int)
    parts = [np.ascontiguousarray(X[a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return client.scatter(parts, hash=False)


def shard_features(client: Any, representation: Any, molecules: Any, n_shards: int | None = None) -> list[Any]:
    """Features of ``molecules`` computed on the workers, one shard each: futures of (n_s, d) arrays, row order.

    ``representation`` must already be fitted (fitting learns sizes from all molecules; it is cheap).
    Only the molecules of a shard travel to its worker; the features stay there.
    """
    _require_dask()
    from ..molecules import as_molecules

    mols = as_molecules(molecules)
    bounds = np.linspace(0, len(mols), _n_shards(client, n_shards) + 1).astype(int)
    shards = client.scatter([mols[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a], hash=False)
    rep = client.scatter(representation, broadcast=True, hash=False)
    return [client.submit(_transform, rep, s, pure=False) for s in shards]


# ----------------------------------------------------------------------------- the solver
class DaskNystrom:
    """K_nm held as per-shard kernel blocks on the workers of ``client``; the map-reduce products of the CG.

    Parameters
    ----------
    client : distributed.Client
    kernel : picklable callable ``kernel(A, B)`` (a :class:`molkrr.kernels.Kernel`).
    X_parts : list of futures (or arrays, scattered here) of the row shards (n_s, d), in row order.
    centers : (m, d) array.
    block_rows, store, dtype : as :class:`~molkrr.solvers.falkon.NystromBlocks`, per shard.
    """

    def __init__(
        self,
        client: Any,
        kernel: Any,
        X_parts: Sequence[Any],
        centers: np.ndarray,
        *,
        block_rows: int = BLOCK_ROWS,
        store: bool = True,
        dtype: Any = np.float64,
    ) -> None:
        _require_dask()
        self.client = client
        parts = [p if isinstance(p, Future) else client.scatter(np.asarray(p, dtype=np.float64), hash=False) for p in X_parts]
        C = client.scatter(np.ascontiguousarray(centers, dtype=np.float64), broadcast=True, hash=False)
        self.blocks = [client.submit(_build_blocks, kernel, p, C, block_rows, store, dtype, pure=False) for p in parts]
        self.n_rows = [int(r) for r in client.gather([client.submit(_n_rows, p, pure=False) for p in parts])]
        wait(self.blocks)
        self.m = int(np.asarray(centers).shape[0])

    @property
    def n(self) -> int:
        return sum(self.n_rows)

    def held_bytes(self) -> list[int]:
        """Kernel-block bytes each shard keeps on its worker."""
        return [int(b) for b in self.client.gather([self.client.submit(_held_bytes, b, pure=False) for b in self.blocks])]

    def rmatvec(self, y_parts: Sequence[Any]) -> np.ndarray:
        """K_nmᵀ y, y given per shard (arrays or futures, matching the X shards)."""
        futs = [self.client.submit(_rmatvec, b, y, pure=False) for b, y in zip(self.blocks, y_parts)]
        return _ordered_sum(self.client.gather(futs))

    def gram_matvec(self, V: np.ndarray) -> np.ndarray:
        """K_nmᵀ K_nm V as a sum over shards (one task per shard; V travels to each, an m-vector back)."""
        futs = [self.client.submit(_gram_matvec, b, V, pure=False) for b in self.blocks]
        return _ordered_sum(self.client.gather(futs))

    def close(self) -> None:
        """Release the kernel blocks on the workers."""
        self.client.cancel(self.blocks)
        self.blocks = []


def _ordered_sum(parts: Sequence[np.ndarray]) -> np.ndarray:
    out = np.array(parts[0], dtype=np.float64, copy=True)
    for p in parts[1:]:
        out += p
    return out


def _split_like(y: np.ndarray, n_rows: Sequence[int]) -> list[np.ndarray]:
    bounds = np.cumsum([0, *n_rows])
    return [y[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def falkon_solve_dask(
    client: Any,
    kernel: Any,
    X: Any,
    y: Any,
    lam: float,
    centers: Any,
    *,
    n_shards: int | None = None,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    progress: bool = False,
    store: bool = True,
    dtype: Any = np.float64,
    block_rows: int = BLOCK_ROWS,
) -> FalkonResult:
    """:func:`molkrr.solvers.falkon.falkon_solve` with the rows of X sharded over the client's workers.

    X : (n, d) array (split into ``n_shards`` contiguous shards, default one per worker, and scattered),
        or a list of futures/arrays of row shards (e.g. from :func:`shard_features`) in row order.
    y : (n,) or (n, t) targets, already centred if wanted (kept on the client and sent per shard once).
    The rest as :func:`~molkrr.solvers.falkon.falkon_solve`.
    """
    _require_dask()
    C = np.ascontiguousarray(centers, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if isinstance(X, (list, tuple)):
        X_parts = list(X)
        check_solver_args(None, y, lam, C, tol, max_iter)
    else:
        X = np.ascontiguousarray(X, dtype=np.float64)
        check_solver_args(X, y, lam, C, tol, max_iter)
        X_parts = scatter_shards(client, X, n_shards)
    op = DaskNystrom(client, kernel, X_parts, C, block_rows=block_rows, store=store, dtype=dtype)
    try:
        if op.n != y.shape[0]:
            raise ShapeMismatchError(f"the X shards hold {op.n} rows for {y.shape[0]} targets")
        rhs = op.rmatvec(_split_like(y, op.n_rows))
        return preconditioned_cg(op.gram_matvec, rhs, lambda: kernel(C, C), op.n, float(lam), tol=tol, max_iter=max_iter, progress=progress)
    finally:
        op.close()


def centers_from_shards(client: Any, X_parts: Sequence[Any], n_centers: int, random_state: Any = 0) -> np.ndarray:
    """(m, d) centres drawn uniformly from rows held in shards on the workers (only those rows travel)."""
    _require_dask()
    sizes = [int(r) for r in client.gather([client.submit(_n_rows, p, pure=False) for p in X_parts])]
    idx = choose_centers(sum(sizes), n_centers, random_state)
    bounds = np.cumsum([0, *sizes])
    picks = [client.submit(_rows, p, idx[(idx >= a) & (idx < b)] - a, pure=False) for p, a, b in zip(X_parts, bounds[:-1], bounds[1:])]
    return np.concatenate(client.gather(picks))


class DaskFitSteps:
    """The feature and solve steps of :meth:`molkrr.MolecularKRR.fit` (energies, global representation) over
    the workers of ``client`` (:class:`molkrr.model.FitSteps`' protocol): features computed per shard where
    they stay, a prefit metric applied there, and FALKON solved by map-reduce (:func:`falkon_solve_dask`).

    n_shards : shards of the training molecules (default one per worker); tol : CG tolerance (default the
    KernelRidge's ``cg_tol``). The model's ``n_centers`` sets m (default :func:`~molkrr.solvers.falkon.default_n_centers`).
    """

    in_memory = False  # the features stay on the workers: σ, λ must be given and a metric prefit

    def __init__(self, client: Any, *, n_shards: int | None = None, tol: float | None = None) -> None:
        _require_dask()
        self.client = client
        self.n_shards = n_shards
        self.tol = tol

    def features(self, rep: Any, mols: Any, *, progress: bool = False) -> list[Any]:
        """Futures of the (n_s, d) feature shards, in row order (:func:`shard_features`)."""
        return shard_features(self.client, rep, mols, self.n_shards)

    def transform(self, metric: Any, X_parts: list[Any]) -> list[Any]:
        """The shards through the fitted metric, on their workers."""
        return [self.client.submit(_metric_transform, metric, p, pure=False) for p in X_parts]

    def solve(self, krr: Any, X_parts: list[Any], y: np.ndarray, *, progress: bool = False) -> Any:
        """``krr`` with FALKON's solution over the shards (solver 'falkon'; centres drawn from the shards)."""
        from .registry import SolverFit

        krr = krr.set_params(solver="falkon")
        m = default_n_centers(y.shape[0]) if krr.n_centers is None else int(krr.n_centers)
        C = centers_from_shards(self.client, X_parts, m, krr.random_state)
        y_mean = float(np.mean(y)) if krr.center else 0.0
        res = falkon_solve_dask(
            self.client, krr.kernel_, X_parts, y - y_mean, krr.lam, C, tol=krr.cg_tol if self.tol is None else self.tol,
            max_iter=krr.cg_max_iter, progress=progress,
        )
        solution = SolverFit(X_fit=C, alpha=res.alpha, lam=float(krr.lam), attributes={"n_iter_": res.n_iter})
        return krr.set_fitted_solution(solution, solver="falkon", y_mean=np.asarray(y_mean))


def fit_molecular_krr_dask(
    client: Any,
    model: Any,
    molecules: Any,
    y: Any = None,
    *,
    n_shards: int | None = None,
    tol: float | None = None,
    progress: bool = False,
) -> Any:
    """Fit a :class:`molkrr.MolecularKRR` (solver 'falkon', given σ and λ, no metric or a prefit one) with its
    representation computed per shard on the workers and its Nyström system solved there.

    ``model.fit(molecules, y, steps=DaskFitSteps(client, ...))``: the fitted model is an ordinary MolecularKRR
    (predictions, forces, model files as always). tol: CG tolerance (default KernelRidge's ``cg_tol``).
    Returns ``model``.
    """
    _require_dask()
    if model.sigma is None or model.lam is None:
        raise InvalidInputError("fit_molecular_krr_dask needs sigma and lam (select them at moderate n first)")
    if model.metric is not None and not model.prefit_metric:
        raise InvalidInputError("fit_molecular_krr_dask takes no metric, or a prefit one (prefit_metric=True)")
    return model.fit(molecules, y, progress=progress, steps=DaskFitSteps(client, n_shards=n_shards, tol=tol))


def _metric_transform(metric: Any, X: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(metric.transform(X), dtype=np.float64)


# ----------------------------------------------------------------------------- sweeps as tasks
def submit_sweep(client: Any, func: Callable[..., Any], params: Sequence[dict], **shared: Any) -> list[Any]:
    """``[func(**p, **shared) for p in params]`` as one Dask task each; returns the results in order.

    ``shared`` arrays (e.g. feature matrices) are scattered once to every worker, not once per task. For
    (σ, λ) grids, MLKRR seeds or any other independent evaluations.
    """
    _require_dask()
    shared_f = {k: client.scatter(v, broadcast=True, hash=False) if isinstance(v, np.ndarray) else v for k, v in shared.items()}
    futs = [client.submit(func, **p, **shared_f, pure=False) for p in params]
    return client.gather(futs)


def _validation_row(sigma: float, *, lams: Sequence[float], kernel: str, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, solver: str, n_centers: int | None) -> list[float]:
    from ..krr import KernelRidge

    row = []
    for lam in lams:
        model = KernelRidge(kernel, sigma, lam, solver=solver, n_centers=n_centers).fit(X, y)
        row.append(float(np.mean(np.abs(model.predict(X_val) - y_val))))
    return row


def validation_sweep(
    client: Any,
    X: Any,
    y: Any,
    X_val: Any,
    y_val: Any,
    sigmas: Sequence[float],
    lams: Sequence[float],
    *,
    kernel: str = "gaussian",
    solver: str = "auto",
    n_centers: int | None = None,
) -> np.ndarray:
    """Validation MAE (n_sigmas, n_lams) of KernelRidge fits, one Dask task per σ."""
    rows = submit_sweep(
        client,
        _validation_row,
        [{"sigma": float(s)} for s in sigmas],
        lams=[float(v) for v in lams],
        kernel=kernel,
        X=np.asarray(X, dtype=np.float64),
        y=np.asarray(y, dtype=np.float64),
        X_val=np.asarray(X_val, dtype=np.float64),
        y_val=np.asarray(y_val, dtype=np.float64),
        solver=solver,
        n_centers=n_centers,
    )
    return np.asarray(rows)


def validation_selection(
    client: Any,
    X: Any,
    y: Any,
    X_val: Any,
    y_val: Any,
    sigmas: Sequence[float],
    lams: Sequence[float],
    *,
    kernel: str = "gaussian",
    solver: str = "auto",
    n_centers: int | None = None,
) -> Any:
    """The best (σ, λ) of :func:`validation_sweep`'s table, chosen as every selection chooses
    (:func:`molkrr.selection.choose_from_scores`: least MAE, one grid-edge warning). A SelectionResult."""
    from ..selection import choose_from_scores

    table = validation_sweep(client, X, y, X_val, y_val, sigmas, lams, kernel=kernel, solver=solver, n_centers=n_centers)
    return choose_from_scores(sigmas, lams, table)


__all__ = [
    "DaskFitSteps",
    "DaskNystrom",
    "centers_from_shards",
    "falkon_solve_dask",
    "fit_molecular_krr_dask",
    "scatter_shards",
    "shard_features",
    "submit_sweep",
    "validation_selection",
    "validation_sweep",
]
