"""Predictive std of DerivativeKRR models (local kernels, force targets): energies and Cartesian forces.

The convention is :mod:`molkrr.uncertainty`'s (GP view of KRR, maximum-likelihood scale, std of the latent
energy and of its derivatives), with the training rows of :mod:`molkrr.derivative_krr`: per training
molecule [E?] + [Qᵀ∇E?] (Q the rigid-motion complement), K + Λ the matrix ``DerivativeKRR.fit``
factorises (λ on energy rows, λ_F on gradient rows, the same jitter) and s² = yᵀ(K + Λ)⁻¹y / n_rows
(``gp_scale_``, computed by ``fit``). For a query molecule with rows q = [E, ∂E/∂R_ic (3 n_atoms, Cartesian,
no projection)]

    var[q] = s² (k(q, q) − k_qᵀ (K + Λ)⁻¹ k_q),   k_q = cov(q, training rows),

with the blocks of :func:`molkrr.derivative_krr.gram_block` (query rows 'energy+forces', training rows as
trained). k(q, q) is computed in the raw features; k_q in each element's exact training coordinates
(:mod:`molkrr.element_basis`) with one extra coordinate per query environment, its residual norm ‖ρ‖
(training environments have 0 there): ‖x − x_f‖² = ‖p − p_f‖² + ‖ρ‖², J_eᵀδ = C_eᵀ(p − p_f) + J_eᵀρ and
J_eᵀJ_f = C_eᵀC_f are then exact, since the training Jacobians lie in the span. A non-stationary kernel
(energy std of an energy-trained model only) uses the raw features throughout.

The factor and the training rows: ``fit`` keeps L (up to :data:`molkrr.linalg.KEEP_FACTOR_MAX_BYTES`) with
its environments; otherwise (a loaded model, a large one, σ or λ changed) they are rebuilt on first use
from the training geometries a MolecularKRR keeps (``train_numbers_``, ``train_positions_``,
``train_offsets_``): the representation's Jacobians, one Gram matrix and one Cholesky, as ``fit``. Query
rows are processed in blocks of at most :data:`QUERY_ROWS` (bounded (rows, n_train_rows) temporaries), one
triangular solve per block. Not supported (:class:`~molkrr.errors.UncertaintyNotSupportedError`): sparse
models (``n_sparse``), models saved before the training geometries were kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._threads import single_threaded_blas
from .derivative_krr import (
    POSTERIOR_KEY,
    BLOCK_ELEMENTS,
    DerivativeKRR,
    Environments,
    molecule_groups,
    environments,
    gram_block_elements,
    gram_matrix,
    row_layout,
    transposed_jacobians,
)
from .errors import NotDifferentiableError, UncertaintyNotSupportedError
from .kernels.base import StationaryKernel
from .linalg import lower_solve, spd_factor
from .molecules import Molecules

__all__ = ["QUERY_ROWS", "check_supported", "posterior_std"]

#: Query rows (energies and Cartesian gradient components) per triangular solve.
QUERY_ROWS = 2048


def check_supported(model: Any, *, forces: bool = False) -> None:
    """Raise :class:`~molkrr.errors.UncertaintyNotSupportedError` unless a fitted MolecularKRR with a
    DerivativeKRR can give the posterior std of its energies (and of its forces with ``forces=True``)."""
    krr = model.krr_
    if getattr(model, "n_sparse", None) is not None:
        raise UncertaintyNotSupportedError(
            f"predictive std is not supported yet for sparse models (n_sparse={model.n_sparse}): fit with n_sparse=None")
    if not isinstance(krr, DerivativeKRR) or getattr(krr, "gp_scale_", None) is None \
            or getattr(model, "train_positions_", None) is None:
        raise UncertaintyNotSupportedError(
            "this model holds no training geometries (saved by a molkrr before the predictive std of force-trained "
            "and local-kernel models, or fitted by another solver): refit it to get the predictive std")
    if forces:
        if not getattr(model.representation_, "differentiable", False):
            raise NotDifferentiableError(f"{type(model.representation_).__name__} has no derivative with respect to positions")
        if not isinstance(krr.kernel_, StationaryKernel):
            raise UncertaintyNotSupportedError(
                f"force std is not supported for the {krr.kernel_.name!r} kernel (use gaussian, matern32 or matern52)")


# ------------------------------------------------------------------------------------ the training side
class _Training:
    """The factor and the training rows in the coordinates the cross-covariances are computed in.

    L : lower Cholesky factor of K + Λ; rows : (n_mol + 1,) row offsets; targets; bases : per element the
    :class:`~molkrr.element_basis.ElementBasis` (None: raw features); groups : per run of equal molecules
    (first row, last row, {element: (P (b, n_z, r + 1), labels, C (b, n_z, r + 1, q) or None)}).
    """

    def __init__(self, L: np.ndarray, env: Environments, rows: np.ndarray, targets: str, compressed: bool) -> None:
        self.L, self.rows, self.targets = L, rows, targets
        self.n_rows = int(rows[-1])
        self.bases = env.compressed().bases if compressed else None
        self.groups = []
        for G in molecule_groups(env):
            self.groups.append((int(rows[G[0]]), int(rows[G[-1] + 1]), G.size, self._stacks(env, G)))

    def _stacks(self, env: Environments, G: np.ndarray) -> dict[int, tuple]:
        b = G.size
        s0, s1 = int(env.env_offsets[G[0]]), int(env.env_offsets[G[-1] + 1])
        labels = env.labels[s0 : s0 + (s1 - s0) // b]
        out = {}
        if self.bases is None:  # raw features (energies of a non-stationary kernel: no Jacobians)
            X = env.X[s0:s1].reshape(b, labels.size, -1)
            for z in np.unique(labels).tolist():
                loc = labels == z
                out[z] = (np.ascontiguousarray(X[:, loc]), np.zeros((b, int(loc.sum())), dtype=np.int64), None)
            return out
        comp = env.compressed()
        for z in np.unique(labels).tolist():
            off = comp.offsets[z]
            t0, t1 = int(off[G[0]]), int(off[G[-1] + 1])
            P = comp.P[z][t0:t1].reshape(b, (t1 - t0) // b, -1)
            P = np.concatenate([P, np.zeros((*P.shape[:2], 1))], axis=2)  # the query residual's coordinate: 0 here
            if comp.C is None:
                out[z] = (P, np.zeros(P.shape[:2], dtype=np.int64), None)
                continue
            C = np.stack([comp.C[z][m] for m in G])
            C = np.concatenate([C, np.zeros((C.shape[0], C.shape[1], 1, C.shape[3]))], axis=2)
            out[z] = (P, np.zeros(P.shape[:2], dtype=np.int64), C, transposed_jacobians(P, C))  # once, not per query
        return out


def _training(model: Any) -> _Training:
    """The kept or rebuilt :class:`_Training` of a supported model (cached in the DerivativeKRR's __dict__)."""
    krr = model.krr_
    kernel = krr.kernel_
    compressed = isinstance(kernel, StationaryKernel)
    entry = krr.__dict__.get(POSTERIOR_KEY)
    if entry is not None and krr.posterior_key_matches(entry["key"]):
        if "training" not in entry:  # the factor fit kept: its environments become the training stacks once
            env = entry.pop("env")
            entry["training"] = _Training(entry.pop("L"), env, row_layout(env, krr.targets), krr.targets, compressed)
        return entry["training"]
    krr.__dict__.pop(POSTERIOR_KEY, None)
    targets = krr.targets
    mols = Molecules(model.train_numbers_, model.train_positions_, model.train_offsets_, validate=False)
    env = environments(model.representation_, mols, jacobians=targets != "energy")
    env.release_jacobians()
    rows = row_layout(env, targets)
    diag = np.full(int(rows[-1]), float(krr.lam_forces))
    if targets != "forces":
        diag[rows[:-1]] = float(krr.lam)  # each molecule's first row is its energy
    L, _ = spd_factor(lambda: gram_matrix(kernel, env, targets, rows, diag), 0.0)
    training = _Training(L, env, rows, targets, compressed)
    krr.__dict__[POSTERIOR_KEY] = {"key": krr._posterior_key(), "training": training}
    return training


# ------------------------------------------------------------------------------------ the query side
def _query_stacks(training: _Training, X: np.ndarray, labels: np.ndarray, J: np.ndarray | None) -> dict[int, tuple]:
    """Per element, the query molecules' (a of one group) coordinates for the cross-covariance:
    X (a, n_env, d), labels (n_env,), J (a, n_env, d, 3n) or None."""
    a = X.shape[0]
    out = {}
    for z in np.unique(labels).tolist():
        loc = labels == z
        Xz = X[:, loc]
        Jz = None if J is None else J[:, loc]
        if training.bases is None:
            out[z] = (np.ascontiguousarray(Xz), np.zeros(Xz.shape[:2], dtype=np.int64), Jz)
            continue
        basis = training.bases.get(z)
        if basis is None:  # an element without training environments: no covariance with the training rows
            continue
        flat = Xz.reshape(-1, Xz.shape[2])
        p = basis.coordinates(flat)
        rho = basis.residuals(flat, p)
        norm = np.sqrt(np.einsum("ij,ij->i", rho, rho))
        P = np.concatenate([p, norm[:, None]], axis=1).reshape(a, Xz.shape[1], -1)
        C = None
        if Jz is not None:
            Jf = Jz.reshape(-1, *Jz.shape[2:])  # (a n_z, d, 3n)
            scale = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
            extra = np.einsum("ed,edq->eq", rho, Jf) * scale[:, None]  # J_eᵀρ / ‖ρ‖
            C = np.concatenate([basis.project_columns(Jf), extra[:, None, :]], axis=1).reshape(a, Xz.shape[1], -1,
                                                                                               Jf.shape[2])
        out[z] = (P, np.zeros(P.shape[:2], dtype=np.int64), C)
    return out


def _prior_diagonal(kernel: Any, X: np.ndarray, labels: np.ndarray, J: np.ndarray | None, targets: str) -> np.ndarray:
    """k(q, q) for the rows of one query molecule (raw features X (n_env, d), J (n_env, d, 3n)): (r,)."""
    stacks = {}
    for z in np.unique(labels).tolist():
        loc = labels == z
        stacks[z] = (X[None, loc], np.zeros((1, int(loc.sum())), dtype=np.int64), None if J is None else J[None, loc])
    r = 1 + (0 if J is None else J.shape[2])
    return np.diagonal(gram_block_elements(kernel, stacks, stacks, (1, r, 1, r), targets).reshape(r, r)).copy()


def posterior_std(model: Any, mols: Molecules, *, forces: bool) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """(energy std (n_mol,), force std: one (n_atoms_i, 3) array per molecule or None) of a supported model
    (:func:`check_supported`), in energy_unit and energy_unit/Å."""
    krr = model.krr_
    kernel = krr.kernel_
    training = _training(model)
    s2 = float(krr.gp_scale_)
    targets_q = "energy+forces" if forces else "energy"
    env = _query_environments(model.representation_, mols, forces)
    e_std = np.empty(len(mols))
    f_std: list[np.ndarray | None] = [None] * len(mols)
    keys = [(int(mols.n_atoms[m]), env.labels[env.env_slice(m)].tobytes()) for m in range(len(mols))]
    cuts = [m for m in range(1, len(mols)) if keys[m] != keys[m - 1]]
    for G in np.split(np.arange(len(mols)), cuts):  # runs of molecules with equal atoms (the batched products)
        n_env = int(env.env_offsets[G[0] + 1] - env.env_offsets[G[0]])
        labels = env.labels[env.env_offsets[G[0]] : env.env_offsets[G[0] + 1]]
        r = 1 + (3 * int(mols.n_atoms[G[0]]) if forces else 0)
        step = max(1, min(QUERY_ROWS, BLOCK_ELEMENTS // max(training.n_rows, 1)) // r)
        for s in range(0, G.size, step):
            chunk = G[s : s + step]
            a = chunk.size
            X = env.X[env.env_offsets[chunk[0]] : env.env_offsets[chunk[-1] + 1]].reshape(a, n_env, -1)
            J = np.stack([env.J[m] for m in chunk]) if forces else None
            with single_threaded_blas():  # many small products, as the training Gram blocks
                prior = np.concatenate([_prior_diagonal(kernel, X[i], labels, None if J is None else J[i], targets_q)
                                        for i in range(a)])
                K_star = _cross(kernel, training, _query_stacks(training, X, labels, J), a, r, targets_q)
            W = lower_solve(training.L, K_star.T)  # (n_rows, a r)
            var = prior - np.einsum("ij,ij->j", W, W)
            np.maximum(var, 0.0, out=var)  # round-off can take it below 0 at training points
            std = np.sqrt(s2 * var).reshape(a, r)
            e_std[chunk] = std[:, 0]
            if forces:
                for i, m in enumerate(chunk):
                    f_std[m] = std[i, 1:].reshape(-1, 3)
    return e_std, (f_std if forces else None)


def _query_environments(rep: Any, mols: Molecules, forces: bool) -> Environments:
    """The query molecules' environments with Cartesian Jacobians J (n_env_m, d, 3 n_atoms) when ``forces``."""
    env = environments(rep, mols)
    if forces:
        if not getattr(rep, "differentiable", False):
            raise NotDifferentiableError(f"{type(rep).__name__} has no derivative with respect to positions")
        d = env.X.shape[1]
        env.J = [np.asarray(Jm, dtype=np.float64).reshape(-1, d, 3 * int(n))
                 for Jm, n in zip(rep.jacobian(mols), mols.n_atoms)]
    return env


def _cross(kernel: Any, training: _Training, Q: dict[int, tuple], a: int, r: int, targets_q: str) -> np.ndarray:
    """cov(query rows, training rows): (a r, n_rows), the training molecules in chunks that bound the temporaries."""
    out = np.empty((a * r, training.n_rows))
    for row0, row1, b, T in training.groups:
        rt = (row1 - row0) // b
        nq = max([item[0].shape[1] for item in Q.values()] + [1])
        nt = max([item[0].shape[1] for item in T.values()] + [1])
        dim = max([item[0].shape[2] for item in T.values()] + [1])
        per_pair = max(2 * a * nq * nt * max(r, rt), nt * dim * r // 8, 1)
        side = max(1, BLOCK_ELEMENTS // per_pair)
        for t0 in range(0, b, side):
            t1 = min(t0 + side, b)
            Tc = {z: tuple(None if v is None else (tuple(w[t0:t1] for w in v) if isinstance(v, tuple) else v[t0:t1])
                           for v in item) for z, item in T.items()}
            blk = gram_block_elements(kernel, Q, Tc, (a, r, t1 - t0, rt), targets_q, training.targets)
            out[:, row0 + t0 * rt : row0 + t1 * rt] = blk.reshape(a * r, (t1 - t0) * rt)
    return out
