"""The corpus of bad inputs (tests/data/inputs, written by tests/make_bad_inputs.py): every case gives one
typed, one-line error through the Python API and a one-line ``Error:`` with exit status 1 through the CLI;
the good inputs the corpus is mutated from keep working."""

from __future__ import annotations

import json
import time
from pathlib import Path

import ase
import numpy as np
import pytest
from click.testing import CliRunner

import molkrr
import molkrr.errors as errors
from molkrr.cli import EXIT_BUG, cli
from molkrr.datasets import read_sgdml_npz, read_xyz

DATA = Path(__file__).parent / "data" / "inputs"
MANIFEST = json.loads((DATA / "manifest.json").read_text())
CASES = MANIFEST["cases"]
GOOD = DATA / "good"


def _ids(cases):
    return [f"{c['category']}/{c['name']}" for c in cases]


@pytest.fixture(scope="module")
def good_molecules():
    return read_xyz(GOOD / "train.extxyz")


# ---------------------------------------------------------------------------------------- the API
def _run_api_case(case: dict, train: molkrr.Molecules) -> None:
    target = case["target"]
    path = DATA / case["file"] if "file" in case else None
    if target == "load":
        molkrr.load_model(path, kind=molkrr.MolecularKRR)
    elif target == "read":
        read_xyz(path)
    elif target == "train":
        mols = read_xyz(path, require_energies=True)
        molkrr.MolecularKRR(molkrr.CoulombMatrix(), sigma=20.0).fit(mols)
    elif target == "predict":
        molkrr.load_model(GOOD / "model_cm.npz").predict_energies_and_forces(read_xyz(path))
    elif target == "sgdml":
        read_sgdml_npz(path)
    elif target == "api":
        _API[case["call"]](case["args"], train)
    else:  # pragma: no cover - a manifest this test does not know
        raise AssertionError(f"unknown target {target!r}")


def _from_list(args, train):
    molkrr.Molecules.from_list(args["numbers"], args["positions"], energies=args.get("energies"))


def _fit_representation(args, train):
    getattr(molkrr, args["class"])(**args["params"]).fit(train)


def _fit_model(args, train):
    kw = {k: args[k] for k in ("lam", "sigma", "kernel") if k in args}
    kw.setdefault("sigma", 20.0)
    y = [float(e) for e in args["energies"]] if "energies" in args else None
    molkrr.MolecularKRR(molkrr.CoulombMatrix(), **kw).fit(train, y)


def _fit_kernel_ridge(args, train):
    X = [[float(v) if v == "nan" else v for v in row] if isinstance(row, list) else row for row in args["X"]]
    molkrr.KernelRidge(sigma=1.0).fit(X, args["y"])


def _allow_elements(args, train):
    from molkrr.applicability import allow_elements

    allow_elements(molkrr.load_model(GOOD / args["model"]), args["elements"])


def _atoms(args):
    return ase.Atoms(numbers=args["numbers"], positions=args["positions"], pbc=args.get("pbc", False),
                     cell=[10.0, 10.0, 10.0] if args.get("pbc") else None)


def _calculator(args, train):
    atoms = _atoms(args)
    atoms.calc = molkrr.MolkrrCalculator(GOOD / args["model"])
    atoms.get_potential_energy()


def _predict(args, train):
    molkrr.load_model(GOOD / args["model"]).predict(_atoms(args))


_API = {
    "from_list": _from_list,
    "fit_representation": _fit_representation,
    "fit_model": _fit_model,
    "fit_kernel_ridge": _fit_kernel_ridge,
    "allow_elements": _allow_elements,
    "calculator": _calculator,
    "predict": _predict,
}


@pytest.mark.parametrize("case", [c for c in CASES if not c.get("cli_only")], ids=_ids([c for c in CASES if not c.get("cli_only")]))
def test_bad_input_through_the_api(case, good_molecules):
    expected = getattr(errors, case["expect"])
    t0 = time.perf_counter()
    with pytest.raises(errors.MolkrrError) as info:
        _run_api_case(case, good_molecules)
    assert time.perf_counter() - t0 < 30  # a hang guard, not a speed test
    assert isinstance(info.value, expected), f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert message and "\n" not in message
    if "match" in case:
        assert case["match"] in message, message


# ---------------------------------------------------------------------------------------- the CLI
def _cli_args(case: dict, tmp_path: Path) -> list[str] | None:
    path = str(DATA / case["file"]) if "file" in case else None
    target = case["target"]
    if target == "load":
        return ["predict", path, str(GOOD / "query.xyz"), "-q"]
    if target in ("read", "predict"):
        return ["predict", str(GOOD / "model_cm.npz"), path, "-q"]
    if target == "train":
        extra = ["--n-train", str(case["n_train"])] if "n_train" in case else []
        return ["train", "--xyz", path, "--unit", "eV", "--sigma", "20", "-o", str(tmp_path / "m.npz"), "-q", *extra]
    return None


CLI_CASES = [c for c in CASES if c["target"] in ("load", "read", "predict", "train")]


@pytest.mark.parametrize("case", CLI_CASES, ids=_ids(CLI_CASES))
def test_bad_input_through_the_cli(case, tmp_path):
    args = _cli_args(case, tmp_path)
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 1, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), out.output
    assert "Traceback" not in out.output
    if "match" in case:
        assert case["match"] in lines[0], lines[0]
    assert not (tmp_path / "m.npz").exists()


def test_corpus_covers_every_category():
    counts: dict[str, int] = {}
    for c in CASES:
        counts[c["category"]] = counts.get(c["category"], 0) + 1
    expected = {"model-container", "model-header", "model-fields", "xyz", "training-data", "prediction-input", "sgdml", "api"}
    assert expected <= set(counts), counts
    assert all(n >= 3 for n in counts.values()), counts
    for c in CASES:
        assert hasattr(errors, c["expect"]) and issubclass(getattr(errors, c["expect"]), errors.MolkrrError)
        if "file" in c:
            assert (DATA / c["file"]).is_file(), c["file"]
    # every file was written by the generator: none missing from the manifest, none added by hand
    on_disk = {str(p.relative_to(DATA)) for p in (DATA / "bad").rglob("*") if p.is_file()}
    assert on_disk == {c["file"] for c in CASES if "file" in c}
    assert {str(p.relative_to(DATA)) for p in GOOD.iterdir()} == set(MANIFEST["good"])


# ---------------------------------------------------------------------------------------- the good inputs
@pytest.mark.parametrize("name", [g for g in MANIFEST["good"] if g.startswith("good/model")] + ["good/kernel_ridge.npz"])
def test_good_models_load_and_predict(name, good_molecules):
    model = molkrr.load_model(DATA / name)
    if isinstance(model, molkrr.KernelRidge):
        assert np.isfinite(model.predict(np.zeros((2, 3)))).all()
        return
    query = read_xyz(GOOD / "query.xyz")
    energies = model.predict(query)
    assert np.isfinite(energies).all()
    if getattr(model.representation_, "differentiable", False):
        e2, forces = model.predict_energies_and_forces(query)
        np.testing.assert_allclose(e2, energies, rtol=1e-10)
        assert all(np.isfinite(f).all() for f in forces)


def test_crlf_and_lf_files_read_the_same():
    lf, crlf = read_xyz(GOOD / "train.extxyz"), read_xyz(GOOD / "train_crlf.extxyz")
    np.testing.assert_array_equal(lf.numbers, crlf.numbers)
    np.testing.assert_array_equal(lf.positions, crlf.positions)
    np.testing.assert_array_equal(lf.energies, crlf.energies)


def test_training_on_crlf_file_through_the_cli(tmp_path):
    out = CliRunner().invoke(cli, ["train", "--xyz", str(GOOD / "train_crlf.extxyz"), "--unit", "eV", "--sigma", "20",
                                   "-o", str(tmp_path / "m.npz"), "-q"])
    assert out.exit_code == 0, out.output
    assert "trained on 14 molecules" in out.output


def test_large_molecule_trains_and_predicts():
    big = read_xyz(GOOD / "large_molecule.xyz")
    assert big.n_atoms[0] == 150
    pair = molkrr.Molecules.concatenate([big, big.with_positions(big.positions * 1.02)])
    model = molkrr.MolecularKRR(molkrr.CoulombMatrix(), sigma=500.0).fit(pair, [0.0, 1.0])
    energies, (forces, _) = model.predict_energies_and_forces(pair)
    assert np.isfinite(energies).all() and np.isfinite(forces).all()


def test_periodic_cell_file_reads_and_predicts_but_calculator_refuses():
    mols = read_xyz(GOOD / "periodic_cell.extxyz")
    assert np.isfinite(molkrr.load_model(GOOD / "model_cm.npz").predict(mols)).all()
    atoms = ase.io.read(GOOD / "periodic_cell.extxyz")
    atoms.calc = molkrr.MolkrrCalculator(GOOD / "model_cm.npz")
    with pytest.raises(errors.MoleculeError, match="periodic"):
        atoms.get_potential_energy()


# ---------------------------------------------------------------------------------------- opt-in and bugs
def test_allow_element_opt_in_api_cli_and_calculator(tmp_path):
    from molkrr.applicability import allow_elements

    path = GOOD / "model_cm.npz"
    nitrogen = DATA / "bad" / "prediction-input" / "unseen_element_N.xyz"
    model = allow_elements(molkrr.load_model(path), ["N"])
    assert np.isfinite(model.predict(read_xyz(nitrogen))).all()
    model.save(tmp_path / "with_n.npz")  # the opt-in is recorded with the model
    assert 7 in molkrr.load_model(tmp_path / "with_n.npz").elements_
    out = CliRunner().invoke(cli, ["predict", str(path), str(nitrogen), "--allow-element", "N", "-q"])
    assert out.exit_code == 0, out.output
    atoms = read_xyz(nitrogen).to_ase()[0]
    atoms.calc = molkrr.MolkrrCalculator(path, allow_elements=["N"])
    assert np.isfinite(atoms.get_potential_energy())
    assert 7 not in molkrr.load_model(path).elements_  # the file itself is untouched


def test_a_bug_shows_its_traceback_and_exit_status(monkeypatch, tmp_path):
    import molkrr.persistence

    def broken(path, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(molkrr.persistence, "load_model", broken)
    out = CliRunner().invoke(cli, ["predict", str(GOOD / "model_cm.npz"), str(GOOD / "query.xyz")])
    assert out.exit_code == EXIT_BUG
    assert "Traceback" in out.output and "KeyError" in out.output and "bug in molkrr" in out.output
