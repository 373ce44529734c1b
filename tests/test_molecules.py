"""Molecules: construction, ase round trip, indexing, grouping, and every typed validation error."""

from __future__ import annotations

import numpy as np
import pytest

from molkrr.errors import (
    CoincidentAtomsError,
    EmptyMoleculeError,
    InvalidInputError,
    MolkrrError,
    NonFiniteCoordinatesError,
    ShapeMismatchError,
    UnknownElementError,
)
from molkrr.molecules import MIN_INTERATOMIC_DISTANCE, Molecules, as_molecules

ase = pytest.importorskip("ase")
from ase import Atoms  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402


# ---------------------------------------------------------------------------------------- data
def _random_molecule(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n atoms (H..F) on a jittered grid: distinct, at least ~0.8 Å apart."""
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3) * 1.2
    R = grid[rng.choice(len(grid), n, replace=False)] + rng.uniform(-0.2, 0.2, (n, 3))
    return rng.choice([1, 6, 7, 8, 9], n), R


SIZES = [3, 1, 5, 3, 2, 5, 4]


@pytest.fixture
def data() -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    Z, R = zip(*[_random_molecule(rng, n) for n in SIZES])
    E = rng.normal(size=len(SIZES))
    F = [rng.normal(size=(n, 3)) for n in SIZES]
    return list(Z), list(R), E, F


@pytest.fixture
def mols(data) -> Molecules:
    Z, R, E, F = data
    return Molecules.from_list(Z, R, E, F)


def _assert_same_molecule(mols: Molecules, i: int, Z: np.ndarray, R: np.ndarray) -> None:
    z, r = mols.molecule(i)
    np.testing.assert_array_equal(z, Z)
    np.testing.assert_array_equal(r, R)


# ---------------------------------------------------------------------------------------- construction
def test_from_list_layout(data, mols):
    Z, R, E, F = data
    assert len(mols) == len(SIZES)
    assert mols.shape == (len(SIZES),)
    np.testing.assert_array_equal(mols.n_atoms, SIZES)
    np.testing.assert_array_equal(mols.offsets, np.concatenate([[0], np.cumsum(SIZES)]))
    assert mols.numbers.dtype == np.int64 and mols.positions.dtype == np.float64
    assert mols.positions.shape == (sum(SIZES), 3)
    for i in range(len(SIZES)):
        _assert_same_molecule(mols, i, Z[i], R[i])
        np.testing.assert_array_equal(mols.forces[mols.atom_slice(i)], F[i])
    np.testing.assert_array_equal(mols.energies, E)
    for i, (z, r) in enumerate(mols):
        np.testing.assert_array_equal(z, Z[i])
        np.testing.assert_array_equal(r, R[i])
    assert "n_molecules=7" in repr(mols)


def test_construction_copies_inputs(data):
    Z, R, _, _ = data
    pos = np.concatenate(R)
    m = Molecules(np.concatenate(Z), pos, np.concatenate([[0], np.cumsum(SIZES)]))
    pos[0, 0] = 99.0
    assert m.positions[0, 0] != 99.0
    with pytest.raises(ValueError):
        m.numbers[0] = 3  # read-only


def test_float_atomic_numbers_that_are_integers_are_accepted():
    m = Molecules.from_list([np.array([6.0, 1.0])], [[[0, 0, 0], [1.1, 0, 0]]])
    assert m.numbers.dtype == np.int64
    np.testing.assert_array_equal(m.numbers, [6, 1])


def test_ase_round_trip_with_single_point_calculator(data, mols):
    Z, R, E, F = data
    atoms = mols.to_ase()
    assert len(atoms) == len(SIZES)
    for i, a in enumerate(atoms):
        assert isinstance(a, Atoms)
        np.testing.assert_array_equal(a.numbers, Z[i])
        np.testing.assert_array_equal(a.positions, R[i])
        assert isinstance(a.calc, SinglePointCalculator)
        assert a.get_potential_energy() == E[i]
        np.testing.assert_array_equal(a.get_forces(), F[i])
    back = Molecules.from_ase(atoms)
    np.testing.assert_array_equal(back.numbers, mols.numbers)
    np.testing.assert_array_equal(back.positions, mols.positions)
    np.testing.assert_array_equal(back.offsets, mols.offsets)
    np.testing.assert_array_equal(back.energies, mols.energies)
    np.testing.assert_array_equal(back.forces, mols.forces)
    # as_molecules accepts a list of Atoms and a single Atoms
    np.testing.assert_array_equal(as_molecules(atoms).positions, mols.positions)
    single = Molecules.from_ase(atoms[2])
    assert len(single) == 1
    _assert_same_molecule(single, 0, Z[2], R[2])
    assert single.energies[0] == E[2]


def test_from_ase_info_and_arrays(data):
    Z, R, E, F = data
    atoms = []
    for z, r, e, f in zip(Z, R, E, F):
        a = Atoms(numbers=z, positions=r)
        a.info["U0"] = e
        a.new_array("forces", f)
        atoms.append(a)
    m = Molecules.from_ase(atoms, energy_key="U0")
    np.testing.assert_array_equal(m.energies, E)
    np.testing.assert_array_equal(m.forces, np.concatenate(F))
    # the default key 'energy' is absent: energies are dropped, forces kept
    m2 = Molecules.from_ase(atoms)
    assert m2.energies is None
    np.testing.assert_array_equal(m2.forces, np.concatenate(F))


def test_from_ase_labels_kept_only_if_every_molecule_has_them(data):
    Z, R, E, _ = data
    atoms = [Atoms(numbers=z, positions=r) for z, r in zip(Z, R)]
    atoms[0].info["energy"] = 1.0
    m = Molecules.from_ase(atoms)
    assert m.energies is None and m.forces is None
    assert all(a.calc is None for a in m.to_ase())


def test_from_ase_rejects_non_atoms():
    with pytest.raises(TypeError):
        Molecules.from_ase([Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]]), "H2"])


# ---------------------------------------------------------------------------------------- indexing
def test_getitem_int_and_negative(data, mols):
    Z, R, E, F = data
    for i in (0, 3, -1, -2):
        sub = mols[i]
        assert isinstance(sub, Molecules) and len(sub) == 1
        _assert_same_molecule(sub, 0, Z[i], R[i])
        assert sub.energies[0] == E[i]
        np.testing.assert_array_equal(sub.forces, F[i])
    sub = mols[np.int64(2)]
    _assert_same_molecule(sub, 0, Z[2], R[2])
    for bad in (len(SIZES), -len(SIZES) - 1):
        with pytest.raises(IndexError):
            mols[bad]


def test_getitem_slice(data, mols):
    Z, R, E, _ = data
    sub = mols[1:6:2]
    assert len(sub) == 3
    for k, i in enumerate(range(1, 6, 2)):
        _assert_same_molecule(sub, k, Z[i], R[i])
    np.testing.assert_array_equal(sub.energies, E[1:6:2])
    rev = mols[::-1]
    for k in range(len(SIZES)):
        _assert_same_molecule(rev, k, Z[-1 - k], R[-1 - k])


@pytest.mark.parametrize("index", [[4, 0, 4, 6], np.array([5, 1]), [-1, -3, 0], np.array([-2])])
def test_getitem_index_array_keeps_order_and_labels(data, mols, index):
    Z, R, E, F = data
    sub = mols[index]
    assert len(sub) == len(index)
    for k, i in enumerate(index):
        _assert_same_molecule(sub, k, Z[i], R[i])
        np.testing.assert_array_equal(sub.forces[sub.atom_slice(k)], F[i])
    np.testing.assert_array_equal(sub.energies, E[np.asarray(index)])
    np.testing.assert_array_equal(sub.offsets, np.concatenate([[0], np.cumsum([SIZES[i] for i in index])]))


def test_getitem_bool_mask_and_ellipsis_tuple(data, mols):
    Z, R, E, _ = data
    mask = np.array([True, False, False, True, True, False, True])
    sub = mols[mask]
    idx = np.flatnonzero(mask)
    assert len(sub) == len(idx)
    for k, i in enumerate(idx):
        _assert_same_molecule(sub, k, Z[i], R[i])
    # scikit-learn's _safe_indexing calls X[idx, ...] on objects with a shape
    sub2 = mols[(np.array([2, 0]), Ellipsis)]
    _assert_same_molecule(sub2, 0, Z[2], R[2])
    _assert_same_molecule(sub2, 1, Z[0], R[0])
    with pytest.raises(IndexError):
        mols[mask[:-1]]
    with pytest.raises(IndexError):
        mols[[0, len(SIZES)]]
    with pytest.raises(IndexError):
        mols[np.array([0.7, 2.0])]  # floats are not silently truncated
    assert len(mols[[]]) == 0


def test_subset_equals_getitem(mols):
    a, b = mols.subset([3, 1]), mols[[3, 1]]
    np.testing.assert_array_equal(a.numbers, b.numbers)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.offsets, b.offsets)


def test_sklearn_indexing_works(mols):
    from sklearn.model_selection import KFold
    from sklearn.utils import _safe_indexing

    for train, test in KFold(3).split(np.zeros(len(mols))):
        sub = _safe_indexing(mols, train)
        assert isinstance(sub, Molecules)
        np.testing.assert_array_equal(sub.energies, mols.energies[train])


# ---------------------------------------------------------------------------------------- grouping
def test_concatenate(data, mols):
    Z, R, E, F = data
    both = Molecules.concatenate([mols[:3], mols[3:]])
    for name in ("numbers", "positions", "offsets", "energies", "forces"):
        np.testing.assert_array_equal(getattr(both, name), getattr(mols, name))
    # labels are dropped when one part lacks them
    unlabelled = Molecules.from_list(Z[:2], R[:2])
    mixed = Molecules.concatenate([mols, unlabelled])
    assert len(mixed) == len(SIZES) + 2 and mixed.energies is None and mixed.forces is None
    _assert_same_molecule(mixed, len(SIZES) + 1, Z[1], R[1])
    with pytest.raises(EmptyMoleculeError):
        Molecules.concatenate([])


def test_by_size_and_stacked(data, mols):
    Z, R, _, _ = data
    groups = mols.by_size()
    assert sorted(groups) == sorted(set(SIZES))
    seen = np.concatenate(list(groups.values()))
    np.testing.assert_array_equal(np.sort(seen), np.arange(len(SIZES)))
    for size, idx in groups.items():
        assert all(SIZES[i] == size for i in idx)
        assert list(idx) == sorted(idx)  # stable: original order within a size
        z, r = mols.stacked(idx)
        assert z.shape == (len(idx), size) and r.shape == (len(idx), size, 3)
        for k, i in enumerate(idx):
            np.testing.assert_array_equal(z[k], Z[i])
            np.testing.assert_array_equal(r[k], R[i])


def test_split_atoms(data, mols):
    _, R, _, F = data
    parts = mols.split_atoms(mols.positions)
    assert len(parts) == len(SIZES)
    for p, r in zip(parts, R):
        np.testing.assert_array_equal(p, r)
    per_atom = np.arange(sum(SIZES))
    assert [len(p) for p in mols.split_atoms(per_atom)] == SIZES


def test_with_positions_and_labels(data, mols):
    Z, R, E, F = data
    new = mols.positions + 0.05
    moved = mols.with_positions(new)
    np.testing.assert_array_equal(moved.positions, new)
    np.testing.assert_array_equal(moved.numbers, mols.numbers)
    np.testing.assert_array_equal(moved.energies, E)
    assert mols.positions[0, 0] != new[0, 0]  # original untouched
    bad = new.copy()
    bad[3] = np.nan
    with pytest.raises(NonFiniteCoordinatesError):
        mols.with_positions(bad)
    with pytest.raises(ShapeMismatchError):
        mols.with_positions(new[:-1])
    relabelled = mols.with_labels(energies=E * 2, forces=[f * 2 for f in F])
    np.testing.assert_array_equal(relabelled.energies, 2 * E)
    np.testing.assert_array_equal(relabelled.forces, 2 * np.concatenate(F))


# ---------------------------------------------------------------------------------------- errors
def _raises(exc_type, fn, *args, match=None, **kwargs):
    with pytest.raises(exc_type, match=match) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, MolkrrError)
    assert isinstance(info.value, ValueError)
    return info.value


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_coordinates(data, bad):
    Z, R, _, _ = data
    R = [r.copy() for r in R]
    R[4][1, 2] = bad
    err = _raises(NonFiniteCoordinatesError, Molecules.from_list, Z, R)
    assert "molecule 4" in str(err)


def test_coincident_atoms(data):
    Z, R, _, _ = data
    R = [r.copy() for r in R]
    R[2][3] = R[2][1] + 0.5 * MIN_INTERATOMIC_DISTANCE
    err = _raises(CoincidentAtomsError, Molecules.from_list, Z, R)
    assert "molecule 2" in str(err) and "atoms 1 and 3" in str(err)
    # exactly on top of each other, two-atom molecule
    _raises(CoincidentAtomsError, Molecules.from_list, [[1, 1]], [[[0.3, 0.1, 0.0], [0.3, 0.1, 0.0]]])
    # just above the threshold is fine
    Molecules.from_list([[1, 1]], [[[0, 0, 0], [2 * MIN_INTERATOMIC_DISTANCE, 0, 0]]])
    # validate=False skips the check (trusted data)
    Molecules.from_list(Z, R, validate=False)


@pytest.mark.parametrize("z", [0, -1, 119, 1000])
def test_unknown_element_out_of_range(z):
    err = _raises(UnknownElementError, Molecules.from_list, [[6, z]], [[[0, 0, 0], [1.2, 0, 0]]])
    assert str(z) in str(err)


@pytest.mark.parametrize("z", [6.5, np.nan, "C"])
def test_unknown_element_non_integer(z):
    _raises(UnknownElementError, Molecules, np.array([1, z], dtype=object), [[0, 0, 0], [1.2, 0, 0]], [0, 2])


def test_elements_at_range_limits_are_accepted():
    m = Molecules.from_list([[1, 118]], [[[0, 0, 0], [2.0, 0, 0]]])
    np.testing.assert_array_equal(m.numbers, [1, 118])


@pytest.mark.parametrize(
    "numbers, positions",
    [
        ([[1, 1]], [[[0, 0], [1, 1]]]),  # positions not (n, 3)
        ([[1, 1]], [[[0, 0, 0]]]),  # fewer positions than atoms
        ([[1]], [[[0, 0, 0], [1, 1, 1]]]),  # more positions than atoms
        ([[1], [1]], [[[0, 0, 0]]]),  # lists of different length
        ([[1, 1]], [[0, 0, 0, 1, 1, 1]]),  # flat positions
    ],
)
def test_shape_mismatch_from_list(numbers, positions):
    _raises(ShapeMismatchError, Molecules.from_list, numbers, positions)


@pytest.mark.parametrize(
    "numbers, positions, offsets",
    [
        ([1, 1], [[0, 0], [1, 1]], [0, 2]),  # (n, 2) positions that cannot be reshaped
        ([1, 1, 1], [[0, 0], [1, 1], [2, 2]], [0, 3]),  # (n, 2) positions that could be reshaped
        ([1, 1], [[0, 0, 0], [1, 1, 1], [2, 2, 2]], [0, 2]),  # counts mismatch
        ([1, 1], [[0, 0, 0], [1, 1, 1]], [0, 1]),  # offsets do not end at n_atoms
        ([1, 1], [[0, 0, 0], [1, 1, 1]], [1, 2]),  # offsets do not start at 0
    ],
)
def test_shape_mismatch_direct(numbers, positions, offsets):
    _raises(ShapeMismatchError, Molecules, numbers, positions, offsets)


def test_empty_molecule_and_empty_batch():
    _raises(EmptyMoleculeError, Molecules.from_list, [[1], []], [[[0, 0, 0]], np.zeros((0, 3))])
    _raises(EmptyMoleculeError, Molecules, [1, 1], [[0, 0, 0], [1, 1, 1]], [0, 1, 1, 2])
    _raises(EmptyMoleculeError, Molecules.from_list, [], [])
    _raises(EmptyMoleculeError, Molecules, [], np.zeros((0, 3)), [0])
    _raises(EmptyMoleculeError, Molecules.from_ase, [])


def test_label_count_mismatch(data):
    Z, R, E, F = data
    _raises(ShapeMismatchError, Molecules.from_list, Z, R, E[:-1])
    _raises(ShapeMismatchError, Molecules.from_list, Z, R, np.append(E, 1.0))
    _raises(ShapeMismatchError, Molecules.from_list, Z, R, None, F[:-1])
    F_bad = list(F)
    F_bad[2] = F_bad[2][:-1]
    _raises(ShapeMismatchError, Molecules.from_list, Z, R, None, F_bad)
    flat = dict(numbers=np.concatenate(Z), positions=np.concatenate(R), offsets=np.concatenate([[0], np.cumsum(SIZES)]))
    _raises(ShapeMismatchError, Molecules, **flat, forces=np.concatenate(F)[:-1])
    _raises(ShapeMismatchError, Molecules, **flat, energies=E[:3])
    E_nan = E.copy()
    E_nan[0] = np.nan
    _raises(InvalidInputError, Molecules.from_list, Z, R, E_nan)  # NaN is a value problem, not a shape one
