"""The optimiser of the metric learners: L-BFGS-B in *segments*, with history, validation and checkpoints.

A segment is one L-BFGS-B run of at most ``learner._segment_length()`` iterations on the objective the
learner returns for that segment (MLKRR: a fresh α/A split); L-BFGS-B restarts at every segment
boundary, where checkpoints are written. The state after a segment is a function of (data,
parameters, seed, segment) only, which is what makes resuming from a checkpoint exact.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize
from sklearn.utils.validation import check_random_state

from ..errors import InvalidInputError, ModelFileError, NumericalError
from .checkpoints import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, data_fingerprint, read_checkpoint, write_checkpoint

HISTORY_KEYS = ("iteration", "segment", "loss", "train_mae", "sigma", "seconds", "val_iteration", "val_mae")


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

    def pack(self, A: np.ndarray, sigma: float) -> np.ndarray:
        x = A.ravel().copy()
        return np.append(x, np.log(sigma)) if self.learn_sigma else x

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


@dataclass
class FitState:
    """Where a fit stands after a segment (all of it goes into a checkpoint)."""

    A: np.ndarray
    sigma: float
    seed: int
    n_iter: int = 0
    segment: int = 0
    stopped: bool = False
    history: dict = field(default_factory=lambda: {k: [] for k in HISTORY_KEYS})
    # early stopping and iterate averaging (None when not used)
    best_A: np.ndarray | None = None
    best_sigma: float = float("nan")
    best_val_mae: float = float("inf")
    best_iteration: int = 0
    since_best: int = 0
    avg_A: np.ndarray | None = None
    avg_sigma: float = float("nan")

    def result(self) -> tuple[np.ndarray, float]:
        """The fitted (A, σ): the best at validation with early stopping, else the average, else the last."""
        if self.best_A is not None:
            return self.best_A, self.best_sigma
        if self.avg_A is not None:
            return self.avg_A, self.avg_sigma
        return self.A, self.sigma


#: sigma='auto' is this multiple of the median pairwise distance (validation-tuned KRR on QM9 FCHL19: ~13×).
AUTO_SIGMA_MEDIANS = 13.0


def initial_sigma(sigma: Any, X: np.ndarray, A: np.ndarray, seed: int) -> float:
    """σ at the start of a fit: the number given, or for 'auto' 13 × the median pairwise distance of
    A x over up to 1,000 rows of X (drawn with ``seed``)."""
    if not (isinstance(sigma, str) and sigma == "auto"):
        return float(sigma)
    from ..kernels.blocks import squared_distances

    rows = np.random.default_rng([seed, 2**31 + 1]).choice(X.shape[0], size=min(X.shape[0], 1000), replace=False)
    Z = X[np.sort(rows)] @ A.T
    d2 = squared_distances(Z, Z)[np.triu_indices(Z.shape[0], 1)]
    med = float(np.sqrt(np.median(d2))) if d2.size else 0.0
    return AUTO_SIGMA_MEDIANS * med if med > 0 else 1.0


def _options(learner: Any) -> tuple[bool, int | None, float | None]:
    """(early_stopping, patience, averaging decay) of a learner; learners without them get the defaults."""
    early = bool(getattr(learner, "early_stopping", False))
    patience = getattr(learner, "patience", None)
    decay = getattr(learner, "averaging", None)
    if patience is not None:
        patience = int(patience)
        if patience < 1:
            raise InvalidInputError(f"patience must be a positive integer or None, got {patience!r}")
    if decay is not None:
        decay = float(decay)
        if not 0.0 < decay < 1.0:
            raise InvalidInputError(f"averaging must be in (0, 1) or None, got {decay!r}")
    return early, patience, decay


class SegmentedLBFGS:
    """Runs a learner's segments: start or resume, one L-BFGS-B run per segment, record, checkpoint.

    learner : a :class:`~molkrr.metric.base_metric.MetricLearner` (provides the objectives, the
        initial A and the parameters); X, y : training data with y already centred;
    validation : (X_val, y_val) or None; y_offset : added back to predictions for validation MAEs.
    """

    def __init__(self, learner: Any, X: np.ndarray, y: np.ndarray, *, validation=None, y_offset: float = 0.0,
                 checkpoint: str | os.PathLike | None = None, checkpoint_every: int | None = None,
                 raw_y: np.ndarray | None = None) -> None:
        self.learner = learner
        self.X, self.y = X, y
        self.validation = validation
        self.y_offset = y_offset
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every
        self.fingerprint = data_fingerprint(X, raw_y if raw_y is not None else y) if checkpoint is not None else ""
        self.early_stopping, self.patience, self.averaging = _options(learner)
        if self.early_stopping and (validation is None or not learner.validation_every):
            raise InvalidInputError("early_stopping needs validation_data (fit argument) and validation_every")

    # -- start -------------------------------------------------------------------------------
    def start(self) -> FitState:
        """A fresh state, or the one in the checkpoint file if it exists (checked against data and parameters)."""
        if self.checkpoint is not None and os.path.exists(self.checkpoint):
            return self._resume()
        rs = check_random_state(self.learner.random_state)
        seed = int(rs.randint(0, 2**31 - 1))
        A = self.learner._initial_components(self.X, self.y, np.random.default_rng([seed, 2**31]))
        state = FitState(A=A, sigma=initial_sigma(self.learner.sigma, self.X, A, seed), seed=seed)
        if self.averaging is not None:
            state.avg_A, state.avg_sigma = A.copy(), state.sigma
        return state

    def _resume(self) -> FitState:
        arrays, meta = read_checkpoint(self.checkpoint)
        where = repr(os.fspath(self.checkpoint))
        if meta.get("fingerprint") != self.fingerprint or meta.get("estimator") != type(self.learner).__name__:
            raise ModelFileError(f"checkpoint {where} was written by another estimator or for other data")
        if meta.get("params") != self.learner._checkpoint_params():
            raise ModelFileError(f"checkpoint {where} was written with other parameters: {meta.get('params')}")
        try:
            state = FitState(
                A=np.array(arrays["components"], dtype=np.float64), sigma=float(arrays["sigma"][()]),
                seed=int(meta["seed"]), n_iter=int(meta["n_iter"]), segment=int(meta["segment"]),
                stopped=bool(meta["stopped"]), history=meta["history"],
            )
            extra = meta.get("extra", {})
            if "best_components" in arrays:
                state.best_A = np.array(arrays["best_components"], dtype=np.float64)
                state.best_sigma = float(extra["best_sigma"])
                state.best_val_mae = float(extra["best_val_mae"])
                state.best_iteration = int(extra["best_iteration"])
                state.since_best = int(extra["since_best"])
            if "avg_components" in arrays:
                state.avg_A = np.array(arrays["avg_components"], dtype=np.float64)
                state.avg_sigma = float(extra["avg_sigma"])
            return state
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"checkpoint {where} is incomplete ({exc})") from None

    def save(self, state: FitState) -> None:
        meta = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "estimator": type(self.learner).__name__,
            "params": self.learner._checkpoint_params(),
            "fingerprint": self.fingerprint,
            "seed": state.seed,
            "n_iter": state.n_iter,
            "segment": state.segment,
            "stopped": state.stopped,
            "history": state.history,
        }
        arrays = {"components": state.A, "sigma": np.array(state.sigma)}
        extra = {}
        if state.best_A is not None:
            arrays["best_components"] = state.best_A
            extra.update(best_sigma=state.best_sigma, best_val_mae=state.best_val_mae,
                         best_iteration=state.best_iteration, since_best=state.since_best)
        if state.avg_A is not None:
            arrays["avg_components"] = state.avg_A
            extra["avg_sigma"] = state.avg_sigma
        if extra:
            meta["extra"] = extra
        write_checkpoint(self.checkpoint, arrays, meta)

    # -- run ---------------------------------------------------------------------------------
    def run(self, state: FitState) -> FitState:
        """Segments until max_iter iterations, convergence or a callback's stop; checkpoints as asked."""
        learner = self.learner
        bar = None
        if learner.verbose:
            from tqdm.auto import tqdm

            bar = tqdm(total=int(learner.max_iter), initial=min(state.n_iter, int(learner.max_iter)),
                       desc=type(learner).__name__, leave=True)
        last_saved = state.n_iter
        try:
            while not state.stopped and state.n_iter < learner.max_iter:
                self.run_segment(state, bar)
                finished = state.stopped or state.n_iter >= learner.max_iter
                if self.checkpoint is not None and (
                    finished or self.checkpoint_every is None or state.n_iter - last_saved >= self.checkpoint_every
                ):
                    self.save(state)
                    last_saved = state.n_iter
        finally:
            if bar is not None:
                bar.close()
        if self.checkpoint is not None and last_saved != state.n_iter:
            self.save(state)
        return state

    def run_segment(self, state: FitState, bar: Any = None) -> None:
        """One L-BFGS-B run on this segment's objective; updates ``state`` in place."""
        learner = self.learner
        budget = int(min(learner._segment_length(), learner.max_iter - state.n_iter))
        fn, predictor = learner._segment_objective(self.X, self.y, state.segment, state.seed)
        obj = _Objective(fn, state.A.shape, state.sigma, bool(learner.learn_sigma))
        clock = {"t": time.perf_counter(), "it": state.n_iter, "user_stop": False}

        def on_iteration(intermediate_result: Any) -> None:
            if self.record_iteration(obj, intermediate_result.x, predictor, state, clock, bar):
                clock["user_stop"] = True
                raise StopIteration

        res = minimize(obj, obj.pack(state.A, state.sigma), jac=True, method="L-BFGS-B", tol=learner.tol,
                       options={"maxiter": budget}, callback=on_iteration)
        A, sigma = obj.unpack(res.x)
        state.A, state.sigma = A.copy(), float(sigma)
        state.n_iter = clock["it"]
        state.segment += 1
        # stop when L-BFGS-B converged, made no progress, or the callback asked to
        state.stopped = clock["user_stop"] or res.nit == 0 or (res.status == 0 and res.nit < budget)

    def record_iteration(self, obj: _Objective, xk: np.ndarray, predictor: Callable, state: FitState,
                         clock: dict, bar: Any) -> bool:
        """History, validation MAE, progress bar and callback after an accepted step; True asks to stop."""
        learner = self.learner
        if obj.last_x is None or not np.array_equal(xk, obj.last_x):
            obj(xk)  # re-evaluate so that history refers to the accepted point
        Ak, sk = obj.unpack(xk)
        clock["it"] += 1
        it = clock["it"]
        history = state.history
        history["iteration"].append(it)
        history["segment"].append(state.segment)
        history["loss"].append(float(obj.last_loss))
        history["train_mae"].append(float(obj.last_aux.get("train_mae", np.nan)))
        history["sigma"].append(float(sk))
        history["seconds"].append(time.perf_counter() - clock["t"])
        Am, sm, aux = Ak, sk, obj.last_aux  # the iterate that validation and early stopping look at
        if self.averaging is not None:
            w = self.averaging
            state.avg_A = w * state.avg_A + (1.0 - w) * Ak
            state.avg_sigma = float(np.exp(w * np.log(state.avg_sigma) + (1.0 - w) * np.log(sk)))
            Am, sm, aux = state.avg_A, state.avg_sigma, {}  # the predictor re-solves α for Ā
        vmae = None
        stop = False
        if self.validation is not None and learner.validation_every and it % int(learner.validation_every) == 0:
            pred = predictor(self.validation[0], Am, sm, aux) + self.y_offset
            vmae = float(np.mean(np.abs(pred - self.validation[1])))
            history["val_iteration"].append(it)
            history["val_mae"].append(vmae)
            if self.early_stopping:
                if vmae < state.best_val_mae:
                    state.best_A, state.best_sigma = Am.copy(), float(sm)
                    state.best_val_mae, state.best_iteration, state.since_best = vmae, it, 0
                else:
                    state.since_best += 1
                    stop = self.patience is not None and state.since_best >= self.patience
        if bar is not None:
            post = {"loss": f"{obj.last_loss:.4g}"}
            if vmae is not None:
                post["val_mae"] = f"{vmae:.4g}"
            bar.set_postfix(post, refresh=False)
            bar.update(1)
        if learner.callback is not None:
            info = {"iteration": it, "segment": state.segment, "loss": float(obj.last_loss),
                    "train_mae": history["train_mae"][-1], "val_mae": vmae, "sigma": float(sk),
                    "components": Ak.copy()}
            stop = bool(learner.callback(info)) or stop
        clock["t"] = time.perf_counter()
        return stop
