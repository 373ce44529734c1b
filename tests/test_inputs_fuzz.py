"""A bounded-time fuzz of model files: random truncation, bit flips, byte runs, header field edits and array
edits of the good models in tests/data/inputs/good. Every mutant must either load and then predict finite
values (or raise a MolkrrError), or be refused by load_model with a ModelFileError — never another exception,
a NaN, a crash or a hang.

MOLKRR_FUZZ_SECONDS (default 10) bounds the run; MOLKRR_FUZZ_SEED (default 0) picks the sequence, so a
failure is reproduced by its seed and iteration, printed with it.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

import molkrr
from molkrr.errors import ModelFileError, MolkrrError

GOOD = Path(__file__).parent / "data" / "inputs" / "good"
MODELS = sorted(GOOD.glob("*.npz"))
FUZZ_SECONDS = float(os.environ.get("MOLKRR_FUZZ_SECONDS", "10"))
FUZZ_SEED = int(os.environ.get("MOLKRR_FUZZ_SEED", "0"))

_VALUES = [None, True, False, 0, -1, 1, 3, 2**31, 2**63, 10**400, 1e308, -1e308, 1e-308, math.nan, math.inf, -math.inf,
           "", "x", "gaussian", "sorted", "eV", [], {}, [1, 2], [[1.0]], {"__array__": "a0"}, {"__tuple__": []},
           {"__dict__": {}}, 0.5, -0.5, 1e-8]


def _load_parts(path: Path) -> tuple[bytes, dict, dict[str, np.ndarray]]:
    raw = path.read_bytes()
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(arrays.pop("__header__").tobytes())
    return raw, header, arrays


def _npz(header, arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, __header__=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)
    return buf.getvalue()


def _containers(obj, out):
    """Every dict and list in the JSON tree (the places a field edit can land)."""
    if isinstance(obj, dict):
        out.append(obj)
        for v in obj.values():
            _containers(v, out)
    elif isinstance(obj, list):
        out.append(obj)
        for v in obj:
            _containers(v, out)
    return out


def _edit_field(rng, header, arrays):
    places = _containers(header, [])
    place = places[rng.integers(len(places))]
    value = copy.deepcopy(_VALUES[rng.integers(len(_VALUES))])
    if rng.random() < 0.2:  # another node or array reference from the same file
        others = [p for p in places if isinstance(p, dict) and ("__array__" in p or "class" in p)]
        if others:
            value = copy.deepcopy(others[rng.integers(len(others))])
    if isinstance(place, dict) and place:
        key = list(place)[rng.integers(len(place))]
        r = rng.random()
        if r < 0.15:
            del place[key]
        elif r < 0.25:
            place[key + "_" if rng.random() < 0.5 else "x"] = value
        else:
            place[key] = value
    elif isinstance(place, list) and place:
        place[rng.integers(len(place))] = value
    return _npz(header, arrays)


def _edit_array(rng, header, arrays):
    if not arrays:
        return _npz(header, arrays)
    key = sorted(arrays)[rng.integers(len(arrays))]
    a = arrays[key]
    choice = rng.integers(10)
    if choice == 0:
        a = a.astype([np.int64, np.float32, np.complex128, bool, "U3", np.uint8][rng.integers(6)])
    elif choice == 1 and a.size:
        a = a.reshape(-1)[: rng.integers(a.size)]
    elif choice == 2:
        a = a.T if a.ndim == 2 else a[:, None]
    elif choice == 3 and a.size and a.dtype.kind == "f":
        a = a.copy()
        a.reshape(-1)[rng.integers(a.size)] = [np.nan, np.inf, -np.inf, 1e300, 1e-320][rng.integers(5)]
    elif choice == 4 and a.size and a.dtype.kind in "iu":
        a = a.copy()
        a.reshape(-1)[rng.integers(a.size)] = [-1, 0, 119, 2**40, 10**6][rng.integers(5)]
    elif choice == 5:
        a = np.concatenate([a, a[:1]]) if a.ndim and a.size else np.zeros(3)
    elif choice == 6:
        a = np.zeros((0,) + a.shape[1:], dtype=a.dtype)
    elif choice == 7 and a.size and a.dtype.kind == "f":
        a = a * 10.0 ** rng.integers(-300, 300)
    elif choice == 8:
        a = a.astype(a.dtype.newbyteorder(">")) if a.dtype.kind in "iuf" else a
    else:
        arrays[f"extra{rng.integers(100)}"] = a.copy()
    arrays[key] = a
    return _npz(header, arrays)


def _mutant(rng, raw, header, arrays) -> tuple[str, bytes]:
    kind = ["truncate", "bitflip", "bytes", "field", "field", "field", "array", "array"][rng.integers(8)]
    if kind == "truncate":
        return kind, raw[: rng.integers(len(raw))]
    if kind == "bitflip":
        bad = bytearray(raw)
        for _ in range(rng.integers(1, 9)):
            i = rng.integers(len(bad))
            bad[i] ^= 1 << rng.integers(8)
        return kind, bytes(bad)
    if kind == "bytes":
        bad = bytearray(raw)
        i = rng.integers(len(bad))
        run = rng.integers(1, 17)
        bad[i : i + run] = rng.integers(0, 256, run).astype(np.uint8).tobytes()
        return kind, bytes(bad)
    header, arrays = copy.deepcopy(header), {k: v.copy() for k, v in arrays.items()}
    if kind == "field":
        for _ in range(rng.integers(1, 3)):
            data = _edit_field(rng, header, arrays)
        return kind, data
    return kind, _edit_array(rng, header, arrays)


def _exercise(model, query) -> None:
    """Predict with a model that loaded: finite results or a MolkrrError."""
    if isinstance(model, molkrr.MolecularKRR):
        energies = model.predict(query)
        assert np.isfinite(energies).all(), f"non-finite energies {energies}"
        if getattr(model.representation_, "differentiable", False):
            energies, forces = model.predict_energies_and_forces(query)
            assert np.isfinite(energies).all() and all(np.isfinite(f).all() for f in forces), "non-finite forces"
    elif isinstance(model, molkrr.KernelRidge):
        X = np.random.default_rng(0).normal(size=(3, model.n_features_in_))
        pred = model.predict(X)
        assert np.isfinite(pred).all(), f"non-finite predictions {pred}"
        if model.alpha_.ndim == 1:
            values, grads = model.predict_with_gradient(X)
            assert np.isfinite(values).all() and np.isfinite(grads).all(), "non-finite gradient"


@pytest.mark.skipif(not MODELS, reason="no good models: run tests/make_bad_inputs.py")
def test_fuzz_model_files(tmp_path):
    rng = np.random.default_rng(FUZZ_SEED)
    parts = {p.name: _load_parts(p) for p in MODELS}
    query = molkrr.datasets.read_xyz(GOOD / "query.xyz")
    path = tmp_path / "mutant.npz"
    for p in MODELS:  # compile the representations' kernels (numba) before the clock starts
        _exercise(molkrr.load_model(p), query)
    counts = {"refused": 0, "loaded": 0, "refused_at_predict": 0}
    kinds: dict[str, int] = {}
    failures = []
    deadline = time.perf_counter() + FUZZ_SECONDS
    iteration = 0
    while time.perf_counter() < deadline:
        name = sorted(parts)[rng.integers(len(parts))]
        kind, data = _mutant(rng, *parts[name])
        kinds[kind] = kinds.get(kind, 0) + 1
        path.write_bytes(data)
        t0 = time.perf_counter()
        try:
            model = molkrr.load_model(path)
        except ModelFileError as exc:
            counts["refused"] += 1
            if "\n" in str(exc):
                failures.append((iteration, name, kind, f"multi-line message: {exc!r}"))
        except Exception as exc:  # noqa: BLE001 - the point of the test
            failures.append((iteration, name, kind, f"load_model raised {type(exc).__name__}: {exc}"))
        else:
            counts["loaded"] += 1
            try:
                _exercise(model, query)
            except MolkrrError:
                counts["refused_at_predict"] += 1
            except Exception as exc:  # noqa: BLE001
                failures.append((iteration, name, kind, f"prediction raised {type(exc).__name__}: {exc}"))
        if time.perf_counter() - t0 > 5.0:
            failures.append((iteration, name, kind, f"took {time.perf_counter() - t0:.1f} s"))
        iteration += 1
    print(f"\nfuzz: {iteration} mutants in {FUZZ_SECONDS:g} s (seed {FUZZ_SEED}): {counts}; kinds {kinds}")
    assert iteration > 50
    assert not failures, "\n".join(f"seed {FUZZ_SEED} iteration {i} ({n}, {k}): {msg}" for i, n, k, msg in failures[:20])
