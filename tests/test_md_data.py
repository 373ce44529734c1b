"""MD data: Langevin trajectories, sGDML/MD17 .npz, units, block splits, and the commands that use them."""

from __future__ import annotations

import gzip
import importlib.util
import os

import ase.io
import numpy as np
import pytest
from ase import units
from ase.calculators.emt import EMT
from click.testing import CliRunner

import molkrr
from molkrr.cli import cli
from molkrr.datasets import (
    MissingUnitError,
    block_split,
    read_frames,
    read_sgdml_npz,
    read_sgdml_units,
    write_frames,
    write_sgdml_npz,
)
from molkrr.datasets.md import (
    SHIPPED_TRAJECTORY,
    builtin_molecule,
    run_langevin,
    shipped_trajectory_path,
    write_trajectory,
)
from molkrr.errors import DatasetError, InvalidInputError, ShapeMismatchError

HAS_TBLITE = importlib.util.find_spec("tblite") is not None
needs_tblite = pytest.mark.skipif(not HAS_TBLITE, reason="tblite (the 'md' extra) is not installed")
KCAL_MOL_IN_EV = units.kcal / units.mol


@pytest.fixture(scope="module")
def shipped():
    return read_frames(shipped_trajectory_path())


@pytest.fixture(scope="module")
def emt_frames():
    return run_langevin("ethanol", n_frames=6, stride=2, equilibration=2, temperature=300.0, seed=3, calculator=EMT())


# ---------------------------------------------------------------------------------------------- block split
def test_block_split_keeps_blocks_apart_and_in_order():
    train, valid, test = block_split(3000, 200, 0, 500)
    assert len(train) == 200 and len(valid) == 0 and len(test) == 500
    assert train.max() < 2000 <= test.min() and test.max() == 2999
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    train, valid, test = block_split(3000, None, 50, None)
    assert train.tolist() == list(range(2000))  # None: the whole block
    assert len(valid) == 50 and 2000 <= valid.min() and valid.max() < test.min()
    assert test.max() == 2999 and len(np.intersect1d(valid, test)) == 0
    _, valid_all, _ = block_split(300, 10, None, 10)  # None: the whole validation block (a third of the rest)
    assert valid_all.tolist() == list(range(200, 233))


@pytest.mark.parametrize("args", [(10, 8, 0, 1), (10, None, 0, 5), (3000, 10, 0, 10, 1.5), (2, 1, 1, 1)])
def test_block_split_refuses_what_the_blocks_cannot_give(args):
    n, n_train, n_valid, n_test, *frac = args
    with pytest.raises(InvalidInputError):
        block_split(n, n_train, n_valid, n_test, **({"train_block": frac[0]} if frac else {}))


# ---------------------------------------------------------------------------------------------- sGDML .npz
def _water_frames(n=4, seed=1):
    rng = np.random.default_rng(seed)
    z = np.array([8, 1, 1])
    R = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]) + 0.01 * rng.standard_normal((n, 3, 3))
    return z, R, rng.standard_normal(n), rng.standard_normal((n, 3, 3))


def test_sgdml_round_trip_records_units_and_md5(tmp_path):
    z, R, E, F = _water_frames()
    mols = molkrr.Molecules(np.tile(z, 4), R.reshape(-1, 3), np.arange(5) * 3, E, F.reshape(-1, 3))
    path = tmp_path / "w.npz"
    write_sgdml_npz(path, mols, energy_unit="kcal/mol", theory="test")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as any file the user writes (not a temp file's 0600)
    with np.load(path, allow_pickle=False) as d:
        assert str(d["type"]) == "d" and str(d["e_unit"]) == "kcal/mol" and str(d["r_unit"]) == "Ang"
        assert d["E"].shape == (4, 1) and d["F"].shape == (4, 3, 3) and d["z"].tolist() == [8, 1, 1]
        # sGDML's fingerprint: md5 of the md5 digests of z, R, E, F, recomputed here independently
        import hashlib

        h = hashlib.md5()
        for k in "zREF":
            h.update(hashlib.md5(d[k].tobytes()).digest())
        assert str(d["md5"]) == h.hexdigest()
    back = read_sgdml_npz(path)
    np.testing.assert_array_equal(back.positions, mols.positions)
    np.testing.assert_array_equal(back.energies, E)
    np.testing.assert_array_equal(back.forces, mols.forces)
    assert read_sgdml_units(path) == ("kcal/mol", "Ang")
    # converted on request, in both energies and forces
    ev, unit = read_frames(path, unit="eV")
    assert unit == "eV"
    np.testing.assert_allclose(ev.energies, E * KCAL_MOL_IN_EV, rtol=1e-14)
    np.testing.assert_allclose(ev.forces, mols.forces * KCAL_MOL_IN_EV, rtol=1e-14)


def test_sgdml_bohr_positions_become_angstrom(tmp_path):
    z, R, E, F = _water_frames()
    path = tmp_path / "bohr.npz"
    np.savez(path, z=z, R=R / units.Bohr, E=E, F=F * units.Bohr, e_unit="Ha", r_unit="bohr")
    m = read_sgdml_npz(path)
    np.testing.assert_allclose(m.positions, R.reshape(-1, 3), rtol=1e-9)
    np.testing.assert_allclose(m.forces, F.reshape(-1, 3), rtol=1e-9)  # Ha/bohr → Ha/Å
    np.savez(path, z=z, R=R, r_unit="furlong")
    with pytest.raises(DatasetError, match="furlong"):
        read_sgdml_npz(path)


def test_md17_file_without_units_needs_one(tmp_path):
    z, R, E, F = _water_frames()
    path = tmp_path / "md17_water.npz"
    np.savez(path, z=z, R=R, E=E[:, None], F=F, name="water", theory="test")  # as the MD17 files: no e_unit
    with pytest.raises(MissingUnitError, match="unit"):
        read_frames(path)
    m, unit = read_frames(path, unit="kcal/mol")
    assert unit == "kcal/mol"
    np.testing.assert_array_equal(m.energies, E)


def test_sgdml_writer_refuses_mixed_molecules(tmp_path, emt_frames):
    mols = molkrr.Molecules.from_ase(emt_frames)
    water = molkrr.Molecules.from_list([[8, 1, 1]], [[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]], [0.0], [np.zeros((3, 3))])
    with pytest.raises(ShapeMismatchError):
        write_sgdml_npz(tmp_path / "x.npz", molkrr.Molecules.concatenate([mols, water]), energy_unit="eV")
    with pytest.raises(InvalidInputError):
        write_sgdml_npz(tmp_path / "x.npz", mols.with_labels(mols.energies, None), energy_unit="eV")


# ---------------------------------------------------------------------------------------------- extended XYZ with units
def test_extxyz_units_round_trip_and_conversion(tmp_path, emt_frames):
    mols = molkrr.Molecules.from_ase(emt_frames)
    path = tmp_path / "f.extxyz.gz"
    write_frames(path, mols, energy_unit="eV", info={"note": "test"})
    with gzip.open(path, "rt") as fh:
        fh.readline()
        comment = fh.readline()
    assert "energy_unit=eV" in comment and "forces_unit=eV/Ang" in comment and "note=test" in comment
    back, unit = read_frames(path)
    assert unit == "eV"
    np.testing.assert_allclose(back.energies, mols.energies, rtol=1e-15)
    np.testing.assert_allclose(back.forces, mols.forces, atol=5e-9)
    kcal, _ = read_frames(path, unit="kcal/mol")
    np.testing.assert_allclose(kcal.energies * KCAL_MOL_IN_EV, mols.energies, rtol=1e-13)
    with pytest.raises(InvalidInputError, match="convert"):
        read_frames(path, unit="furlongs")
    # forces in another unit than energy/Å are refused, not misread
    bad = tmp_path / "bad.extxyz"
    images = mols.to_ase()
    for a in images:
        a.info.update(energy_unit="eV", forces_unit="eV/bohr")
    ase.io.write(bad, images, format="extxyz")
    with pytest.raises(InvalidInputError, match="forces_unit"):
        read_frames(bad)
    plain = tmp_path / "plain.extxyz"
    ase.io.write(plain, mols.to_ase(), format="extxyz")
    with pytest.raises(MissingUnitError):
        read_frames(plain)
    assert read_frames(plain, require_unit=False)[1] is None


# ---------------------------------------------------------------------------------------------- Langevin MD
def test_langevin_labels_belong_to_the_recorded_positions(emt_frames):
    assert len(emt_frames) == 6
    for a in emt_frames:
        ref = a.copy()
        ref.calc = EMT()
        np.testing.assert_allclose(a.get_potential_energy(), ref.get_potential_energy(), rtol=1e-12)
        np.testing.assert_allclose(a.get_forces(), ref.get_forces(), atol=1e-12)
    assert [a.info["step"] for a in emt_frames] == [4, 6, 8, 10, 12, 14]
    assert emt_frames[0].info["method"] == "EMT" and emt_frames[0].info["energy_unit"] == "eV"
    # the centre of mass stays where it started
    com = [a.get_center_of_mass() for a in emt_frames]
    np.testing.assert_allclose(com, np.repeat(com[:1], len(com), axis=0), atol=1e-10)


def test_langevin_is_deterministic_under_the_seed(emt_frames):
    again = run_langevin("ethanol", n_frames=6, stride=2, equilibration=2, temperature=300.0, seed=3, calculator=EMT())
    other = run_langevin("ethanol", n_frames=6, stride=2, equilibration=2, temperature=300.0, seed=4, calculator=EMT())
    np.testing.assert_array_equal(np.array([a.positions for a in again]), np.array([a.positions for a in emt_frames]))
    assert np.abs(other[-1].positions - emt_frames[-1].positions).max() > 1e-3


def test_write_trajectory_then_read_frames(tmp_path, emt_frames):
    path = tmp_path / "t.extxyz"
    write_trajectory(path, emt_frames)
    mols, unit = read_frames(path)
    assert unit == "eV" and len(mols) == 6
    info = ase.io.read(path, index=0).info
    assert info["temperature_K"] == 300.0 and info["timestep_fs"] == 0.5 and info["seed"] == 3
    with pytest.raises(InvalidInputError, match="frame 0"):
        write_trajectory(path, [builtin_molecule("water")])


@pytest.mark.parametrize("name, n_atoms", [("ethanol", 9), ("malonaldehyde", 9), ("aspirin", 21), ("CH3CH2OH", 9)])
def test_builtin_molecules(name, n_atoms):
    assert len(builtin_molecule(name)) == n_atoms


def test_unknown_molecule_and_bad_settings():
    with pytest.raises(InvalidInputError, match="unknown molecule"):
        builtin_molecule("unobtainium")
    with pytest.raises(InvalidInputError, match="stride"):
        run_langevin("water", n_frames=2, stride=0, calculator=EMT())
    with pytest.raises(InvalidInputError, match="temperature"):
        run_langevin("water", n_frames=2, temperature=-1.0, calculator=EMT())


@needs_tblite
def test_xtb_langevin_matches_single_points():
    from tblite.ase import TBLite

    frames = run_langevin("water", n_frames=2, stride=1, equilibration=1, seed=0)
    assert frames[0].info["method"] == "GFN2-xTB"
    for a in frames:
        ref = a.copy()
        ref.calc = TBLite(method="GFN2-xTB", verbosity=0)
        # during MD tblite starts each SCF from the previous step's solution: converged to its default
        # accuracy, a fresh single point agrees to ~1e-8 eV in energy and ~1e-5 eV/Å in forces
        np.testing.assert_allclose(a.get_potential_energy(), ref.get_potential_energy(), rtol=0, atol=1e-7)
        np.testing.assert_allclose(a.get_forces(), ref.get_forces(), atol=1e-4)


# ---------------------------------------------------------------------------------------------- the shipped trajectory
def test_shipped_trajectory(shipped):
    mols, unit = shipped
    path = shipped_trajectory_path()
    assert path.name == SHIPPED_TRAJECTORY and path.stat().st_size < 2e6
    assert unit == "eV" and len(mols) == 1500 and mols.forces is not None
    assert set(mols.numbers[:9].tolist()) == {1, 6, 8}
    # a 500 K trajectory: forces of order eV/Å, energies spread by ~0.1 eV, no frame far from the others
    assert 0.3 < np.mean(np.abs(mols.forces)) < 1.5
    assert 0.02 < mols.energies.std() < 0.5


@needs_tblite
def test_shipped_trajectory_labels_are_gfn2_xtb(shipped):
    from tblite.ase import TBLite

    mols, _ = shipped
    for i in (0, 1499):
        a = mols[i].to_ase()[0]
        ref = a.copy()
        ref.calc = TBLite(method="GFN2-xTB", verbosity=0)
        np.testing.assert_allclose(a.get_potential_energy(), ref.get_potential_energy(), atol=1e-6)
        # SCF restarts (see above): up to ~2e-4 eV/Å here, far below any model's error
        np.testing.assert_allclose(a.get_forces(), ref.get_forces(), atol=1e-3)


# ---------------------------------------------------------------------------------------------- commands
@pytest.fixture(scope="module")
def md_files(tmp_path_factory, shipped):
    mols, _ = shipped
    d = tmp_path_factory.mktemp("md")
    part = mols[:240]
    write_sgdml_npz(d / "eth.npz", part, energy_unit="eV")
    # as the MD17 files: kcal/mol, no unit recorded
    np.savez(d / "md17.npz", z=part.numbers[:9], R=part.positions.reshape(-1, 9, 3),
             E=part.energies[:, None] / KCAL_MOL_IN_EV, F=part.forces.reshape(-1, 9, 3) / KCAL_MOL_IN_EV)
    write_frames(d / "train.extxyz", mols[:100], energy_unit="eV")
    write_frames(d / "valid.extxyz", mols[150:180], energy_unit="eV")
    write_frames(d / "test.extxyz", mols[200:230], energy_unit="eV")
    write_frames(d / "nolabels.extxyz", mols[200:205].with_labels(None, None), energy_unit=None)
    return d


def _run(args):
    out = CliRunner().invoke(cli, [str(a) for a in args])
    return out


def test_train_on_npz_block_split_reports_force_errors(md_files, tmp_path):
    model = tmp_path / "m.npz"
    out = _run(["train", "--data", md_files / "eth.npz", "--n-train", 60, "--n-test", 40, "--representation", "cm-unsorted",
                "-o", model, "-q"])
    assert out.exit_code == 0, out.output
    assert "selected on 27 validation frames" in out.output  # the whole validation block: frames 160..186
    assert "test MAE on 40 molecules" in out.output and "forces" in out.output and "eV/Å" in out.output
    assert molkrr.load_model(model).energy_unit == "eV"


def test_train_from_md17_converts_to_the_requested_unit(md_files, tmp_path):
    out = _run(["train", "--data", md_files / "md17.npz", "--representation", "cm-unsorted", "--sigma", "50", "-o",
                tmp_path / "m.npz", "-q"])
    assert out.exit_code != 0 and "--unit" in out.output  # no unit in the file, none given
    out = _run(["train", "--data", md_files / "md17.npz", "--unit", "kcal/mol", "--representation", "cm-unsorted",
                "--sigma", "50", "-o", tmp_path / "m.npz", "-q"])
    assert out.exit_code == 0, out.output
    assert molkrr.load_model(tmp_path / "m.npz").energy_unit == "kcal/mol"
    # a file that records its unit is converted to --unit: same model up to the unit
    out = _run(["train", "--data", md_files / "eth.npz", "--unit", "kcal/mol", "--representation", "cm-unsorted",
                "--sigma", "50", "-o", tmp_path / "m2.npz", "-q"])
    assert out.exit_code == 0, out.output
    q = read_frames(md_files / "eth.npz")[0][:3]
    np.testing.assert_allclose(molkrr.load_model(tmp_path / "m2.npz").predict(q), molkrr.load_model(tmp_path / "m.npz").predict(q),
                               rtol=1e-9)


def test_train_with_explicit_files_then_predict_forces(md_files, tmp_path):
    model = tmp_path / "m.npz"
    out = _run(["train", "--train", md_files / "train.extxyz", "--valid", md_files / "valid.extxyz", "--test",
                md_files / "test.extxyz", "--representation", "cm-unsorted", "-o", model, "-q"])
    assert out.exit_code == 0, out.output
    assert "selected on 30 validation frames" in out.output and "trained on 100 molecules" in out.output
    pred = tmp_path / "pred.extxyz"
    out = _run(["predict", model, md_files / "test.extxyz", "--forces", "--output", pred, "-q"])
    assert out.exit_code == 0, out.output
    assert "against the file's reference: energy MAE" in out.output and "force MAE" in out.output
    m = molkrr.load_model(model)
    back, unit = read_frames(pred)
    assert unit == "eV" and len(back) == 30
    ref_e, ref_f = m.predict_energies_and_forces(read_frames(md_files / "test.extxyz")[0])
    np.testing.assert_allclose(back.energies, ref_e, rtol=1e-12)
    np.testing.assert_allclose(back.forces, np.concatenate(ref_f), atol=1e-7)
    out = _run(["predict", model, md_files / "nolabels.extxyz", "-q"])  # no labels, no unit: just predictions
    assert out.exit_code == 0 and len(out.output.strip().splitlines()) == 5


def test_targets_need_forces_and_force_training(md_files, tmp_path):
    out = _run(["train", "--train", md_files / "nolabels.extxyz", "--unit", "eV", "-o", tmp_path / "m.npz"])
    assert out.exit_code != 0 and "no 'energy'" in out.output
    no_forces = tmp_path / "noforces.extxyz"
    mols = read_frames(md_files / "train.extxyz")[0]
    write_frames(no_forces, mols.with_labels(mols.energies, None), energy_unit="eV")
    out = _run(["train", "--train", no_forces, "--targets", "energy+forces", "--sigma", "50", "-o", tmp_path / "m.npz"])
    assert out.exit_code != 0 and "--targets" in out.output and "no forces" in out.output
    out = _run(["train", "--train", md_files / "train.extxyz", "--targets", "forces", "--representation", "cm-unsorted",
                "--sigma", "50", "-o", tmp_path / "m.npz", "-q"])
    if "targets" in molkrr.MolecularKRR._get_param_names():  # force training has landed
        assert out.exit_code == 0, out.output
    else:
        assert out.exit_code != 0 and "--targets forces" in out.output
    # --lam-forces fixes the ridge on the force rows (no selection); with energy targets it is refused
    out = _run(["train", "--train", md_files / "train.extxyz", "--targets", "energy+forces", "--representation",
                "cm-unsorted", "--sigma", "50", "--lam", "1e-6", "--lam-forces", "2e-7", "-o", tmp_path / "f.npz", "-q"])
    assert out.exit_code == 0, out.output
    assert molkrr.load_model(tmp_path / "f.npz").lam_forces_ == pytest.approx(2e-7)
    out = _run(["train", "--train", md_files / "train.extxyz", "--sigma", "50", "--lam-forces", "2e-7",
                "-o", tmp_path / "g.npz", "-q"])
    assert out.exit_code != 0 and "--lam-forces" in out.output


def test_demo_md_runs_small(md_files):
    out = _run(["demo-md", "--data", md_files / "eth.npz", "--n-train", 40, "--n-valid", 20, "--n-test", 20,
                "--representation", "cm-unsorted", "--nve-steps", 4, "-q"])
    assert out.exit_code == 0, out.output
    for text in ("held-out energy MAE", "held-out force MAE", "predicting zero force", "NVE through MolkrrCalculator"):
        assert text in out.output


@needs_tblite
def test_md_command_writes_extxyz_and_npz(tmp_path):
    for name in ("w.extxyz", "w.npz"):
        out = _run(["md", "water", "--frames", 3, "--stride", 1, "--equilibration", 0, "-o", tmp_path / name, "-q"])
        assert out.exit_code == 0, out.output
        mols, unit = read_frames(tmp_path / name)
        assert unit == "eV" and len(mols) == 3 and mols.forces is not None


def test_missing_tblite_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tblite.ase", None)  # import fails as if tblite were not installed
    with pytest.raises(DatasetError, match=r"molkrr\[md\]"):
        run_langevin("water", n_frames=1)


def test_md_starts_from_an_xyz_file(tmp_path):
    start = tmp_path / "start.xyz"
    water = builtin_molecule("water")
    water.positions += 0.05  # any geometry
    ase.io.write(start, water)
    frames = run_langevin(start, n_frames=1, stride=1, equilibration=0, calculator=EMT())
    assert frames[0].get_chemical_formula() == "H2O"
    with pytest.raises(DatasetError, match="cannot read"):
        bad = tmp_path / "bad.xyz"
        bad.write_text("garbage\n")
        run_langevin(bad, n_frames=1, calculator=EMT())
