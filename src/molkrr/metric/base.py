"""Shared machinery of the metric learners.

* Gaussian kernel blocks in a linearly transformed space, built by the Gram trick with the
  squared norms folded into the matrix product (GEMMs on row blocks, each followed by ``exp``),
  and :func:`gemm`, the one matrix product of the objectives (scipy's BLAS, see below).
* Input validation that raises the typed errors of :mod:`molkrr.errors`.
* :class:`MetricLearner`, the scikit-learn transformer base: ``transform(X) = X @ components_.T``,
  ``get_mahalanobis_matrix() = components_.T @ components_``, initialisation of ``A`` and an
  L-BFGS-B driver that runs in *segments* (L-BFGS is restarted at each segment boundary) with
  history, validation, progress bar, callback and atomic checkpoints at segment boundaries.

Kernel convention (molkrr-wide): k(a, b) = exp(−‖A(a − b)‖² / (2σ²)), no prefactor.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from scipy.linalg.blas import dgemm
from scipy.optimize import minimize
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

from .._atomic import atomic_write
from ..errors import InvalidInputError, ModelFileError, MolkrrError, NumericalError, ShapeMismatchError

#: Rows per GEMM block when building kernel matrices: never the threaded syrk path (see DESIGN.md),
#: a (block × n) temporary that stays in L3, and little waste above the diagonal of triangular ones.
ROW_BLOCK = 256

_N_THREADS = max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1, 8))
_EXECUTOR: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = ThreadPoolExecutor(max_workers=_N_THREADS, thread_name_prefix="molkrr-exp")
    return _EXECUTOR


def _forget_executor() -> None:
    global _EXECUTOR
    _EXECUTOR = None  # a forked child has none of the parent's threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_executor)


# --------------------------------------------------------------------------------------------
# BLAS and Gaussian kernel blocks
# --------------------------------------------------------------------------------------------
#
# All heavy linear algebra of the objectives goes through ONE BLAS library, scipy's (which also
# provides the Cholesky, the triangular solves and products). numpy links its own OpenBLAS copy;
# alternating between the two makes the idle pool's threads spin (OpenBLAS busy-waits ~0.1 s after
# each call) against the working pool's threads on these 2-core machines, which measured 1.7×
# slower for n = 2000.


def gemm(a: np.ndarray, b: np.ndarray, trans_a: bool = False, trans_b: bool = False,
         out: np.ndarray | None = None, beta: float = 0.0) -> np.ndarray:
    """op(a) @ op(b) (+ beta·out) as a C-ordered array, by scipy's dgemm (C-contiguous inputs are
    not copied).

    C = op(a) op(b) is computed as Cᵀ = op(b)ᵀ op(a)ᵀ on the F-ordered transposed views. ``out``,
    if given, must be a C-contiguous array of the result's shape; it is overwritten with
    op(a) op(b) + beta·out.
    """
    if out is None:
        return dgemm(1.0, b.T, a.T, trans_a=int(trans_b), trans_b=int(trans_a)).T
    res = dgemm(1.0, b.T, a.T, trans_a=int(trans_b), trans_b=int(trans_a), beta=beta, c=out.T, overwrite_c=1)
    if not np.shares_memory(res, out):  # pragma: no cover - f2py copied: keep the contract anyway
        out[...] = res.T
    return out


def embed(X: np.ndarray, As: np.ndarray, right: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Augmented embeddings of X (n, d) under As = A/σ (c, d).

    Returns L = [Z, ½‖z‖², 1] and (if ``right``) R = [Z, −1, −½‖z‖²], both (n, c + 2), with
    Z = X Asᵀ, so that L_i · R_j = −½‖z_i − z_j‖² and the Gaussian kernel is exp(L Rᵀ).
    ``L[:, :c]`` is the scaled embedding Z itself.
    """
    c, d = As.shape
    As_aug = np.zeros((c + 2, d))
    As_aug[:c] = As
    L = gemm(np.ascontiguousarray(X), As_aug, trans_b=True)  # [Z, 0, 0]
    Z = L[:, :c]
    h = 0.5 * np.einsum("ij,ij->i", Z, Z)
    L[:, c] = h
    L[:, c + 1] = 1.0
    if not right:
        return L, None
    R = L.copy()
    R[:, c] = -1.0
    R[:, c + 1] = -h
    return L, R


def _exp_into(src: np.ndarray, dst: np.ndarray) -> None:
    """dst[...] = exp(src), rows split over threads for large arrays.

    Use it only where no BLAS call has just returned: OpenBLAS's idle workers busy-wait for
    ~0.1 s after each call, and exp threads competing with them on 2 cores were measured slower
    than a single one. Between GEMM blocks, plain ``np.exp`` is used instead.
    """
    n = src.shape[0]
    if _N_THREADS == 1 or src.size < 200_000:
        np.exp(src, out=dst)
        return
    cuts = np.linspace(0, n, _N_THREADS + 1).astype(int)
    futures = [_executor().submit(np.exp, src[a:b], out=dst[a:b]) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
    for f in futures:
        f.result()


def _gaussian_blocks(L: np.ndarray, R: np.ndarray, out: np.ndarray, lower: bool) -> np.ndarray:
    n, w_full = out.shape
    block = ROW_BLOCK
    if not lower:
        # full rows are contiguous: GEMM straight into them, then one threaded exp pass (measured
        # ~10% faster than alternating GEMM and exp, whose threads then meet the spinning BLAS ones)
        for i0 in range(0, n, block):
            gemm(L[i0 : i0 + block], R, trans_b=True, out=out[i0 : i0 + block])
        _exp_into(out, out)
        return out
    work = np.empty(min(block, n) * w_full)
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        tmp = work[: (i1 - i0) * i1].reshape(i1 - i0, i1)
        gemm(L[i0:i1], R[:i1], trans_b=True, out=tmp)
        np.exp(tmp, out=out[i0:i1, :i1])  # single thread between GEMMs, see _exp_into
    return out


def gaussian_full(L: np.ndarray, R: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Kernel matrix exp(L Rᵀ) of shape (n_L, n_R) from :func:`embed` outputs (GEMM in row blocks)."""
    if out is None:
        out = np.empty((L.shape[0], R.shape[0]))
    return _gaussian_blocks(L, R, out, lower=False)


def gaussian_lower(L: np.ndarray, R: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Lower triangle (with diagonal) of the symmetric kernel exp(L Rᵀ) (L, R from one X).

    Only ``out[i, :j]`` with j ≤ i (rounded up to whole row blocks) is written; the strict upper
    triangle is left untouched. About half the GEMM flops and half the exps of the full matrix.
    The exp is taken from a (256 × i) block temporary straight into the buffer.
    """
    return _gaussian_blocks(L, R, out, lower=True)


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def as_float_matrix(a: Any, name: str) -> np.ndarray:
    """``a`` as a finite float64 2-D array, or a typed error."""
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} must be a numeric array: {exc}") from exc
    if arr.ndim != 2:
        raise ShapeMismatchError(f"{name} must be 2-D, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{name} contains NaN or infinity")
    return arr


def as_float_vector(a: Any, name: str, n: int) -> np.ndarray:
    """``a`` as a finite float64 vector of length n, or a typed error."""
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} must be a numeric array: {exc}") from exc
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ShapeMismatchError(f"{name} must have shape ({n},), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{name} contains NaN or infinity")
    return arr


def check_positive(value: Any, name: str, allow_zero: bool = False) -> float:
    """A finite float > 0 (or ≥ 0), else :class:`InvalidInputError`."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} must be a number, got {value!r}") from exc
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise InvalidInputError(f"{name} must be {'≥' if allow_zero else '>'} 0 and finite, got {value!r}")
    return v


def check_int(value: Any, name: str, minimum: int) -> int:
    """An integer ≥ minimum (bools rejected), else :class:`InvalidInputError`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def _typed(exc: ValueError) -> MolkrrError:
    """Map a scikit-learn validation ValueError to the molkrr hierarchy (message kept)."""
    if isinstance(exc, MolkrrError):
        return exc
    msg = str(exc)
    shape_words = ("features", "inconsistent numbers", "Expected 2D", "dimension", "shape")
    if "NaN" not in msg and "infinity" not in msg and any(w in msg for w in shape_words):
        return ShapeMismatchError(msg)
    return InvalidInputError(msg)


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------

CHECKPOINT_VERSION = 1


def write_checkpoint(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Atomically write ``arrays`` + JSON ``meta`` to an npz file (:func:`molkrr._atomic.atomic_write`)."""
    path = os.fspath(path)
    payload = dict(arrays)
    payload["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    atomic_write(path, lambda fh: np.savez(fh, **payload))


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays and meta written by :func:`write_checkpoint`; :class:`ModelFileError` if unreadable."""
    try:
        with np.load(os.fspath(path), allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise ModelFileError(f"cannot read checkpoint {os.fspath(path)!r}: {exc}") from exc
    if meta.get("format") != "molkrr-metric-checkpoint" or meta.get("version") != CHECKPOINT_VERSION:
        raise ModelFileError(f"{os.fspath(path)!r} is not a molkrr metric checkpoint of version {CHECKPOINT_VERSION}")
    return arrays, meta


def data_fingerprint(X: np.ndarray, y: np.ndarray) -> str:
    """A short hash of the training data, to refuse resuming a checkpoint on other data."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(X.shape).encode())
    h.update(np.ascontiguousarray(X).view(np.uint8).reshape(-1))
    h.update(np.ascontiguousarray(y).view(np.uint8).reshape(-1))
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# the estimator base
# --------------------------------------------------------------------------------------------


class _Objective:
    """One segment's objective f(x) with x = [A.ravel(), (log σ)]; caches the last evaluation."""

    def __init__(self, fn: Callable, shape: tuple[int, int], sigma: float, learn_sigma: bool) -> None:
        self.fn = fn  # fn(A, sigma) -> (loss, grad_A, aux dict)
        self.shape = shape
        self.sigma = sigma
        self.learn_sigma = learn_sigma
        self.last_x: np.ndarray | None = None
        self.last_aux: dict = {}
        self.last_loss = np.nan

    def unpack(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        c, d = self.shape
        A = x[: c * d].reshape(c, d)
        sigma = float(np.exp(x[-1])) if self.learn_sigma else self.sigma
        return A, sigma

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        A, sigma = self.unpack(x)
        loss, grad, aux = self.fn(A, sigma)
        if not np.isfinite(loss) or not np.isfinite(grad).all():
            raise NumericalError("the metric-learning loss or its gradient became non-finite")
        g = grad.ravel()
        if self.learn_sigma:
            # k depends on A/σ only, so dL/dlogσ = σ ∂L/∂σ = −⟨∂L/∂A, A⟩.
            g = np.append(g, -np.einsum("ij,ij->", grad, A))
        self.last_x = x.copy()
        self.last_aux = aux
        self.last_loss = loss
        return loss, g


class MetricLearner(TransformerMixin, BaseEstimator):
    """Base class: a learned linear map x ↦ A x (A = ``components_``, shape (n_components, n_features)).

    Subclasses implement ``_segment_objective(X, y, segment)`` → (fn(A, σ) → (loss, grad, aux),
    validation predictor) and ``_segment_length()``.
    """

    # --- scikit-learn plumbing -------------------------------------------------------------

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.target_tags.one_d_labels = True
        return tags

    def _validate_fit_input(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        if y is None:
            raise InvalidInputError(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )
        try:
            X, y = validate_data(self, X, y, y_numeric=True, ensure_min_samples=2, dtype=np.float64)
        except ValueError as exc:
            raise _typed(exc) from exc
        return np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)

    def transform(self, X) -> np.ndarray:
        """X (n, n_features) ↦ X Aᵀ (n, n_components), in the units of X."""
        check_is_fitted(self, "components_")
        try:
            X = validate_data(self, X, reset=False, dtype=np.float64)
        except ValueError as exc:
            raise _typed(exc) from exc
        return X @ self.components_.T

    def get_mahalanobis_matrix(self) -> np.ndarray:
        """M = AᵀA (n_features, n_features): d(a, b)² = (a − b)ᵀ M (a − b)."""
        check_is_fitted(self, "components_")
        return self.components_.T @ self.components_

    # --- initialisation --------------------------------------------------------------------

    def _initial_components(self, X: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, d = X.shape
        c = d if self.n_components is None else check_int(self.n_components, "n_components", 1)
        init = self.init
        if isinstance(init, str):
            if init == "identity":
                if c > d:
                    raise InvalidInputError(f"init='identity' needs n_components ≤ n_features ({c} > {d})")
                return np.eye(c, d)
            if init == "pca":
                if c > min(n, d):
                    raise InvalidInputError(f"init='pca' needs n_components ≤ min(n_samples, n_features) = {min(n, d)}")
                from sklearn.decomposition import PCA

                return PCA(n_components=c, svd_solver="full").fit(X).components_.copy()
            if init == "random":
                # N(0, 1/d) entries: ‖A x‖ ≈ ‖x‖ on average, like the identity.
                return rng.standard_normal((c, d)) / np.sqrt(d)
            raise InvalidInputError(f"init must be 'identity', 'pca', 'random' or an array, got {init!r}")
        A0 = as_float_matrix(init, "init")
        if A0.shape[1] != d or (self.n_components is not None and A0.shape[0] != self.n_components):
            raise ShapeMismatchError(
                f"init has shape {A0.shape}, expected ({c}, {d}) (n_components, n_features)"
            )
        return A0.copy()

    # --- the driver --------------------------------------------------------------------------

    def _segment_length(self) -> int:
        raise NotImplementedError

    def _segment_objective(self, X, y, segment: int, seed: int):
        raise NotImplementedError

    def _check_common_params(self) -> None:
        check_positive(self.sigma, "sigma")
        check_int(self.max_iter, "max_iter", 0)
        if self.tol is not None:
            check_positive(self.tol, "tol")
        if self.validation_every is not None:
            check_int(self.validation_every, "validation_every", 1)
        if self.callback is not None and not callable(self.callback):
            raise InvalidInputError("callback must be callable or None")

    def _validation_arrays(self, n_features: int):
        if self.validation_data is None:
            return None
        try:
            Xv, yv = self.validation_data
        except (TypeError, ValueError) as exc:
            raise InvalidInputError("validation_data must be a pair (X_val, y_val)") from exc
        Xv = as_float_matrix(Xv, "X_val")
        if Xv.shape[1] != n_features:
            raise ShapeMismatchError(f"X_val has {Xv.shape[1]} features, training data has {n_features}")
        return Xv, as_float_vector(yv, "y_val", Xv.shape[0])

    def _fit_driver(self, X, y, checkpoint=None, checkpoint_every=None):
        """Validate, initialise or resume, then run L-BFGS-B segment by segment."""
        X, y = self._validate_fit_input(X, y)
        self._check_common_params()
        n, d = X.shape
        val = self._validation_arrays(d)
        if checkpoint_every is not None:
            check_int(checkpoint_every, "checkpoint_every", 1)
        y_offset = float(y.mean()) if getattr(self, "center_y", False) else 0.0
        yc = y - y_offset
        fingerprint = data_fingerprint(X, y) if checkpoint is not None else ""

        resumed = None
        if checkpoint is not None and os.path.exists(checkpoint):
            resumed = read_checkpoint(checkpoint)
        if resumed is not None:
            arrays, meta = resumed
            if meta["fingerprint"] != fingerprint or meta["estimator"] != type(self).__name__:
                raise ModelFileError(
                    f"checkpoint {os.fspath(checkpoint)!r} was written by another estimator or for other data"
                )
            if meta["params"] != self._checkpoint_params():
                raise ModelFileError(
                    f"checkpoint {os.fspath(checkpoint)!r} was written with other parameters: {meta['params']}"
                )
            A = np.array(arrays["components"], dtype=np.float64)
            sigma = float(arrays["sigma"][()])
            seed = int(meta["seed"])
            n_iter = int(meta["n_iter"])
            segment = int(meta["segment"])
            stopped = bool(meta["stopped"])
            history = meta["history"]
        else:
            rs = check_random_state(self.random_state)
            seed = int(rs.randint(0, 2**31 - 1))
            A = self._initial_components(X, yc, np.random.default_rng([seed, 2**31]))
            sigma = float(self.sigma)
            n_iter, segment, stopped = 0, 0, False
            history = {k: [] for k in ("iteration", "segment", "loss", "train_mae", "sigma", "seconds",
                                       "val_iteration", "val_mae")}
        c = A.shape[0]

        def save(stopped_flag: bool) -> None:
            meta = {
                "format": "molkrr-metric-checkpoint",
                "version": CHECKPOINT_VERSION,
                "estimator": type(self).__name__,
                "params": self._checkpoint_params(),
                "fingerprint": fingerprint,
                "seed": seed,
                "n_iter": n_iter,
                "segment": segment,
                "stopped": stopped_flag,
                "history": history,
            }
            write_checkpoint(checkpoint, {"components": A, "sigma": np.array(sigma)}, meta)

        bar = None
        if self.verbose:
            from tqdm.auto import tqdm

            bar = tqdm(total=int(self.max_iter), initial=min(n_iter, int(self.max_iter)),
                       desc=type(self).__name__, leave=True)
        last_saved = n_iter
        try:
            while not stopped and n_iter < self.max_iter:
                budget = int(min(self._segment_length(), self.max_iter - n_iter))
                fn, predictor = self._segment_objective(X, yc, segment, seed)
                obj = _Objective(fn, (c, d), sigma, bool(self.learn_sigma))
                x0 = A.ravel().copy()
                if self.learn_sigma:
                    x0 = np.append(x0, np.log(sigma))
                state = {"t": time.perf_counter(), "it": n_iter, "user_stop": False}

                def on_iteration(intermediate_result):  # closes over this segment's obj/state/predictor
                    xk = intermediate_result.x
                    if obj.last_x is None or not np.array_equal(xk, obj.last_x):
                        obj(xk)  # re-evaluate so that history refers to the accepted point
                    Ak, sk = obj.unpack(xk)
                    state["it"] += 1
                    it = state["it"]
                    now = time.perf_counter()
                    history["iteration"].append(it)
                    history["segment"].append(segment)
                    history["loss"].append(float(obj.last_loss))
                    history["train_mae"].append(float(obj.last_aux.get("train_mae", np.nan)))
                    history["sigma"].append(float(sk))
                    history["seconds"].append(now - state["t"])
                    vmae = None
                    if val is not None and self.validation_every and it % int(self.validation_every) == 0:
                        pred = predictor(val[0], Ak, sk, obj.last_aux) + y_offset
                        vmae = float(np.mean(np.abs(pred - val[1])))
                        history["val_iteration"].append(it)
                        history["val_mae"].append(vmae)
                    if bar is not None:
                        post = {"loss": f"{obj.last_loss:.4g}"}
                        if vmae is not None:
                            post["val_mae"] = f"{vmae:.4g}"
                        bar.set_postfix(post, refresh=False)
                        bar.update(1)
                    stop = False
                    if self.callback is not None:
                        info = {"iteration": it, "segment": segment, "loss": float(obj.last_loss),
                                "train_mae": history["train_mae"][-1], "val_mae": vmae,
                                "sigma": float(sk), "components": Ak.copy()}
                        stop = bool(self.callback(info))
                    state["t"] = time.perf_counter()
                    if stop:
                        state["user_stop"] = True
                        raise StopIteration

                res = minimize(obj, x0, jac=True, method="L-BFGS-B", tol=self.tol,
                               options={"maxiter": budget}, callback=on_iteration)
                A = res.x[: c * d].reshape(c, d).copy()
                if self.learn_sigma:
                    sigma = float(np.exp(res.x[-1]))
                n_iter = state["it"]
                segment += 1
                # stop when L-BFGS-B converged, made no progress, or the callback asked to
                stopped = state["user_stop"] or res.nit == 0 or (res.status == 0 and res.nit < budget)
                finished = stopped or n_iter >= self.max_iter
                if checkpoint is not None and (
                    finished or checkpoint_every is None or n_iter - last_saved >= checkpoint_every
                ):
                    save(stopped)
                    last_saved = n_iter
        finally:
            if bar is not None:
                bar.close()
        if checkpoint is not None and last_saved != n_iter:
            save(stopped)

        self.components_ = A
        self.sigma_ = float(sigma)
        self.n_iter_ = int(n_iter)
        self.n_segments_ = int(segment)
        self.seed_ = int(seed)
        self.y_offset_ = float(y_offset)
        self.history_ = history
        return self

    def _checkpoint_params(self) -> dict:
        """Parameters that must agree between a checkpoint and the estimator resuming it."""
        keys = ("n_components", "sigma", "learn_sigma", "lam", "alpha_fraction", "shuffle_every", "tol",
                "center_y")
        params = self.get_params()
        out = {k: params[k] for k in keys if k in params}
        init = params.get("init")
        out["init"] = init if isinstance(init, str) else "array"
        return json.loads(json.dumps(out))
