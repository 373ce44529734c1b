"""The representation registry: names, lazy loading, and adding a representation as one new module."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import molkrr
import molkrr.representations as reps
from molkrr.representations import registry

HERE = Path(__file__).parent


def test_names_classes_and_cli_choices_come_from_the_registry():
    assert reps.REPRESENTATIONS == reps.molecular_representation_names()
    assert "fchl19-atomic" in reps.representation_names() and "fchl19-atomic" not in reps.REPRESENTATIONS
    classes = reps.representation_classes()
    assert molkrr.CoulombMatrix is reps.CoulombMatrix is classes["CoulombMatrix"]
    assert set(classes) <= set(molkrr.__all__) and set(classes) <= set(reps.__all__)
    assert set(classes) <= set(molkrr.persistence.allowed_classes())
    from molkrr.cli import train

    (option,) = [p for p in train.params if p.name == "representation"]
    assert tuple(option.type.choices) == tuple(reps.representation_names())  # per-atom forms: the local kernel


def test_make_representation_and_errors():
    rep = reps.make_representation("cm-eigenvalues", size=7)
    assert type(rep).__name__ == "CoulombMatrix" and rep.get_params() == {"variant": "eigenvalues", "size": 7}
    with pytest.raises(ValueError, match="unknown representation 'cm'; choose one of .*bob"):
        reps.make_representation("cm")
    with pytest.raises(AttributeError):
        reps.NoSuchRepresentation  # noqa: B018


def test_registration_rules(monkeypatch):
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))
    cls = reps.CoulombMatrix
    registry.register_representation("cm-sorted", variant="sorted", description="again")(cls)  # same: accepted
    with pytest.raises(ValueError, match="already registered"):
        registry.register_representation("cm-sorted", variant="unsorted")(cls)
    with pytest.raises(ValueError, match="no parameter"):
        registry.register_representation("cm-x", colour="red")(cls)


def test_qm9_sizing_is_each_representations_own():
    from molkrr.datasets.qm9 import MAX_ATOMS, MAX_ELEMENT_COUNTS, representation_params, sized_for_qm9

    assert sized_for_qm9(reps.make_representation("cm-sorted")).size == MAX_ATOMS
    assert sized_for_qm9(reps.make_representation("bob")).bag_sizes == MAX_ELEMENT_COUNTS
    assert sized_for_qm9(reps.make_representation("bob", elements=["C", "H"])).bag_sizes == {1: 20, 6: 9}
    fchl = reps.make_representation("fchl19")
    assert repr(sized_for_qm9(fchl)) == repr(fchl)
    assert representation_params("cm-unsorted") == {"size": 29}
    assert representation_params("bob") == {"bag_sizes": MAX_ELEMENT_COUNTS}
    assert representation_params("fchl19") == {}


def test_importing_the_package_loads_no_representation():
    code = (
        "import sys, molkrr, molkrr.representations as r; "
        "print(sorted(m for m in sys.modules if m.startswith('molkrr.representations.')), 'numba' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['molkrr.representations.base', 'molkrr.representations.registry'] False"


@pytest.fixture
def example_module(tmp_path, monkeypatch):
    """tests/example_representation.py dropped into the representations package as a new module."""
    folder = tmp_path / "extra"
    folder.mkdir()
    shutil.copy(HERE / "example_representation.py", folder / "pair_sums.py")
    monkeypatch.setattr(reps, "__path__", [*reps.__path__, str(folder)])
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))
    monkeypatch.setattr(registry, "_discovered", False)
    yield "pair-sums"
    sys.modules.pop("molkrr.representations.pair_sums", None)


def test_a_new_representation_is_one_new_module(example_module, tmp_path):
    """No other file changes: the registry finds the module; molkrr, model files and the contract suite follow."""
    import test_contract_representations as contract

    name = example_module
    assert name in reps.representation_names() and name in reps.REPRESENTATIONS
    cls = reps.get_spec(name).cls
    assert molkrr.PairSums is cls and molkrr.persistence.allowed_classes()["PairSums"] is cls
    checks = [getattr(contract, n) for n in dir(contract) if n.startswith("test_") and "name" in
              getattr(contract, n).__code__.co_varnames[: getattr(contract, n).__code__.co_argcount]]
    assert len(checks) >= 12
    for check in checks:
        kwargs = {"tmp_path": tmp_path} if "tmp_path" in check.__code__.co_varnames else {}
        check(name, **kwargs)
    assert np.isfinite(reps.make_representation(name).fit(contract.TRAIN).transform(contract.TRAIN)).all()
    # model files check its fields by the schema the module declares
    path = tmp_path / "pair_sums.npz"
    molkrr.MolecularKRR(cls(width=1.5), sigma=3.0).fit(contract.TRAIN, np.arange(len(contract.TRAIN), dtype=float)).save(path)
    assert molkrr.load_model(path).representation_.width == 1.5
    with np.load(path, allow_pickle=False) as data:
        members = {k: data[k] for k in data.files}
    header = json.loads(members["__header__"].tobytes())
    header["model"]["fitted"]["representation_"]["__estimator__"]["fitted"]["n_features_"] = 3
    members["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(path, **members)
    with pytest.raises(molkrr.errors.ModelFileError, match=r"representation_\.fitted\.n_features_: must be an integer in 2\.\.2"):
        molkrr.load_model(path)


def test_model_file_allow_list_is_filled_from_registries(monkeypatch):
    import ast

    from sklearn.base import BaseEstimator

    from molkrr import persistence

    allowed = persistence.allowed_classes()
    from molkrr.kernels import kernel_classes

    expected = {"KernelRidge", "MolecularKRR", "MLKR", "MLKRR", "DerivativeKRR", *reps.representation_classes(),
                *(k.__name__ for k in kernel_classes())}
    assert set(allowed) == expected and allowed["MolecularKRR"] is molkrr.MolecularKRR
    # persistence imports no estimator module, not even inside a function: the classes come from the
    # registries and check themselves (model_file_schema, molkrr.schema)
    tree = ast.parse(Path(persistence.__file__).read_text(encoding="utf-8"))
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level}
    assert imported == {"_atomic", "_version", "errors", "schema", "kernels", "representations.registry"}, imported

    monkeypatch.setattr(persistence, "_MODEL_CLASSES", dict(persistence._MODEL_CLASSES))

    class Extra(BaseEstimator):
        pass

    assert persistence.register_model_class(Extra) is Extra and persistence.allowed_classes()["Extra"] is Extra
    persistence.register_model_class(Extra)  # again: no change

    class KernelRidge(BaseEstimator):  # a foreign class with a molkrr name
        pass

    with pytest.raises(ValueError, match="already registered"):
        persistence.register_model_class(KernelRidge)
