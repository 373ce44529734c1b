"""The molkrr command: train, predict, demo; one-line errors on bad input."""

from __future__ import annotations

import subprocess
import sys

import ase.io
import numpy as np
import pytest
from click.testing import CliRunner

import molkrr
from molkrr.cli import cli
from molkrr.datasets import load_qm9, read_xyz, write_xyz


@pytest.fixture()
def runner():
    return CliRunner()


@pytest.fixture(scope="module")
def xyz_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    mols = load_qm9(80, seed=2, unit="eV")
    train = d / "train.extxyz"
    write_xyz(train, mols[:70], energies=mols.energies[:70])
    query = d / "query.xyz"
    write_xyz(query, mols[70:])
    return d, mols


def test_train_on_xyz_then_predict_with_forces(runner, xyz_files):
    d, mols = xyz_files
    model_path = d / "model.npz"
    out = runner.invoke(
        cli,
        ["train", "--xyz", str(d / "train.extxyz"), "--unit", "eV", "--representation", "cm-unsorted",
         "--sigma", "30", "--lam", "1e-8", "-o", str(model_path), "-q"],
    )
    assert out.exit_code == 0, out.output
    assert "trained on 70 molecules" in out.output
    pred_path = d / "pred.extxyz"
    out = runner.invoke(cli, ["predict", str(model_path), str(d / "query.xyz"), "--forces", "-o", str(pred_path), "-q"])
    assert out.exit_code == 0, out.output
    frames = ase.io.read(pred_path, ":")
    assert len(frames) == 10
    model = molkrr.load_model(model_path)
    assert model.energy_unit == "eV"
    energies, forces = model.predict_energies_and_forces(read_xyz(d / "query.xyz"))  # positions as written
    np.testing.assert_allclose([a.get_potential_energy() for a in frames], energies, rtol=1e-12)
    for a, f in zip(frames, forces):
        np.testing.assert_allclose(a.get_forces(), f, atol=1e-7)
    # without --output: one line per frame on stdout
    out = runner.invoke(cli, ["predict", str(model_path), str(d / "query.xyz"), "-q"])
    assert out.exit_code == 0
    assert len(out.output.strip().splitlines()) == 10


def test_train_on_qm9_with_selection_reports_test_mae(runner, tmp_path):
    model_path = tmp_path / "m.npz"
    out = runner.invoke(
        cli,
        ["train", "--dataset", "qm9", "--n-train", "150", "--n-test", "30", "--representation", "cm-sorted",
         "--kernel", "laplacian", "-o", str(model_path), "-q"],
    )
    assert out.exit_code == 0, out.output
    assert "test MAE on 30 molecules" in out.output and "kcal/mol" in out.output
    model = molkrr.load_model(model_path)
    assert model.representation_.size_ == 29  # sized for all of QM9, not just the training molecules
    assert model.sigma_ > 0


def test_demo_runs_small(runner, tmp_path):
    png = tmp_path / "parity.png"
    out = runner.invoke(
        cli, ["demo", "--n-train", "120", "--n-test", "20", "--representation", "cm-unsorted", "--parity", str(png), "-q"]
    )
    assert out.exit_code == 0, out.output
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "test MAE" in out.output
    rel = float(out.output.split("max |analytic − FD| / max |F| = ")[1].split(";")[0])
    assert rel < 1e-5


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "missing.npz", "x.xyz"], "no such model file"),
        (["train", "--xyz", "missing.xyz", "-o", "m.npz"], "missing.xyz"),
        (["train", "--dataset", "qm9", "--xyz", "a.xyz"], "exactly one"),
        (["train", "--dataset", "qm9"], "--n-train"),
    ],
)
def test_bad_input_gives_one_line_error(runner, args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = runner.invoke(cli, args)
    assert out.exit_code != 0
    assert message in out.output
    assert "Traceback" not in out.output


def test_corrupt_model_and_bad_xyz_end_with_one_line(tmp_path, xyz_files):
    d, _ = xyz_files
    bad_model = tmp_path / "bad.npz"
    bad_model.write_bytes(b"PK\x03\x04 not really a zip")
    nan_xyz = tmp_path / "nan.xyz"
    nan_xyz.write_text("2\n\nH 0 0 0\nH nan 0 0.7\n")
    for args in (["predict", str(bad_model), str(d / "query.xyz")], ["train", "--xyz", str(nan_xyz), "-o", str(tmp_path / "m.npz")]):
        proc = subprocess.run([sys.executable, "-m", "molkrr.cli", *args], capture_output=True, text=True)
        assert proc.returncode != 0
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith("Error:")


def test_learn_metric_small_run_writes_model_and_trace(runner, tmp_path):
    model_path, png = tmp_path / "mlkrr.npz", tmp_path / "trace.png"
    ckpt = tmp_path / "ckpt.npz"
    args = ["learn-metric", "--dataset", "qm9", "--n-train", "120", "--n-val", "30", "--n-test", "40",
            "--representation", "cm-sorted", "--n-components", "20", "--init", "pca", "--max-iter", "6",
            "--shuffle-every", "3", "--validation-every", "2", "--checkpoint", str(ckpt),
            "-o", str(model_path), "--plot", str(png), "-q"]
    out = runner.invoke(cli, args)
    assert out.exit_code == 0, out.output
    assert "plain tuned KRR test MAE" in out.output and "MLKRR (" in out.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = molkrr.load_model(model_path)
    assert model.metric_.components_.shape == (20, model.representation_.n_features_)
    energies, forces = model.predict_energies_and_forces(load_qm9(3, seed=99))
    assert np.isfinite(energies).all() and all(np.isfinite(f).all() for f in forces)
    # the same command again resumes from the finished checkpoint: same learned metric
    model_path.unlink()
    out = runner.invoke(cli, args)
    assert out.exit_code == 0, out.output
    np.testing.assert_array_equal(molkrr.load_model(model_path).metric_.components_, model.metric_.components_)


def test_learn_metric_mlkr_baseline(runner, tmp_path):
    model_path, png = tmp_path / "mlkr.npz", tmp_path / "trace.png"
    args = ["learn-metric", "--dataset", "qm9", "--method", "mlkr", "--n-train", "100", "--n-val", "20", "--n-test", "30",
            "--representation", "cm-sorted", "--n-components", "10", "--init", "pca", "--max-iter", "5",
            "--validation-every", "2", "-o", str(model_path), "--plot", str(png), "-q"]
    out = runner.invoke(cli, args)
    assert out.exit_code == 0, out.output
    assert "MLKR (" in out.output and "MLKRR" not in out.output
    model = molkrr.load_model(model_path)
    assert type(model.metric_).__name__ == "MLKR" and model.metric_.components_.shape[0] == 10
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = runner.invoke(cli, [*args, "--checkpoint", str(tmp_path / "c.npz")])
    assert out.exit_code != 0 and "--checkpoint is for MLKRR" in out.output
