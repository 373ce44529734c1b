"""Sparse local KRR on energies: inducing *environments* (subset of regressors), streamed over molecules.

A local model is E(M) = Σ_{e∈M} ε(x_e) with a GP prior on the atomic energies ε (kernel k within one
element). With M inducing environments z_j (each of one element) the subset-of-regressors solution
(Seeger et al.; GAP's sparse GP) is ε(x) = Σ_j β_j k(x, z_j), with

    (K_nmᵀ K_nm + λ K_mm) β = K_nmᵀ y,   K_nm[m, j] = Σ_{e∈m, Z_e = Z_j} k(x_e, z_j),   K_mm = k(z_i, z_j)

(K_mm is zero between elements). With every training environment inducing, β = Sᵀ(S K Sᵀ + λI)⁻¹ y by the
push-through identity, so predictions equal the exact local KRR's (tested). Cost: K_nm is n × M but is never
stored: molecules stream in blocks whose features are computed, turned into their K_nm rows (one GEMM per
element, n_atoms_z × M_z × d), and folded into the M × M normal equations (H += K_bᵀK_b, O(n M²) in all)
and discarded. Memory O(M² + block·(M + atoms·d)): all of QM9 never holds its 1.9 million atomic features.

Prediction reads M environments instead of every training atom: the fitted
:class:`molkrr.derivative_krr.DerivativeKRR` holds the inducing environments and their β, and its
energy-weight path gives energies and forces (∂E/∂x_e = Σ_j β_j ∂k(x_e, z_j)/∂x_e) unchanged.

Inducing environments are drawn uniformly at random within each element, M_z ∝ n_z (every element keeps
at least min(n_z, ⌈M / (4·n_elements)⌉)); exact duplicates (symmetry-equivalent atoms) are dropped. The
solve whitens through K_mm's eigenvectors (:func:`_solve_whitened`), then one Cholesky.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..kernels.base import StationaryKernel
from ..local_gram import squared_distances_on

#: Molecules per streamed block.
BLOCK_MOLECULES = 2000
#: Below this M the normal equations accumulate by SYRK (OpenBLAS's threaded dsyrk has segfaulted from 16,000).
SYRK_MAX = 15000


def allocate_inducing(counts: dict[int, int], n_sparse: int) -> dict[int, int]:
    """Inducing environments per element: proportional to the element's environment count, each at least
    min(count, ⌈n_sparse / (4 · n_elements)⌉), never more than the count, summing to ≤ n_sparse."""
    total = sum(counts.values())
    if n_sparse >= total:
        return dict(counts)
    floor = int(np.ceil(n_sparse / (4 * len(counts))))
    out = {z: min(c, floor) for z, c in counts.items()}
    left = n_sparse - sum(out.values())
    rest = {z: c - out[z] for z, c in counts.items() if c > out[z]}
    if left > 0 and rest:
        share = {z: left * r / sum(rest.values()) for z, r in rest.items()}
        for z in rest:
            out[z] += min(rest[z], int(share[z]))
    return out


def choose_inducing(mols: Any, n_sparse: int, random_state: int = 0) -> np.ndarray:
    """Sorted flat atom indices of the inducing environments (uniform within each element)."""
    if not isinstance(n_sparse, (int, np.integer)) or isinstance(n_sparse, bool) or n_sparse < 1:
        raise InvalidInputError(f"n_sparse must be a positive integer, got {n_sparse!r}")
    rng = np.random.default_rng(random_state)
    numbers = np.asarray(mols.numbers)
    elements, counts = np.unique(numbers, return_counts=True)
    per = allocate_inducing({int(z): int(c) for z, c in zip(elements, counts)}, int(n_sparse))
    picks = [rng.choice(np.flatnonzero(numbers == z), size=k, replace=False) for z, k in per.items() if k]
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)


def inducing_environments(rep: Any, mols: Any, atoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(features (M, d), labels (M,)) of the given flat atom indices (only their molecules are transformed)."""
    mol_of_atom = np.repeat(np.arange(len(mols)), mols.n_atoms)
    owners = np.unique(mol_of_atom[atoms])
    X = np.empty((atoms.size, int(rep.n_features_)))
    sub = mols.subset(owners)
    feats = rep.transform(sub)  # rows = atoms of the owners, in order
    first = np.asarray(mols.offsets)[owners]  # flat index of each owner's first atom
    sub_first = np.concatenate([[0], np.cumsum(np.asarray(mols.n_atoms)[owners])[:-1]])
    pos = np.searchsorted(owners, mol_of_atom[atoms])
    X[:] = feats[sub_first[pos] + atoms - first[pos]]
    return X, np.asarray(mols.numbers)[atoms].astype(np.int64)


#: Eigenvalues of an element's K_mm below this fraction of its largest are dropped (numerically null directions).
EIGEN_RTOL = 1e-8


def _solve_whitened(H: np.ndarray, kmm_blocks: list[tuple[np.ndarray, np.ndarray]], rhs: np.ndarray,
                    lam: float) -> np.ndarray:
    """β minimising ‖y − K_nm β‖² + λ βᵀK_mm β, i.e. (H + λ K_mm) β = rhs, through K_mm's eigenvectors.

    Per element block K_mm,z = U diag(s) Uᵀ; W = U_k diag(s_k^{-1/2}) over the eigenvalues above
    :data:`EIGEN_RTOL` × the largest; then (Wᵀ H W + λ I) γ = Wᵀ rhs and β = W γ. On QM9 the local kernel's
    σ is several times the typical environment distance and K_mm is numerically singular: whitening
    through it keeps every eigenvalue of the solved matrix ≥ λ and drops the null directions, where
    H + λ K_mm (or a Cholesky whitening) loses the digits that matter.
    """
    cols, Ws = [], []
    for idx, K in kmm_blocks:
        s, U = np.linalg.eigh(K)
        keep = s > EIGEN_RTOL * max(s[-1], 0.0)
        cols.append(idx)
        Ws.append(U[:, keep] / np.sqrt(s[keep]))
    k = sum(w.shape[1] for w in Ws)
    W = np.zeros((H.shape[0], k))
    c = 0
    for idx, w in zip(cols, Ws):
        W[idx, c : c + w.shape[1]] = w
        c += w.shape[1]
    A = W.T @ (H @ W)
    from ..linalg import spd_factor, spd_solve
    from ..local_gram import symmetrize

    symmetrize(A)
    LA, _ = spd_factor(lambda: A.copy(), float(lam))
    return W @ spd_solve(LA, W.T @ rhs)


def _distinct(X: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of (X, labels) with exact duplicates (symmetry-equivalent atoms) removed, in their first order."""
    _, first = np.unique(np.column_stack([labels.astype(np.float64), X]), axis=0, return_index=True)
    keep = np.sort(first)
    return np.ascontiguousarray(X[keep]), labels[keep]


def knm_rows(kernel: StationaryKernel, env: Any, Z: np.ndarray, z_labels: np.ndarray,
             z_sqnorms: np.ndarray) -> np.ndarray:
    """K_nm rows (n_molecules_in_env, M) of a block of molecules against the inducing environments."""
    s2 = kernel.checked_sigma() ** 2
    K = np.zeros((len(env), Z.shape[0]))
    mol = np.repeat(np.arange(len(env)), np.diff(env.env_offsets))
    for z in np.unique(env.labels).tolist():
        cols = np.flatnonzero(z_labels == z)
        if cols.size == 0:
            continue
        rows = np.flatnonzero(env.labels == z)
        Xz = env.X[rows]
        u = squared_distances_on(Xz, Z[cols], np.einsum("ij,ij->i", Xz, Xz), z_sqnorms[cols])
        u *= 1.0 / s2
        k = kernel.profile(u, 0)[0]
        starts = np.flatnonzero(np.r_[True, mol[rows][1:] != mol[rows][:-1]])
        K[np.ix_(mol[rows][starts], cols)] = np.add.reduceat(k, starts, axis=0)
    return K


def fit_sparse_energies(rep: Any, mols: Any, energies: np.ndarray, *, kernel: StationaryKernel, lam: float,
                        n_sparse: int, center: bool = True, random_state: int = 0,
                        block: int = BLOCK_MOLECULES, progress: bool = False) -> dict:
    """Fit the subset-of-regressors local energy model (module docstring).

    rep : a fitted local representation; mols : Molecules; energies (n,) (baseline already removed).
    Returns {'X': inducing features (M, d), 'labels': (M,), 'beta': (M,), 'offset': float}.
    """
    if not isinstance(kernel, StationaryKernel):
        raise InvalidInputError(f"the sparse local solver needs a kernel of ‖a − b‖² (Gaussian, Matérn), got {kernel.name!r}")
    y = np.asarray(energies, dtype=np.float64).reshape(-1)
    offset = float(y.mean()) if center else 0.0
    atoms = choose_inducing(mols, n_sparse, random_state)
    Z, zl = _distinct(*inducing_environments(rep, mols, atoms))  # equal environments give equal columns
    zz = np.einsum("ij,ij->i", Z, Z)
    M = Z.shape[0]
    H = np.zeros((M, M), order="F")  # lower triangle of K_nmᵀK_nm, accumulated by SYRK (half the GEMM flops)
    rhs = np.zeros(M)
    starts = range(0, len(mols), block)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="sparse local KRR", unit="block", file=sys.stderr, dynamic_ncols=True)
    from scipy.linalg.blas import dsyrk

    from ..derivative_krr import environments
    from ..linalg import gemm

    for s in starts:
        part = mols[s : s + block]
        Kb = knm_rows(kernel, environments(rep, part), Z, zl, zz)
        if M < SYRK_MAX:  # C ← KbᵀKb + C on the lower triangle
            H = dsyrk(1.0, np.asfortranarray(Kb), beta=1.0, c=H, trans=1, lower=1, overwrite_c=1)
        else:  # the threaded-SYRK hazard of molkrr.linalg: plain GEMM
            H += gemm(Kb, Kb, trans_a=True)
        rhs += Kb.T @ (y[s : s + block] - offset)
    H = np.ascontiguousarray(np.tril(H) + np.tril(H, -1).T)
    blocks = [(idx, kernel(Z[idx])) for idx in (np.flatnonzero(zl == z) for z in np.unique(zl).tolist())]
    beta = _solve_whitened(H, blocks, rhs, lam)  # K_mm is block diagonal: one block per element
    return {"X": Z, "labels": zl, "beta": beta, "offset": offset}


__all__ = ["BLOCK_MOLECULES", "allocate_inducing", "choose_inducing", "fit_sparse_energies", "inducing_environments",
           "knm_rows"]
