"""The local (atom-centred) kernel between many molecules: element-blocked GEMMs and segment sums.

For molecules given as environment sets (:class:`molkrr.derivative_krr.Environments`: one feature row
per atom, labelled by its atomic number)

    K(A, B) = Σ_{e∈A} Σ_{f∈B, Z_e = Z_f} k(x_e, x_f) = Σ_z S_A^z k(X_A^z, X_B^z) (S_B^z)ᵀ,

where X^z stacks the atoms of element z of every molecule (in molecule order) and S^z is the
(n_molecules × n_atoms_z) indicator of which molecule each atom belongs to. Each element's atom-pair
kernel is computed in blocks of atoms — one GEMM for the squared distances ‖a‖² + ‖b‖² − 2a·b, the
kernel's profile, then a segment sum over the rows and the columns (``np.add.reduceat``) — and added
into the molecule matrix. No Python loop runs over pairs of molecules: the work is ~n_z² d flops per
element (the GEMM floor) plus n_z² kernel values.

Blocks are spread over the cores (one BLAS thread each; the exponential runs in parallel too). With
several kernels (one per σ of a grid) the distances are computed once and reused for every σ: this is
how σ/λ selection costs one GEMM pass (:func:`molkrr.krr.select_hyperparameters`' ``gram`` hook).
Features that are zero for every atom of an element in B are skipped in the GEMM (FCHL19 has many);
a query's norm is taken over all its features, so distances stay exact. Global representations are
the special case of one environment per molecule with one label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._threads import map_in_threads
from .kernels import Kernel
from .kernels.base import StationaryKernel

#: Kernel entries in one block of atom pairs (the distance block and one kernel block: ~2 × 32 MB).
BLOCK_ELEMENTS = 4_000_000


@dataclass
class ElementAtoms:
    """The atoms of one element in a batch: X (n_z, d) features in molecule order, sqnorms (n_z,) of the
    full rows, molecule (n_z,) the molecule index of each row (non-decreasing)."""

    X: np.ndarray
    sqnorms: np.ndarray
    molecule: np.ndarray


def element_atoms(env: Any) -> dict[int, ElementAtoms]:
    """Group the environments of ``env`` by label (element): {z: :class:`ElementAtoms`}."""
    molecule = np.repeat(np.arange(len(env)), np.diff(env.env_offsets))
    out = {}
    for z in np.unique(env.labels).tolist():
        rows = np.flatnonzero(env.labels == z)
        X = np.ascontiguousarray(env.X[rows])
        out[z] = ElementAtoms(X, np.einsum("ij,ij->i", X, X), molecule[rows])
    return out


def local_kernel_matrix(kernel: Kernel, A: Any, B: Any = None) -> np.ndarray:
    """K(A, B) of shape (n_molecules_A, n_molecules_B); B = None: K(A, A), exactly symmetric."""
    return local_kernel_matrices([kernel], A, B)[0]


def local_kernel_matrices(kernels: Sequence[Kernel], A: Any, B: Any = None, *,
                          block_elements: int = BLOCK_ELEMENTS) -> list[np.ndarray]:
    """K(A, B) for each kernel (e.g. one per σ of a grid, all of one kind): the distances are computed once.

    A, B : environment sets (``env_offsets``, ``labels``, ``X``); B = None means A (only the blocks on
    and below the diagonal are computed, and each result is made exactly symmetric).
    """
    kernels = list(kernels)
    if not kernels:
        return []
    symmetric = B is None
    B = A if symmetric else B
    nA, nB = len(A), len(B)
    out = [np.zeros((nA, nB)) for _ in kernels]
    ea, eb = element_atoms(A), (None if symmetric else element_atoms(B))
    euclidean = all(isinstance(k, StationaryKernel) for k in kernels)
    tasks = []
    for z, az in ea.items():
        bz = az if symmetric else (eb or {}).get(z)
        if bz is None:
            continue
        cols = np.flatnonzero(np.any(bz.X != 0.0, axis=0)) if euclidean else None
        side = max(1, int(np.sqrt(block_elements)))
        ra = range(0, az.X.shape[0], side)
        for i, r0 in enumerate(ra):
            for j, c0 in enumerate(range(0, bz.X.shape[0], side)):
                if symmetric and j > i:
                    break
                tasks.append((az, bz, cols, r0, min(r0 + side, az.X.shape[0]), c0, min(c0 + side, bz.X.shape[0]),
                              symmetric and i == j, symmetric and i != j))
    def run(task):
        az, bz, cols, r0, r1, c0, c1, diagonal, mirror = task
        xa, xb = az.X[r0:r1], bz.X[c0:c1]
        if euclidean:
            if cols.size < xb.shape[1]:
                xb = xb[:, cols]
            D = squared_distances_on(xa, xb, az.sqnorms[r0:r1], bz.sqnorms[c0:c1], cols if cols.size < xa.shape[1] else None)
            if diagonal:
                np.einsum("ii->i", D)[:] = 0.0  # an atom is at distance 0 from itself, exactly
        else:
            D = kernels[0].distances(xa, xb)
        ma, sa = _segments(az.molecule[r0:r1])
        mb, sb = _segments(bz.molecule[c0:c1])
        sums = []
        for kern in kernels:
            Kab = kern.from_distances(D.copy() if len(kernels) > 1 else D)
            sums.append(np.add.reduceat(np.add.reduceat(Kab, sa, axis=0), sb, axis=1))
        return ma, mb, sums

    # blocks are computed in parallel but added in task order: the sums (and a fit) are the same bits every run
    _accumulate(out, tasks, map_in_threads(run, tasks))
    if symmetric:
        for K in out:
            symmetrize(K)
    return out


def squared_distances_on(xa: np.ndarray, xb: np.ndarray, a_sqnorms: np.ndarray, b_sqnorms: np.ndarray,
                         cols: np.ndarray | None = None) -> np.ndarray:
    """‖a − b‖² (n_a, n_b) = ‖a‖² + ‖b‖² − 2 a·b, clipped at 0, with the products over ``cols`` only.

    xb : B's rows on ``cols`` (all columns when None): B is zero elsewhere, so a's other columns enter
    through its full norm ``a_sqnorms`` alone. The one distance formula of the local kernel's Gram blocks,
    its predictions and the sparse solver's K_nm rows.
    """
    D = (xa if cols is None else xa[:, cols]) @ xb.T
    D *= -2.0
    D += a_sqnorms[:, None]
    D += b_sqnorms[None, :]
    np.maximum(D, 0.0, out=D)
    return D


def _accumulate(out: list[np.ndarray], tasks: list, results: Any) -> None:
    """Add each block's molecule sums into the matrices (and their mirror images below the diagonal)."""
    for task, (ma, mb, sums) in zip(tasks, results):
        for K, R in zip(out, sums):
            _scatter_add(K, ma, mb, R)
            if task[-1]:  # a block strictly below the diagonal of K(A, A)
                _scatter_add(K, mb, ma, R.T)


def _segments(molecule: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(molecule ids, start rows) of the runs of a non-decreasing molecule index array."""
    starts = np.flatnonzero(np.r_[True, molecule[1:] != molecule[:-1]])
    return molecule[starts], starts


def _scatter_add(K: np.ndarray, rows: np.ndarray, cols: np.ndarray, R: np.ndarray) -> None:
    """K[rows, cols] += R for sorted, distinct rows and cols (a slice when they are contiguous)."""
    rs = slice(int(rows[0]), int(rows[-1]) + 1) if rows[-1] - rows[0] + 1 == rows.size else rows
    cs = slice(int(cols[0]), int(cols[-1]) + 1) if cols[-1] - cols[0] + 1 == cols.size else cols
    if isinstance(rs, slice) or isinstance(cs, slice):
        K[rs, cs] += R  # distinct indices: the fancy-indexed add is exact
    else:
        K[np.ix_(rows, cols)] += R


def symmetrize(K: np.ndarray, block: int = 2048) -> None:
    """K ← (K + Kᵀ)/2 in place, block by block (no n × n temporary)."""
    n = K.shape[0]
    for i in range(0, n, block):
        bi = slice(i, min(i + block, n))
        d = K[bi, bi]
        K[bi, bi] = 0.5 * (d + d.T)
        for j in range(0, i, block):
            bj = slice(j, min(j + block, n))
            m = 0.5 * (K[bi, bj] + K[bj, bi].T)
            K[bi, bj] = m
            K[bj, bi] = m.T


__all__ = ["BLOCK_ELEMENTS", "ElementAtoms", "element_atoms", "local_kernel_matrices", "local_kernel_matrix",
           "squared_distances_on", "symmetrize"]
