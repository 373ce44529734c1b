"""Tests of molkrr.datasets: offline QM9 loading (and its cache) and XYZ / extended-XYZ / sGDML input-output.

The full QM9 parse (~13 s incl. validation) happens once per session (fixture ``qm9_table``); the cache
behaviour is tested on a miniature copy of the qm9pack data folder (a few rows of each CSV).
"""

from __future__ import annotations

import ast
import csv
import importlib.machinery
import importlib.util
import itertools
import os
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms, units

from molkrr.datasets import load_qm9, load_qm9_table, read_sgdml_npz, read_xyz, write_xyz
from molkrr.datasets import qm9 as qm9mod
from molkrr.errors import (
    CoincidentAtomsError,
    DatasetError,
    NonFiniteCoordinatesError,
    ShapeMismatchError,
    UnknownElementError,
)
from molkrr.molecules import Molecules

REFS = {"H": -0.500273, "C": -37.846772, "N": -54.583861, "O": -75.064579, "F": -99.718730}
HA_TO_KCAL = units.Hartree / (units.kcal / units.mol)

spec = importlib.util.find_spec("qm9pack")
HAVE_QM9 = spec is not None and spec.submodule_search_locations
needs_qm9 = pytest.mark.skipif(not HAVE_QM9, reason="qm9pack not installed")
DATA = Path(spec.submodule_search_locations[0]) / "data" if HAVE_QM9 else None


# ---------------------------------------------------------------------------------------------- helpers
def csv_rows(path: Path, n: int) -> list[dict]:
    """The first n rows of a CSV as dicts (independent of the module's parser)."""
    with open(path, newline="") as fh:
        return list(itertools.islice(csv.DictReader(fh), n))


def csv_last_row(path: Path) -> dict:
    with open(path, "rb") as fh:
        header = fh.readline().decode()
        fh.seek(-200_000, os.SEEK_END)
        last = fh.read().decode().strip().splitlines()[-1]
    return next(csv.DictReader([header, last]))


def row_molecule(row: dict) -> tuple[np.ndarray, np.ndarray]:
    """(symbols, positions) of a CSV row, parsed with ast.literal_eval (accepts '0.')."""
    return np.array(ast.literal_eval(row["Elements"])), np.array(ast.literal_eval(row["XYZ_Ang"]), dtype=float)


def fake_qm9pack(monkeypatch: pytest.MonkeyPatch, package_dir: Path | None) -> None:
    """Make find_spec('qm9pack') point at package_dir (None: not installed)."""
    real = importlib.util.find_spec

    def find_spec(name, package=None):
        if name != "qm9pack":
            return real(name, package)
        if package_dir is None:
            return None
        s = importlib.machinery.ModuleSpec("qm9pack", None, is_package=True)
        s.submodule_search_locations = [str(package_dir)]
        return s

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def qm9_cache(tmp_path_factory) -> Path:
    """A cache directory holding the parsed full data set (parsed once per session)."""
    d = tmp_path_factory.mktemp("qm9cache")
    load_qm9_table(cache_dir=d)
    return d


@pytest.fixture(scope="session")
def qm9_table(qm9_cache):
    return load_qm9_table(cache_dir=qm9_cache)


@pytest.fixture
def mini_qm9(tmp_path, monkeypatch) -> Path:
    """A qm9pack look-alike with the first 7 rows of each CSV; returns the package dir."""
    if not HAVE_QM9:
        pytest.skip("qm9pack not installed")
    pkg = tmp_path / "site" / "qm9pack"
    (pkg / "data").mkdir(parents=True)
    for name in qm9mod._FILES:
        with open(DATA / name) as src, open(pkg / "data" / name, "w") as dst:
            dst.writelines(itertools.islice(src, 8))
    fake_qm9pack(monkeypatch, pkg)
    return pkg


# ---------------------------------------------------------------------------------------------- QM9 (real data)
@needs_qm9
def test_full_dataset_count_and_first_molecules(qm9_table):
    t = qm9_table
    assert len(t) == 130_831 == qm9mod.N_MOLECULES
    assert t.offsets[-1] == len(t.numbers) == len(t.positions)
    assert t.index[0] == 1 and t.smiles[0] == b"C"
    np.testing.assert_array_equal(t.numbers[t.offsets[0] : t.offsets[1]], [6, 1, 1, 1, 1])
    assert set(np.unique(t.numbers)) == {1, 6, 7, 8, 9}
    assert t.n_atoms.min() == 3 and t.n_atoms.max() == 29
    assert np.all(np.diff(t.index) > 0)  # file order is identifier order


@needs_qm9
@pytest.mark.parametrize("part", range(3))
def test_rows_match_csv(qm9_table, part):
    """First rows of each file and the very last row agree with an independent parse of the CSV text."""
    t = qm9_table
    rows = csv_rows(DATA / qm9mod._FILES[part], 30)
    if part == 2:
        rows.append(csv_last_row(DATA / qm9mod._FILES[part]))
    for row in rows:
        i = int(t.rows_of_ids([int(row["Index"])])[0])
        symbols, pos = row_molecule(row)
        s = slice(t.offsets[i], t.offsets[i + 1])
        np.testing.assert_array_equal(t.numbers[s], [{"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}[e] for e in symbols])
        np.testing.assert_array_equal(t.positions[s], pos)
        assert t.columns["u0"][i] == float(row["InternalEnergy_0K_au"])
        assert t.columns["homo_lumo_gap"][i] == float(row["HOMO_LUMO_gap_au"])
        assert t.smiles[i].decode() == row["SMILES"]
    if part == 2:
        assert i == len(t) - 1


@needs_qm9
def test_ch4_atomization_energy_by_hand(qm9_cache):
    row = csv_rows(DATA / "qm9_part1.csv", 1)[0]
    assert row["Index"] == "1" and row["SMILES"] == "C"
    symbols, _ = row_molecule(row)
    expected_ha = float(row["InternalEnergy_0K_au"]) - sum(REFS[e] for e in symbols)
    assert expected_ha == pytest.approx(-0.631066, abs=1e-9)
    m = load_qm9(indices=[0], unit="Ha", cache_dir=qm9_cache)
    assert len(m) == 1 and m.energies[0] == pytest.approx(expected_ha, rel=1e-14)
    m_kcal = load_qm9(ids=[1], cache_dir=qm9_cache)  # default: kcal/mol
    assert m_kcal.energies[0] == pytest.approx(expected_ha * HA_TO_KCAL, rel=1e-14)
    assert m_kcal.energies[0] == pytest.approx(-396.0, abs=0.1)


@needs_qm9
def test_atomization_energy_second_molecule_and_other_properties(qm9_cache):
    rows = csv_rows(DATA / "qm9_part1.csv", 6)
    mols = load_qm9(indices=range(6), unit="Ha", cache_dir=qm9_cache)
    for k, row in enumerate(rows):
        symbols, pos = row_molecule(row)
        assert mols.energies[k] == pytest.approx(float(row["InternalEnergy_0K_au"]) - sum(REFS[e] for e in symbols), rel=1e-13)
        np.testing.assert_array_equal(mols.molecule(k)[1], pos)
    for prop, col in [("homo_lumo_gap", "HOMO_LUMO_gap_au"), ("gap", "HOMO_LUMO_gap_au"), ("homo", "HOMO_au"),
                      ("lumo", "LUMO_au"), ("u0", "InternalEnergy_0K_au"), ("g", "GibbsFreeEnergy_298K_au")]:
        m = load_qm9(indices=range(6), property=prop, unit="Ha", cache_dir=qm9_cache)
        np.testing.assert_array_equal(m.energies, [float(r[col]) for r in rows])
    gap_ev = load_qm9(indices=[0], property="homo_lumo_gap", unit="eV", cache_dir=qm9_cache).energies[0]
    assert gap_ev == pytest.approx(0.5048 * units.Hartree, rel=1e-14)


@needs_qm9
def test_unit_conversions_consistent(qm9_cache):
    idx = np.arange(0, 130_000, 997)
    e = {u: load_qm9(indices=idx, unit=u, cache_dir=qm9_cache).energies for u in ("Ha", "eV", "kcal/mol", "meV", "kJ/mol")}
    np.testing.assert_allclose(e["eV"], e["Ha"] * units.Hartree, rtol=1e-14)
    np.testing.assert_allclose(e["kcal/mol"], e["eV"] / (units.kcal / units.mol), rtol=1e-14)
    np.testing.assert_allclose(e["kcal/mol"] / e["Ha"], 627.5094740631, rtol=1e-8)
    np.testing.assert_allclose(e["meV"], 1000 * e["eV"], rtol=1e-14)
    np.testing.assert_allclose(e["kJ/mol"], e["kcal/mol"] * 4.184, rtol=1e-12)
    np.testing.assert_array_equal(load_qm9(indices=idx, unit="hartree", cache_dir=qm9_cache).energies, e["Ha"])


@needs_qm9
def test_subset_sizes_and_seeds(qm9_cache, qm9_table):
    a = load_qm9(100, seed=1, cache_dir=qm9_cache)
    b = load_qm9(100, seed=1, cache_dir=qm9_cache)
    c = load_qm9(100, seed=2, cache_dir=qm9_cache)
    assert len(a) == 100 and a.energies.shape == (100,)
    assert a.offsets[-1] == len(a.numbers) == a.n_atoms.sum()
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.energies, b.energies)
    assert not np.array_equal(a.energies, c.energies)
    # Without replacement, and a smaller n is a prefix of a larger one (same seed).
    _, ids = load_qm9(1000, seed=1, cache_dir=qm9_cache, return_ids=True)
    assert len(np.unique(ids)) == 1000
    np.testing.assert_array_equal(load_qm9(1000, seed=1, cache_dir=qm9_cache).energies[:100], a.energies)
    # The selection is documented as default_rng(seed).permutation(N)[:n].
    rows = np.random.default_rng(1).permutation(len(qm9_table))[:1000]
    np.testing.assert_array_equal(ids, qm9_table.index[rows])


@needs_qm9
def test_return_ids_reproduce_the_split(qm9_cache):
    m, ids = load_qm9(50, seed=7, unit="eV", return_ids=True, cache_dir=qm9_cache)
    assert ids.dtype == np.int64 and ids.shape == (50,)
    again = load_qm9(ids=ids, unit="eV", cache_dir=qm9_cache)
    np.testing.assert_array_equal(again.numbers, m.numbers)
    np.testing.assert_array_equal(again.positions, m.positions)
    np.testing.assert_array_equal(again.energies, m.energies)
    with pytest.raises(ValueError, match="not in the data set"):
        load_qm9(ids=[1, 10**7], cache_dir=qm9_cache)


@needs_qm9
def test_full_load_is_valid_molecules(qm9_cache):
    m, ids = load_qm9(cache_dir=qm9_cache, return_ids=True)
    assert len(m) == 130_831 and ids[0] == 1 and ids[-1] == 133_885
    assert np.isfinite(m.energies).all()
    # Atomisation energies of QM9 lie roughly between -3100 and -200 kcal/mol.
    assert -3200 < m.energies.min() and m.energies.max() < -200
    sub = load_qm9(500, seed=3, cache_dir=qm9_cache, validate=True)
    assert isinstance(sub, Molecules) and len(sub) == 500


@needs_qm9
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"property": "dipole"}, "unknown QM9 property"),
        ({"unit": "furlong"}, "unknown energy unit"),
        ({"n": 0}, "n must be"),
        ({"n": 130_832}, "n must be"),
        ({"n": 2.5}, "n must be"),
        ({"n": 5, "indices": [1]}, "at most one"),
        ({"indices": [130_831]}, "indices must lie"),
        ({"indices": []}, "non-empty"),
        ({"indices": [0.5]}, "integers"),
    ],
)
def test_bad_arguments(qm9_cache, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_qm9(cache_dir=qm9_cache, **kwargs)


def test_bad_property_fails_before_touching_data(monkeypatch):
    fake_qm9pack(monkeypatch, None)
    with pytest.raises(ValueError, match="unknown QM9 property"):
        load_qm9(property="bogus")


# ---------------------------------------------------------------------------------------------- QM9 (installation, cache)
def test_missing_qm9pack_raises_dataset_error(monkeypatch, tmp_path):
    fake_qm9pack(monkeypatch, None)
    with pytest.raises(DatasetError, match=r"pip install qm9pack") as info:
        load_qm9(10, cache_dir=tmp_path)
    assert "molkrr[qm9]" in str(info.value)
    fake_qm9pack(monkeypatch, tmp_path / "nowhere")  # installed but without its data folder
    with pytest.raises(DatasetError, match="data folder"):
        load_qm9_table(cache_dir=tmp_path)


def test_missing_data_file(mini_qm9, tmp_path):
    (mini_qm9 / "data" / "qm9_part2.csv").unlink()
    with pytest.raises(DatasetError, match="qm9_part2.csv"):
        load_qm9_table(cache_dir=tmp_path / "c")


def test_cache_round_trip_via_env(mini_qm9, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MOLKRR_CACHE", str(cache))
    first = load_qm9(unit="eV", return_ids=True)
    files = list(cache.glob("qm9_*.npz"))
    assert len(files) == 1 and not list(cache.glob("*.tmp"))
    assert len(first[0]) == 21
    # The second load must come from the cache: parsing is made impossible.
    monkeypatch.setattr(qm9mod, "_parse_csvs", lambda *a, **k: pytest.fail("CSV parsed despite a valid cache"))
    second = load_qm9(unit="eV", return_ids=True)
    np.testing.assert_array_equal(first[1], second[1])
    np.testing.assert_array_equal(first[0].positions, second[0].positions)
    np.testing.assert_array_equal(first[0].numbers, second[0].numbers)
    np.testing.assert_array_equal(first[0].energies, second[0].energies)
    assert qm9mod.qm9_cache_dir() == cache


def test_cache_false_writes_nothing(mini_qm9, tmp_path, monkeypatch):
    monkeypatch.setenv("MOLKRR_CACHE", str(tmp_path / "cache"))
    assert len(load_qm9(cache=False)) == 21
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncate", "empty", "wrong_shape"])
def test_corrupt_cache_is_rebuilt(mini_qm9, tmp_path, damage):
    cache = tmp_path / "cache"
    reference = load_qm9_table(cache_dir=cache)
    (path,) = cache.glob("qm9_*.npz")
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not a zip file at all" * 10)
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a readable npz whose arrays are inconsistent
        with np.load(path) as z:
            arrays = dict(z)
        arrays["positions"] = arrays["positions"][:-1]
        np.savez(path, **arrays)
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = load_qm9_table(cache_dir=cache)
    np.testing.assert_array_equal(rebuilt.positions, reference.positions)
    np.testing.assert_array_equal(rebuilt.index, reference.index)
    # ... and the rewritten cache is good again.
    with np.load(path) as z:
        np.testing.assert_array_equal(z["positions"], reference.positions)


def test_stale_cache_key_is_not_used(mini_qm9, tmp_path):
    cache = tmp_path / "cache"
    load_qm9_table(cache_dir=cache)
    (path,) = cache.glob("qm9_*.npz")
    with np.load(path) as z:
        arrays = dict(z)
    arrays["key"] = np.array("some other qm9pack version")
    arrays["numbers"] = np.full_like(arrays["numbers"], 9)
    np.savez(path, **arrays)
    assert set(np.unique(load_qm9_table(cache_dir=cache).numbers)) != {9}


def test_unwritable_cache_only_warns(mini_qm9, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.warns(UserWarning, match="could not write"):
        t = load_qm9_table(cache_dir=blocker / "sub")
    assert len(t) == 21


def test_bad_csv_content(mini_qm9, tmp_path):
    path = mini_qm9 / "data" / "qm9_part1.csv"
    text = path.read_text().replace("\"['C','H','H','H','H']\"", "\"['C','H','H','H']\"", 1)
    path.write_text(text)
    with pytest.raises(DatasetError, match=r"molecule 1 has N_atoms=5 but 4 elements"):
        load_qm9_table(cache_dir=tmp_path / "c")
    path.write_text(text.replace("\"['C','H','H','H']\"", "\"['C','H','H','H','Xx']\"", 1))
    with pytest.raises(DatasetError, match="element symbol"):
        load_qm9_table(cache_dir=tmp_path / "c")


def test_mini_values_match_csv(mini_qm9, tmp_path):
    """The per-file parse and the joining of files: rows from all three parts in order."""
    t = load_qm9_table(cache=False)
    rows = [r for name in qm9mod._FILES for r in csv_rows(mini_qm9 / "data" / name, 7)]
    assert len(t) == len(rows) == 21
    for i, row in enumerate(rows):
        symbols, pos = row_molecule(row)
        assert t.index[i] == int(row["Index"])
        np.testing.assert_array_equal(t.positions[t.offsets[i] : t.offsets[i + 1]], pos)
        assert t.property("atomization_energy", "Ha")[i] == pytest.approx(
            float(row["InternalEnergy_0K_au"]) - sum(REFS[e] for e in symbols), rel=1e-13)


# ---------------------------------------------------------------------------------------------- XYZ
@pytest.fixture
def labelled() -> Molecules:
    rng = np.random.default_rng(0)
    water = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    methane = np.array([[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]])
    pos = [water + 0.01 * rng.standard_normal((3, 3)), methane + 0.01 * rng.standard_normal((5, 3))]
    forces = [rng.standard_normal((3, 3)), rng.standard_normal((5, 3))]
    return Molecules.from_list([[8, 1, 1], [6, 1, 1, 1, 1]], pos, [-1.2345678901234, 3.25e-7], forces)


def test_xyz_round_trip_with_energies_and_forces(tmp_path, labelled):
    path = tmp_path / "m.extxyz"
    write_xyz(path, labelled)
    images = ase.io.read(path, index=":")
    assert len(images) == 2
    for i, a in enumerate(images):
        s = labelled.atom_slice(i)
        np.testing.assert_array_equal(a.numbers, labelled.numbers[s])
        np.testing.assert_allclose(a.positions, labelled.positions[s], rtol=0, atol=5.1e-9)
        assert a.get_potential_energy() == pytest.approx(labelled.energies[i], rel=1e-12)
        np.testing.assert_allclose(a.get_forces(), labelled.forces[s], rtol=0, atol=5.1e-9)
    back = read_xyz(path)
    np.testing.assert_array_equal(back.numbers, labelled.numbers)
    np.testing.assert_array_equal(back.offsets, labelled.offsets)
    np.testing.assert_allclose(back.positions, labelled.positions, atol=5.1e-9)
    np.testing.assert_allclose(back.energies, labelled.energies, rtol=1e-12)
    np.testing.assert_allclose(back.forces, labelled.forces, atol=5.1e-9)
    one = read_xyz(path, index=1)
    assert len(one) == 1 and one.energies[0] == pytest.approx(3.25e-7, rel=1e-12)
    assert not list(tmp_path.glob("*.tmp"))


def test_write_xyz_with_explicit_labels(tmp_path, labelled):
    bare = Molecules(labelled.numbers, labelled.positions, labelled.offsets)
    path = tmp_path / "m.xyz"
    write_xyz(path, bare)  # no labels at all
    back = read_xyz(path)
    assert back.energies is None and back.forces is None
    write_xyz(path, bare, energies=[1.0, 2.0], forces=labelled.split_atoms(labelled.forces))  # per-molecule forces
    back = read_xyz(path)
    np.testing.assert_array_equal(back.energies, [1.0, 2.0])
    np.testing.assert_allclose(back.forces, labelled.forces, atol=5.1e-9)
    write_xyz(path, labelled, energies=np.array([5.0, 6.0]))  # override energies, keep its forces
    back = read_xyz(path)
    np.testing.assert_array_equal(back.energies, [5.0, 6.0])
    np.testing.assert_allclose(back.forces, labelled.forces, atol=5.1e-9)
    write_xyz(path, labelled.to_ase())  # a list of ase.Atoms
    np.testing.assert_allclose(read_xyz(path).energies, labelled.energies, rtol=1e-12)
    with pytest.raises(ShapeMismatchError):
        write_xyz(path, bare, energies=[1.0, 2.0, 3.0])
    with pytest.raises(ShapeMismatchError):
        write_xyz(path, bare, forces=np.zeros((3, 3)))


def test_plain_xyz_and_custom_energy_key(tmp_path):
    plain = tmp_path / "plain.xyz"
    plain.write_text("3\nwater molecule\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n2\n\nH 0 0 0\nH 0 0 0.74\n")
    m = read_xyz(plain)
    assert len(m) == 2 and m.energies is None and m.forces is None
    np.testing.assert_array_equal(m.numbers, [8, 1, 1, 1, 1])
    tagged = tmp_path / "tagged.xyz"
    tagged.write_text("2\nU0=-1.5 energy=9\nH 0 0 0\nH 0 0 0.74\n2\nU0=-2.5 energy=8\nH 0 0 0\nH 0 0 0.75\n")
    np.testing.assert_array_equal(read_xyz(tagged, energy_key="U0").energies, [-1.5, -2.5])
    np.testing.assert_array_equal(read_xyz(tagged).energies, [9.0, 8.0])
    partly = tmp_path / "partly.xyz"
    partly.write_text("2\nenergy=1\nH 0 0 0\nH 0 0 0.74\n2\n\nH 0 0 0\nH 0 0 0.75\n")
    assert read_xyz(partly).energies is None  # energies only when every frame has one


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "no such file"),
        ("", "empty"),
        ("3\n\nO 0 0 0\nH 0.96 0 0\n", "m.xyz"),
        ("garbage\nfoo\n", "m.xyz"),
        ("2\n\nH 0 0 0\nH 0 0\n", "m.xyz"),
    ],
)
def test_corrupt_xyz_raises_dataset_error(tmp_path, content, match):
    path = tmp_path / "m.xyz"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DatasetError, match=match) as info:
        read_xyz(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_index_out_of_range(tmp_path, labelled):
    path = tmp_path / "m.xyz"
    write_xyz(path, labelled)
    with pytest.raises(DatasetError, match="m.xyz"):
        read_xyz(path, index=5)


@pytest.mark.parametrize(
    "content, error",
    [
        ("2\n\nH 0 0 nan\nH 0 0 1\n", NonFiniteCoordinatesError),
        ("2\n\nH 0 0 0\nH 0 0 0\n", CoincidentAtomsError),
        ("2\n\nX 0 0 0\nH 0 0 1\n", UnknownElementError),
    ],
)
def test_invalid_molecules_in_xyz(tmp_path, content, error):
    path = tmp_path / "bad.xyz"
    path.write_text(content)
    with pytest.raises(error, match="bad.xyz"):
        read_xyz(path)
    assert len(read_xyz(path, validate=False)) == 1


def test_write_to_missing_directory(tmp_path, labelled):
    with pytest.raises(DatasetError, match="cannot write"):
        write_xyz(tmp_path / "no" / "such" / "m.xyz", labelled)


# ---------------------------------------------------------------------------------------------- sGDML
def test_sgdml_npz(tmp_path):
    rng = np.random.default_rng(1)
    z = np.array([8, 1, 1])
    R = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]) + 0.01 * rng.standard_normal((4, 3, 3))
    E = rng.standard_normal((4, 1))
    F = rng.standard_normal((4, 3, 3))
    path = tmp_path / "d.npz"
    np.savez(path, z=z, R=R, E=E, F=F, name=np.array("water"), e_unit=np.array("kcal/mol"))
    m = read_sgdml_npz(path)
    assert len(m) == 4
    np.testing.assert_array_equal(m.numbers, np.tile(z, 4))
    np.testing.assert_array_equal(m.molecule(2)[1], R[2])
    np.testing.assert_array_equal(m.energies, E[:, 0])
    np.testing.assert_array_equal(m.forces[3:6], F[1])
    np.savez(path, z=z, R=R)
    assert read_sgdml_npz(path).energies is None
    np.savez(path, z=z, R=R, E=E[:3])
    with pytest.raises(ShapeMismatchError):
        read_sgdml_npz(path)
    np.savez(path, z=z)
    with pytest.raises(DatasetError, match="not an sGDML"):
        read_sgdml_npz(path)
    path.write_bytes(b"junk")
    with pytest.raises(DatasetError, match="d.npz"):
        read_sgdml_npz(path)
    with pytest.raises(DatasetError, match="no such file"):
        read_sgdml_npz(tmp_path / "missing.npz")


def test_progress_bar(mini_qm9, tmp_path, capsys):
    t = load_qm9_table(cache_dir=tmp_path / "c", progress=True)
    assert len(t) == 21
    assert "parsing QM9" in capsys.readouterr().err
