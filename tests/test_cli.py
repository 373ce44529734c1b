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


@pytest.mark.parametrize("extra", [[], ["--n-sparse", "300"]], ids=["exact", "sparse"])
def test_train_local_kernel_on_qm9_with_the_element_baseline(runner, tmp_path, extra):
    model_path = tmp_path / "local.npz"
    out = runner.invoke(cli, ["train", "--dataset", "qm9", "--n-train", "120", "--n-test", "30", "--representation",
                              "fchl19-local", "-o", str(model_path), "-q", *extra])
    assert out.exit_code == 0, out.output
    assert "test MAE on 30 molecules" in out.output
    model = molkrr.load_model(model_path)
    assert model.baseline_ == "elements" and model.baseline_elements_.tolist()[:2] == [1, 6]
    assert (model.krr_.X_.shape[0] <= 300) == bool(extra)
    mae = float(out.output.split("test MAE on 30 molecules:")[1].split()[0])
    assert mae < 20.0  # without the baseline the local kernel is off by tens of kcal/mol (docs/local-kernels.md)


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


# ---------------------------------------------------------------------------------------- splits that ask for too much
def _small_frames(n, seed=0):
    """n labelled frames (eV, eV/Å), water (3 atoms) and methane (5 atoms) alternating: a larger molecule in a
    held-out set is what used to surface as an unrelated representation-size error."""
    from ase.build import molecule

    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        a = molecule("H2O" if i % 2 == 0 else "CH4")
        a.positions += 0.02 * rng.standard_normal(a.positions.shape)
        frames.append(a)
    mols = molkrr.Molecules.from_ase(frames)
    return mols.with_labels(rng.standard_normal(n), rng.standard_normal((len(mols.numbers), 3)))


@pytest.fixture(scope="module")
def split_files(tmp_path_factory):
    from molkrr.datasets import write_frames, write_sgdml_npz

    d = tmp_path_factory.mktemp("splits")
    mols = _small_frames(20)
    write_frames(d / "f20.extxyz", mols, energy_unit="eV")
    write_frames(d / "v6.extxyz", _small_frames(6, seed=1), energy_unit="eV")
    water = mols[np.arange(0, 20, 2)]  # sGDML files hold one molecule
    write_sgdml_npz(d / "w10.npz", molkrr.Molecules.concatenate([water, water]), energy_unit="eV")
    return d


def _one_error_line(out):
    assert out.exit_code == 1, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), out.output
    return lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        # --xyz (random split): the request and the file's count, before any representation sees the data
        (["--xyz", "f20.extxyz", "--n-train", "15", "--n-test", "10"],
         "asked for 15 training + 10 test frames but {d}/f20.extxyz holds 20 frames"),
        (["--xyz", "f20.extxyz", "--n-test", "19"], "asked for 19 test frames and at least 2 for training but"),
        (["--xyz", "f20.extxyz", "--n-valid", "30", "--n-test", "10"],
         "asked for 30 validation + 10 test frames and at least 2 for training but {d}/f20.extxyz holds 20 frames"),
        (["--data", "w10.npz", "--split", "random", "--n-train", "12", "--n-valid", "5", "--n-test", "5"],
         "asked for 12 training + 5 validation + 5 test frames but {d}/w10.npz holds 20 frames"),
        # --data (block split): each block's size
        (["--data", "w10.npz", "--n-train", "50"], "asked for 50 training frames but the training block holds 13 (frames 0..12)"),
        (["--data", "w10.npz", "--n-valid", "10"],
         "asked for 10 validation frames but the validation block holds 2 (frames 13..14)"),
        (["--data", "w10.npz", "--n-test", "9"], "asked for 9 test frames but the test block holds 7 (frames 13..19)"),
        # explicit files
        (["--train", "f20.extxyz", "--valid", "v6.extxyz", "--n-valid", "7"], "asked for 7 validation frames but {d}/v6.extxyz holds 6 frames"),
        (["--train", "f20.extxyz", "--n-train", "21"], "asked for 21 training frames but {d}/f20.extxyz holds 20 frames"),
        # QM9: refused before anything is loaded
        (["--dataset", "qm9", "--n-train", "130000", "--n-test", "1000"],
         "asked for 130000 training + 1000 test molecules but QM9 holds 130831 molecules"),
    ],
)
def test_train_split_larger_than_the_data_names_request_and_count(runner, split_files, args, message):
    d = split_files
    args = [str(d / a) if a.endswith((".extxyz", ".npz")) else a for a in args]
    out = runner.invoke(cli, ["train", *args, "--sigma", "1", "-o", str(d / "m.npz"), "-q"])
    line = _one_error_line(out)
    assert message.format(d=d) in line, line
    assert not (d / "m.npz").exists()


def test_split_errors_are_typed():
    from molkrr.cli import _check_split
    from molkrr.datasets import block_split
    from molkrr.errors import InvalidInputError, MolkrrError, SplitSizeError

    assert issubclass(SplitSizeError, InvalidInputError) and issubclass(SplitSizeError, MolkrrError)
    with pytest.raises(SplitSizeError, match="asked for 500 training \\+ 100 test molecules but the file holds 320 molecules"):
        _check_split("the file", 320, 500, 0, 100)
    _check_split("the file", 320, 220, 0, 100)  # exactly enough
    with pytest.raises(SplitSizeError, match="the test block holds 7"):
        block_split(20, None, 0, 8)  # no validation block: test = frames 13..19


@pytest.mark.parametrize(
    "args, message",
    [
        (["--xyz", "f20.extxyz", "--n-train", "10", "--n-val", "5", "--n-test", "6"],
         "asked for 10 training + 5 validation + 6 test frames but {d}/f20.extxyz holds 20 frames"),
        (["--dataset", "qm9", "--n-train", "130000", "--n-val", "500", "--n-test", "1000"],
         "asked for 130000 training + 500 validation + 1000 test molecules but QM9 holds 130831 molecules"),
    ],
)
def test_learn_metric_split_larger_than_the_data_names_request_and_count(runner, split_files, args, message):
    d = split_files
    args = [str(d / a) if a.endswith(".extxyz") else a for a in args]
    out = runner.invoke(cli, ["learn-metric", *args, "-o", str(d / "m.npz"), "--plot", str(d / "t.png"), "-q"])
    line = _one_error_line(out)
    assert message.format(d=d) in line, line
    assert not (d / "m.npz").exists()


def test_learn_metric_xyz_split_that_fits_runs(runner, split_files, tmp_path):
    d = split_files
    out = runner.invoke(cli, ["learn-metric", "--xyz", str(d / "f20.extxyz"), "--n-train", "10", "--n-val", "4",
                              "--n-test", "6", "--representation", "cm-sorted", "--max-iter", "2", "--validation-every", "1",
                              "--unit", "eV", "-o", str(tmp_path / "m.npz"), "--plot", str(tmp_path / "t.png"), "-q"])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "m.npz").exists()
