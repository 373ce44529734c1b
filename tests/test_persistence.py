"""Model files: bitwise round trips, no pickle anywhere, and every bad file → ModelFileError."""

from __future__ import annotations

import copy
import io
import json
import os
import pickle
import warnings
import zipfile

import numpy as np
import pytest

import molkrr
from molkrr.errors import ModelFileError, MolkrrError
from molkrr.krr import KernelRidge
from molkrr.persistence import FORMAT_VERSION, HEADER_KEY, load_model, save_model


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def krr_model() -> tuple[KernelRidge, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 5))
    y = np.sin(X).sum(1)
    return KernelRidge(kernel="matern52", sigma=1.7, lam=1e-6).fit(X, y), rng.normal(size=(9, 5))


def _random_molecules(n: int, seed: int, forces: bool = False) -> molkrr.Molecules:
    rng = np.random.default_rng(seed)
    Z, R = [], []
    for _ in range(n):
        k = int(rng.integers(2, 7))
        pos = np.cumsum(rng.uniform(0.9, 1.3, (k, 3)) * rng.choice([-1, 1], (k, 3)), axis=0)
        Z.append(rng.choice([1, 6, 7, 8], k))
        R.append(pos)
    F = [rng.normal(size=r.shape) for r in R] if forces else None
    return molkrr.Molecules.from_list(Z, R, energies=rng.normal(size=n), forces=F)


@pytest.fixture(scope="module")
def molecules() -> tuple[molkrr.Molecules, molkrr.Molecules]:
    try:
        mols = molkrr.datasets.load_qm9(40, seed=3)
    except Exception:  # qm9pack missing: random molecules do as well
        mols = _random_molecules(40, seed=3)
    return mols[:30], mols[30:]


@pytest.fixture(scope="module")
def mol_model(molecules) -> molkrr.MolecularKRR:
    train, _ = molecules
    return molkrr.MolecularKRR(molkrr.CoulombMatrix(), kernel="gaussian", sigma=None, lam=None, energy_unit="kcal/mol").fit(
        train
    )


@pytest.fixture
def saved(krr_model, tmp_path) -> str:
    path = str(tmp_path / "model.npz")
    save_model(krr_model[0], path)
    return path


def _rewrite(path: str, out: str, *, header=None, extra: dict | None = None, drop: tuple = ()) -> None:
    """Copy the npz at path to out, optionally changing the header (a dict) and members."""
    with np.load(path, allow_pickle=False) as data:
        members = {k: data[k] for k in data.files if k not in drop}
    if header is not None:
        members[HEADER_KEY] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    members.update(extra or {})
    with open(out, "wb") as fh:
        np.savez(fh, **members)


def _header(path: str) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return json.loads(data[HEADER_KEY].tobytes().decode())


def _load_fails(path: str, match: str | None = None) -> ModelFileError:
    with pytest.raises(ModelFileError, match=match) as info:
        load_model(path)
    assert isinstance(info.value, MolkrrError) and isinstance(info.value, ValueError)
    assert str(path) in str(info.value)  # the message names the file
    return info.value


# ---------------------------------------------------------------------------------------- round trips
def test_kernel_ridge_round_trip_bitwise(krr_model, tmp_path):
    model, Xq = krr_model
    path = tmp_path / "krr.npz"  # a PathLike works too
    save_model(model, path)
    back = load_model(path)
    assert type(back) is KernelRidge
    assert back.get_params() == model.get_params()
    assert np.array_equal(back.predict(Xq), model.predict(Xq))
    assert np.array_equal(back.predict_gradient(Xq), model.predict_gradient(Xq))
    assert np.array_equal(back.alpha_, model.alpha_) and np.array_equal(back.X_fit_, model.X_fit_)
    assert back.lam_ == model.lam_ and back.n_features_in_ == model.n_features_in_
    assert not list(tmp_path.glob(".molkrr-*"))  # no temporary file left behind


def test_multi_output_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(20, 3)), rng.normal(size=(20, 2))
    model = KernelRidge(kernel="laplacian", sigma=2.0, lam=1e-3).fit(X, Y)
    save_model(model, tmp_path / "m.npz")
    back = load_model(tmp_path / "m.npz")
    assert np.array_equal(back.predict(X), model.predict(X))


def test_molecular_krr_round_trip_bitwise(mol_model, molecules, tmp_path):
    _, test = molecules
    path = str(tmp_path / "mol.npz")
    mol_model.save(path)
    back = molkrr.load_model(path)
    assert type(back) is molkrr.MolecularKRR
    assert type(back.representation_) is molkrr.CoulombMatrix
    assert back.energy_unit == "kcal/mol" and back.sigma_ == mol_model.sigma_ and back.lam_ == mol_model.lam_
    assert np.array_equal(back.predict(test), mol_model.predict(test))
    f_ref, f_back = mol_model.predict_forces(test), back.predict_forces(test)
    assert len(f_back) == len(test)
    assert all(np.array_equal(a, b) for a, b in zip(f_ref, f_back))
    # overwriting an existing file works (atomic replace)
    mol_model.save(path)
    assert np.array_equal(molkrr.load_model(path).predict(test), mol_model.predict(test))


def test_file_contains_no_pickle(mol_model, tmp_path):
    path = str(tmp_path / "mol.npz")
    save_model(mol_model, path)
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            arr = data[key]  # raises if a member needed pickle
            assert arr.dtype != object
    header = _header(path)
    assert header["format"] == "molkrr-model" and header["format_version"] == FORMAT_VERSION
    assert header["model"]["class"] == "MolecularKRR"
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            assert b"\x80\x04" not in zf.read(name)[:2]  # no member starts with a pickle protocol header


# ---------------------------------------------------------------------------------------- saving errors
def test_save_unfitted_raises_type_error(tmp_path):
    with pytest.raises(TypeError, match="fitted"):
        save_model(KernelRidge(), tmp_path / "x.npz")
    with pytest.raises(TypeError, match="fitted"):
        save_model(molkrr.MolecularKRR(), tmp_path / "x.npz")
    assert not os.path.exists(tmp_path / "x.npz")


def test_save_foreign_object_raises_type_error(tmp_path):
    from sklearn.kernel_ridge import KernelRidge as SkKernelRidge

    sk = SkKernelRidge().fit(np.eye(3), np.arange(3.0))
    for obj in (sk, {"alpha_": np.ones(3)}, np.ones(3)):
        with pytest.raises(TypeError):
            save_model(obj, tmp_path / "x.npz")
    assert not os.path.exists(tmp_path / "x.npz")
    assert not list(tmp_path.glob(".molkrr-*"))


# ---------------------------------------------------------------------------------------- loading errors
def test_missing_file(tmp_path):
    _load_fails(str(tmp_path / "nope.npz"), "no such")


def test_corrupt_file(saved):
    with open(saved, "rb") as fh:
        raw = bytearray(fh.read())
    for where in (len(raw) // 3, len(raw) // 2):
        bad = bytearray(raw)
        bad[where : where + 16] = bytes((b ^ 0xFF) for b in bad[where : where + 16])
        with open(saved, "wb") as fh:
            fh.write(bad)
        _load_fails(saved)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.99])
def test_truncated_file(saved, keep):
    with open(saved, "rb") as fh:
        raw = fh.read()
    with open(saved, "wb") as fh:
        fh.write(raw[: int(len(raw) * keep)])
    _load_fails(saved)


@pytest.mark.parametrize("content", [b"", b"hello, world\n", b"PK\x03\x04garbage", b"\x93NUMPY\x01\x00garbage"])
def test_not_a_model_file(tmp_path, content):
    path = str(tmp_path / "junk.npz")
    with open(path, "wb") as fh:
        fh.write(content)
    _load_fails(path)


def test_foreign_npz_without_header(tmp_path):
    path = str(tmp_path / "foreign.npz")
    np.savez(path, weights=np.ones(3), bias=np.zeros(1))
    _load_fails(path, "not a molkrr model file")


def test_bare_npy(tmp_path):
    path = str(tmp_path / "array.npy")
    np.save(path, np.ones(4))
    _load_fails(path, "not a molkrr model file")


class _Marker:
    """Unpickling this object creates a file: proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_object_array_in_npz_is_refused(saved, tmp_path):
    marker = tmp_path / "pwned"
    out = str(tmp_path / "object.npz")
    obj = np.empty(1, dtype=object)
    obj[0] = _Marker(str(marker))
    # a valid header plus a pickle-bearing member that the header points at
    header = _header(saved)
    header["model"]["fitted"]["alpha_"] = {"__array__": "evil"}
    _rewrite(saved, out, header=header, extra={"evil": obj})  # np.savez pickles object arrays
    assert not marker.exists()
    err = _load_fails(out, "pickle")
    assert "refuses" in str(err)
    assert not marker.exists()


def test_raw_pickle_is_refused(tmp_path):
    path = str(tmp_path / "model.pkl")
    with open(path, "wb") as fh:
        fh.write(pickle.dumps({"alpha_": [1.0, 2.0], "kernel": "gaussian"}))
    _load_fails(path, "pickle")


def test_raw_pickle_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    path = str(tmp_path / "model.npz")
    payload = pickle.dumps(_Marker(str(marker)))
    pickle.loads(payload)  # the payload works: unpickling it would create the marker
    assert marker.exists()
    marker.unlink()
    with open(path, "wb") as fh:
        fh.write(payload)
    _load_fails(path)
    assert not marker.exists()


@pytest.mark.parametrize("version", [0, 1, FORMAT_VERSION + 1, str(FORMAT_VERSION), None, float(FORMAT_VERSION), True])
def test_wrong_format_version(saved, tmp_path, version):
    header = _header(saved)
    header["format_version"] = version
    out = str(tmp_path / "v.npz")
    _rewrite(saved, out, header=header)
    _load_fails(out, "version .* is not supported")


# ---------------------------------------------------------------------------------------- format versions
GOOD = os.path.join(os.path.dirname(__file__), "data", "inputs", "good")
GOOD_MODELS = sorted(f for f in os.listdir(GOOD) if f.endswith(".npz"))


def _nodes(tree):
    """Every estimator node of a header's model tree."""
    if isinstance(tree, dict):
        if "class" in tree:
            yield tree
        for v in tree.values():
            yield from _nodes(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _nodes(v)


def _as_format_2(header: dict) -> dict:
    """The header as molkrr wrote it before per-class schema versions (format 2)."""
    header = copy.deepcopy(header)
    header["format_version"] = 2
    for node in _nodes(header["model"]):
        del node["schema"]
    return header


def test_format_3_nodes_record_their_schema_version(mol_model, tmp_path):
    path = str(tmp_path / "mol.npz")
    save_model(mol_model, path)
    nodes = list(_nodes(_header(path)["model"]))
    assert {n["class"] for n in nodes} == {"MolecularKRR", "CoulombMatrix", "KernelRidge"}
    allowed = molkrr.persistence.allowed_classes()
    for n in nodes:
        assert set(n) == {"class", "schema", "params", "fitted"}
        assert n["schema"] == allowed[n["class"]].model_file_schema().version == 1


def _format_2_copy(name: str, tmp_path, *, before_baseline: bool = False) -> str:
    """The good corpus model ``name`` as a format 2 file (the corpus is format 2 unless regenerated since);
    before_baseline: as written before MolecularKRR had ``baseline`` and ``n_sparse``."""
    src = os.path.join(GOOD, name)
    header = _header(src)
    if header["format_version"] != 2:
        header = _as_format_2(header)
    drop: tuple = ()
    if before_baseline:
        for key in ("baseline", "n_sparse"):
            header["model"]["params"].pop(key, None)
        fitted = header["model"]["fitted"]
        refs = [fitted.pop(k) for k in ("baseline_", "baseline_elements_", "baseline_energies_") if k in fitted]
        drop = tuple(r["__array__"] for r in refs if isinstance(r, dict))
    out = str(tmp_path / f"format2_{name}")
    _rewrite(src, out, header=header, drop=drop)
    return out


@pytest.mark.parametrize("name", GOOD_MODELS)
def test_format_2_files_load_and_resave_as_format_3(name, tmp_path):
    old = _format_2_copy(name, tmp_path)
    model = load_model(old)
    path = str(tmp_path / name)
    save_model(model, path)
    assert _header(path)["format_version"] == FORMAT_VERSION == 3
    again = load_model(path)
    assert type(again) is type(model) and again.get_params().keys() == model.get_params().keys()
    if isinstance(model, KernelRidge):
        X = np.random.default_rng(0).normal(size=(4, model.n_features_in_))
        assert np.array_equal(again.predict(X), model.predict(X))
    else:
        from molkrr.datasets import read_xyz

        query = read_xyz(os.path.join(GOOD, "query.xyz"))
        assert np.array_equal(again.predict(query), model.predict(query))
    # and back: the same content written as format 2 reads the same
    back = str(tmp_path / "back.npz")
    _rewrite(path, back, header=_as_format_2(_header(path)))
    assert type(load_model(back)) is type(model)


def test_format_2_files_lacking_later_parameters_read_as_they_were_fitted(tmp_path):
    """Format 2 files written before MolecularKRR had ``baseline`` and ``n_sparse``: the values that reproduce
    them; a format 3 file must name every parameter."""
    old = _format_2_copy("model_cm.npz", tmp_path, before_baseline=True)
    assert not {"baseline", "n_sparse"} & set(_header(old)["model"]["params"])
    model = load_model(old)
    assert model.baseline == "mean" and model.n_sparse is None and not hasattr(model, "baseline_")
    path = str(tmp_path / "m.npz")
    save_model(model, path)
    header = _header(path)
    assert header["model"]["params"]["baseline"] == "mean" and header["model"]["params"]["n_sparse"] is None
    del header["model"]["params"]["baseline"]
    out = str(tmp_path / "lacks.npz")
    _rewrite(path, out, header=header)
    _load_fails(out, r"lacks MolecularKRR parameters \['baseline'\]")


def test_the_header_version_must_match_the_nodes(saved, tmp_path):
    header = _header(saved)
    header["format_version"] = 2  # format 3 nodes under a format 2 header
    out = str(tmp_path / "v2.npz")
    _rewrite(saved, out, header=header)
    _load_fails(out, "format version 2")
    header = _as_format_2(_header(saved))
    header["format_version"] = 3  # format 2 nodes under a format 3 header
    _rewrite(saved, out, header=header)
    _load_fails(out, "'schema'.*format version 3")


@pytest.mark.parametrize("schema", [0, -1, 2, "1", None, True, 1.5])
def test_node_schema_version(mol_model, tmp_path, schema):
    path = str(tmp_path / "mol.npz")
    save_model(mol_model, path)
    header = _header(path)
    header["model"]["fitted"]["representation_"]["__estimator__"]["schema"] = schema
    out = str(tmp_path / "s.npz")
    _rewrite(path, out, header=header)
    _load_fails(out, "representation_: CoulombMatrix schema version .* is not one this molkrr reads")


def test_wrong_format_name(saved, tmp_path):
    header = _header(saved)
    header["format"] = "pickle"
    out = str(tmp_path / "f.npz")
    _rewrite(saved, out, header=header)
    _load_fails(out, "not a molkrr model file")


@pytest.mark.parametrize("cls", ["os.system", "Popen", "subprocess.Popen", "builtins.eval", "BaseEstimator", ""])
def test_header_naming_foreign_class(saved, tmp_path, cls):
    header = _header(saved)
    header["model"]["class"] = cls
    out = str(tmp_path / "c.npz")
    _rewrite(saved, out, header=header)
    _load_fails(out, "not a molkrr estimator")


def test_nested_foreign_class(mol_model, tmp_path):
    path = str(tmp_path / "mol.npz")
    save_model(mol_model, path)
    header = _header(path)
    header["model"]["fitted"]["krr_"]["__estimator__"]["class"] = "os.system"
    out = str(tmp_path / "n.npz")
    _rewrite(path, out, header=header)
    _load_fails(out, "not a molkrr estimator")


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda h: h["model"]["params"].update(command="rm -rf /"), "unknown parameters"),
        (lambda h: h["model"]["fitted"].update(fit=1), "non-fitted attribute"),
        (lambda h: h["model"]["fitted"].update(__class__="os"), "non-fitted attribute"),
        (lambda h: h["model"]["fitted"].update(__dict__={}), "non-fitted attribute"),
        (lambda h: h["model"]["fitted"].update(alpha_={"__array__": "missing"}), None),
        (lambda h: h["model"]["fitted"].update(alpha_={"__code__": "x"}), "encoding"),
        (lambda h: h.pop("model"), None),
        (lambda h: h["model"].pop("class"), None),
        (lambda h: h["model"].update(params=[1, 2]), None),
    ],
)
def test_inconsistent_header(saved, tmp_path, mutate, match):
    header = _header(saved)
    mutate(header)
    out = str(tmp_path / "h.npz")
    _rewrite(saved, out, header=header)
    _load_fails(out, match)


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2, 3]", b'"molkrr-model"', b"\xff\xfe\x00", b"[" * 100_000])
def test_header_not_a_json_object(saved, tmp_path, raw):
    out = str(tmp_path / "j.npz")
    _rewrite(saved, out, extra={HEADER_KEY: np.frombuffer(raw, dtype=np.uint8)})
    _load_fails(out)


def test_header_missing(saved, tmp_path):
    out = str(tmp_path / "nh.npz")
    _rewrite(saved, out, drop=(HEADER_KEY,))
    _load_fails(out, "not a molkrr model file")


def test_zip_with_non_npy_member(saved, tmp_path):
    out = str(tmp_path / "z.npz")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        with zipfile.ZipFile(saved) as src:
            for name in src.namelist():
                if name != "a0.npy":
                    zf.writestr(name, src.read(name))
        zf.writestr("a0.npy", b"this is not an npy file")
    with open(out, "wb") as fh:
        fh.write(buf.getvalue())
    _load_fails(out)


def test_model_fitted_on_a_dataframe_round_trip(tmp_path):
    """feature_names_in_ is an object array of str: saved as a unicode array, no pickle."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(5)
    X = pd.DataFrame(rng.normal(size=(15, 2)), columns=["a", "b"])
    y = rng.normal(size=15)
    model = KernelRidge(sigma=1.0, lam=1e-3).fit(X, y)
    save_model(model, tmp_path / "df.npz")
    back = load_model(tmp_path / "df.npz")
    assert list(back.feature_names_in_) == ["a", "b"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no feature-name mismatch warning
        assert np.array_equal(back.predict(X), model.predict(X))
    with pytest.raises(ValueError, match="feature names"):
        back.predict(X.rename(columns={"a": "c"}))


def test_object_array_of_non_strings_is_not_saved(krr_model, tmp_path):
    model = copy.deepcopy(krr_model[0])
    model.extra_ = np.array([{"x": 1}], dtype=object)
    with pytest.raises(TypeError, match="object arrays"):
        save_model(model, tmp_path / "o.npz")


def test_derivative_krr_must_be_fitted(tmp_path):
    """A force-trained model keeps a DerivativeKRR in krr_; one without its fitted attributes is refused."""
    mols = _random_molecules(12, seed=4, forces=True)
    model = molkrr.MolecularKRR(molkrr.CoulombMatrix(variant="unsorted"), sigma=20.0, lam=1e-6, lam_forces=1e-4,
                                targets="energy+forces").fit(mols)
    path = str(tmp_path / "forces.npz")
    save_model(model, path)
    assert np.array_equal(load_model(path).predict(mols), model.predict(mols))
    header = _header(path)
    node = header["model"]["fitted"]["krr_"]["__estimator__"]
    assert node["class"] == "DerivativeKRR"
    drop = tuple(v["__array__"] for v in node["fitted"].values() if isinstance(v, dict))
    node["fitted"] = {}
    out = str(tmp_path / "unfitted.npz")
    _rewrite(path, out, header=header, drop=drop)
    _load_fails(out, "krr_: must be a fitted DerivativeKRR")
