"""On-the-fly learning (molkrr.active, `molkrr learn-md`) end to end with a fake labeller (ASE's EMT, no xTB)."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.calculators.emt import EMT
from click.testing import CliRunner

from molkrr.active import LearnResult, default_model, learn_on_the_fly
from molkrr.cli import cli
from molkrr.datasets.md import builtin_molecule
from molkrr.errors import InvalidInputError
from molkrr.persistence import load_model


class CountingEMT(EMT):
    """EMT (a cheap potential for H, C, N, O) that counts its calls: the fake reference method."""

    calls = 0

    def calculate(self, *args, **kwargs):
        type(self).calls += 1
        super().calculate(*args, **kwargs)


@pytest.fixture(scope="module")
def learned():
    CountingEMT.calls = 0
    model = default_model().set_params(sigma=2.0, lam=1e-5, lam_forces=1e-6)
    return learn_on_the_fly(builtin_molecule("ethanol"), CountingEMT(), threshold=0.02, steps=25, model=model,
                            temperature_K=300.0, seed=3, max_calls=8, check_every=1)


def test_learning_labels_where_unsure_and_refits(learned):
    res: LearnResult = learned
    rep = res.report
    assert rep.steps == 25 and not rep.interrupted
    # the start is labelled; every later call is a step whose predicted std passed the threshold
    assert 2 <= rep.reference_calls <= 8 and len(res.frames) == rep.reference_calls
    assert rep.refits == rep.reference_calls and rep.selections == 0  # sigma, lambdas fixed: no selection
    assert rep.full_fits == 1  # every later refit extended the factor of the one before
    assert len(rep.called_at) == rep.reference_calls - 1
    assert all(rep.max_std[s] > 0.02 for s in rep.called_at)
    # the labels are the reference's at those geometries
    emt = EMT()
    for atoms, e in zip(res.frames.to_ase(), res.frames.energies):
        atoms.calc = emt
        assert atoms.get_potential_energy() == pytest.approx(e, rel=1e-12, abs=1e-12)
    # the model interpolates its training frames: energies and forces to within its ridge
    E, F = res.model.predict_energies_and_forces(res.frames)
    scale = np.abs(res.frames.forces).max()
    assert np.abs(np.concatenate(F) - res.frames.forces).max() < 0.05 * scale
    assert "reference calls" in rep.summary()


def test_std_at_a_labelled_frame_is_below_the_threshold(learned):
    _, _, _, f_std = learned.model.predict_energies_and_forces(learned.frames[-1:], return_std=True)
    assert float(np.max(f_std[0])) < 0.02


def test_max_calls_bounds_the_reference(learned):
    CountingEMT.calls = 0
    res = learn_on_the_fly(builtin_molecule("ethanol"), CountingEMT(), threshold=1e-6, steps=10,
                           model=default_model().set_params(sigma=2.0, lam=1e-5, lam_forces=1e-6), max_calls=3,
                           check_every=1)
    assert res.report.reference_calls == 3 and res.report.stopped_by_max_calls
    assert "budget" in res.report.summary()


def test_selection_runs_when_hyperparameters_are_free(monkeypatch):
    import molkrr.active as active

    monkeypatch.setattr(active, "RESELECT_AT", (4,))
    res = learn_on_the_fly(builtin_molecule("ethanol"), EMT(), threshold=1e-6, steps=6, max_calls=5,
                           check_every=1)
    assert res.report.selections == 1 and res.report.reference_calls == 5
    assert res.report.sigma > 0 and res.report.lam > 0 and res.report.lam_forces > 0


@pytest.mark.parametrize("kwargs, match", [
    ({"threshold": 0.0}, "threshold"),
    ({"threshold": float("nan")}, "threshold"),
    ({"steps": 0}, "steps"),
    ({"max_calls": 0}, "max_calls"),
    ({"timestep_fs": -1.0}, "timestep"),
    ({"model": default_model().set_params(targets="energy")}, "forces"),
    ({"model": default_model().set_params(energy_unit="kcal/mol")}, "eV"),
])
def test_bad_arguments_are_refused(kwargs, match):
    args = {"threshold": 0.05, "steps": 5, **kwargs}
    with pytest.raises(InvalidInputError, match=match):
        learn_on_the_fly(builtin_molecule("ethanol"), EMT(), **args)


def test_cli_learn_md_writes_model_and_frames(tmp_path, monkeypatch):
    import molkrr.datasets.md as md

    monkeypatch.setattr(md, "xtb_calculator", lambda method="GFN2-xTB", **kw: EMT())
    out = tmp_path / "model.npz"
    result = CliRunner().invoke(cli, ["learn-md", "ethanol", "--steps", "8", "--threshold", "0.02", "--sigma", "2.0",
                                      "--lam", "1e-5", "--lam-forces", "1e-6", "--max-calls", "4", "--check-every", "1", "-o", str(out),
                                      "--trajectory", str(tmp_path / "traj.extxyz"), "-q"])
    assert result.exit_code == 0, result.output
    assert "reference calls" in result.output
    model = load_model(out)
    frames = ase.io.read(tmp_path / "model-frames.extxyz", ":")
    assert 1 <= len(frames) <= 4 and frames[0].info["energy_unit"] == "eV"
    E, _ = model.predict_energies_and_forces(frames[0])
    assert E[0] == pytest.approx(frames[0].get_potential_energy(), abs=0.05)
    assert len(ase.io.read(tmp_path / "traj.extxyz", ":")) == 1  # steps 0 (every 10th)


def test_check_every_predicts_the_std_on_those_steps_only():
    res = learn_on_the_fly(builtin_molecule("ethanol"), EMT(), threshold=1e-6, steps=9, check_every=3, max_calls=10,
                           model=default_model().set_params(sigma=2.0, lam=1e-5, lam_forces=1e-6))
    checked = np.flatnonzero(np.isfinite(res.report.max_std))
    assert checked.tolist() == [3, 6, 9]  # not step 0: the start is labelled already
    assert res.report.called_at == [3, 6, 9]  # every check passes a threshold this small
