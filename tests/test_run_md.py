"""`molkrr run-md` and molkrr.dynamics: MD with a trained model through ASE, trajectory output, report, bad input."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from click.testing import CliRunner

from molkrr import CoulombMatrix, MolecularKRR, Molecules
from molkrr.cli import cli
from molkrr.datasets import read_frames, write_frames
from molkrr.datasets.md import shipped_trajectory_path
from molkrr.dynamics import TrajectoryAppender, run_md
from molkrr.errors import InvalidInputError


@pytest.fixture(scope="module")
def frames():
    return read_frames(shipped_trajectory_path())[0]


@pytest.fixture(scope="module")
def model(frames):
    """A tiny ethanol model: 40 frames, unsorted Coulomb matrix, fixed σ and λ (smooth enough for short MD)."""
    return MolecularKRR(CoulombMatrix("unsorted"), sigma=60.0, lam=1e-4, energy_unit="eV").fit(frames[0:800:20])


@pytest.fixture(scope="module")
def files(tmp_path_factory, model, frames):
    d = tmp_path_factory.mktemp("run_md")
    model.save(d / "model.npz")
    write_frames(d / "start.extxyz", frames[1200], energy_unit="eV")
    write_frames(d / "three.extxyz", frames[1200:1203], energy_unit="eV")
    ase.io.write(d / "plain.xyz", frames[1200].to_ase()[0], format="xyz")  # no energy, no unit
    fluorine = frames[1200].to_ase()[0]
    fluorine.numbers[3] = 9
    ase.io.write(d / "fluorine.xyz", fluorine, format="xyz")
    return d


def _run(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _run_md(files, *extra):
    out = files / "traj.extxyz"
    result = _run(["run-md", files / "model.npz", files / "start.extxyz", "-o", out, "-q", *extra])
    return result, out


def test_nve_writes_a_readable_trajectory_and_reports(files, model):
    result, out = _run_md(files, "--steps", 20, "--interval", 5, "--timestep", 0.25, "--seed", 1)
    assert result.exit_code == 0, result.output
    images = ase.io.read(out, ":")
    assert len(images) == 5 and [a.info["step"] for a in images] == [0, 5, 10, 15, 20]
    E = np.array([a.get_potential_energy() for a in images])
    F = np.array([a.get_forces() for a in images])
    assert F.shape == (5, 9, 3) and np.all(np.isfinite(E))
    # the written energies and forces are the model's at the written geometries (positions carry 8 decimals)
    pred_E, pred_F = model.predict_energies_and_forces(Molecules.from_ase(images))
    np.testing.assert_allclose(E, pred_E, rtol=0, atol=1e-5)
    np.testing.assert_allclose(F, np.array(pred_F), rtol=0, atol=1e-4)
    assert images[1].get_momenta().any()  # momenta come with each frame
    mols, unit = read_frames(out)  # molkrr reads it back with its unit
    assert unit == "eV" and len(mols) == 5 and mols.forces is not None
    for text in ("NVE (velocity Verlet): 20 steps of 0.25 fs = 5 fs simulated", "ms per step", "per step / prediction =",
                 "max |E_tot - E_tot(0)|", "meV/atom/ps", "temperature: mean", "wrote 5 frames"):
        assert text in result.output, text


def test_langevin_runs_and_reports_temperature(files):
    result, out = _run_md(files, "--steps", 12, "--interval", 4, "--ensemble", "langevin", "--friction", 0.05,
                          "--temperature", 400)
    assert result.exit_code == 0, result.output
    assert "Langevin: 12 steps" in result.output and "temperature: mean" in result.output
    assert "E_tot(0)" not in result.output  # no drift line: the bath exchanges energy
    assert len(ase.io.read(out, ":")) == 4


def test_run_md_api_counts_steps_and_model_calls_and_conserves_energy(model, frames, tmp_path):
    atoms = frames[1300].to_ase()[0]
    report = run_md(model, atoms, steps=40, timestep_fs=0.25, temperature_K=300, ensemble="nve", interval=10,
                    output=tmp_path / "t.extxyz")
    assert report.steps == 40 and not report.interrupted
    assert report.model_calls == 40  # one per step (the start's is not counted); ASE's other reads hit its cache
    assert report.frames_written == 5 and len(report.potential) == 41
    worst, slope = report.energy_drift()
    assert worst < 1.0  # meV/atom over 10 fs with a 0.25 fs step
    assert report.predict_s > 0 and report.per_step_s > 0
    assert np.isfinite(report.temperatures).all()
    # the same seed gives the same run
    again = run_md(model, frames[1300].to_ase()[0], steps=40, timestep_fs=0.25, temperature_K=300, ensemble="nve")
    np.testing.assert_array_equal(again.potential, report.potential)


def test_interrupted_run_keeps_its_frames(model, frames, tmp_path):
    out = tmp_path / "cut.extxyz"
    atoms = frames[1300].to_ase()[0]
    calls = {"n": 0}
    original = model.predict_energies_and_forces

    def counting(mols, *args, **kwargs):  # the model answers, then the user presses Ctrl-C
        calls["n"] += 1
        if calls["n"] > 11 + 25:  # 11 timing calls, then 25 model calls of the run
            raise KeyboardInterrupt
        return original(mols, *args, **kwargs)

    model.predict_energies_and_forces = counting
    try:
        report = run_md(model, atoms, steps=100, timestep_fs=0.25, interval=5, output=out)
    finally:
        del model.predict_energies_and_forces
    assert report.interrupted and report.steps == 24 and report.frames_written == 5
    images = ase.io.read(out, ":")
    assert [a.info["step"] for a in images] == [0, 5, 10, 15, 20]
    assert "interrupted after 24 of 100 steps" in report.summary()


def test_first_frame_replaces_an_old_file_and_compressed_output_is_refused(tmp_path, frames):
    path = tmp_path / "old.extxyz"
    path.write_text("not a trajectory\n")
    atoms = frames[0].to_ase()[0]
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms.calc = SinglePointCalculator(atoms, energy=1.0, forces=np.zeros((9, 3)))
    with TrajectoryAppender(path) as w:
        w.write(atoms)
        w.write(atoms)
    assert len(ase.io.read(path, ":")) == 2
    with pytest.raises(InvalidInputError, match="uncompressed"):
        TrajectoryAppender(tmp_path / "t.extxyz.gz")


def test_several_frames_start_from_the_first_and_say_so(files):
    out = files / "three_traj.extxyz"
    result = _run(["run-md", files / "model.npz", files / "three.extxyz", "--steps", 2, "-o", out, "-q"])
    assert result.exit_code == 0, result.output
    assert "holds 3 frames; starting from the first" in result.output
    first = ase.io.read(out, 0)
    np.testing.assert_allclose(first.positions, ase.io.read(files / "three.extxyz", 0).positions, atol=1e-8)


def test_plain_xyz_start_works(files):
    result = _run(["run-md", files / "model.npz", files / "plain.xyz", "--steps", 2, "-o", files / "p.extxyz", "-q"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing model", "nope.npz"),
        ("missing start", "nowhere.xyz"),
        ("unseen element", "F"),
        ("compressed output", "uncompressed"),
        ("unwritable output", "no_such_dir"),
    ],
)
def test_bad_input_exits_1_with_one_line(files, case, message):
    model, start, out = files / "model.npz", files / "start.extxyz", files / "bad.extxyz"
    if case == "missing model":
        model = files / "nope.npz"
    elif case == "missing start":
        start = files / "nowhere.xyz"
    elif case == "unseen element":
        start = files / "fluorine.xyz"
    elif case == "compressed output":
        out = files / "bad.extxyz.gz"
    else:
        out = files / "no_such_dir" / "t.extxyz"
    result = _run(["run-md", model, start, "--steps", 2, "-o", out, "-q"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], result.output


def test_bad_numbers_are_usage_errors(files):
    result, _ = _run_md(files, "--steps", 0)
    assert result.exit_code == 2
    result, _ = _run_md(files, "--ensemble", "npt")
    assert result.exit_code == 2


def test_interrupted_command_prints_its_report_and_exits_130(files, monkeypatch):
    original = MolecularKRR.predict_energies_and_forces
    calls = {"n": 0}

    def counting(self, mols, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 11 + 8:  # 11 timing calls, the start and 7 steps
            raise KeyboardInterrupt
        return original(self, mols, *args, **kwargs)

    monkeypatch.setattr(MolecularKRR, "predict_energies_and_forces", counting)
    result, out = _run_md(files, "--steps", 50, "--interval", 2)
    assert result.exit_code == 130, result.output
    assert "interrupted after 7 of 50 steps" in result.output and "wrote 4 frames" in result.output
    assert len(ase.io.read(out, ":")) == 4
