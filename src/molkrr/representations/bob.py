"""Bag of Bonds (Hansen et al., J. Phys. Chem. Lett. 6, 2326 (2015)) with an analytic vector–Jacobian product.

Layout (identical to qmllib's ``generate_bob`` for the same bag sizes)
---------------------------------------------------------------------
The fitted elements are put in *bag order*: ascending bag size, ties broken by ascending atomic
number (qmllib sorts its ``asize`` dict stably by size, so give it the elements in ascending atomic
number to get the same order). With elements e_0, …, e_{k−1} in that order and bag sizes N_a, the
feature vector is, for a = 0, …, k−1:

* the *atom bag* of e_a: N_a slots, ``0.5 Z^2.4`` once per atom of that element, then zeros;
* the *pair bag* (e_a, e_a): N_a (N_a − 1)/2 slots of Z_i Z_j / r_ij over pairs of atoms of e_a;
* for every b > a the pair bag (e_a, e_b): N_a N_b slots of Z_i Z_j / r_ij over mixed pairs;

each pair bag sorted in descending order and zero-padded at the end. r_ij is in Å.

Derivatives
-----------
Only pair entries depend on positions: ∂(Z_iZ_j/r_ij)/∂R_i = −Z_iZ_j (R_i − R_j)/r_ij³ and the
opposite on R_j. The sort inside each bag is a permutation that is held fixed at the evaluation
point, so ``vjp`` and ``jacobian`` are the exact derivative wherever no two entries of one bag are
equal (the representation is continuous but only piecewise differentiable: where two entries of one
bag cross, the one-sided derivatives differ). Ties are broken by the pair order (i, j), i < j,
row-major over the atom indices, identically in ``transform``, ``vjp`` and ``jacobian``.

Implementation
--------------
``transform`` and ``vjp`` are numba kernels (``cache=True``) looping over molecules: pair values,
one stable argsort per molecule, then a running counter per bag gives each pair its slot. Unlike
qmllib, elements outside the fitted set and overfull bags raise instead of being dropped or
overwriting neighbouring bags.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit
from sklearn.base import clone
from sklearn.utils.validation import check_is_fitted

from .._validation import check_int
from ..errors import InvalidInputError, RepresentationSizeError, ShapeMismatchError, UnknownElementError
from ..molecules import MAX_ATOMIC_NUMBER, Molecules, as_molecules
from ..schema import MAX_MODEL_ATOMS, Elements, Int, IntArray, Schema, fail
from .base import Representation
from .registry import register_representation

__all__ = ["BagOfBonds"]


@register_representation("bob", description="Bag of Bonds: sorted per-element-pair Coulomb bags")
class BagOfBonds(Representation):
    """Bag of Bonds: sorted per-element and per-element-pair Coulomb bags.

    Parameters
    ----------
    elements : sequence of int or str, optional
        Elements (atomic numbers or symbols) the representation supports. ``None``: the elements
        present in the molecules given to ``fit``.
    bag_sizes : dict or sequence of int, optional
        Maximum number of atoms of each element (qmllib's ``asize``): a dict ``{element: size}``
        (keys atomic numbers, digit strings or symbols) or a sequence aligned with ``elements``.
        ``None``: learned in ``fit`` as the largest count of each element over the training
        molecules, plus ``bag_padding``.
    bag_padding : int
        Extra slots added to every *learned* bag size, so that slightly larger molecules still fit
        (default 0; ignored when ``bag_sizes`` is given).

    Fitted attributes
    -----------------
    elements_ : (k,) int array — supported atomic numbers, ascending.
    bag_sizes_ : (k,) int array — maximum atoms per element, aligned with ``elements_``.
    n_features_ : int — Σ_a N_a (N_a + 1)/2 + Σ_{a<b} N_a N_b.

    Raises
    ------
    UnknownElementError
        A molecule contains an element outside ``elements_``.
    RepresentationSizeError
        A molecule has more atoms of an element than its bag holds.
    """

    limits_elements = True
    limits_size = True

    def __init__(self, elements: Any = None, bag_sizes: Any = None, bag_padding: int = 0) -> None:
        self.elements = elements
        self.bag_sizes = bag_sizes
        self.bag_padding = bag_padding

    def sized_for(self, max_atoms: int, max_element_counts: Any) -> "BagOfBonds":
        """An unfitted copy whose bags hold ``max_element_counts`` atoms of each element.

        With ``elements`` given, those elements get bags (empty for an element the data set lacks);
        otherwise the data set's elements do.
        """
        counts = {int(z): int(c) for z, c in dict(max_element_counts).items()}
        elements, _ = _parse_params(self.elements, None)
        if elements is not None:
            counts = {int(z): counts.get(int(z), 0) for z in elements}
        return clone(self).set_params(bag_sizes=counts)

    # ------------------------------------------------------------------ fit
    def fit(self, molecules: Any, y: Any = None) -> "BagOfBonds":
        """Learn elements and bag sizes from ``molecules`` (where not given); returns self."""
        mols = as_molecules(molecules)
        pad = check_int(self.bag_padding, "bag_padding", 0)
        elements, sizes = _parse_params(self.elements, self.bag_sizes)
        present = np.unique(mols.numbers)
        if elements is None:
            elements = present
        else:
            unknown = np.setdiff1d(present, elements)
            if unknown.size:
                raise UnknownElementError(
                    f"training molecules contain element(s) {_symbols(unknown)} not in elements={_symbols(elements)}"
                )
        counts = _element_counts(mols.numbers, mols.offsets, elements)  # (n_molecules, k)
        if sizes is None:
            sizes = counts.max(axis=0) + int(pad)
        self.elements_ = np.asarray(elements, dtype=np.int64)
        self.bag_sizes_ = np.asarray(sizes, dtype=np.int64)
        self.n_features_ = int(_layout(self.elements_, self.bag_sizes_)[3])
        self._check_counts(counts, np.arange(len(mols)))
        return self

    # ------------------------------------------------------------------ public API
    def transform(self, molecules: Any) -> np.ndarray:
        """Bag of Bonds of every molecule, shape (n_molecules, n_features_)."""
        mols = self._check_input(molecules)
        e, lay = self._prepare(mols)
        order, diag_start, pair_start, F = lay
        zdiag = 0.5 * self.elements_[order].astype(np.float64) ** 2.4
        return _bob_values(
            mols.numbers, np.ascontiguousarray(mols.positions), mols.offsets, e, diag_start, zdiag, pair_start, F
        )

    def vjp(self, molecules: Any, G: Any) -> list[np.ndarray]:
        """∂E/∂R for G = ∂E/∂X of shape (n_molecules, n_features_): one (n_atoms_i, 3) array (per Å) per molecule.

        Uses the bag permutation at the evaluation point (see the module docstring); never builds
        the Jacobian: each pair slot k holding Z_iZ_j/r_ij adds −G_k Z_iZ_j (R_i − R_j)/r_ij³ to
        ∂E/∂R_i and the opposite to ∂E/∂R_j.
        """
        mols = self._check_input(molecules)
        G = np.ascontiguousarray(self._check_cotangent(mols, G))
        if not np.isfinite(G).all():
            raise InvalidInputError("cotangent G contains NaN or infinity")
        e, lay = self._prepare(mols)
        grad = _bob_vjp(mols.numbers, np.ascontiguousarray(mols.positions), mols.offsets, e, lay[2], G)
        return mols.split_atoms(grad)

    def jacobian(self, molecules: Any) -> list[np.ndarray]:
        """Explicit ∂X/∂R, one (n_features_, n_atoms_i, 3) array per molecule (per Å).

        A plain-Python, per-bag implementation independent of the compiled ``transform``/``vjp``
        kernels (meant for tests and small molecules; O(n_features · n_atoms) memory per molecule).
        """
        mols = self._check_input(molecules)
        _, (order, _, pair_start, F) = self._prepare(mols)
        pos_of = {int(z): a for a, z in enumerate(self.elements_[order])}
        out = []
        for Z, R in mols:
            n = len(Z)
            J = np.zeros((F, n, 3))
            ea = np.array([pos_of[int(z)] for z in Z], dtype=np.int64)
            bags: dict[int, list[tuple[float, np.ndarray, int, int]]] = {}
            for i in range(n):
                for j in range(i + 1, n):
                    d = R[i] - R[j]
                    r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
                    v = float(Z[i]) * float(Z[j]) / np.sqrt(r2)
                    start = int(pair_start[min(ea[i], ea[j]), max(ea[i], ea[j])])
                    bags.setdefault(start, []).append((v, -v * d / r2, i, j))
            for start, entries in bags.items():
                values = np.array([t[0] for t in entries])
                for rank, p in enumerate(np.argsort(-values, kind="stable")):
                    _, dvi, i, j = entries[p]
                    J[start + rank, i] = dvi
                    J[start + rank, j] = -dvi
            out.append(J)
        return out

    def bag_slices(self) -> dict[tuple[int, ...], slice]:
        """Feature slice of every bag, in layout order: ``(Z,)`` for atom bags, ``(Z_a, Z_b)`` for pair bags."""
        check_is_fitted(self)
        order, diag_start, pair_start, _ = _layout(self.elements_, self.bag_sizes_)
        z = self.elements_[order]
        N = self.bag_sizes_[order]
        out: dict[tuple[int, ...], slice] = {}
        for a in range(len(order)):
            out[(int(z[a]),)] = slice(int(diag_start[a]), int(diag_start[a] + N[a]))
            s = int(pair_start[a, a])
            out[(int(z[a]), int(z[a]))] = slice(s, s + int(N[a] * (N[a] - 1) // 2))
            for b in range(a + 1, len(order)):
                s = int(pair_start[a, b])
                out[(int(z[a]), int(z[b]))] = slice(s, s + int(N[a] * N[b]))
        return out

    @classmethod
    def model_file_schema(cls) -> Schema:
        """The fields a model file holds for a BagOfBonds, and their checks (:mod:`molkrr.schema`)."""
        return _SCHEMA

    # ------------------------------------------------------------------ internals
    def _prepare(self, mols: Molecules):
        """Check elements and bag counts; return (bag-order element index per atom, layout)."""
        key = (self.elements_.tobytes(), self.bag_sizes_.tobytes())
        cache = getattr(self, "_layout_cache", None)
        if cache is None or cache[0] != key:
            _check_fitted_bags(self.elements_, self.bag_sizes_)
            lay = _layout(self.elements_, self.bag_sizes_)
            lut = np.full(MAX_ATOMIC_NUMBER + 1, -1, dtype=np.int64)
            lut[self.elements_[lay[0]]] = np.arange(len(lay[0]))
            self._layout_cache = cache = (key, lay, lut)
        _, lay, lut = cache
        if self.n_features_ != lay[3]:  # the compiled vjp reads G up to the layout's size
            raise RepresentationSizeError(f"n_features_={self.n_features_!r} does not match the bags ({lay[3]}); fit again")
        e, bad_mol, bad_atom = _element_index(mols.numbers, mols.offsets, lut, self.bag_sizes_[lay[0]])
        if bad_atom >= 0:
            raise UnknownElementError(
                f"molecule {bad_mol} contains element {_symbols([mols.numbers[bad_atom]])} not seen in fit "
                f"(BagOfBonds supports {_symbols(self.elements_)})"
            )
        if bad_mol >= 0:
            self._check_counts(_element_counts(mols.numbers, mols.offsets, self.elements_), np.arange(len(mols)))
        return e, lay

    def _check_counts(self, counts: np.ndarray, mol_ids: np.ndarray) -> None:
        over = counts > self.bag_sizes_[None, :]
        if over.any():
            m, a = np.argwhere(over)[0]
            raise RepresentationSizeError(
                f"molecule {int(mol_ids[m])} has {int(counts[m, a])} atoms of {_symbols([self.elements_[a]])} "
                f"but the BagOfBonds bag holds {int(self.bag_sizes_[a])}; refit on larger molecules or pass "
                f"larger bag_sizes (fitted: {dict(zip(_symbol_list(self.elements_), self.bag_sizes_.tolist()))})"
            )


# ---------------------------------------------------------------------- model files
def _check_bag_sizes(sizes, where, node) -> None:
    elements = node.fitted["elements_"]
    if sizes.shape != elements.shape:
        raise fail(where, f"has {sizes.size} entries for {elements.size} elements")


def _check_n_features(n_features, where, node) -> None:
    expected = int(_layout(node.fitted["elements_"], node.fitted["bag_sizes_"])[3])
    if n_features != expected:
        raise fail(where, f"is {n_features}, but these bags hold {expected} features")


_SCHEMA = Schema(
    params={"bag_padding": Int(0, MAX_MODEL_ATOMS)},
    params_check=lambda est: _parse_params(est.elements, est.bag_sizes),
    fitted={
        "elements_": Elements(),
        "bag_sizes_": IntArray(0, MAX_MODEL_ATOMS, then=_check_bag_sizes),
        "n_features_": Int(1, then=_check_n_features),
    },
)


# ---------------------------------------------------------------------- helpers
@njit(cache=True)
def _element_index(numbers, offsets, lut, sizes):
    """Bag-order element index of every atom, and the first offending (molecule, atom).

    Returns (e, bad_mol, bad_atom): bad_atom ≥ 0 is an atom of an unknown element (in molecule
    bad_mol); bad_atom = −1 and bad_mol ≥ 0 is a molecule that overflows a bag; both −1: all fine.
    """
    e = np.empty(numbers.shape[0], dtype=np.int64)
    cnt = np.zeros(sizes.shape[0], dtype=np.int64)
    over = -1
    for m in range(offsets.shape[0] - 1):
        cnt[:] = 0
        for t in range(offsets[m], offsets[m + 1]):
            z = numbers[t]
            a = lut[z] if 0 <= z < lut.shape[0] else -1
            if a < 0:
                return e, m, t
            e[t] = a
            cnt[a] += 1
            if cnt[a] > sizes[a] and over < 0:
                over = m
    return e, over, -1


@njit(cache=True)
def _molecule_pairs(numbers, positions, a0, n, e, pair_start, V, r2, pi, pj, slot, counter):
    """Pair values of the atoms a0..a0+n−1 and their feature index after sorting.

    Pairs p enumerate (i, j), i < j, row-major. Fills V[p] = Z_iZ_j/r_ij, r2[p] = r_ij² and slot[p] =
    first feature of the bag + rank of p in the bag (value descending, ties in pair order),
    pi[p] = i, pj[p] = j. All output arrays are scratch of length ≥ n(n − 1)/2.
    """
    k = counter.shape[0]
    p = 0
    for i in range(n):
        zi = float(numbers[a0 + i])
        for j in range(i + 1, n):
            dx = positions[a0 + i, 0] - positions[a0 + j, 0]
            dy = positions[a0 + i, 1] - positions[a0 + j, 1]
            dz = positions[a0 + i, 2] - positions[a0 + j, 2]
            d2 = dx * dx + dy * dy + dz * dz
            r2[p] = d2
            pi[p] = i
            pj[p] = j
            V[p] = zi * float(numbers[a0 + j]) / np.sqrt(d2)
            p += 1
    order = np.argsort(-V[:p], kind="mergesort")  # stable: ties keep pair order
    for a in range(k):
        for b in range(k):
            counter[a, b] = 0
    for q in range(p):
        t = order[q]
        a = e[a0 + pi[t]]
        b = e[a0 + pj[t]]
        if a > b:
            a, b = b, a
        slot[t] = pair_start[a, b] + counter[a, b]
        counter[a, b] += 1


@njit(cache=True)
def _bob_values(numbers, positions, offsets, e, diag_start, zdiag, pair_start, n_features):
    """(n_molecules, n_features) Bag of Bonds; e = bag-order element index of every atom."""
    n_mol = offsets.shape[0] - 1
    k = diag_start.shape[0]
    X = np.zeros((n_mol, n_features))
    nmax = 0
    for m in range(n_mol):
        nmax = max(nmax, offsets[m + 1] - offsets[m])
    P = nmax * (nmax - 1) // 2
    V = np.empty(P)
    r2 = np.empty(P)
    pi = np.empty(P, dtype=np.int64)
    pj = np.empty(P, dtype=np.int64)
    slot = np.empty(P, dtype=np.int64)
    counter = np.zeros((k, k), dtype=np.int64)
    cnt = np.zeros(k, dtype=np.int64)
    for m in range(n_mol):
        a0 = offsets[m]
        n = offsets[m + 1] - a0
        cnt[:] = 0
        for i in range(n):
            a = e[a0 + i]
            X[m, diag_start[a] + cnt[a]] = zdiag[a]
            cnt[a] += 1
        if n < 2:
            continue
        _molecule_pairs(numbers, positions, a0, n, e, pair_start, V, r2, pi, pj, slot, counter)
        for p in range(n * (n - 1) // 2):
            X[m, slot[p]] = V[p]
    return X


@njit(cache=True)
def _bob_vjp(numbers, positions, offsets, e, pair_start, G):
    """(n_total_atoms, 3) ∂E/∂R from G = ∂E/∂X (n_molecules, n_features)."""
    n_mol = offsets.shape[0] - 1
    k = pair_start.shape[0]
    grad = np.zeros(positions.shape)
    nmax = 0
    for m in range(n_mol):
        nmax = max(nmax, offsets[m + 1] - offsets[m])
    P = nmax * (nmax - 1) // 2
    V = np.empty(P)
    r2 = np.empty(P)
    pi = np.empty(P, dtype=np.int64)
    pj = np.empty(P, dtype=np.int64)
    slot = np.empty(P, dtype=np.int64)
    counter = np.zeros((k, k), dtype=np.int64)
    for m in range(n_mol):
        a0 = offsets[m]
        n = offsets[m + 1] - a0
        if n < 2:
            continue
        _molecule_pairs(numbers, positions, a0, n, e, pair_start, V, r2, pi, pj, slot, counter)
        for p in range(n * (n - 1) // 2):
            c = -G[m, slot[p]] * V[p] / r2[p]
            i = a0 + pi[p]
            j = a0 + pj[p]
            for x in range(3):
                w = c * (positions[i, x] - positions[j, x])
                grad[i, x] += w
                grad[j, x] -= w
    return grad


def _layout(elements: np.ndarray, sizes: np.ndarray):
    """(order, diag_start (k,), pair_start (k, k) symmetric, n_features) in bag order."""
    order = np.lexsort((elements, sizes))  # ascending size, ties by atomic number
    N = sizes[order].astype(np.int64)
    k = len(N)
    diag_start = np.zeros(k, dtype=np.int64)
    pair_start = np.zeros((k, k), dtype=np.int64)
    pos = 0
    for a in range(k):
        diag_start[a] = pos
        pos += N[a]
        pair_start[a, a] = pos
        pos += N[a] * (N[a] - 1) // 2
        for b in range(a + 1, k):
            pair_start[a, b] = pair_start[b, a] = pos
            pos += N[a] * N[b]
    return order, diag_start, pair_start, int(pos)


def _check_fitted_bags(elements: np.ndarray, sizes: np.ndarray) -> None:
    """elements_ distinct ascending atomic numbers, bag_sizes_ non-negative and aligned (compiled code indexes by them)."""
    elements, sizes = np.asarray(elements), np.asarray(sizes)
    if (
        elements.ndim != 1 or elements.size == 0 or elements.dtype.kind not in "iu" or sizes.shape != elements.shape
        or sizes.dtype.kind not in "iu" or elements.min() < 1 or elements.max() > MAX_ATOMIC_NUMBER
        or np.any(np.diff(elements) <= 0) or sizes.min() < 0
    ):
        raise RepresentationSizeError(
            f"fitted elements_ {elements.tolist()[:10]} and bag_sizes_ {sizes.tolist()[:10]} are inconsistent; fit again"
        )


def _element_counts(numbers: np.ndarray, offsets: np.ndarray, elements: np.ndarray) -> np.ndarray:
    """(n_molecules, k) number of atoms of each of ``elements`` per molecule."""
    mol = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    pos = np.minimum(np.searchsorted(elements, numbers), len(elements) - 1)
    known = elements[pos] == numbers
    counts = np.zeros((len(offsets) - 1, len(elements)), dtype=np.int64)
    np.add.at(counts, (mol[known], pos[known]), 1)
    return counts


def _to_number(el: Any) -> int:
    from ase.data import atomic_numbers

    if isinstance(el, (int, np.integer)) and not isinstance(el, bool):
        z = int(el)
    elif isinstance(el, str) and el.strip().isdigit():
        z = int(el.strip())
    elif isinstance(el, str) and el.strip() in atomic_numbers:
        z = int(atomic_numbers[el.strip()])
    else:
        raise UnknownElementError(f"{el!r} is not an element (atomic number or symbol)")
    if not 1 <= z <= MAX_ATOMIC_NUMBER:
        raise UnknownElementError(f"atomic number {z} is not an element (1..{MAX_ATOMIC_NUMBER})")
    return z


def _parse_params(elements: Any, bag_sizes: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Validated (elements ascending, sizes aligned) from the constructor parameters (either may be None)."""
    els = None
    if elements is not None:
        if isinstance(elements, (str, int, np.integer)):
            elements = [elements]
        els = [_to_number(e) for e in elements]
        if len(els) == 0:
            raise InvalidInputError("elements must not be empty")
        if len(set(els)) != len(els):
            raise InvalidInputError(f"elements contains duplicates: {elements!r}")
    sizes = None
    if bag_sizes is not None:
        if isinstance(bag_sizes, dict):
            pairs = {_to_number(k): v for k, v in bag_sizes.items()}
            if len(pairs) != len(bag_sizes):
                raise InvalidInputError(f"bag_sizes names an element twice: {bag_sizes!r}")
            if els is not None and set(els) != set(pairs):
                raise InvalidInputError(f"bag_sizes keys {sorted(pairs)} differ from elements {sorted(els)}")
            els = list(pairs)
            sizes = [pairs[z] for z in els]
        else:
            if els is None:
                raise InvalidInputError("bag_sizes given as a sequence needs elements (or pass a dict {element: size})")
            sizes = list(np.atleast_1d(bag_sizes))
            if len(sizes) != len(els):
                raise ShapeMismatchError(f"{len(sizes)} bag sizes for {len(els)} elements")
        for s in sizes:
            try:
                ok = not isinstance(s, (bool, str)) and float(s).is_integer() and float(s) >= 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise InvalidInputError(f"bag sizes must be non-negative integers, got {bag_sizes!r}")
    if els is None:
        return None, None
    order = np.argsort(els)
    els_arr = np.asarray(els, dtype=np.int64)[order]
    sizes_arr = None if sizes is None else np.asarray(sizes, dtype=np.float64)[order].astype(np.int64)
    return els_arr, sizes_arr


def _symbol_list(numbers: Any) -> list[str]:
    from ase.data import chemical_symbols

    return [chemical_symbols[int(z)] if 0 < int(z) < len(chemical_symbols) else str(int(z)) for z in np.atleast_1d(numbers)]


def _symbols(numbers: Any) -> str:
    return ", ".join(_symbol_list(numbers))
