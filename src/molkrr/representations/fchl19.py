"""FCHL19 (FCHL-ACSF) representation with an analytic vector–Jacobian product.

The definition is that of Christensen, Bratholm, Faber & von Lilienfeld, J. Chem. Phys. 152,
044107 (2020), with the conventions (and defaults) of qmllib's ``generate_fchl19``; values and
Jacobians agree with it to rounding. Only the default element list differs: ``[1, 6, 7, 8, 9]``
(H, C, N, O, F — QM9) instead of qmllib's ``[1, 6, 7, 8, 16]``.

Definition (distances r in Å, ``elements`` indexed e = 0..n_el−1)
-----------------------------------------------------------------
Per atom i the feature vector has n_el·nRs2 two-body entries followed by
n_el(n_el+1)/2 · nRs3 · 2nFourier three-body entries.

Two-body, for every neighbour j with r = r_ij ≤ rcut, added to block e(Z_j) of atom i::

    x[e_j·nRs2 + k] += f_c(r; rcut) r^(−two_body_decay) LogNormal(Rs2_k; μ(r), σ(r))
    σ² = ln(1 + eta2/r²),  μ = ln r − σ²/2,  LogNormal(x; μ, σ) = exp(−(ln x − μ)²/(2σ²)) / (x σ √(2π))
    f_c(r; c) = (cos(π r / c) + 1) / 2,  Rs2 = linspace(0, rcut, nRs2 + 1)[1:]

Three-body, for every unordered pair {j, k} of neighbours of i with r_ij, r_ik ≤ acut (r_jk is not
cut), added to the block of the element pair (p, q) = (min, max)(e_j, e_k), whose index is
n_el·p − p(p+1)/2 + q::

    x[off + l·2nFourier + a] += A_a(θ_i) R_l((r_ij + r_ik)/2) f_c(r_ij; acut) f_c(r_ik; acut) ATM
    R_l(s) = exp(−eta3 (s − Rs3_l)²),  Rs3 = linspace(0, acut, nRs3 + 1)[1:]
    A_2m = 2 exp(−(ζ o)²/2) cos(o θ_i),  A_2m+1 = 2 exp(−(ζ o)²/2) sin(o θ_i),  o = 2m + 1
    ATM = w (1 + 3 cos θ_i cos θ_j cos θ_k) / (r_ij r_ik r_jk)^three_body_decay,
    w = three_body_weight · √(eta3/π)

θ_i is the angle j–i–k; θ_j, θ_k are the other two angles of the triangle.

Forms
-----
``form='global'`` (default) sums the atomic vectors over the atoms of each molecule: X has shape
(n_molecules, n_features_), n_features_ = 720 for five elements with the default sizes. This is the
form :class:`~molkrr.model.MolecularKRR` and the force path use.

``form='atomic'`` keeps one row per atom: ``transform`` returns (n_total_atoms, n_features_) whose
rows ``molecules.offsets[i]:molecules.offsets[i+1]`` belong to molecule i (the same flat layout as
``Molecules.positions``); ``vjp`` takes G of that same shape; ``jacobian`` returns, per molecule,
(n_atoms_i, n_features_, n_atoms_i, 3) = ∂x_a/∂R (qmllib's ``gradients=True`` layout).

Derivatives
-----------
Every term is a function of the three distances of its triangle (cosines by the law of cosines),
so each triplet needs only three scalar derivatives. The VJP contracts G with the basis functions
first (∂E/∂A, ∂E/∂R, ∂E/∂ATM as scalars) and never forms a Jacobian. At an exactly linear triplet
sin θ is not differentiable; like qmllib, 1/sin θ is bounded there (|r_ij × r_ik| ≥ 1e−5 Å²).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit
from sklearn.exceptions import NotFittedError

from .._validation import check_choice, check_finite, check_int, check_positive
from ..errors import InvalidInputError, ShapeMismatchError, UnknownElementError
from ..molecules import MAX_ATOMIC_NUMBER, Molecules, as_molecules
from ..schema import Int, IntArray, Schema, fail
from .base import Representation
from .registry import register_representation

__all__ = ["FCHL19"]

_PI = math.pi
_SQRT_2PI = math.sqrt(2.0 * math.pi)
#: lower bound of |r_ij × r_ik|² (Å⁴) where 1/sin θ appears (qmllib uses the same bound)
_MIN_CROSS2 = 1e-10
_PARAM_NAMES = ("nRs2", "nRs3", "nFourier", "eta2", "eta3", "zeta", "rcut", "acut", "two_body_decay",
                "three_body_decay", "three_body_weight")


# ---------------------------------------------------------------------------------------- kernels
@njit(cache=True)
def _distances(pos, start, n, D):
    """Fill D[:n, :n] with the interatomic distances of atoms pos[start:start+n]."""
    for a in range(n):
        D[a, a] = 0.0
        for b in range(a + 1, n):
            dx = pos[start + b, 0] - pos[start + a, 0]
            dy = pos[start + b, 1] - pos[start + a, 1]
            dz = pos[start + b, 2] - pos[start + a, 2]
            r = math.sqrt(dx * dx + dy * dy + dz * dz)
            D[a, b] = r
            D[b, a] = r


@njit(cache=True, inline="always")
def _two_body(r, Rs2, logRs2, eta2, rcut, decay2, val, der, with_der):
    """Two-body basis at distance r: val[k]; if with_der also der[k] = d val[k] / dr."""
    s2 = math.log(1.0 + eta2 / (r * r))
    sig = math.sqrt(s2)
    mu = math.log(r) - 0.5 * s2
    x = _PI * r / rcut
    fc = 0.5 * (math.cos(x) + 1.0)
    scale = r ** (-decay2)
    norm = 1.0 / (sig * _SQRT_2PI)
    pref = fc * scale * norm
    dpref = 0.0
    dsig = 0.0
    dmu = 0.0
    if with_der:
        dfc = -0.5 * _PI / rcut * math.sin(x)
        dsig = -eta2 / (sig * r * (r * r + eta2))
        dmu = (1.0 + eta2 / (r * r + eta2)) / r
        dpref = norm * scale * (dfc - fc * decay2 / r) - pref * dsig / sig
    for k in range(Rs2.shape[0]):
        t = logRs2[k] - mu
        h = math.exp(-0.5 * t * t / s2) / Rs2[k]
        val[k] = pref * h
        if with_der:
            der[k] = dpref * h + pref * h * (t * dmu / s2 + t * t * dsig / (s2 * sig))


@njit(cache=True)
def _pair_tables(D, n, acut, decay3, FC, DFC, PW, IV):
    """Per pair: three-body cutoff f_c(r; acut), its derivative, r^(−three_body_decay) and 1/r."""
    for a in range(n):
        for b in range(a + 1, n):
            r = D[a, b]
            IV[a, b] = IV[b, a] = 1.0 / r
            x = _PI * r / acut
            FC[a, b] = FC[b, a] = 0.5 * (math.cos(x) + 1.0)
            DFC[a, b] = DFC[b, a] = -0.5 * _PI / acut * math.sin(x)
            PW[a, b] = PW[b, a] = r ** (-decay3)


@njit(cache=True, inline="always")
def _radial3(s, Rs3, eta3, R, dR, recurrence, ratio_step, with_der):
    """R[l] = exp(−eta3 (s − Rs3[l])²) and, with with_der, dR[l] = dR[l]/ds.

    With ``recurrence`` (Rs3 equally spaced, no underflow possible) two exponentials suffice:
    R[l+1] = R[l] q_l with q_{l+1} = q_l · exp(−2 eta3 Δ²).
    """
    nR3 = Rs3.shape[0]
    if recurrence and nR3 > 1:
        delta = Rs3[1] - Rs3[0]
        t = s - Rs3[0]
        r = math.exp(-eta3 * t * t)
        q = math.exp(eta3 * delta * (2.0 * t - delta))
        for l in range(nR3):
            R[l] = r
            r *= q
            q *= ratio_step
    else:
        for l in range(nR3):
            t = s - Rs3[l]
            R[l] = math.exp(-eta3 * t * t)
    if with_der:
        for l in range(nR3):
            dR[l] = -2.0 * eta3 * (s - Rs3[l]) * R[l]


@njit(cache=True, inline="always")
def _triplet(pos, s0, i, j, k, D, FC, DFC, PW, IV, Rs3, eta3, ang_pref, decay3, weight, recurrence, ratio_step,
             R, A, dR, dA, with_der):
    """Basis of one triplet (centre i; neighbours j, k; molecule-local indices, atoms start at s0).

    Fills R (nRs3,) and A (2 nFourier,) and returns (F, derivatives): F = f_c f_c ATM. With
    with_der, dR = dR/ds, dA = dA/dcos θ_i and the returned tuple also holds
    dF/dr_ij, dF/dr_ik, dF/dr_jk and dcos θ_i/dr_ij, /dr_ik, /dr_jk.
    """
    gi = s0 + i
    gj = s0 + j
    gk = s0 + k
    rij = D[i, j]
    rik = D[i, k]
    rjk = D[j, k]
    ux = pos[gj, 0] - pos[gi, 0]
    uy = pos[gj, 1] - pos[gi, 1]
    uz = pos[gj, 2] - pos[gi, 2]
    vx = pos[gk, 0] - pos[gi, 0]
    vy = pos[gk, 1] - pos[gi, 1]
    vz = pos[gk, 2] - pos[gi, 2]
    dot = ux * vx + uy * vy + uz * vz
    cx = uy * vz - uz * vy
    cy = uz * vx - ux * vz
    cz = ux * vy - uy * vx
    cross2 = cx * cx + cy * cy + cz * cz
    iij = IV[i, j]
    iik = IV[i, k]
    ijk = IV[j, k]
    rr = rij * rik
    inv_rr = iij * iik
    ci = dot * inv_rr
    cj = (rij * rij - dot) * (iij * ijk)
    ck = (rik * rik - dot) * (iik * ijk)
    cc = min(1.0, max(-1.0, ci))
    sn = min(1.0, math.sqrt(cross2) * inv_rr)
    # cos(oθ) = T_o(cos θ), sin(oθ) = sin θ U_{o-1}(cos θ), odd o = 1, 3, 5, ...
    nF = ang_pref.shape[0]
    t_prev = 1.0  # T_0
    t_cur = cc  # T_1
    u_prev = 0.0  # U_{-1}
    u_cur = 1.0  # U_0
    inv_sin = 0.0
    if with_der:
        inv_sin = rr / math.sqrt(max(_MIN_CROSS2, cross2))
    for m in range(nF):
        if m > 0:
            for _ in range(2):
                t_next = 2.0 * cc * t_cur - t_prev
                t_prev = t_cur
                t_cur = t_next
                u_next = 2.0 * cc * u_cur - u_prev
                u_prev = u_cur
                u_cur = u_next
        o = 2 * m + 1
        w = 2.0 * ang_pref[m]
        A[2 * m] = w * t_cur
        A[2 * m + 1] = w * sn * u_cur
        if with_der:
            dA[2 * m] = w * o * u_cur  # d cos(oθ)/d cos θ = o U_{o-1}
            dA[2 * m + 1] = -w * o * t_cur * inv_sin  # d sin(oθ)/d cos θ = −o cos(oθ)/sin θ
    _radial3(0.5 * (rij + rik), Rs3, eta3, R, dR, recurrence, ratio_step, with_der)
    fij = FC[i, j]
    fik = FC[i, k]
    P = PW[i, j] * PW[i, k] * PW[j, k]
    atm = weight * (1.0 + 3.0 * ci * cj * ck) * P
    F = fij * fik * atm
    if not with_der:
        return F, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    # law-of-cosines partials of the three cosines
    dci_ij = rjk * cj * inv_rr
    dci_ik = rjk * ck * inv_rr
    dci_jk = -rjk * inv_rr
    dcj_ij = rik * ci * (iij * ijk)
    dcj_ik = -rik * (iij * ijk)
    dcj_jk = rik * ck * (iij * ijk)
    dck_ij = -rij * (iik * ijk)
    dck_ik = rij * ci * (iik * ijk)
    dck_jk = rij * cj * (iik * ijk)
    w3P = 3.0 * weight * P
    datm_ij = w3P * (dci_ij * cj * ck + ci * dcj_ij * ck + ci * cj * dck_ij) - decay3 * atm * iij
    datm_ik = w3P * (dci_ik * cj * ck + ci * dcj_ik * ck + ci * cj * dck_ik) - decay3 * atm * iik
    datm_jk = w3P * (dci_jk * cj * ck + ci * dcj_jk * ck + ci * cj * dck_jk) - decay3 * atm * ijk
    ff = fij * fik
    dF_ij = DFC[i, j] * fik * atm + ff * datm_ij
    dF_ik = fij * DFC[i, k] * atm + ff * datm_ik
    dF_jk = ff * datm_jk
    return F, dF_ij, dF_ik, dF_jk, dci_ij, dci_ik, dci_jk


@njit(cache=True, inline="always")
def _pair_block(p, q, n_el):
    if p > q:
        p, q = q, p
    return n_el * p - (p * (p + 1)) // 2 + q


@njit(cache=True, inline="always")
def _neighbours(D, i, n, cut, nb):
    cnt = 0
    for j in range(n):
        if j != i and D[i, j] <= cut:
            nb[cnt] = j
            cnt += 1
    return cnt


@njit(cache=True, inline="always")
def _scatter_triplet(grad, pos, gi, gj, gk, iij, iik, ijk, g_ij, g_ik, g_jk):
    """Add ∂E/∂R from ∂E/∂r_ij, ∂E/∂r_ik, ∂E/∂r_jk (and the inverse distances) to rows gi, gj, gk of grad."""
    a = g_ij * iij
    b = g_ik * iik
    c_ = g_jk * ijk
    for c in range(3):
        dij = pos[gj, c] - pos[gi, c]
        dik = pos[gk, c] - pos[gi, c]
        djk = pos[gk, c] - pos[gj, c]
        grad[gj, c] += a * dij - c_ * djk
        grad[gk, c] += b * dik + c_ * djk
        grad[gi, c] -= a * dij + b * dik


@njit(cache=True)
def _fchl19_values(eidx, pos, offsets, rows, out, n_el, Rs2, Rs3, eta2, eta3, ang_pref, rcut, acut, decay2,
                   decay3, weight, recurrence, ratio_step):
    """out[rows[a]] += atomic FCHL19 vector of atom a, for every atom of every molecule."""
    n_mol = offsets.shape[0] - 1
    nR2 = Rs2.shape[0]
    nR3 = Rs3.shape[0]
    nab = 2 * ang_pref.shape[0]
    nmax = 1
    for m in range(n_mol):
        nmax = max(nmax, offsets[m + 1] - offsets[m])
    D = np.empty((nmax, nmax))
    FC = np.empty((nmax, nmax))
    DFC = np.empty((nmax, nmax))
    PW = np.empty((nmax, nmax))
    IV = np.empty((nmax, nmax))
    nb = np.empty(nmax, dtype=np.int64)
    logRs2 = np.log(Rs2)
    rad = np.empty(nR2)
    R = np.empty(nR3)
    A = np.empty(nab)
    dummy = np.empty(max(nR2, nR3, nab))
    off3 = n_el * nR2
    blk3 = nR3 * nab
    for m in range(n_mol):
        s0 = offsets[m]
        n = offsets[m + 1] - s0
        _distances(pos, s0, n, D)
        _pair_tables(D, n, acut, decay3, FC, DFC, PW, IV)
        for i in range(n):
            for j in range(i + 1, n):
                r = D[i, j]
                if r <= rcut:
                    _two_body(r, Rs2, logRs2, eta2, rcut, decay2, rad, dummy, False)
                    bi = eidx[s0 + j] * nR2
                    bj = eidx[s0 + i] * nR2
                    ri = rows[s0 + i]
                    rj = rows[s0 + j]
                    for k in range(nR2):
                        out[ri, bi + k] += rad[k]
                        out[rj, bj + k] += rad[k]
        for i in range(n):
            cnt = _neighbours(D, i, n, acut, nb)
            row = rows[s0 + i]
            for a in range(cnt):
                j = nb[a]
                for b in range(a + 1, cnt):
                    k = nb[b]
                    F = _triplet(pos, s0, i, j, k, D, FC, DFC, PW, IV, Rs3, eta3, ang_pref, decay3, weight, recurrence,
                                 ratio_step, R, A, dummy, dummy, False)[0]
                    base = off3 + _pair_block(eidx[s0 + j], eidx[s0 + k], n_el) * blk3
                    for l in range(nR3):
                        RF = R[l] * F
                        z = base + l * nab
                        for c in range(nab):
                            out[row, z + c] += A[c] * RF


@njit(cache=True)
def _fchl19_vjp(eidx, pos, offsets, rows, G, grad, n_el, Rs2, Rs3, eta2, eta3, ang_pref, rcut, acut, decay2,
                decay3, weight, recurrence, ratio_step):
    """grad[a] += Σ_rows G[row] · ∂x_row/∂R_a, accumulated pair by pair and triplet by triplet."""
    n_mol = offsets.shape[0] - 1
    nR2 = Rs2.shape[0]
    nR3 = Rs3.shape[0]
    nab = 2 * ang_pref.shape[0]
    nmax = 1
    for m in range(n_mol):
        nmax = max(nmax, offsets[m + 1] - offsets[m])
    D = np.empty((nmax, nmax))
    FC = np.empty((nmax, nmax))
    DFC = np.empty((nmax, nmax))
    PW = np.empty((nmax, nmax))
    IV = np.empty((nmax, nmax))
    nb = np.empty(nmax, dtype=np.int64)
    logRs2 = np.log(Rs2)
    rad = np.empty(nR2)
    drad = np.empty(nR2)
    R = np.empty(nR3)
    dR = np.empty(nR3)
    A = np.empty(nab)
    dA = np.empty(nab)
    off3 = n_el * nR2
    blk3 = nR3 * nab
    for m in range(n_mol):
        s0 = offsets[m]
        n = offsets[m + 1] - s0
        _distances(pos, s0, n, D)
        _pair_tables(D, n, acut, decay3, FC, DFC, PW, IV)
        for i in range(n):
            for j in range(i + 1, n):
                r = D[i, j]
                if r <= rcut:
                    _two_body(r, Rs2, logRs2, eta2, rcut, decay2, rad, drad, True)
                    bi = eidx[s0 + j] * nR2
                    bj = eidx[s0 + i] * nR2
                    ri = rows[s0 + i]
                    rj = rows[s0 + j]
                    g = 0.0
                    for k in range(nR2):
                        g += (G[ri, bi + k] + G[rj, bj + k]) * drad[k]
                    for c in range(3):
                        e = (pos[s0 + j, c] - pos[s0 + i, c]) / r
                        grad[s0 + j, c] += g * e
                        grad[s0 + i, c] -= g * e
        for i in range(n):
            cnt = _neighbours(D, i, n, acut, nb)
            row = rows[s0 + i]
            for a in range(cnt):
                j = nb[a]
                for b in range(a + 1, cnt):
                    k = nb[b]
                    F, dF_ij, dF_ik, dF_jk, dci_ij, dci_ik, dci_jk = _triplet(
                        pos, s0, i, j, k, D, FC, DFC, PW, IV, Rs3, eta3, ang_pref, decay3, weight, recurrence,
                        ratio_step, R, A, dR, dA, True)
                    base = off3 + _pair_block(eidx[s0 + j], eidx[s0 + k], n_el) * blk3
                    e0 = 0.0  # Σ G A R
                    eR = 0.0  # Σ G A dR/ds
                    eA = 0.0  # Σ G dA/dcos R
                    for l in range(nR3):
                        z = base + l * nab
                        gA = 0.0
                        gdA = 0.0
                        for c in range(nab):
                            gA += G[row, z + c] * A[c]
                            gdA += G[row, z + c] * dA[c]
                        e0 += gA * R[l]
                        eR += gA * dR[l]
                        eA += gdA * R[l]
                    g_ij = F * (eA * dci_ij + 0.5 * eR) + e0 * dF_ij
                    g_ik = F * (eA * dci_ik + 0.5 * eR) + e0 * dF_ik
                    g_jk = F * eA * dci_jk + e0 * dF_jk
                    _scatter_triplet(grad, pos, s0 + i, s0 + j, s0 + k, IV[i, j], IV[i, k], IV[j, k], g_ij, g_ik, g_jk)


@njit(cache=True)
def _fchl19_jacobian(eidx, pos, rows, J, n_el, Rs2, Rs3, eta2, eta3, ang_pref, rcut, acut, decay2, decay3,
                     weight, recurrence, ratio_step):
    """J[rows[a], f, b, c] += ∂x_{a,f}/∂R_{b,c} for one molecule (pos of shape (n, 3))."""
    n = pos.shape[0]
    nR2 = Rs2.shape[0]
    nR3 = Rs3.shape[0]
    nab = 2 * ang_pref.shape[0]
    D = np.empty((n, n))
    FC = np.empty((n, n))
    DFC = np.empty((n, n))
    PW = np.empty((n, n))
    IV = np.empty((n, n))
    nb = np.empty(n, dtype=np.int64)
    logRs2 = np.log(Rs2)
    rad = np.empty(nR2)
    drad = np.empty(nR2)
    R = np.empty(nR3)
    dR = np.empty(nR3)
    A = np.empty(nab)
    dA = np.empty(nab)
    e = np.empty((3, 3))  # unit vectors i→j, i→k, j→k
    off3 = n_el * nR2
    blk3 = nR3 * nab
    _distances(pos, 0, n, D)
    _pair_tables(D, n, acut, decay3, FC, DFC, PW, IV)
    for i in range(n):
        for j in range(i + 1, n):
            r = D[i, j]
            if r <= rcut:
                _two_body(r, Rs2, logRs2, eta2, rcut, decay2, rad, drad, True)
                bi = eidx[j] * nR2
                bj = eidx[i] * nR2
                for c in range(3):
                    u = (pos[j, c] - pos[i, c]) / r
                    for k in range(nR2):
                        d = drad[k] * u
                        J[rows[i], bi + k, j, c] += d
                        J[rows[i], bi + k, i, c] -= d
                        J[rows[j], bj + k, j, c] += d
                        J[rows[j], bj + k, i, c] -= d
    for i in range(n):
        cnt = _neighbours(D, i, n, acut, nb)
        row = rows[i]
        for a in range(cnt):
            j = nb[a]
            for b in range(a + 1, cnt):
                k = nb[b]
                rij = D[i, j]
                rik = D[i, k]
                rjk = D[j, k]
                F, dF_ij, dF_ik, dF_jk, dci_ij, dci_ik, dci_jk = _triplet(
                    pos, 0, i, j, k, D, FC, DFC, PW, IV, Rs3, eta3, ang_pref, decay3, weight, recurrence, ratio_step,
                    R, A, dR, dA, True)
                for c in range(3):
                    e[0, c] = (pos[j, c] - pos[i, c]) / rij
                    e[1, c] = (pos[k, c] - pos[i, c]) / rik
                    e[2, c] = (pos[k, c] - pos[j, c]) / rjk
                base = off3 + _pair_block(eidx[j], eidx[k], n_el) * blk3
                for l in range(nR3):
                    z = base + l * nab
                    for cc in range(nab):
                        t_ij = F * (dA[cc] * dci_ij * R[l] + 0.5 * A[cc] * dR[l]) + A[cc] * R[l] * dF_ij
                        t_ik = F * (dA[cc] * dci_ik * R[l] + 0.5 * A[cc] * dR[l]) + A[cc] * R[l] * dF_ik
                        t_jk = F * dA[cc] * dci_jk * R[l] + A[cc] * R[l] * dF_jk
                        for c in range(3):
                            J[row, z + cc, j, c] += t_ij * e[0, c] - t_jk * e[2, c]
                            J[row, z + cc, k, c] += t_ik * e[1, c] + t_jk * e[2, c]
                            J[row, z + cc, i, c] -= t_ij * e[0, c] + t_ik * e[1, c]


# ---------------------------------------------------------------------------------------- estimator
#: Parameter bounds (far outside any useful setting): within them the features and their gradients
#: stay finite for molecules of atoms at least MIN_INTERATOMIC_DISTANCE apart.
_MAX_BASIS = 1000  # nRs2, nRs3, nFourier
_MAX_WIDTH = 1e3  # eta2, eta3 and the cutoffs rcut, acut (Å)
_MAX_WEIGHT = 1e3  # zeta, the decay powers and the three-body weight


@register_representation("fchl19-local", form="atomic", per_atom=True,
                         description="FCHL19 per atom: MolecularKRR uses the local (atom-pair) kernel")
@register_representation("fchl19-atomic", form="atomic", per_atom=True, description="FCHL19, one row per atom")
@register_representation("fchl19-global", form="global", description="FCHL19 summed over atoms (same as fchl19)")
@register_representation("fchl19", form="global", description="FCHL19 (FCHL-ACSF) summed over atoms")
class FCHL19(Representation):
    """FCHL19 (FCHL-ACSF) representation, qmllib's definition; see the module docstring.

    Parameters
    ----------
    elements : list of int
        Atomic numbers the representation knows, in feature-block order (default H, C, N, O, F).
    nRs2, nRs3 : int
        Number of two-body and three-body radial basis functions.
    nFourier : int
        Order of the angular Fourier expansion (2 nFourier angular functions).
    eta2, eta3 : float
        Width parameters of the two-body (log-normal, Å²) and three-body (Gaussian, 1/Å²) bases.
    zeta : float
        Angular width parameter.
    rcut, acut : float
        Two-body and three-body cutoff radii (Å).
    two_body_decay, three_body_decay : float
        Powers of the distance damping r^(−decay) (two-body) and (r_ij r_ik r_jk)^(−decay) (ATM).
    three_body_weight : float
        Weight of the three-body terms (multiplied by √(eta3/π), as in qmllib).
    form : {'global', 'atomic'}
        'global': one row per molecule (sum over atoms); 'atomic': one row per atom.

    Attributes
    ----------
    n_features_ : int
        Length of one feature row: n_el·nRs2 + n_el(n_el+1)/2·nRs3·2nFourier (720 by default).
    elements_ : ndarray of int
        The element list, as fitted.
    """

    limits_elements = True

    def __init__(
        self,
        elements: Any = (1, 6, 7, 8, 9),
        nRs2: int = 24,
        nRs3: int = 20,
        nFourier: int = 1,
        eta2: float = 0.32,
        eta3: float = 2.7,
        zeta: float = math.pi,
        rcut: float = 8.0,
        acut: float = 8.0,
        two_body_decay: float = 1.8,
        three_body_decay: float = 0.57,
        three_body_weight: float = 13.4,
        form: str = "global",
    ) -> None:
        self.elements = elements
        self.nRs2 = nRs2
        self.nRs3 = nRs3
        self.nFourier = nFourier
        self.eta2 = eta2
        self.eta3 = eta3
        self.zeta = zeta
        self.rcut = rcut
        self.acut = acut
        self.two_body_decay = two_body_decay
        self.three_body_decay = three_body_decay
        self.three_body_weight = three_body_weight
        self.form = form

    # ------------------------------------------------------------------ protocol
    def fit(self, molecules: Any, y: Any = None) -> "FCHL19":
        """Validate parameters, check that every atom's element is in ``elements``; sets n_features_."""
        self._check_params()
        elements = np.asarray(list(self.elements), dtype=np.int64)
        self.elements_ = elements
        n_el = len(elements)
        self.n_features_ = int(n_el * self.nRs2 + n_el * (n_el + 1) // 2 * self.nRs3 * 2 * self.nFourier)
        if molecules is not None:
            self._element_indices(as_molecules(molecules))
        return self

    def transform(self, molecules: Any) -> np.ndarray:
        """Features: (n_molecules, n_features_) for 'global', (n_total_atoms, n_features_) for 'atomic'."""
        mols = self._check_input(molecules)
        eidx = self._element_indices(mols)
        rows, n_rows = self._rows(mols)
        out = np.zeros((n_rows, self.n_features_))
        _fchl19_values(eidx, mols.positions, mols.offsets, rows, out, *self._kernel_params())
        return out

    def vjp(self, molecules: Any, G: np.ndarray) -> list[np.ndarray]:
        """∂E/∂R (n_atoms_i, 3) per molecule from G = ∂E/∂X, without forming the Jacobian.

        G has the shape ``transform`` returns: (n_molecules, n_features_) for 'global',
        (n_total_atoms, n_features_) for 'atomic'. Units: [E]/Å.
        """
        mols = self._check_input(molecules)
        eidx = self._element_indices(mols)
        rows, n_rows = self._rows(mols)
        G = np.asarray(G, dtype=np.float64)
        if self.form == "global" and G.ndim == 1:
            G = G[None, :]
        if G.shape != (n_rows, self.n_features_):
            raise ShapeMismatchError(f"cotangent G must have shape ({n_rows}, {self.n_features_}), got {G.shape}")
        if not np.isfinite(G).all():
            raise InvalidInputError("cotangent G contains NaN or infinity")
        grad = np.zeros((len(mols.numbers), 3))
        _fchl19_vjp(eidx, mols.positions, mols.offsets, rows, np.ascontiguousarray(G), grad,
                    *self._kernel_params())
        return mols.split_atoms(grad)

    def jacobian(self, molecules: Any) -> list[np.ndarray]:
        """Explicit ∂X/∂R per molecule: (n_features_, n_atoms_i, 3) for 'global',
        (n_atoms_i, n_features_, n_atoms_i, 3) for 'atomic' (per Å)."""
        mols = self._check_input(molecules)
        eidx = self._element_indices(mols)
        params = self._kernel_params()
        out = []
        for m in range(len(mols)):
            s = mols.atom_slice(m)
            n = s.stop - s.start
            if self.form == "global":
                rows = np.zeros(n, dtype=np.int64)
                J = np.zeros((1, self.n_features_, n, 3))
            else:
                rows = np.arange(n, dtype=np.int64)
                J = np.zeros((n, self.n_features_, n, 3))
            _fchl19_jacobian(eidx[s], np.ascontiguousarray(mols.positions[s]), rows, J, *params)
            out.append(J[0] if self.form == "global" else J)
        return out

    @classmethod
    def model_file_schema(cls) -> Schema:
        """The fields a model file holds for an FCHL19, and their checks (:mod:`molkrr.schema`)."""
        return _SCHEMA

    # ------------------------------------------------------------------ helpers
    def _check_params(self) -> None:
        check_choice(self.form, "form", ("global", "atomic"))
        for name in ("nRs2", "nRs3", "nFourier"):
            check_int(getattr(self, name), name, 1, _MAX_BASIS)
        for name in ("eta2", "eta3", "rcut", "acut"):
            if check_positive(getattr(self, name), name) > _MAX_WIDTH:
                raise InvalidInputError(f"{name} must be at most {_MAX_WIDTH:g}, got {getattr(self, name)!r}")
        for name in ("zeta", "two_body_decay", "three_body_decay", "three_body_weight"):
            if abs(check_finite(getattr(self, name), name)) > _MAX_WEIGHT:
                raise InvalidInputError(f"{name} must lie in ±{_MAX_WEIGHT:g}, got {getattr(self, name)!r}")
        try:
            el = np.asarray(list(self.elements))
        except TypeError:
            raise InvalidInputError(f"elements must be a list of atomic numbers, got {self.elements!r}") from None
        if (el.ndim != 1 or el.size == 0 or not np.issubdtype(el.dtype, np.integer)
                or np.any(el < 1) or np.any(el > MAX_ATOMIC_NUMBER) or len(np.unique(el)) != el.size):
            raise InvalidInputError(f"elements must be distinct atomic numbers 1..{MAX_ATOMIC_NUMBER}, got {self.elements!r}")

    def _element_indices(self, mols: Molecules) -> np.ndarray:
        """Index of each atom's element in elements_; UnknownElementError for any other element."""
        table = self._cached()[1]
        z = mols.numbers
        if z.size and (z.min() < 0 or z.max() > MAX_ATOMIC_NUMBER):
            bad = (z < 0) | (z > MAX_ATOMIC_NUMBER)
            idx = np.where(bad, -1, table[np.clip(z, 0, MAX_ATOMIC_NUMBER)])
        else:
            idx = table[z]
        if idx.size and idx.min() < 0:
            a = int(np.flatnonzero(idx < 0)[0])
            mol = int(np.searchsorted(mols.offsets, a, side="right") - 1)
            raise UnknownElementError(
                f"molecule {mol}: atomic number {int(z[a])} is not among the FCHL19 elements "
                f"{self.elements_.tolist()}; pass it in `elements`"
            )
        return idx

    def _rows(self, mols: Molecules) -> tuple[np.ndarray, int]:
        """Output row of every atom: its molecule ('global') or itself ('atomic')."""
        if self.form == "global":
            return np.repeat(np.arange(len(mols), dtype=np.int64), mols.n_atoms), len(mols)
        return np.arange(len(mols.numbers), dtype=np.int64), len(mols.numbers)

    def _cached(self) -> tuple:
        """(kernel arguments, element lookup table), recomputed when parameters or elements_ change."""
        key = (repr([getattr(self, name) for name in _PARAM_NAMES]), self.elements_.tobytes())
        cache = getattr(self, "_kernel_cache", None)
        if cache is None or cache[0] != key:
            el = np.asarray(self.elements_)
            if el.ndim != 1 or el.size == 0 or el.dtype.kind not in "iu" or el.min() < 1 or el.max() > MAX_ATOMIC_NUMBER:
                raise UnknownElementError(f"fitted elements_ {el.tolist()[:10]} are not atomic numbers 1..{MAX_ATOMIC_NUMBER}")
            n_el = len(self.elements_)
            size = n_el * self.nRs2 + n_el * (n_el + 1) // 2 * self.nRs3 * 2 * self.nFourier
            if size != self.n_features_:
                raise NotFittedError(
                    f"FCHL19 parameters changed since fit ({size} features now, {self.n_features_} fitted); call fit again"
                )
            table = np.full(MAX_ATOMIC_NUMBER + 1, -1, dtype=np.int64)
            table[self.elements_] = np.arange(len(self.elements_))
            cache = (key, self._make_kernel_params(), table)
            self._kernel_cache = cache
        return cache[1], cache[2]

    def _kernel_params(self) -> tuple:
        return self._cached()[0]

    def _make_kernel_params(self) -> tuple:
        Rs2 = np.linspace(0.0, self.rcut, self.nRs2 + 1)[1:]
        Rs3 = np.linspace(0.0, self.acut, self.nRs3 + 1)[1:]
        o = 2.0 * np.arange(self.nFourier) + 1.0
        ang_pref = np.exp(-0.5 * (self.zeta * o) ** 2)
        weight = math.sqrt(self.eta3 / math.pi) * self.three_body_weight
        eta3 = float(self.eta3)
        delta = float(self.acut) / self.nRs3
        # the Gaussian recurrence needs exp(−eta3 (s − Rs3_0)²) (0 < s ≤ acut) and the ratios
        # exp(eta3 Δ (2 (s − Rs3_l) − Δ)) to stay normal numbers; otherwise one exponential per basis function
        recurrence = bool(eta3 * float(self.acut) ** 2 < 500.0 and 3.0 * eta3 * float(self.acut) * delta < 500.0)
        ratio_step = math.exp(-2.0 * eta3 * delta * delta)
        return (len(self.elements_), Rs2, Rs3, float(self.eta2), eta3, ang_pref, float(self.rcut),
                float(self.acut), float(self.two_body_decay), float(self.three_body_decay), float(weight),
                recurrence, ratio_step)


# ------------------------------------------------------------------ model files
def _check_elements(elements, where, node) -> None:
    if elements.tolist() != [int(z) for z in node.params["elements"]]:
        raise fail(where, f"{elements.tolist()} differs from the parameter elements {node.params['elements']}")


def _check_n_features(n_features, where, node) -> None:
    p, n_el = node.params, node.fitted["elements_"].size
    expected = n_el * p["nRs2"] + n_el * (n_el + 1) // 2 * p["nRs3"] * 2 * p["nFourier"]
    if n_features != expected:
        raise fail(where, f"is {n_features}, but these FCHL19 parameters give {expected} features")


_SCHEMA = Schema(
    params_check=lambda est: est._check_params(),
    fitted={"elements_": IntArray(1, MAX_ATOMIC_NUMBER, then=_check_elements), "n_features_": Int(1, then=_check_n_features)},
)
