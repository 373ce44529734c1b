"""Kernel ridge regression with derivative observations: training on energies and forces.

A molecule is a *set of environments* e with feature vectors x_e ∈ ℝᵈ, labels z_e and Jacobians
J_e = ∂x_e/∂R (d × 3n). The molecular kernel is

    K(A, B) = Σ_{e∈A} Σ_{f∈B, z_e = z_f} k(x_e, x_f),

which covers both kinds of representation molkrr has:

* **global** representations (Coulomb matrix, FCHL19 global, ...): one environment per molecule,
  all with the same label, so K(A, B) = k(x_A, x_B);
* the **local** (atom-centred) kernel: one environment per atom (FCHL19(form='atomic')), labelled
  by its atomic number, so K sums k over pairs of atoms of the same element (qmllib's local
  FCHL19 kernel, the kernel of the FCHL19 GP/GDML models).

Observations are energies E and energy gradients ∇E = −F. The joint covariance has the blocks

    cov(E_A, E_B)  = K(A, B)
    cov(E_A, ∇_B)  = ∂K/∂R_B   = Σ_{e,f} −g₁(e,f) (x_e − x_f)ᵀ J_f
    cov(∇_A, E_B)  = ∂K/∂R_A   = Σ_{e,f}  g₁(e,f) J_eᵀ (x_e − x_f)
    cov(∇_A, ∇_B)  = ∂²K/∂R_A∂R_Bᵀ = Σ_{e,f} J_eᵀ [c₁ I + c₂ δδᵀ] J_f,   δ = x_e − x_f,

with g₁, (c₁, c₂) the kernel's :meth:`~molkrr.kernels.StationaryKernel.gradient_coefficients` and
:meth:`~molkrr.kernels.StationaryKernel.second_derivative_coefficients`. The (d × d) second
derivative is never formed: the c₁ part is Σ_f (Σ_e c₁ J_e)ᵀ J_f and the c₂ part Σ c₂ (J_eᵀδ)(J_fᵀδ)ᵀ,
both batched matrix products over blocks of molecules.

**Rigid motions.** K is invariant under translations and rotations, so each molecule's gradient rows
have a (generically) six-dimensional null space: the gradient of an invariant energy has no
component along a rigid motion. Each molecule's 3n Cartesian directions are therefore replaced by an
orthonormal basis Q (3n × q, q = 3n − 6, or 3n − 5 for a linear molecule) of the complement of the
rigid motions at its geometry; J_e ← J_e Q and the force targets become Qᵀ∇E. This drops only
components that no invariant model can represent, removes the singular directions, and shrinks the
system by 6 rows per molecule (22 instead of 28 rows per ethanol frame).

**The fitted model.** With weights α (one per energy row) and β_m (q_m per molecule),

    E(x) = offset + Σ_m α_m K(x, m) + Σ_m β_mᵀ ∂K(x, m)/∂q_m
         = offset + Σ_{e∈x} Σ_f [α_f k(x_e, x_f) − g₁(e, f) (x_e − x_f) · w_f],

where f runs over the training environments, α_f is its molecule's α and w_f = J_f Q β its molecule's
β pulled back into feature space (stored per environment, so prediction never needs a Jacobian).
Its gradient with respect to a query environment is

    ∂E/∂x_e = Σ_f [α_f g₁ δ + c₁ w_f + c₂ δ (δ · w_f)],

which the representation's VJP turns into forces: F = −∇E exactly (a conservative field).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from ._threads import N_WORKERS, map_in_threads, single_threaded_blas
from .element_basis import ElementBasis, fit_element_basis
from .errors import InvalidInputError, NotDifferentiableError, ShapeMismatchError
from .kernels import Kernel, make_kernel
from .kernels.base import StationaryKernel
from .kernels.blocks import squared_distances
from . import linalg
from .linalg import spd_factor, spd_solve
from .local_gram import squared_distances_on
from .molecules import Molecules
from .schema import (MAX_ABS_COEFFICIENT, MAX_ABS_FEATURE, Bool, Choice, Finite, FloatArray, IntArray, Number, Schema,
                     Sigma, fail)

#: Accepted values of ``targets``.
TARGETS = ("energy", "forces", "energy+forces")
#: Budget (float64 elements) of the largest temporary of one Gram block (≈ 128 MB).
BLOCK_ELEMENTS = 16_000_000
#: Queries with at most this many environments are evaluated with single-threaded BLAS.
SMALL_QUERY_ROWS = 64
#: ... unless the model holds more than this many training-environment coordinates (one frame against
#: a large model is two long GEMMs, faster on all cores).
SMALL_MODEL_ELEMENTS = 1_000_000
#: Threads that build Gram blocks concurrently (each with single-threaded BLAS).
_N_WORKERS = N_WORKERS  # molkrr._threads
#: Relative singular value below which a rigid-motion vector is dependent (linear molecules).
_RIGID_RTOL = 1e-8
#: The DerivativeKRR ``__dict__`` entry of the factor ``fit`` keeps for the predictive std (never saved;
#: :mod:`molkrr.derivative_uncertainty` reads and rebuilds it).
POSTERIOR_KEY = "_posterior"


def check_targets(targets: Any) -> str:
    """``targets`` as one of :data:`TARGETS`, else :class:`InvalidInputError`."""
    if targets not in TARGETS:
        raise InvalidInputError(f"targets must be one of {', '.join(map(repr, TARGETS))}, got {targets!r}")
    return targets


def is_local(rep: Any) -> bool:
    """Whether a representation gives one feature row per atom (the local kernel is then used)."""
    return getattr(rep, "form", None) == "atomic"


# ------------------------------------------------------------------------------------ environments
@dataclass
class Environments:
    """Environments of a batch of molecules, with (optionally) their projected Jacobians.

    X : (n_env, d) features; labels : (n_env,) int; env_offsets : (n_mol + 1,) — environments of
    molecule m are rows env_offsets[m]:env_offsets[m+1]. J : per molecule, (n_env_m, d, q_m) =
    ∂x/∂R · Q_m (or None when only values are needed, or once released: :meth:`release_jacobians`);
    Q : per molecule the (3 n_atoms, q_m) basis (None when no derivatives were asked for).
    """

    X: np.ndarray
    labels: np.ndarray
    env_offsets: np.ndarray
    J: list[np.ndarray] | None = None
    Q: list[np.ndarray] | None = None
    _compressed: "CompressedEnvironments | None" = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.env_offsets) - 1

    def compressed(self) -> "CompressedEnvironments":
        """Per-element exact coordinates of these environments (:func:`compress`), computed once."""
        if self._compressed is None:
            self._compressed = compress(self)
        return self._compressed

    def release_jacobians(self) -> None:
        """Keep only the per-element projected Jacobians (about r/d of the memory): Gram matrices and
        fitted weights need nothing else. Q (the rigid-motion complements) stays."""
        if self.J is not None:
            self.compressed()
            self.J = None

    def env_slice(self, m: int) -> slice:
        return slice(int(self.env_offsets[m]), int(self.env_offsets[m + 1]))


def environments(rep: Any, mols: Molecules, *, jacobians: bool = False, project_rigid: bool = True) -> Environments:
    """The environments of ``mols`` under a fitted representation (local if :func:`is_local`)."""
    X = np.ascontiguousarray(rep.transform(mols), dtype=np.float64)
    if is_local(rep):
        labels = np.asarray(mols.numbers, dtype=np.int64).copy()
        env_offsets = np.asarray(mols.offsets, dtype=np.int64).copy()
    else:
        if X.shape[0] != len(mols):
            raise ShapeMismatchError(f"{type(rep).__name__} gives {X.shape[0]} rows for {len(mols)} molecules")
        labels = np.zeros(len(mols), dtype=np.int64)
        env_offsets = np.arange(len(mols) + 1, dtype=np.int64)
    env = Environments(X, labels, env_offsets)
    if jacobians:
        if not getattr(rep, "differentiable", False):
            raise NotDifferentiableError(f"{type(rep).__name__} has no derivative with respect to positions")
        env.J, env.Q = [], []
        raw = rep.jacobian(mols)
        for m in range(len(mols)):
            n = int(mols.n_atoms[m])
            Jm = np.asarray(raw[m], dtype=np.float64).reshape(-1, X.shape[1], 3 * n)  # (n_env_m, d, 3n)
            Q = rigid_complement(mols.positions[mols.atom_slice(m)]) if project_rigid else np.eye(3 * n)
            env.J.append(np.ascontiguousarray(Jm @ Q))
            env.Q.append(Q)
    return env


def rigid_complement(R: np.ndarray) -> np.ndarray:
    """Orthonormal basis (3n, q) of the directions orthogonal to rigid translations and rotations of R (n, 3).

    q = 3n − 6 in general, 3n − 5 for a linear molecule, 0 for a single atom.
    """
    R = np.asarray(R, dtype=np.float64)
    n = R.shape[0]
    c = R - R.mean(axis=0)
    T = np.zeros((n, 3, 6))
    for k in range(3):
        T[:, k, k] = 1.0
        axis = np.zeros(3)
        axis[k] = 1.0
        T[:, :, 3 + k] = np.cross(axis, c)
    U, s, _ = np.linalg.svd(T.reshape(3 * n, 6), full_matrices=True)
    rank = int(np.sum(s > _RIGID_RTOL * max(s[0], 1.0)))
    return np.ascontiguousarray(U[:, rank:])


@dataclass
class CompressedEnvironments:
    """Environments in per-element exact coordinates (:mod:`molkrr.element_basis`).

    For each element z: ``bases[z]``, ``P[z]`` (n_env_z, r_z) the coordinates of its environments in
    environment order, ``offsets[z]`` (n_mol + 1,) molecule m's rows of P[z], and (with Jacobians)
    ``C[z][m]`` (n_z_m, r_z, q_m) = B_zᵀ J of molecule m's environments of z.
    """

    bases: dict[int, ElementBasis]
    P: dict[int, np.ndarray]
    offsets: dict[int, np.ndarray]
    C: dict[int, list[np.ndarray]] | None = None


def compress(env: Environments) -> CompressedEnvironments:
    """Per-element coordinates p = Bᵀ(x − μ) and C = BᵀJ of ``env`` (bases from its own features and Jacobians)."""
    bases, P, offsets = {}, {}, {}
    C = None if env.J is None else {}
    slices = [env.env_slice(m) for m in range(len(env))]
    for z in np.unique(env.labels).tolist():
        rows = np.flatnonzero(env.labels == z)
        local = [np.flatnonzero(env.labels[s] == z) for s in slices]

        def jacobian_rows(local=local):
            for m, loc in enumerate(local):
                if loc.size:
                    Jz = env.J[m][loc]  # (n_z, d, q)
                    yield Jz.transpose(0, 2, 1).reshape(-1, Jz.shape[1])

        basis = fit_element_basis(env.X[rows], jacobian_rows if env.J is not None else None)
        bases[z] = basis
        P[z] = np.ascontiguousarray(basis.coordinates(env.X[rows]))
        offsets[z] = np.concatenate([[0], np.cumsum([loc.size for loc in local])]).astype(np.int64)
        if C is not None:
            C[z] = [np.ascontiguousarray(basis.project_columns(env.J[m][loc])) for m, loc in enumerate(local)]
    return CompressedEnvironments(bases, P, offsets, C)


# ------------------------------------------------------------------------------------ the Gram matrix
def row_layout(env: Environments, targets: str) -> np.ndarray:
    """Row offsets (n_mol + 1,) of each molecule's rows: [E_m?] + [q_m gradient rows?], molecule by molecule."""
    counts = np.zeros(len(env), dtype=np.int64)
    if targets != "forces":
        counts += 1
    if targets != "energy":
        counts += np.array([Q.shape[1] for Q in env.Q], dtype=np.int64)
    return np.concatenate([[0], np.cumsum(counts)])


def observations(env: Environments, energies: np.ndarray, gradients: list[np.ndarray] | None, targets: str,
                 rows: np.ndarray, center: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """(observation vector y (n_rows,), which rows are energies (bool), energy offset subtracted from them).

    Gradient rows are Q_mᵀ ∇E_m (∇E = −forces, one (n_atoms_m, 3) array per molecule).
    """
    offset = float(np.mean(energies)) if center and targets != "forces" else 0.0
    y = np.empty(int(rows[-1]))
    is_energy = np.zeros(int(rows[-1]), dtype=bool)
    for m in range(len(env)):
        r = int(rows[m])
        if targets != "forces":
            y[r] = energies[m] - offset
            is_energy[r] = True
            r += 1
        if targets != "energy":
            g = np.asarray(gradients[m], dtype=np.float64).reshape(-1)
            if g.shape[0] != env.Q[m].shape[0]:
                raise ShapeMismatchError(f"molecule {m}: {g.shape[0]} gradient components for {env.Q[m].shape[0] // 3} atoms")
            y[r : int(rows[m + 1])] = g @ env.Q[m]
    return y, is_energy, offset


def molecule_groups(env: Environments) -> list[np.ndarray]:
    """Runs of consecutive molecules with equal labels (in order) and q (the batched products need equal shapes)."""
    q = [Q.shape[1] for Q in env.Q] if env.Q is not None else [0] * len(env)
    keys = [(q[m], env.labels[env.env_slice(m)].tobytes()) for m in range(len(env))]
    cuts = [m for m in range(1, len(env)) if keys[m] != keys[m - 1]]
    return np.split(np.arange(len(env)), cuts)


def _chunks(idx: np.ndarray, size: int) -> list[np.ndarray]:
    return [idx[s : s + size] for s in range(0, len(idx), size)]


def _stack_element(comp: CompressedEnvironments, z: int, mols: np.ndarray) -> tuple | None:
    """(P (a, n_z, r), labels (a, n_z), C (a, n_z, r, q) or None) of element z in consecutive molecules of
    one group, or None where they have no environment of z."""
    off = comp.offsets[z]
    s, t = int(off[mols[0]]), int(off[mols[-1] + 1])
    a = len(mols)
    if t == s:
        return None
    P = comp.P[z][s:t].reshape(a, (t - s) // a, -1)
    C = None if comp.C is None else np.stack([comp.C[z][m] for m in mols])
    return P, np.zeros(P.shape[:2], dtype=np.int64), C


def stack_elements(comp: CompressedEnvironments, mols: np.ndarray) -> dict[int, tuple]:
    """Per element, :func:`_stack_element` of molecules ``mols`` (elements they lack are left out)."""
    out = {}
    for z in comp.bases:
        st = _stack_element(comp, z, mols)
        if st is not None:
            out[z] = st
    return out


def gram_block_elements(kernel: Kernel, A: dict[int, tuple], B: dict[int, tuple],
                        shape: tuple[int, int, int, int], targets: str, targets_b: str | None = None) -> np.ndarray:
    """Covariance block (a, r_A, b, r_B) between two stacks of molecules (:func:`stack_elements`, each of
    one group), summed element by element in exact per-element coordinates (no work on pairs of
    different elements). ``targets_b``: the rows of B where they differ from A's (:func:`gram_block`)."""
    out = np.zeros(shape)
    for z, Az in A.items():
        if z in B:
            out += gram_block(kernel, Az, B[z], targets, targets_b)
    return out


def pair_coefficients(kernel: Kernel, XA: np.ndarray, XB: np.ndarray, labA: np.ndarray, labB: np.ndarray,
                      order: int) -> tuple[np.ndarray, ...]:
    """(k,) / (k, g₁) / (k, g₁, c₁, c₂) between environment rows, zero where the labels differ."""
    mask = labA[:, None] == labB[None, :]
    if isinstance(kernel, StationaryKernel):  # one distance matrix, the profile's derivatives from it
        s2 = kernel.checked_sigma() ** 2
        u = squared_distances(XA, XB)
        u *= 1.0 / s2
        prof = kernel.profile(u, min(order, 2))
        out = [prof[0]]
        if order >= 1:
            out.append(prof[1] * (2.0 / s2))  # g₁ = (2/σ²) g′
        if order >= 2:
            out.extend([prof[1] * (-2.0 / s2), prof[2] * (-4.0 / s2**2)])  # c₁, c₂
    else:
        out = [kernel(XA, XB)]
        if order >= 1:
            out.append(kernel.gradient_coefficients(XA, XB))
        if order >= 2:
            out.extend(kernel.second_derivative_coefficients(XA, XB))
    for M in out:
        M[~mask] = 0.0
    return tuple(out)


def gram_block(kernel: Kernel, A: tuple, B: tuple, targets: str, targets_b: str | None = None) -> np.ndarray:
    """Covariance block between stacked molecules A and B (from :func:`_stack_element`: x, labels, J per
    molecule; any feature coordinates), shape (a, r_A, b, r_B).

    r = 1 + q (energy+forces), q (forces) or 1 (energy); rows of a molecule are [E, ∇ (q)]. ``targets``
    names A's rows and, unless ``targets_b`` is given, B's (the predictive std pairs query rows
    'energy+forces' with a model's training rows, :mod:`molkrr.derivative_uncertainty`); J of a side
    without gradient rows is not read (None is fine). B may carry a fourth item, (Jᵀ (b, nB, qB, d)
    C-ordered, Jᵀx (b, nB, qB)) of its J, when it meets many A (:func:`transposed_jacobians`).
    """
    XA, labA, JA = A
    XB, labB, JB = B[:3]
    targets_b = targets if targets_b is None else targets_b
    a, nA, d = XA.shape
    b, nB, _ = XB.shape
    eA, fA = targets != "forces", targets != "energy"
    eB, fB = targets_b != "forces", targets_b != "energy"
    qA = JA.shape[3] if fA else 0
    qB = JB.shape[3] if fB else 0
    oA, oB = int(eA), int(eB)
    out = np.zeros((a, oA + qA, b, oB + qB))
    xa, xb = XA.reshape(a * nA, d), XB.reshape(b * nB, d)
    coef = pair_coefficients(kernel, xa, xb, labA.ravel(), labB.ravel(), 2 if fA and fB else int(fA or fB))
    if eA and eB:
        out[:, 0, :, 0] = coef[0].reshape(a, nA, b, nB).sum(axis=(1, 3))
    if not (fA or fB):
        return out
    g1 = coef[1]
    # J_eᵀδ and J_fᵀδ (δ = x_e − x_f) for all pairs, one GEMM each way: (a nA qA, d) @ (d, b nB)
    if fA:
        JAt = np.ascontiguousarray(JA.transpose(0, 1, 3, 2)).reshape(a * nA * qA, d)
        JAx = np.einsum("eqd,ed->eq", JAt.reshape(a * nA, qA, d), xa)  # J_eᵀ x_e (a nA, qA)
        U = (JAt @ xb.T).reshape(a * nA, qA, b * nB)
        np.subtract(JAx[:, :, None], U, out=U)  # J_eᵀ δ
        del JAt
        if eB:  # cov(∇_A, E_B)[i, j] = Σ_{e∈Ai, f∈Bj} g₁ J_eᵀδ
            out[:, oA:, :, 0] = (U * g1[:, None, :]).reshape(a, nA, qA, b, nB).sum(axis=(1, 4))
    if fB:
        JBt, JBx = B[3] if len(B) > 3 else transposed_jacobians(XB, JB)
        JBt, JBx = JBt.reshape(b * nB * qB, d), JBx.reshape(b * nB, qB)
        V = (JBt @ xa.T).reshape(b * nB, qB, a * nA)
        V -= JBx[:, :, None]  # J_fᵀ δ
        del JBt
        if eA:  # cov(E_A, ∇_B)[i, j] = −Σ g₁ J_fᵀδ
            out[:, 0, :, oB:] = -(V * g1.T[:, None, :]).reshape(b, nB, qB, a, nA).sum(axis=(1, 4)).transpose(2, 0, 1)
    if not (fA and fB):
        return out
    c1, c2 = coef[2], coef[3]
    # c₁ part, row molecule by row molecule (the temporary stays in cache): Σ_{f∈Bj} S_fᵀ J_f with
    # S_f = Σ_{e∈Ai} c₁(e, f) J_e, a (b nB, d qA) GEMM, then one batched product over the b molecules
    FF = np.empty((a, qA, b, qB))
    JAf = JA.reshape(a, nA, d * qA)
    JBf = JB.reshape(b, nB * d, qB)
    for i in range(a):
        S = (c1[i * nA : (i + 1) * nA].T @ JAf[i]).reshape(b, nB * d, qA)
        FF[i] = np.matmul(S.transpose(0, 2, 1), JBf).transpose(1, 0, 2)
    # c₂ part: Σ_{e,f} c₂ (J_eᵀδ)(J_fᵀδ)ᵀ, one batched product over the (i, j) pairs
    U *= c2[:, None, :]
    Uc = U.reshape(a, nA, qA, b, nB).transpose(0, 3, 2, 1, 4).reshape(a, b, qA, nA * nB)
    Vc = V.reshape(b, nB, qB, a, nA).transpose(3, 0, 4, 1, 2).reshape(a, b, nA * nB, qB)
    FF += np.matmul(Uc, Vc).transpose(0, 2, 1, 3)
    out[:, oA:, :, oB:] = FF
    return out


def transposed_jacobians(X: np.ndarray, J: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Jᵀ (b, n, q, d) C-ordered, Jᵀx (b, n, q)) of stacked environments X (b, n, d), J (b, n, d, q)."""
    Jt = np.ascontiguousarray(J.transpose(0, 1, 3, 2))
    return Jt, np.einsum("bnqd,bnd->bnq", Jt, X)


def gram_matrix(kernel: Kernel, env: Environments, targets: str, rows: np.ndarray,
                diagonal: np.ndarray | None = None, *, lower_only: bool = True) -> np.ndarray:
    """The joint covariance matrix (n_rows, n_rows) of the observations, plus ``diagonal``.

    lower_only : fill only the blocks on or below the diagonal (what the Cholesky factor reads); the
        upper triangle of off-diagonal blocks stays zero.
    """
    if targets == "energy":  # one row per molecule: element-blocked GEMMs and segment sums
        from .local_gram import local_kernel_matrix

        K = local_kernel_matrix(kernel, env)
        if diagonal is not None:
            np.einsum("ii->i", K)[:] += diagonal
        return K
    return grouped_gram_matrix(kernel, env, targets, rows, diagonal, lower_only=lower_only)


def grouped_gram_matrix(kernel: Kernel, env: Environments, targets: str, rows: np.ndarray,
                        diagonal: np.ndarray | None = None, *, lower_only: bool = True,
                        first_molecule: int = 0) -> np.ndarray:
    """:func:`gram_matrix` by batched products over runs of molecules with equal labels (the derivative
    path; for energies alone it is the pre-local_gram path, kept for benchmarks/local_kernel.py).

    first_molecule : only the rows of molecules from this one on, (n_rows − rows[first_molecule], n_rows):
        the new rows when molecules were appended (:meth:`DerivativeKRR.extend`)."""
    n = int(rows[-1])
    top = int(rows[first_molecule])
    K = np.zeros((n - top, n))
    groups = [G[G >= first_molecule] for G in molecule_groups(env)]
    comp = env.compressed()
    d = max([b.rank for b in comp.bases.values()] + [1])
    tasks = []  # (row chunk, column group, column chunk size, same group)
    for gi, GA in enumerate(groups):
        if GA.size == 0:
            continue
        nA = int(env.env_offsets[GA[0] + 1] - env.env_offsets[GA[0]])
        qA = env.Q[GA[0]].shape[1] if targets != "energy" else 1
        for gj, GB in enumerate(molecule_groups(env)[: gi + 1] if lower_only else molecule_groups(env)):
            nB = int(env.env_offsets[GB[0] + 1] - env.env_offsets[GB[0]])
            qB = env.Q[GB[0]].shape[1] if targets != "energy" else 1
            # the largest temporaries are (a nA qA, b nB) twice and, per row molecule, (b nB, d qA)
            per_pair = max(2 * nA * nB * max(qA, qB), nB * d * qA // 8, 1)
            side = max(1, int(np.sqrt(BLOCK_ELEMENTS / per_pair)))
            tasks += [(ca, GB, side, lower_only and gi == gj) for ca in _chunks(GA, side)]

    def run(task):
        ca, GB, side, same = task
        A = stack_elements(comp, ca)  # once per row chunk, reused against every column chunk
        r0, r1 = int(rows[ca[0]]), int(rows[ca[-1] + 1])
        for cb in _chunks(GB, side):
            if same and cb[0] > ca[-1]:
                break
            s0, s1 = int(rows[cb[0]]), int(rows[cb[-1] + 1])
            shape = (len(ca), (r1 - r0) // len(ca), len(cb), (s1 - s0) // len(cb))
            blk = gram_block_elements(kernel, A, stack_elements(comp, cb), shape, targets)
            K[r0 - top : r1 - top, s0:s1] = blk.reshape(r1 - r0, s1 - s0)

    # many small batched products: one BLAS thread per block, the blocks spread over the cores
    # (threaded BLAS on matrices this small mostly waits on its own threads)
    with single_threaded_blas():
        if _N_WORKERS > 1 and len(tasks) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(_N_WORKERS) as pool:
                list(pool.map(run, tasks[::-1]))  # longest rows first
        else:
            for t in tasks:
                run(t)
    if diagonal is not None:
        np.einsum("ii->i", K[:, top:])[:] += diagonal[top:]
    return K


# ------------------------------------------------------------------------------------ the estimator
class DerivativeKRR(BaseEstimator):
    """KRR/GP regression on energies and/or forces of molecules given as environment sets.

    Parameters
    ----------
    kernel : str or Kernel
        A twice-differentiable kernel (Gaussian, Matern) for force targets; σ convention in
        :mod:`molkrr.kernels`.
    sigma : float
        Kernel width.
    lam, lam_forces : float
        Ridge added to the energy rows ([E]²) and to the gradient rows ([E]²/Å²).
    targets : {'energy', 'forces', 'energy+forces'}
    center : bool
        Energies are fitted relative to their mean; with ``targets='forces'`` the offset is always
        fixed afterwards as the mean of E − (model without offset) over the training molecules.

    Fitted attributes (arrays, saved with the model): ``X_`` (n_env, d) training environments,
    ``labels_``, ``alpha_`` (n_env,) each environment's energy weight, ``W_`` (n_env, d) the gradient
    weights pulled back to features (w_f = J_f Q β), ``wdot_`` (n_env,) = x_f·w_f, ``offset_``, and
    ``gp_scale_`` = yᵀ(K + Λ)⁻¹y / n_rows, the GP scale of the predictive std (:mod:`molkrr.uncertainty`;
    absent after :meth:`set_environment_weights`). ``fit`` keeps its Cholesky factor in memory up to
    :data:`molkrr.linalg.KEEP_FACTOR_MAX_BYTES` (never saved).
    """

    def __init__(self, kernel: "str | Kernel" = "gaussian", sigma: float | None = None, lam: float = 1e-8,
                 lam_forces: float = 1e-8, targets: str = "energy+forces", center: bool = True) -> None:
        self.kernel = kernel
        self.sigma = sigma
        self.lam = lam
        self.lam_forces = lam_forces
        self.targets = targets
        self.center = center

    @property
    def kernel_(self) -> Kernel:
        return make_kernel(self.kernel, self.sigma)

    @classmethod
    def model_file_schema(cls) -> Schema:
        """The fields a model file holds for a DerivativeKRR, and their checks (:mod:`molkrr.schema`)."""
        return _model_file_schema()

    def fit(self, env: Environments, energies: np.ndarray | None, gradients: list[np.ndarray] | None,
            *, progress: bool = False, backend: Any = None) -> "DerivativeKRR":
        """Fit on environments (with Jacobians unless targets='energy'), energies (n_mol,) and
        gradients ∇E (one (n_atoms_m, 3) array per molecule, i.e. −forces).

        backend : the compute backend (:mod:`molkrr.backends`) that factorises K + Λ and solves, e.g. torch on
            a GPU (the O(n³) part); None or numpy: here. The Gram matrix is built with numpy either way and
            predictions run on numpy; with another backend the factor comes back to numpy only to be kept for the
            predictive std (when small enough, as on numpy)."""
        targets = check_targets(self.targets)
        kernel = self.kernel_
        if targets != "energy" and not kernel.twice_differentiable:
            raise NotDifferentiableError(
                f"kernel {kernel.name!r} has no second derivatives: force training needs a Gaussian or Matern kernel")
        if targets != "energy" and env.Q is None:
            raise ShapeMismatchError("force targets need the environments' Jacobians (environments(..., jacobians=True))")
        n_mol = len(env)
        if energies is None:
            raise ShapeMismatchError("training energies are needed (they fix the energy offset)")
        energies = np.asarray(energies, dtype=np.float64).reshape(-1)
        if energies.shape[0] != n_mol:
            raise ShapeMismatchError(f"{energies.shape[0]} energies for {n_mol} molecules")
        rows = row_layout(env, targets)
        y, is_energy, offset = observations(env, energies, gradients, targets, rows, self.center)
        diag = np.where(is_energy, float(self.lam), float(self.lam_forces))
        t0 = time.perf_counter()
        self.__dict__.pop(POSTERIOR_KEY, None)  # a refit never reads a stale factor
        if backend is None or getattr(backend, "name", "numpy") == "numpy":
            L, jitter = spd_factor(lambda: gram_matrix(kernel, env, targets, rows, diag), 0.0)
            coef = spd_solve(L, y)
        else:  # the factorisation and solve on the backend (molkrr.backends: one jitter policy, linalg.spd_factor)
            Lb, jitter = backend.spd_factor(lambda: backend.asarray(gram_matrix(kernel, env, targets, rows, diag,
                                                                                  lower_only=False)), 0.0)
            coef = np.ascontiguousarray(backend.to_numpy(backend.spd_solve(Lb, backend.asarray(y))), dtype=np.float64)
            L = np.ascontiguousarray(backend.to_numpy(Lb), dtype=np.float64)
            del Lb
        if progress:
            print(f"derivative KRR: {len(y)} rows solved in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        self._finish(env, rows, y, coef, L, jitter, offset, energies)
        return self

    def _finish(self, env: Environments, rows: np.ndarray, y: np.ndarray, coef: np.ndarray, L: np.ndarray,
                jitter: float, offset: float, energies: np.ndarray) -> None:
        self.set_solution(env, coef, rows, offset=offset, energies=energies)
        # the maximum-likelihood GP scale s² = yᵀ(K + Λ)⁻¹y / n_rows of the predictive std (molkrr.uncertainty)
        self.gp_scale_ = float(y @ coef) / len(y)
        if L.nbytes <= linalg.KEEP_FACTOR_MAX_BYTES:  # kept for the predictive std (molkrr.derivative_uncertainty)
            self.__dict__[POSTERIOR_KEY] = {"key": self._posterior_key(), "L": L, "env": env, "jitter": jitter}

    def kept_factor(self) -> np.ndarray | None:
        """The Cholesky factor of K + Λ this fitted model solved with (lower triangle, C-ordered), when kept."""
        entry = self.__dict__.get(POSTERIOR_KEY)
        if entry is None or not self.posterior_key_matches(entry["key"]):
            return None
        return entry["L"] if "L" in entry else entry["training"].L

    def extend(self, env: Environments, energies: np.ndarray, gradients: list[np.ndarray] | None, *,
               n_previous: int, progress: bool = False) -> "DerivativeKRR":
        """Refit after molecules were appended: ``env``, ``energies``, ``gradients`` cover every molecule, the first
        ``n_previous`` of them the last fit's, in its order (same σ, λ, λ_F, targets).

        The factor the last fit kept (:meth:`kept_factor`) is extended by the new rows, L = [[L₁₁, 0], [L₂₁, L₂₂]]
        with L₂₁ = K₂₁ L₁₁⁻ᵀ and L₂₂ L₂₂ᵀ = K₂₂ + Λ₂ − L₂₁ L₂₁ᵀ: O(n₁² n₂) for n₂ new rows instead of a new
        O(n³) factorisation; the weights equal :meth:`fit`'s to round-off (tested). Without a kept factor,
        or where the Schur complement needs a jitter the old factor lacks, it is :meth:`fit`.
        """
        targets = check_targets(self.targets)
        L11 = self.kept_factor()
        entry = self.__dict__.get(POSTERIOR_KEY) or {}  # 'jitter': what fit added to Λ (absent: none known)
        rows = row_layout(env, targets)
        energies = np.asarray(energies, dtype=np.float64).reshape(-1)
        top = int(rows[n_previous]) if 0 < n_previous <= len(env) else -1
        if L11 is None or L11.shape[0] != top or energies.shape[0] != len(env):
            return self.fit(env, energies, gradients, progress=progress)
        if n_previous == len(env):
            return self
        t0 = time.perf_counter()
        y, is_energy, offset = observations(env, energies, gradients, targets, rows, self.center)
        jitter = float(entry.get("jitter", 0.0))
        diag = np.where(is_energy, float(self.lam), float(self.lam_forces)) + jitter
        B = grouped_gram_matrix(self.kernel_, env, targets, rows, diag, first_molecule=n_previous)  # (n₂, n)
        L21 = linalg.lower_solve(L11, np.ascontiguousarray(B[:, :top].T)).T  # K₂₁ L₁₁⁻ᵀ
        S = B[:, top:]
        S -= L21 @ L21.T  # lower triangle: K₂₂ + Λ₂ − L₂₁L₂₁ᵀ (the Schur complement)
        try:
            L22, extra = spd_factor(lambda: np.ascontiguousarray(S), 0.0)
        except Exception:  # noqa: BLE001 - numerically singular: the full factorisation decides (and warns)
            return self.fit(env, energies, gradients, progress=progress)
        if extra:
            return self.fit(env, energies, gradients, progress=progress)
        n = int(rows[-1])
        L = np.empty((n, n))
        L[:top, :top] = L11
        L[top:, :top] = L21
        L[top:, top:] = L22
        L[:top, top:] = 0.0
        del L21, B, L22
        coef = spd_solve(L, y)
        if progress:
            print(f"derivative KRR: {n - top} rows added to {top} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        self._finish(env, rows, y, coef, L, jitter, offset, energies)
        return self

    def set_solution(self, env: Environments, coef: np.ndarray, rows: np.ndarray, *, offset: float,
                     energies: np.ndarray) -> "DerivativeKRR":
        """Become the model of the solved system: coefficients ``coef`` (n_rows,) of the observations laid out
        by ``rows`` (:func:`row_layout`) over the training environments ``env``, energy offset ``offset``
        (targets='forces': replaced by the mean residual of ``energies`` (n_mol,), as GDML fixes it). The one
        place a fit's weights are set: :meth:`fit` (which then adds the GP scale and its factor for the predictive
        std) and the σ/λ grid of :mod:`molkrr.force_selection`."""
        targets = check_targets(self.targets)
        self.__dict__.pop(POSTERIOR_KEY, None)  # no factor of an earlier fit survives new weights
        self.__dict__.pop("gp_scale_", None)
        self._set_weights(env, coef, rows, targets)
        self.offset_ = offset
        if targets == "forces":  # GDML: the offset is the mean residual of the training energies
            self.offset_ = float(np.mean(energies - self.predict_env(env)))
        return self

    def _posterior_key(self) -> tuple:
        """What a kept factor was built from: it is valid while these are unchanged."""
        return (self.X_, float(self.lam), float(self.lam_forces), self.kernel_, self.targets)

    def posterior_key_matches(self, key: tuple) -> bool:
        """Whether a factor built under ``key`` (:meth:`_posterior_key`) is this fitted model's."""
        now = self._posterior_key()
        return key[0] is now[0] and key[1:] == now[1:]

    def set_environment_weights(self, X: np.ndarray, labels: np.ndarray, alpha: np.ndarray, offset: float) -> "DerivativeKRR":
        """Become the energy model E = offset + Σ_e Σ_f α_f k(x_e, x_f) over environments f (X (n_f, d), labels,
        α (n_f,)): the hook through which other solvers (molkrr.solvers.sparse_local) hand over their
        result. Only for targets='energy'."""
        if check_targets(self.targets) != "energy":
            raise InvalidInputError("set_environment_weights makes an energy model: targets must be 'energy'")
        X = np.ascontiguousarray(X, dtype=np.float64)
        self.X_ = X
        self.labels_ = np.asarray(labels, dtype=np.int64).copy()
        self.alpha_ = np.asarray(alpha, dtype=np.float64).reshape(-1).copy()
        if not (self.labels_.shape == self.alpha_.shape == (X.shape[0],)):
            raise ShapeMismatchError(f"{X.shape[0]} environments, {self.labels_.shape} labels, {self.alpha_.shape} weights")
        self.W_ = np.zeros_like(X)
        self.wdot_ = np.zeros(X.shape[0])
        self.offset_ = float(offset)
        self._prediction_cache = None
        self.__dict__.pop(POSTERIOR_KEY, None)
        self.__dict__.pop("gp_scale_", None)  # weights from another solver: no exact GP posterior
        return self

    def _set_weights(self, env: Environments, coef: np.ndarray, rows: np.ndarray, targets: str) -> None:
        d = env.X.shape[1]
        alpha = np.zeros(env.X.shape[0])
        W = np.zeros((env.X.shape[0], d))
        for m in range(len(env)):
            r = int(rows[m])
            s = env.env_slice(m)
            if targets != "forces":
                alpha[s] = coef[r]
                r += 1
            if targets != "energy":
                beta = coef[r : int(rows[m + 1])]
                if env.J is not None:
                    W[s] = env.J[m] @ beta  # (n_env_m, d)
                else:  # Jacobians released: w = B (C β), element by element
                    comp = env.compressed()
                    labels = env.labels[s]
                    for z, basis in comp.bases.items():
                        loc = np.flatnonzero(labels == z)
                        if loc.size:
                            W[s.start + loc] = basis.lift(comp.C[z][m] @ beta)
        self.X_ = env.X.copy()
        self.labels_ = env.labels.copy()
        self.alpha_ = alpha
        self.W_ = W
        self.wdot_ = np.einsum("ij,ij->i", env.X, W)
        self._prediction_cache = None

    # -------------------------------------------------------------------------------- prediction
    def predict_env(self, env: Environments) -> np.ndarray:
        """Energies (n_mol,) of molecules given as environments."""
        return _per_molecule(env, self._evaluate(env.X, env.labels, gradient=False)[0]) + self.offset_

    def predict_env_with_gradient(self, env: Environments) -> tuple[np.ndarray, np.ndarray]:
        """(energies (n_mol,), ∂E/∂x_e (n_env, d))."""
        e, G = self._evaluate(env.X, env.labels, gradient=True)
        return _per_molecule(env, e) + self.offset_, G

    def _evaluate(self, Xq: np.ndarray, labq: np.ndarray, gradient: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Per query environment: its energy contribution (n_q,) and optionally ∂/∂x_e (n_q, d)."""
        check_is_fitted(self)
        if Xq.shape[0] <= SMALL_QUERY_ROWS and self._training_elements() <= SMALL_MODEL_ELEMENTS:
            # one frame against a small model: thin products, fastest on one BLAS thread
            with single_threaded_blas():
                return self._evaluate_blocks(Xq, labq, gradient)
        if Xq.shape[0] <= SMALL_QUERY_ROWS or (
                isinstance(self.kernel_, StationaryKernel) and not self._has_gradient_weights()):
            return self._evaluate_blocks(Xq, labq, gradient)  # (the energy-weight path blocks its queries itself)
        # many queries: blocks of query rows bound the (rows, n_train) temporaries
        step = max(SMALL_QUERY_ROWS, BLOCK_ELEMENTS // (2 * max(1, int(np.bincount(self.labels_).max()))))
        if Xq.shape[0] <= step:
            return self._evaluate_blocks(Xq, labq, gradient)
        e = np.empty(Xq.shape[0])
        G = np.empty_like(Xq) if gradient else None
        for s in range(0, Xq.shape[0], step):
            t = min(s + step, Xq.shape[0])
            e[s:t], g = self._evaluate_blocks(Xq[s:t], labq[s:t], gradient)
            if gradient:
                G[s:t] = g
        return e, G

    def _training_elements(self) -> int:
        """Coordinates a query reads: Σ over elements of rows × rank (X_.size before the first prediction)."""
        cache = getattr(self, "_prediction_cache", None)
        if cache is None:
            return int(self.X_.size)
        return sum(int(m.cols.size) for m in cache[1].values())

    def _element_models(self) -> dict[int, "_ElementModel"]:
        """Per element, the training environments in exact coordinates of span{x_f − μ, w_f} (built once)."""
        key = (id(self.X_), id(self.W_), id(self.alpha_), id(self.labels_))
        cache = getattr(self, "_prediction_cache", None)
        if cache is not None and cache[0] == key:
            return cache[1]
        models = {}
        has_f = bool(np.any(self.W_))
        with single_threaded_blas():  # the same bits whichever call builds it (a loaded model predicts as the original)
            for z in np.unique(self.labels_).tolist():
                models[z] = self._element_model(z, has_f)
        self._prediction_cache = (key, models)
        return models

    def _element_model(self, z: int, has_f: bool) -> "_ElementModel":
        ti = np.flatnonzero(self.labels_ == z)
        Xz, Wz = self.X_[ti], self.W_[ti]
        basis = fit_element_basis(Xz, (lambda: iter([Wz])) if has_f else None)
        P = basis.coordinates(Xz)
        rows = np.concatenate([P, basis.project_rows(Wz)]) if has_f else P
        return _ElementModel(basis, np.ascontiguousarray(rows.T), np.einsum("ij,ij->i", P, P), self.alpha_[ti].copy(),
                             np.einsum("ij,ij->i", P, rows[len(ti):]) if has_f else None)

    def _evaluate_blocks(self, Xq: np.ndarray, labq: np.ndarray, gradient: bool) -> tuple[np.ndarray, np.ndarray | None]:
        kernel = self.kernel_
        if isinstance(kernel, StationaryKernel) and self._has_gradient_weights():
            return self._evaluate_stationary(kernel, Xq, labq, gradient)
        if isinstance(kernel, StationaryKernel):
            # energy-trained models: the features themselves (an element basis keeps ~3/4 of FCHL19's
            # dimensions on QM9 and costs a QR per element: measured slower, docs/local-kernels.md)
            return self._evaluate_energy_weights(kernel, Xq, labq, gradient)
        return self._evaluate_raw(kernel, Xq, labq, gradient)

    def _energy_elements(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Per element (training rows on their non-zero columns (n_T, d_z), those columns, ‖x_f‖², α_f), built once."""
        key = (id(self.X_), id(self.alpha_), id(self.labels_))
        cache = self.__dict__.get("_energy_cache")
        if cache is not None and cache[0] == key:
            return cache[1]
        out = {}
        for z in np.unique(self.labels_).tolist():
            Tz = self.X_[self.labels_ == z]
            cols = np.flatnonzero(np.any(Tz != 0.0, axis=0))
            out[z] = (np.ascontiguousarray(Tz[:, cols]), cols, np.einsum("ij,ij->i", Tz, Tz),
                      self.alpha_[self.labels_ == z].copy())
        self.__dict__["_energy_cache"] = (key, out)
        return out

    def _evaluate_energy_weights(self, kernel: StationaryKernel, Xq: np.ndarray, labq: np.ndarray,
                                 gradient: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`_evaluate` of a model without gradient weights (energy targets): per element,
        ‖x − x_f‖² = ‖x‖² + ‖x_f‖² − 2 x·x_f over the columns where training rows are non-zero, E_e =
        Σ_f α_f k and ∂E/∂x_e = Σ_f α_f g₁ (x_e − x_f)."""
        s2 = kernel.checked_sigma() ** 2
        e = np.zeros(Xq.shape[0])
        G = np.zeros_like(Xq) if gradient else None
        elements = self._energy_elements()
        tasks = []  # (element, query rows): blocks of query rows bound the (rows, n_T) temporaries
        for z, (Tz, _, _, _) in elements.items():
            qi = np.flatnonzero(labq == z)
            step = max(1, BLOCK_ELEMENTS // (4 * max(1, Tz.shape[0])))
            tasks += [(z, qi[i : i + step]) for i in range(0, qi.size, step)]

        def run(task):
            z, qi = task
            Tz, cols, tt, a = elements[z]
            Xz = Xq[qi]
            u = squared_distances_on(Xz, Tz, np.einsum("ij,ij->i", Xz, Xz), tt, cols)
            u *= 1.0 / s2
            prof = kernel.profile(u, 1 if gradient else 0)
            e[qi] = prof[0] @ a
            if gradient:
                P = prof[1] * ((2.0 / s2) * a[None, :])  # α_f g₁
                Gz = Xz * P.sum(axis=1)[:, None]
                Gz[:, cols] -= P @ Tz
                G[qi] = Gz

        _run_parallel(run, tasks, small=Xq.shape[0] <= SMALL_QUERY_ROWS)
        return e, G

    def _has_gradient_weights(self) -> bool:
        """Whether any W_ is non-zero (force targets), computed once per fitted W_."""
        cached = self.__dict__.get("_has_w")
        if cached is None or cached[0] is not self.W_:
            cached = (self.W_, bool(np.any(self.W_)))
            self.__dict__["_has_w"] = cached
        return cached[1]

    def _evaluate_raw(self, kernel: Kernel, Xq: np.ndarray, labq: np.ndarray,
                      gradient: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`_evaluate` from the stored features (any kernel): one pair_coefficients per element."""
        has_f = self._has_gradient_weights()
        e = np.zeros(Xq.shape[0])
        G = np.zeros_like(Xq) if gradient else None
        for z in np.unique(labq):
            qi = np.flatnonzero(labq == z)
            ti = np.flatnonzero(self.labels_ == z)
            if ti.size == 0:
                continue
            Xz, Tz, a, Wz = Xq[qi], self.X_[ti], self.alpha_[ti], self.W_[ti]
            order = 2 if (gradient and has_f) else (1 if (gradient or has_f) else 0)
            coef = pair_coefficients(kernel, Xz, Tz, labq[qi], self.labels_[ti], order)
            ez = coef[0] @ a
            if has_f:
                dw = Xz @ Wz.T - self.wdot_[ti][None, :]  # δ·w_f
                ez -= np.einsum("ij,ij->i", coef[1], dw)
            e[qi] = ez
            if gradient:
                P = coef[1] * a[None, :]  # α_f g₁
                if has_f:
                    P += coef[3] * dw  # c₂ (δ·w)
                Gz = Xz * P.sum(axis=1)[:, None] - P @ Tz
                if has_f:
                    Gz += coef[2] @ Wz
                G[qi] = Gz
        return e, G


    def _evaluate_stationary(self, kernel: StationaryKernel, Xq: np.ndarray, labq: np.ndarray,
                             gradient: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`_evaluate` for a kernel of u = ‖x − x_f‖²/σ², element by element in exact coordinates:
        p = Bᵀ(x − μ) and the residual ρ = (x − μ) − Bp give ‖x − x_f‖² = ‖p − p_f‖² + ‖ρ‖² and
        δ·w_f = (p − p_f)·ω_f (w_f = Bω_f); the gradient is B(∂E/∂p) + ρ Σ_f P_f. Two GEMMs per element."""
        s2 = kernel.checked_sigma() ** 2
        e = np.zeros(Xq.shape[0])
        G = np.zeros_like(Xq) if gradient else None
        models = self._element_models()
        for z in np.unique(labq).tolist():
            mz = models.get(z)
            if mz is None:
                continue
            qi = np.flatnonzero(labq == z)
            nT = mz.alpha.shape[0]
            has_f = mz.pw is not None
            pq = mz.basis.coordinates(Xq[qi])
            rho = mz.basis.residuals(Xq[qi], pq)
            Y = pq @ mz.cols  # [p·p_f | p·ω_f]  (n_q, nT or 2 nT)
            u = Y[:, :nT] * -2.0
            u += np.einsum("ij,ij->i", pq, pq)[:, None] + np.einsum("ij,ij->i", rho, rho)[:, None]
            u += mz.pp[None, :]
            np.maximum(u, 0.0, out=u)
            u *= 1.0 / s2
            order = 2 if (gradient and has_f) else (1 if (gradient or has_f) else 0)
            prof = kernel.profile(u, order)
            e[qi] = prof[0] @ mz.alpha
            if has_f:
                g1 = prof[1] * (2.0 / s2)
                dw = Y[:, nT:] - mz.pw[None, :]  # δ·w_f
                e[qi] -= np.einsum("ij,ij->i", g1, dw)
            if gradient:
                P = prof[1] * ((2.0 / s2) * mz.alpha[None, :])  # α_f g₁
                if has_f:
                    P += prof[2] * (-4.0 / s2**2) * dw  # c₂ (δ·w)
                    coef = np.concatenate([-P, prof[1] * (-2.0 / s2)], axis=1)  # [−P | c₁]
                else:
                    coef = -P
                sP = P.sum(axis=1)
                Gp = coef @ mz.cols.T + pq * sP[:, None]  # ∂E/∂p = Σ_f P_f (p − p_f) + c₁ ω_f
                rho *= sP[:, None]
                rho[:, mz.basis.active] += Gp @ mz.basis.basis.T
                G[qi] = rho
        return e, G


@dataclass
class _ElementModel:
    """One element's training environments for prediction: basis, cols = [P; Ω]ᵀ (r, (1 or 2) n_T) (this
    layout was measured fastest for the two thin GEMMs of one frame),
    pp = ‖p_f‖², alpha (n_T,), pw = p_f·ω_f (or None without gradient weights)."""

    basis: ElementBasis
    cols: np.ndarray
    pp: np.ndarray
    alpha: np.ndarray
    pw: np.ndarray | None


def _run_parallel(run: Any, tasks: list, *, small: bool = False) -> None:
    """run(task) for every task: spread over the cores with one BLAS thread each (the elementwise kernel
    work runs in parallel too); in the calling thread when there is one task or ``small``."""
    if small:
        for t in tasks:
            run(t)
        return
    for _ in map_in_threads(run, tasks):
        pass


def _per_molecule(env: Environments, e: np.ndarray) -> np.ndarray:
    """Sum per-environment values (n_env,) into their molecules (n_mol,)."""
    mol = np.repeat(np.arange(len(env)), np.diff(env.env_offsets))
    return np.bincount(mol, weights=e, minlength=len(env))


def training_environments(rep: Any, mols: Molecules, targets: str) -> tuple[Environments, list[np.ndarray] | None]:
    """(environments with released Jacobians when forces are trained, gradients ∇E = −F per molecule or None)."""
    grads = None
    if targets != "energy":
        if mols.forces is None:
            raise ShapeMismatchError(f"targets={targets!r} needs training forces: these molecules carry none")
        grads = [-f for f in mols.split_atoms(mols.forces)]
    env = environments(rep, mols, jacobians=targets != "energy")
    env.release_jacobians()  # 1.1 GB → 0.3 GB for 1,000 ethanol frames, before the Gram matrix is built
    return env, grads


def fit_molecules(rep: Any, mols: Molecules, *, kernel: "str | Kernel", sigma: float, lam: float, lam_forces: float,
                  targets: str, center: bool = True, energies: np.ndarray | None = None,
                  progress: bool = False, backend: Any = None) -> DerivativeKRR:
    """A fitted :class:`DerivativeKRR` on molecules (energies and forces from ``mols`` unless given); ``backend``
    factorises and solves (:meth:`DerivativeKRR.fit`)."""
    targets = check_targets(targets)
    y = mols.energies if energies is None else energies
    env, grads = training_environments(rep, mols, targets)
    return DerivativeKRR(kernel, sigma, lam, lam_forces, targets, center).fit(env, y, grads, progress=progress,
                                                                               backend=backend)


def predict_energies_and_forces(rep: Any, model: DerivativeKRR, mols: Molecules) -> tuple[np.ndarray, list[np.ndarray]]:
    """(energies (n_mol,), forces per molecule (n_atoms, 3)) of a fitted DerivativeKRR."""
    env = environments(rep, mols)
    E, G = model.predict_env_with_gradient(env)
    if not is_local(rep):
        G = G.reshape(len(mols), -1)
    return E, [-g for g in rep.vjp(mols, G)]


def predict_energies(rep: Any, model: DerivativeKRR, mols: Molecules) -> np.ndarray:
    return model.predict_env(environments(rep, mols))


__all__ = ["TARGETS", "DerivativeKRR", "Environments", "environments", "fit_molecules", "gram_block", "gram_matrix",
           "is_local", "predict_energies", "predict_energies_and_forces", "rigid_complement", "training_environments"]


# ------------------------------------------------------------------------------------ model files
def _check_labels(labels, where, node) -> None:
    n = node.dims["n"]
    if labels.shape != (n,):
        raise fail(where, f"must hold one label per environment ({n}), got shape {labels.shape}")


def _model_file_schema() -> Schema:
    """Consistent, finite environments and weights; anything else the model keeps: finite numbers only."""
    from .kernels import KernelField

    return Schema(
        params={"kernel": KernelField(), "sigma": Sigma(none_ok=True), "lam": Number(lo=0.0),
                "lam_forces": Number(lo=0.0, none_ok=True), "targets": Choice(TARGETS), "center": Bool()},
        fitted={
            "X_": FloatArray(2, dims=("n", "d"), max_abs=MAX_ABS_FEATURE),
            "alpha_": FloatArray(1, dims=("n",), max_abs=MAX_ABS_COEFFICIENT),
            "W_": FloatArray(2, dims=("n", "d"), max_abs=MAX_ABS_COEFFICIENT),
            "wdot_": FloatArray(1, dims=("n",), max_abs=MAX_ABS_COEFFICIENT),
            "labels_": IntArray(0, 118, then=_check_labels),
            "offset_": Number(max_abs=MAX_ABS_COEFFICIENT),
            "gp_scale_": Number(lo=0.0, required=False),  # absent in files written before the predictive std
        },
        extra=Finite(),
    )
