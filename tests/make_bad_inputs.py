"""Write the corpus of bad (and good) inputs under tests/data/inputs/: never edit those files by hand.

    python tests/make_bad_inputs.py          # rewrites tests/data/inputs/ (deterministic content)

Every bad case is one file (model, XYZ, data set) or one JSON-described API call, listed in
``manifest.json`` with its category, the check that runs it (``target``) and the molkrr error it must
raise (``expect``, a class of :mod:`molkrr.errors`, and optionally ``match``, a substring of the
message). tests/test_inputs_corpus.py runs every case through the Python API and the CLI;
tests/test_inputs_fuzz.py mutates the good models at random.

Targets
-------
load          molkrr.load_model(file, kind=MolecularKRR)
read          molkrr.datasets.read_xyz(file)
train         read the XYZ file for training and fit a MolecularKRR on it (CLI: train --xyz)
predict       predict with good/model_cm.npz on the XYZ file (CLI: predict)
sgdml         molkrr.datasets.read_sgdml_npz(file)
api           a call described in ``call`` (name) and ``args`` (JSON), dispatched by the test
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "data" / "inputs"
sys.path.insert(0, str(HERE.parent / "src"))

import molkrr  # noqa: E402
from molkrr.metric import MLKRR  # noqa: E402

CASES: list[dict[str, Any]] = []


def add(category: str, name: str, target: str, expect: str, *, data: bytes | None = None, ext: str = "",
        match: str | None = None, **extra: Any) -> None:
    """One bad case; ``data`` is written to bad/<category>/<name><ext>."""
    case: dict[str, Any] = {"category": category, "name": name, "target": target, "expect": expect}
    if data is not None:
        rel = f"bad/{category}/{name}{ext}"
        path = OUT / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        case["file"] = rel
    if match is not None:
        case["match"] = match
    case.update(extra)
    CASES.append(case)


# ---------------------------------------------------------------------------------------- good inputs
def molecules(n: int, seed: int, elements=(1, 6, 8), sizes=(3, 6)) -> molkrr.Molecules:
    """Small random molecules on a jittered chain (no coincident atoms), with smooth energies."""
    rng = np.random.default_rng(seed)
    Z, R = [], []
    for _ in range(n):
        k = int(rng.integers(*sizes))
        steps = rng.normal(size=(k, 3))
        steps *= (1.1 + 0.3 * rng.random((k, 1))) / np.linalg.norm(steps, axis=1, keepdims=True)
        R.append(np.cumsum(steps, axis=0))
        Z.append(rng.choice(elements, k))
    E = np.array([float(np.sum(z) + 0.1 * np.sum(r**2) ** 0.5) for z, r in zip(Z, R)])
    return molkrr.Molecules.from_list(Z, R, energies=E)


def write_good() -> dict[str, Path]:
    good = OUT / "good"
    good.mkdir(parents=True)
    train = molecules(14, seed=1)
    query = molecules(5, seed=2)
    molkrr.datasets.write_xyz(good / "train.extxyz", train)
    molkrr.datasets.write_xyz(good / "query.xyz", query.with_labels(energies=None))
    text = (good / "train.extxyz").read_text()
    (good / "train_crlf.extxyz").write_bytes(text.replace("\n", "\r\n").encode())
    big = molecules(1, seed=3, sizes=(150, 151))
    molkrr.datasets.write_xyz(good / "large_molecule.xyz", big.with_labels(energies=None))
    periodic = query.to_ase()[0]
    periodic.cell = [20.0, 20.0, 20.0]
    periodic.pbc = True
    import ase.io

    ase.io.write(good / "periodic_cell.extxyz", periodic, format="extxyz")
    models = {
        "model_cm.npz": molkrr.MolecularKRR(molkrr.CoulombMatrix(), sigma=20.0, lam=1e-8, energy_unit="eV"),
        "model_cm_eig.npz": molkrr.MolecularKRR(molkrr.CoulombMatrix("eigenvalues", size=8), sigma=20.0, kernel="laplacian"),
        "model_bob.npz": molkrr.MolecularKRR(molkrr.BagOfBonds(bag_padding=3), sigma=20.0, energy_unit="kcal/mol"),
        "model_fchl19.npz": molkrr.MolecularKRR(
            molkrr.FCHL19(elements=[1, 6, 7, 8], nRs2=6, nRs3=4, rcut=5.0, acut=5.0), sigma=5.0, energy_unit="Ha"
        ),
        "model_cm_mlkrr.npz": molkrr.MolecularKRR(
            molkrr.CoulombMatrix(), sigma=20.0, metric=MLKRR(n_components=6, init="pca", max_iter=3, random_state=0)
        ),
    }
    paths = {}
    for name, model in models.items():
        model.fit(train)
        molkrr.save_model(model, good / name)
        paths[name] = good / name
    kr = molkrr.KernelRidge(sigma=2.0, lam=1e-6).fit(np.random.default_rng(4).normal(size=(10, 3)), np.arange(10.0))
    molkrr.save_model(kr, good / "kernel_ridge.npz")
    paths["kernel_ridge.npz"] = good / "kernel_ridge.npz"
    return paths


# ---------------------------------------------------------------------------------------- model helpers
def flip_detectable(raw: bytes, start: int) -> bytes:
    """One bit flipped at the first offset ≥ start where the flip damages the file (a zip structure, a
    CRC-checked member, the header): a flip in a timestamp byte leaves a valid file, not a bad input."""
    import io

    for where in range(start, len(raw)):
        bad = bytearray(raw)
        bad[where] ^= 0x10
        try:
            with zipfile.ZipFile(io.BytesIO(bytes(bad))) as zf:
                if zf.testzip() is None and [i.filename for i in zf.infolist()] == [
                    i.filename for i in zipfile.ZipFile(io.BytesIO(raw)).infolist()
                ]:
                    continue  # still a valid archive with the same members: not damaged
        except Exception:
            pass
        return bytes(bad)
    raise RuntimeError("no damaging bit flip found")


def members(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(arrays.pop("__header__").tobytes())
    return header, arrays


def npz_bytes(header: Any, arrays: dict[str, np.ndarray], *, raw_header: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    np.savez(buf, __header__=np.frombuffer(text, dtype=np.uint8), **arrays)
    return buf.getvalue()


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=True)
    return buf.getvalue()


def npy_header(shape: tuple, descr: str) -> bytes:
    """A version 1.0 .npy header declaring ``shape`` and ``descr``, whatever data follows it."""
    text = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    pad = (64 - (10 + len(text) + 1) % 64) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


def zip_of(entries: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.compress_type = compression
            zf.writestr(info, data)
    return buf.getvalue()


def edited(path: Path, edit) -> bytes:
    header, arrays = members(path)
    result = edit(header, arrays)
    if isinstance(result, bytes):
        return result
    return npz_bytes(header, arrays)


def node(header: dict, *keys: str) -> dict:
    """The estimator node at model.fitted.<k1>.fitted.<k2>... (keys of nested estimators)."""
    n = header["model"]
    for k in keys:
        n = n["fitted"][k]["__estimator__"]
    return n


def array_key(n: dict, field: str) -> str:
    return n["fitted"][field]["__array__"]


def patch_central_directory(data: bytes, member: str, *, file_size: int | None = None, flag: int | None = None,
                            method: int | None = None) -> bytes:
    """Rewrite fields of one member in both its local header and the central directory (forged archives)."""
    buf = bytearray(data)
    name = member.encode()
    i = 0
    while True:
        i = buf.find(b"PK\x01\x02", i)
        if i < 0:
            break
        n_len = struct.unpack_from("<H", buf, i + 28)[0]
        if bytes(buf[i + 46 : i + 46 + n_len]) == name:
            local = struct.unpack_from("<I", buf, i + 42)[0]
            if flag is not None:
                struct.pack_into("<H", buf, i + 8, flag)
                struct.pack_into("<H", buf, local + 6, flag)
            if method is not None:
                struct.pack_into("<H", buf, i + 10, method)
                struct.pack_into("<H", buf, local + 8, method)
            if file_size is not None:
                struct.pack_into("<I", buf, i + 24, file_size)
                struct.pack_into("<I", buf, local + 22, file_size)
        i += 4
    return bytes(buf)


# ---------------------------------------------------------------------------------------- model cases
def model_cases(good: dict[str, Path]) -> None:
    cm, bob, fchl, mlkrr, kr = (good[k] for k in ("model_cm.npz", "model_bob.npz", "model_fchl19.npz",
                                                     "model_cm_mlkrr.npz", "kernel_ridge.npz"))
    raw = cm.read_bytes()
    E = "ModelFileError"
    cat = "model-container"
    add(cat, "empty", "load", E, data=b"", ext=".npz")
    add(cat, "plain_text", "load", E, data=b"this is a model, honest\n", ext=".npz", match="not a molkrr model")
    add(cat, "raw_pickle", "load", E, data=b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.", ext=".npz", match="pickle")
    add(cat, "bare_npy", "load", E, data=npy_bytes(np.ones(4)), ext=".npy", match="not a molkrr model")
    add(cat, "foreign_npz", "load", E, data=zip_of([("weights.npy", npy_bytes(np.ones(3)))]), ext=".npz",
        match="not a molkrr model")
    for keep in (0.1, 0.5, 0.9, 0.99):
        add(cat, f"truncated_{int(keep * 100)}", "load", E, data=raw[: int(len(raw) * keep)], ext=".npz")
    for k, where in enumerate((len(raw) // 3, len(raw) // 2, 200)):
        bad = flip_detectable(raw, where)
        add(cat, f"bit_flip_{k}", "load", E, data=bad, ext=".npz")
    header, arrays = members(cm)
    key = array_key(node(header, "krr_"), "X_fit_")
    # an .npy header declaring 64 GiB in front of a few bytes
    fake = npy_header((1 << 23, 1 << 10), "<f8") + arrays[key].tobytes()
    add(cat, "member_declares_64GiB", "load", E, match="declares",
        data=zip_of([(f"{k}.npy", npy_bytes(v)) for k, v in arrays.items() if k != key]
                    + [("__header__.npy", npy_bytes(np.frombuffer(json.dumps(header).encode(), np.uint8))),
                       (f"{key}.npy", bytes(fake))]), ext=".npz")
    # a deflated member that claims 2 GiB from a few compressed bytes (a zip bomb's signature)
    bomb = zip_of([(f"{k}.npy", npy_bytes(v)) for k, v in arrays.items()]
                  + [("__header__.npy", npy_bytes(np.frombuffer(json.dumps(header).encode(), np.uint8)))],
                  compression=zipfile.ZIP_DEFLATED)
    add(cat, "zip_bomb_declared_2GiB", "load", E, data=patch_central_directory(bomb, f"{key}.npy", file_size=2**31 - 1),
        ext=".npz", match="more than deflate")
    # a real bzip2 bomb: 64 MiB of zeros in a few hundred bytes
    import bz2

    zeros = np.zeros(8 << 20)
    add(cat, "bzip2_bomb_64MiB", "load", E, ext=".npz", match="compression",
        data=zip_of([("__header__.npy", npy_bytes(np.frombuffer(json.dumps(header).encode(), np.uint8))),
                     (f"{key}.npy", npy_bytes(zeros))], compression=zipfile.ZIP_BZIP2))
    del bz2
    add(cat, "encrypted_flag", "load", E, data=patch_central_directory(raw, f"{key}.npy", flag=0x1), ext=".npz",
        match="encrypted")
    add(cat, "unknown_compression", "load", E, data=patch_central_directory(raw, f"{key}.npy", method=99), ext=".npz",
        match="compression")
    hdr_npy = npy_bytes(np.frombuffer(json.dumps(header).encode(), np.uint8))
    add(cat, "duplicate_member", "load", E, match="twice",
        data=zip_of([("__header__.npy", hdr_npy)] + [(f"{k}.npy", npy_bytes(v)) for k, v in arrays.items()]
                    + [(f"{key}.npy", npy_bytes(arrays[key]))]), ext=".npz")
    add(cat, "non_npy_member", "load", E,
        data=zip_of([("__header__.npy", hdr_npy)] + [(f"{k}.npy", npy_bytes(v) if k != key else b"not an npy file")
                                                     for k, v in arrays.items()]), ext=".npz")
    add(cat, "member_not_npy_suffix", "load", E,
        data=zip_of([("__header__.npy", hdr_npy)] + [(f"{k}.npy", npy_bytes(v)) for k, v in arrays.items()]
                    + [("readme.txt", b"hello")]), ext=".npz")
    obj = np.empty(2, dtype=object)
    obj[0], obj[1] = {"a": 1}, [1, 2]
    add(cat, "object_array_member", "load", E, match="pickle",
        data=zip_of([("__header__.npy", hdr_npy)] + [(f"{k}.npy", npy_bytes(v) if k != key else npy_bytes(obj))
                                                     for k, v in arrays.items()]), ext=".npz")
    longer = npy_bytes(arrays[key]) + b"\x00" * 64
    add(cat, "member_longer_than_declared", "load", E,
        data=zip_of([("__header__.npy", hdr_npy)] + [(f"{k}.npy", npy_bytes(v) if k != key else longer)
                                                     for k, v in arrays.items()]), ext=".npz")
    add(cat, "structured_dtype_member", "load", E,
        data=zip_of([("__header__.npy", hdr_npy)] + [
            (f"{k}.npy", npy_bytes(v) if k != key else npy_bytes(np.zeros(3, dtype=[("a", "f8"), ("b", "i8")])))
            for k, v in arrays.items()]), ext=".npz")

    # ---- the header
    cat = "model-header"
    for name, raw_header in [("not_json", b"not json"), ("json_list", b"[1, 2, 3]"), ("json_string", b'"molkrr-model"'),
                             ("not_utf8", b"\xff\xfe\x00"), ("deeply_nested", b"[" * 100_000),
                             ("nested_estimators", json.dumps({"format": "molkrr-model", "format_version": 2,
                                                               "model": _deep_node(60)}).encode())]:
        add(cat, name, "load", E, data=npz_bytes(None, arrays, raw_header=raw_header), ext=".npz")

    def mutate(name: str, edit, match: str | None = None, path: Path = cm, category: str = "model-header") -> None:
        def apply(h, a):
            out = edit(h, a)
            return out

        add(category, name, "load", E, data=edited(path, apply), ext=".npz", match=match)

    mutate("format_missing", lambda h, a: h.pop("format"), "not a molkrr model")
    mutate("format_pickle", lambda h, a: h.update(format="pickle"), "not a molkrr model")
    from molkrr.persistence import FORMAT_VERSION  # the good models are written in this version

    for v in (1, FORMAT_VERSION - 1, FORMAT_VERSION + 1, str(FORMAT_VERSION), None, float(FORMAT_VERSION), True):
        mutate(f"format_version_{v!r}".replace("'", ""), lambda h, a, v=v: h.update(format_version=v), "version")
    mutate("model_missing", lambda h, a: h.pop("model"))
    mutate("top_level_representation", lambda h, a: [h.update(model=node(h, "representation_")), a.clear()],
           "not a MolecularKRR")
    add("model-header", "top_level_kernel_ridge", "load", E, data=kr.read_bytes(), ext=".npz", match="not a MolecularKRR")
    for cls in ("os.system", "subprocess.Popen", "builtins.eval", "BaseEstimator", "", 42):
        mutate(f"foreign_class_{cls}".replace(".", "_"), lambda h, a, c=cls: h["model"].update({"class": c}),
               "not a molkrr estimator")
    mutate("nested_foreign_class", lambda h, a: node(h, "krr_").update({"class": "os.system"}), "not a molkrr estimator")
    mutate("class_missing", lambda h, a: h["model"].pop("class"))
    mutate("params_not_object", lambda h, a: h["model"].update(params=[1, 2]))
    mutate("unknown_parameter", lambda h, a: h["model"]["params"].update(command="rm -rf /"), "unknown parameters")
    mutate("parameter_missing", lambda h, a: h["model"]["params"].pop("kernel"), "lacks")
    mutate("non_fitted_attribute", lambda h, a: h["model"]["fitted"].update(fit=1), "non-fitted attribute")
    mutate("dunder_attribute", lambda h, a: h["model"]["fitted"].update(__class__="os"), "non-fitted attribute")
    mutate("unknown_fitted_attribute", lambda h, a: h["model"]["fitted"].update(evil_=1), "no fitted attribute")
    mutate("unknown_value_encoding", lambda h, a: h["model"]["fitted"].update(sigma_={"__code__": "x"}), "encoding")
    mutate("array_reference_missing", lambda h, a: node(h, "krr_")["fitted"].update(alpha_={"__array__": "nope"}),
           "does not hold")
    mutate("array_referenced_twice", lambda h, a: node(h, "krr_")["fitted"].update(
        alpha_=dict(node(h, "krr_")["fitted"]["X_fit_"])), None)
    mutate("member_unreferenced", lambda h, a: a.update(extra=np.ones(3)), "not referenced")
    # class tree: the right classes in the wrong places
    mutate("representation_where_krr_belongs",
           lambda h, a: h["model"]["fitted"].update(krr_=h["model"]["fitted"]["representation_"]), "krr_")
    mutate("krr_where_representation_belongs",
           lambda h, a: h["model"]["fitted"].update(representation_=h["model"]["fitted"]["krr_"]), "representation_")
    mutate("model_where_metric_belongs", lambda h, a: h["model"]["fitted"].update(metric_={"__estimator__": {
        "class": "KernelRidge", "params": node(h, "krr_")["params"], "fitted": {}}}), "metric_")
    for field in ("krr_", "representation_", "elements_", "sigma_", "metric_"):
        mutate(f"missing_{field}", lambda h, a, f=field: h["model"]["fitted"].pop(f), "missing")
    for field in ("alpha_", "X_fit_", "y_mean_", "n_features_in_", "lam_"):
        mutate(f"missing_krr_{field}", lambda h, a, f=field: node(h, "krr_")["fitted"].pop(f), "missing")
    for field in ("n_features_", "size_"):
        mutate(f"missing_cm_{field}", lambda h, a, f=field: node(h, "representation_")["fitted"].pop(f), "missing")

    # ---- fields: values of the wrong kind, size or consistency
    cat = "model-fields"

    def fitted(*keys):
        return lambda h: node(h, *keys)["fitted"]

    for v in (16, 14, 0, -5, 10**9, 10**30, "15", 15.5, True, None, [15]):
        mutate(f"cm_n_features_{v!r}".replace("'", "").replace(" ", ""),
               lambda h, a, v=v: fitted("representation_")(h).update(n_features_=v), "n_features_", category=cat)
    for v in (4, 6, 0, -1, 10**7, "5"):
        mutate(f"cm_size_{v!r}".replace("'", ""),
               lambda h, a, v=v: fitted("representation_")(h).update(size_=v), "size_", category=cat)
    mutate("cm_variant_unknown", lambda h, a: node(h, "representation_")["params"].update(variant="zigzag"), "variant",
           category=cat)
    for v in (0.0, -1.0, 1e-300, 1e300, "abc", None, True):
        mutate(f"sigma_{v!r}".replace("'", ""), lambda h, a, v=v: h["model"]["fitted"].update(sigma_=v), "sigma_",
               category=cat)
    for v in (-1.0, "x"):
        mutate(f"lam_{v!r}".replace("'", ""), lambda h, a, v=v: h["model"]["fitted"].update(lam_=v), "lam_", category=cat)
    mutate("krr_sigma_differs", lambda h, a: node(h, "krr_")["params"].update(sigma=21.0), "differ", category=cat)
    mutate("kernel_unknown", lambda h, a: h["model"]["params"].update(kernel="rbf-evil"), "kernel", category=cat)
    mutate("energy_unit_number", lambda h, a: h["model"]["params"].update(energy_unit=5), "energy_unit", category=cat)
    mutate("energy_unit_huge", lambda h, a: h["model"]["params"].update(energy_unit="eV" * 1000), "energy_unit",
           category=cat)
    mutate("center_string", lambda h, a: h["model"]["params"].update(center="yes"), "center", category=cat)
    for v, tag in ((float("nan"), "nan"), (float("inf"), "inf"), ("0.0", "string"), (1e200, "huge")):
        mutate(f"y_mean_{tag}", lambda h, a, v=v: fitted("krr_")(h).update(y_mean_=v), "y_mean_", category=cat)
    mutate("n_features_in_differs", lambda h, a: fitted("krr_")(h).update(n_features_in_=3), "n_features_in_",
           category=cat)
    mutate("lam_used_below_lam", lambda h, a: fitted("krr_")(h).update(lam_=1e-12), "lam_", category=cat)

    # arrays: dtype, shape, values
    def set_array(keys, field, value):
        def edit(h, a):
            a[array_key(node(h, *keys), field)] = value
        return edit

    hdr, arr = members(cm)
    X = arr[array_key(node(hdr, "krr_"), "X_fit_")]
    alpha = arr[array_key(node(hdr, "krr_"), "alpha_")]
    n, d = X.shape
    with_nan = alpha.copy()
    with_nan[3] = np.nan
    with_inf = X.copy()
    with_inf[1, 2] = np.inf
    big = X.copy()
    big[0, 0] = 1e200
    for name, field, value, match in [
        ("alpha_nan", "alpha_", with_nan, "NaN"),
        ("alpha_int", "alpha_", np.arange(n), "float64"),
        ("alpha_complex", "alpha_", alpha.astype(complex), "complex"),
        ("alpha_string", "alpha_", alpha.astype(str), "float64"),
        ("alpha_float32", "alpha_", alpha.astype(np.float32), "float64"),
        ("alpha_bool", "alpha_", alpha > 0, "float64"),
        ("alpha_too_short", "alpha_", alpha[:-1], "shape"),
        ("alpha_2d", "alpha_", np.stack([alpha, alpha], 1), "y_mean_"),
        ("alpha_3d", "alpha_", alpha[:, None, None], "1"),
        ("alpha_scalar", "alpha_", np.float64(1.0).reshape(()), "1"),
        ("alpha_huge", "alpha_", alpha * 1e300, "at most"),
        ("X_fit_inf", "X_fit_", with_inf, "NaN or infinity"),
        ("X_fit_huge", "X_fit_", big, "at most"),
        ("X_fit_wrong_columns", "X_fit_", X[:, :-1], "columns"),
        ("X_fit_1d", "X_fit_", X[:, 0], "2-D"),
        ("X_fit_empty", "X_fit_", X[:0], "row"),
        ("X_fit_int", "X_fit_", X.astype(np.int64), "float64"),
        ("X_fit_big_endian_text", "X_fit_", X.astype("S8"), "float64"),
    ]:
        mutate(name, set_array(("krr_",), field, value), match, category=cat)
    mutate("elements_unsorted", set_array((), "elements_", np.array([8, 1, 6])), "ascending", category=cat)
    mutate("elements_zero", set_array((), "elements_", np.array([0, 1, 6])), "1..118", category=cat)
    mutate("elements_200", set_array((), "elements_", np.array([1, 6, 200])), "1..118", category=cat)
    mutate("elements_float", set_array((), "elements_", np.array([1.0, 6.0, 8.0])), "integer", category=cat)
    mutate("elements_empty", set_array((), "elements_", np.zeros(0, dtype=np.int64)), "ascending", category=cat)
    # Bag of Bonds
    hb, ab = members(bob)
    els = ab[array_key(node(hb, "representation_"), "elements_")]
    sizes = ab[array_key(node(hb, "representation_"), "bag_sizes_")]
    mutate("bob_bag_sizes_negative", set_array(("representation_",), "bag_sizes_", sizes - 10), "0..", bob, cat)
    mutate("bob_bag_sizes_short", set_array(("representation_",), "bag_sizes_", sizes[:-1]), "entries", bob, cat)
    mutate("bob_bag_size_grown", set_array(("representation_",), "bag_sizes_", sizes + 1), "n_features_", bob, cat)
    mutate("bob_elements_118_plus", set_array(("representation_",), "elements_", els + 200), "1..118", bob, cat)
    mutate("bob_n_features_edit", lambda h, a: fitted("representation_")(h).update(n_features_=3), "n_features_", bob, cat)
    mutate("bob_elements_unsupported", set_array((), "elements_", np.array([1, 6, 7, 8])), "does not support", bob, cat)
    mutate("bob_bag_padding_negative", lambda h, a: node(h, "representation_")["params"].update(bag_padding=-1),
           "bag_padding", bob, cat)
    # FCHL19
    mutate("fchl19_elements_differ", set_array(("representation_",), "elements_", np.array([1, 6, 8, 9])), "differs",
           fchl, cat)
    mutate("fchl19_nRs2_edit", lambda h, a: node(h, "representation_")["params"].update(nRs2=7), "n_features_", fchl, cat)
    mutate("fchl19_nRs2_zero", lambda h, a: node(h, "representation_")["params"].update(nRs2=0), "nRs2", fchl, cat)
    mutate("fchl19_rcut_nan", lambda h, a: node(h, "representation_")["params"].update(rcut=float("nan")), "rcut",
           fchl, cat)
    mutate("fchl19_atomic_form", lambda h, a: [node(h, "representation_")["params"].update(form="atomic"),
                                               h["model"]["params"]["representation"]["__estimator__"]["params"].update(
                                                   form="atomic")], "global", fchl, cat)
    mutate("fchl19_weight_edited_in_fitted_only",
           lambda h, a: node(h, "representation_")["params"].update(three_body_weight=20.0), "differ", fchl, cat)
    mutate("fchl19_weight_1e308", lambda h, a: [
        p["params"].update(three_body_weight=1e308)
        for p in (node(h, "representation_"), h["model"]["params"]["representation"]["__estimator__"])],
        "three_body_weight", fchl, cat)
    # metric learner
    hm, am = members(mlkrr)
    A = am[array_key(node(hm, "metric_"), "components_")]
    mutate("metric_components_shape", set_array(("metric_",), "components_", A[:, :-1]), "components_", mlkrr, cat)
    mutate("metric_components_rows", set_array(("metric_",), "components_", A[:-1]), "components_", mlkrr, cat)
    mutate("metric_components_nan", set_array(("metric_",), "components_", A * np.nan), "NaN", mlkrr, cat)
    mutate("metric_sigma_negative", lambda h, a: fitted("metric_")(h).update(sigma_=-1.0), "sigma_", mlkrr, cat)
    mutate("metric_history_strings", lambda h, a: fitted("metric_")(h).update(history_={"__dict__": {"loss": ["x"]}}),
           "history_", mlkrr, cat)
    mutate("metric_dropped", lambda h, a: [h["model"]["fitted"].update(metric_=None),
                                           h["model"]["params"].update(metric=None)], "columns", mlkrr, cat)
    mutate("metric_dropped_in_fitted_only", lambda h, a: h["model"]["fitted"].update(metric_=None), "differs", mlkrr, cat)
    # a bare KernelRidge file
    mutate("kr_y_mean_vector_for_1d", lambda h, a: [h["model"]["fitted"].update(y_mean_={"__array__": "ym"}),
                                                    a.update(ym=np.zeros(3))], "y_mean_", kr, cat)
    mutate("kr_feature_names_ints", lambda h, a: [h["model"]["fitted"].update(feature_names_in_={"__array__": "fn"}),
                                                  a.update(fn=np.arange(3))], "feature_names_in_", kr, cat)


def _deep_node(depth: int) -> dict:
    n: dict = {"class": "KernelRidge", "params": {}, "fitted": {}}
    for _ in range(depth):
        n = {"class": "MolecularKRR", "params": {"representation": {"__estimator__": n}}, "fitted": {}}
    return n


# ---------------------------------------------------------------------------------------- XYZ cases
def xyz_cases(good: dict[str, Path]) -> None:
    cat = "xyz"
    text = lambda s: s.encode()  # noqa: E731
    h2 = "H 0.0 0.0 0.0\nH 0.0 0.0 0.74\n"
    for name, content, expect, match in [
        ("count_1e9", "1000000000\n\nH 0 0 0\n", "DatasetError", "declares"),
        ("count_1e30", "1" + "0" * 30 + "\n\nH 0 0 0\n", "DatasetError", "declares"),
        ("count_larger_than_file", "50\n\n" + h2, "DatasetError", "only 2 lines"),
        ("count_zero", "0\n\n", "DatasetError", "declares 0"),
        ("count_negative", "-3\n\n" + h2, "DatasetError", "declares"),
        ("count_not_a_number", "two\n\n" + h2, "DatasetError", "count line"),
        ("count_fraction", "2.5\n\n" + h2, "DatasetError", "count line"),
        ("second_frame_count_1e9", "2\n\n" + h2 + "1000000000\n\nH 0 0 0\n", "DatasetError", "frame 1"),
        ("unknown_element_Xx", "2\n\n" + h2 + "2\n\n" + h2 + "2\n\n" + h2 + "2\n\nH 0 0 0\nXx 0 0 1\n",
         "UnknownElementError", "unknown element 'Xx' in frame 3"),
        ("unknown_element_Z0", "2\n\n0 0 0 0\nH 0 0 1\n", "UnknownElementError", "unknown element '0'"),
        ("unknown_element_Zminus1", "2\n\n-1 0 0 0\nH 0 0 1\n", "UnknownElementError", "unknown element '-1'"),
        ("unknown_element_Z200", "2\n\n200 0 0 0\nH 0 0 1\n", "UnknownElementError", "unknown element '200'"),
        ("dummy_atom_X", "2\n\nX 0 0 0\nH 0 0 1\n", "UnknownElementError", "unknown element 'X'"),
        ("nan_coordinate", "2\n\nH 0 0 nan\nH 0 0 1\n", "NonFiniteCoordinatesError", None),
        ("inf_coordinate", "2\n\nH 0 0 inf\nH 0 0 1\n", "NonFiniteCoordinatesError", None),
        ("coincident_atoms", "2\n\nH 0 0 0\nH 0 0 0\n", "CoincidentAtomsError", None),
        ("missing_coordinate", "2\n\nH 0 0\nH 0 0 1\n", "DatasetError", None),
        ("text_coordinate", "2\n\nH 0 0 zero\nH 0 0 1\n", "DatasetError", None),
        ("energy_not_a_number", "2\nenergy=abc\n" + h2, "InvalidInputError", "frame 0"),
        ("energy_nan", "2\nenergy=nan\n" + h2, "InvalidInputError", "frame 0"),
        ("empty_file", "", "DatasetError", "empty"),
        ("blank_lines_only", "\n\n\n", "DatasetError", "no frames"),
    ]:
        add(cat, name, "read", expect, data=text(content), ext=".xyz", match=match)
    add(cat, "binary_junk", "read", "DatasetError", data=bytes(range(256)) * 4, ext=".xyz")
    add(cat, "not_utf8", "read", "DatasetError", data=b"2\n\xff\xfe\nH 0 0 0\nH 0 0 1\n", ext=".xyz")

    cat = "training-data"
    frames = ("2\nenergy=1.5\n" + h2) * 3
    for name, content, expect, match in [
        ("one_frame_without_energy", frames + "2\n\n" + h2 + frames, "DatasetError", "frame 3 has no 'energy'"),
        ("no_energies", "2\n\n" + h2 + "2\n\nH 0 0 0\nH 0 0 0.8\n", "DatasetError", "frame 0 has no"),
        ("energy_1e308", "2\nenergy=1e308\n" + h2 + "2\nenergy=1.0\nH 0 0 0\nH 0 0 0.9\n" + frames, "InvalidInputError",
         "overflow"),
        ("energy_inf", "2\nenergy=inf\n" + h2, "InvalidInputError", "frame 0"),
        ("energy_in_second_frame_text", "2\nenergy=1.0\n" + h2 + "2\nenergy=high\nH 0 0 0\nH 0 0 0.8\n",
         "InvalidInputError", "frame 1"),
    ]:
        add(cat, name, "train", expect, data=text(content), ext=".extxyz", match=match)
    add(cat, "single_frame", "train", "InvalidInputError", data=text("2\nenergy=1.0\n" + h2), ext=".extxyz",
        match="1 frames", cli_only=True)
    add(cat, "n_train_more_than_frames", "train", "InvalidInputError", data=(OUT / "good" / "train.extxyz").read_bytes(),
        ext=".extxyz", match="14 frames", n_train=1000, cli_only=True)

    cat = "prediction-input"
    # the good CM model is trained on H, C, O molecules of 3..5 atoms
    for name, content, expect, match in [
        ("unseen_element_N", "3\n\nC 0 0 0\nN 0 0 1.2\nH 0 1 0\n", "UnseenElementError", "contains N"),
        ("unseen_element_S", "2\n\nS 0 0 0\nH 0 0 1.3\n", "UnseenElementError", "contains S"),
        ("unseen_element_Cl", "2\n\nCl 0 0 0\nH 0 0 1.3\n", "UnseenElementError", "contains Cl"),
        ("larger_than_fitted_size", "9\n\n" + "".join(f"C 0 0 {1.5 * i}\n" for i in range(9)),
         "RepresentationSizeError", "size_"),
    ]:
        add(cat, name, "predict", expect, data=text(content), ext=".xyz", match=match)

    cat = "sgdml"
    buf = io.BytesIO()
    np.savez(buf, z=np.array([1, 1]), R=np.zeros((3, 3, 3)))
    add(cat, "shape_mismatch", "sgdml", "ShapeMismatchError", data=buf.getvalue(), ext=".npz")
    buf = io.BytesIO()
    np.savez(buf, weights=np.ones(3))
    add(cat, "not_sgdml", "sgdml", "DatasetError", data=buf.getvalue(), ext=".npz")
    add(cat, "not_npz", "sgdml", "DatasetError", data=b"hello", ext=".npz")


# ---------------------------------------------------------------------------------------- API cases
def api_cases() -> None:
    cat = "api"
    ok_pos = [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    for name, args, expect in [
        ("from_list_string_positions", {"numbers": [[1, 1]], "positions": ["abc"]}, "MolkrrError"),
        ("from_list_string_coordinate", {"numbers": [[1, 1]], "positions": [[[0, 0, 0], [0, 0, "x"]]]}, "InvalidInputError"),
        ("from_list_ragged_positions", {"numbers": [[1, 1]], "positions": [[[0, 0, 0], [0, 0]]]}, "InvalidInputError"),
        ("from_list_string_numbers", {"numbers": [["H", "H"]], "positions": [ok_pos]}, "UnknownElementError"),
        ("from_list_ragged_numbers", {"numbers": [[1, [1, 2]]], "positions": [ok_pos]}, "MolkrrError"),
        ("from_list_not_sequences", {"numbers": 5, "positions": 7}, "InputTypeError"),
        ("from_list_string_energies", {"numbers": [[1, 1]], "positions": [ok_pos], "energies": ["high"]}, "InvalidInputError"),
        ("from_list_zero_element", {"numbers": [[0, 1]], "positions": [ok_pos]}, "UnknownElementError"),
        ("from_list_element_200", {"numbers": [[200, 1]], "positions": [ok_pos]}, "UnknownElementError"),
        ("from_list_empty", {"numbers": [], "positions": []}, "EmptyMoleculeError"),
    ]:
        add(cat, name, "api", expect, call="from_list", args=args)
    for name, call, params, expect in [
        ("cm_variant_unknown", "CoulombMatrix", {"variant": "zigzag"}, "InvalidInputError"),
        ("cm_size_negative", "CoulombMatrix", {"size": -1}, "InvalidInputError"),
        ("cm_size_fraction", "CoulombMatrix", {"size": 2.5}, "InvalidInputError"),
        ("cm_size_too_small", "CoulombMatrix", {"size": 2}, "RepresentationSizeError"),
        ("bob_padding_negative", "BagOfBonds", {"bag_padding": -1}, "InvalidInputError"),
        ("bob_elements_typo", "BagOfBonds", {"elements": ["C", "Xx"]}, "UnknownElementError"),
        ("bob_elements_duplicate", "BagOfBonds", {"elements": [1, 1]}, "InvalidInputError"),
        ("fchl19_nRs2_zero", "FCHL19", {"nRs2": 0}, "InvalidInputError"),
        ("fchl19_form_unknown", "FCHL19", {"form": "pairwise"}, "InvalidInputError"),
        ("fchl19_elements_zero", "FCHL19", {"elements": [0, 6]}, "InvalidInputError"),
        ("fchl19_eta2_string", "FCHL19", {"eta2": "wide"}, "InvalidInputError"),
        ("fchl19_missing_element", "FCHL19", {"elements": [1, 6]}, "UnknownElementError"),
    ]:
        add(cat, name, "api", expect, call="fit_representation", args={"class": call, "params": params})
    for name, params, expect in [
        ("krr_lam_negative", {"lam": -1.0}, "InvalidInputError"),
        ("krr_sigma_zero", {"sigma": 0.0}, "InvalidInputError"),
        ("krr_kernel_unknown", {"kernel": "rbf"}, "InvalidInputError"),
        ("model_energies_1e308", {"energies": [1e308] + [1.0] * 13}, "InvalidInputError"),
        ("model_energies_nan", {"energies": ["nan"] + [1.0] * 13}, "InvalidInputError"),
        ("model_energies_too_few", {"energies": [1.0] * 3}, "ShapeMismatchError"),
    ]:
        add(cat, name, "api", expect, call="fit_model", args=params)
    for name, X, y, expect in [
        ("kernel_ridge_nan_X", [[1.0, "nan"], [0.0, 1.0]], [1.0, 2.0], "InvalidInputError"),
        ("kernel_ridge_string_X", [["a", "b"], [0.0, 1.0]], [1.0, 2.0], "InvalidInputError"),
        ("kernel_ridge_ragged_X", [[1.0], [0.0, 1.0]], [1.0, 2.0], "MolkrrError"),
        ("kernel_ridge_y_length", [[1.0, 0.0], [0.0, 1.0]], [1.0, 2.0, 3.0], "ShapeMismatchError"),
        ("kernel_ridge_3d_X", [[[1.0]], [[0.0]]], [1.0, 2.0], "ShapeMismatchError"),
    ]:
        add(cat, name, "api", expect, call="fit_kernel_ridge", args={"X": X, "y": y})
    add(cat, "allow_unsupported_element_bob", "api", "UnknownElementError", call="allow_elements",
        args={"model": "model_bob.npz", "elements": ["N"]})
    add(cat, "allow_typo_element", "api", "UnknownElementError", call="allow_elements",
        args={"model": "model_cm.npz", "elements": ["Xx"]})
    add(cat, "calculator_unseen_element", "api", "UnseenElementError", call="calculator",
        args={"model": "model_cm.npz", "numbers": [7, 1], "positions": ok_pos})
    add(cat, "calculator_periodic", "api", "MoleculeError", call="calculator",
        args={"model": "model_cm.npz", "numbers": [6, 1], "positions": ok_pos, "pbc": True})
    add(cat, "fchl19_model_nitrogen", "api", "UnseenElementError", call="predict",
        args={"model": "model_fchl19.npz", "numbers": [7, 1, 1, 1], "positions": [[0, 0, 0], [0, 0, 1.0], [0, 1.0, 0],
                                                                                   [1.0, 0, 0]]})


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    good = write_good()
    model_cases(good)
    xyz_cases(good)
    api_cases()
    manifest = {
        "generated_by": "tests/make_bad_inputs.py",
        "cases": CASES,
        "good": sorted(str(p.relative_to(OUT)) for p in (OUT / "good").iterdir()),
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    by_cat: dict[str, int] = {}
    for c in CASES:
        by_cat[c["category"]] = by_cat.get(c["category"], 0) + 1
    print(f"{len(CASES)} bad cases in {OUT}: " + ", ".join(f"{k} {v}" for k, v in by_cat.items()))


if __name__ == "__main__":
    main()
