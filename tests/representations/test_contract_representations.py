"""The representation contract: every registered representation passes every check here.

As scikit-learn's ``parametrize_with_checks``, the suite is parametrised over the registry
(:func:`molkrr.representations.representation_names`), so a new representation module is tested
here without an edit. What a representation must do (see :mod:`molkrr.representations.base`):

* ``fit`` learns sizes, sets an int ``n_features_`` and returns self; ``transform`` gives finite float64
  rows, one per molecule (one per atom for ``per_atom`` names), the same whichever batch a molecule is in;
* ``vjp`` equals the explicit ``jacobian`` contracted with the cotangent, and both equal central finite
  differences of the features; the gradient of any function of the features is invariant under
  translations and rotations;
* unfitted use raises ``NotFittedError``; a cotangent of the wrong shape or with NaN raises
  ``ShapeMismatchError``; an element a fitted representation does not know raises
  ``UnknownElementError`` (when ``limits_elements``) and a molecule larger than its size raises
  ``RepresentationSizeError`` (when ``limits_size``) — otherwise both work;
* ``sized_for`` gives an unfitted copy whose feature layout does not depend on the molecules it is
  fitted on and that holds every molecule within the sizes;
* scikit-learn conventions (``get_params``, ``clone``, no fitted attributes before ``fit``) and
  model files: a fitted representation, and a :class:`MolecularKRR` built on it, survive
  ``save_model``/``load_model`` bit for bit.

Equality with independent implementations (qmllib) stays with each representation's own tests.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from molkrr import MolecularKRR, load_model, save_model
from molkrr.errors import InvalidInputError, RepresentationSizeError, ShapeMismatchError, UnknownElementError
from molkrr.molecules import Molecules
from molkrr.representations import Representation, get_spec, registry, representation_names

NAMES = representation_names()
ELEMENTS = (1, 6, 7, 8)
H = 1e-5  # finite-difference step, Å


# ---------------------------------------------------------------------------------------------- data
def _molecule(rng: np.random.Generator, numbers) -> tuple[np.ndarray, np.ndarray]:
    """Atoms on a jittered 1.3 Å grid: no coincident atoms, sort keys well apart."""
    grid = np.array(list(itertools.product(range(3), repeat=3)), dtype=float) * 1.3
    n = len(numbers)
    R = grid[rng.choice(len(grid), size=n, replace=False)] + rng.uniform(-0.25, 0.25, size=(n, 3))
    return np.asarray(numbers), R


def _batch(seed: int, compositions) -> Molecules:
    rng = np.random.default_rng(seed)
    return Molecules.from_list(*zip(*[_molecule(rng, c) for c in compositions]))


#: Training molecules: H, C, N, O; 2 to 6 atoms, at most 3 H.
TRAIN = _batch(0, [[6, 1, 1, 1], [8, 1, 1], [7, 6, 1], [6, 6, 8, 1, 1, 7], [1, 8], [6, 7, 8, 1, 1]])
#: Molecules checked by finite differences (within TRAIN's sizes and elements).
PROBES = _batch(1, [[6, 1, 1, 1], [7, 6, 8, 1, 1], [8, 1, 6]])
#: One molecule with more atoms (and more H) than any training molecule.
LARGE = _batch(2, [[6, 6, 1, 1, 1, 1, 1, 8]])
#: One molecule with an element (S) outside any training molecule and outside FCHL19's default elements.
FOREIGN = _batch(3, [[16, 1, 1]])


def _rep(name: str) -> Representation:
    return get_spec(name).make()


def _fitted(name: str) -> Representation:
    return _rep(name).fit(TRAIN)


def _rows(name: str, mols: Molecules) -> int:
    return int(mols.n_atoms.sum()) if get_spec(name).per_atom else len(mols)


def _cotangent(name: str, rep: Representation, mols: Molecules, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(_rows(name, mols), rep.n_features_))


def _displaced(Z: np.ndarray, R: np.ndarray) -> Molecules:
    """Every coordinate displaced by +H and −H, in (atom, axis, sign) order."""
    shifted = []
    for a, x, sign in itertools.product(range(len(Z)), range(3), (1.0, -1.0)):
        Rs = R.copy()
        Rs[a, x] += sign * H
        shifted.append(Rs)
    return Molecules.from_list([Z] * len(shifted), shifted)


def _fd_vjp(rep: Representation, Z: np.ndarray, R: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Central differences of E(R) = Σ G ⊙ X(R) for one molecule (G shaped like its feature rows)."""
    X = rep.transform(_displaced(Z, R))  # (6n · rows, f)
    E = np.einsum("mrf,rf->m", X.reshape(6 * len(Z), -1, X.shape[1]), G.reshape(-1, X.shape[1]))
    return ((E[0::2] - E[1::2]) / (2 * H)).reshape(len(Z), 3)


def _row_slices(name: str, mols: Molecules) -> list[slice]:
    if get_spec(name).per_atom:
        return [mols.atom_slice(i) for i in range(len(mols))]
    return [slice(i, i + 1) for i in range(len(mols))]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


# ---------------------------------------------------------------------------------------------- registry
def test_registry_lists_the_built_in_representations():
    assert {"cm-sorted", "cm-unsorted", "cm-eigenvalues", "bob", "fchl19", "fchl19-global", "fchl19-atomic"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_name_builds_its_class_with_its_parameters(name):
    spec = get_spec(name)
    rep = spec.make()
    assert type(rep) is spec.cls and isinstance(rep, Representation)
    assert name == name.lower() and spec.description
    for key, value in spec.params.items():
        assert rep.get_params()[key] == value
    assert registry.representation_classes()[spec.cls.__name__] is spec.cls


# ---------------------------------------------------------------------------------------------- fit / transform
@pytest.mark.parametrize("name", NAMES)
def test_fit_and_transform_shapes(name):
    rep = _rep(name)
    assert rep.fit(TRAIN) is rep
    assert isinstance(rep.n_features_, (int, np.integer)) and rep.n_features_ > 0
    X = rep.transform(TRAIN)
    assert X.shape == (_rows(name, TRAIN), rep.n_features_) and X.dtype == np.float64
    assert np.isfinite(X).all() and np.abs(X).max() > 0
    np.testing.assert_array_equal(clone(rep).fit_transform(TRAIN), X)
    # a molecule's rows do not depend on the batch it is transformed in
    sub = [4, 1]
    rows = np.concatenate([np.arange(X.shape[0])[s] for s in np.array(_row_slices(name, TRAIN))[sub]])
    np.testing.assert_allclose(rep.transform(TRAIN[sub]), X[rows], rtol=1e-13, atol=1e-13)
    # ase.Atoms lists are accepted and give the same features and gradients
    atoms = TRAIN.to_ase()
    np.testing.assert_array_equal(rep.transform(atoms), X)
    G = np.ones_like(X)
    for a, b in zip(rep.vjp(atoms, G), rep.vjp(TRAIN, G)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_unfitted_use_raises(name):
    rep = _rep(name)
    G = np.zeros((_rows(name, PROBES), 4))
    for call in (lambda: rep.transform(PROBES), lambda: rep.vjp(PROBES, G), lambda: rep.jacobian(PROBES)):
        with pytest.raises(NotFittedError):
            call()


# ---------------------------------------------------------------------------------------------- derivatives
@pytest.mark.parametrize("name", NAMES)
def test_vjp_equals_the_jacobian_contracted(name):
    rep = _fitted(name)
    G = _cotangent(name, rep, PROBES, 0)
    V, Js = rep.vjp(PROBES, G), rep.jacobian(PROBES)
    assert len(V) == len(Js) == len(PROBES)
    for v, J, s, n in zip(V, Js, _row_slices(name, PROBES), PROBES.n_atoms):
        assert v.shape == (n, 3)
        assert J.shape == ((n, rep.n_features_, n, 3) if get_spec(name).per_atom else (rep.n_features_, n, 3))
        ref = np.tensordot(G[s].reshape(J.shape[:-2]), J, axes=J.ndim - 2)
        np.testing.assert_allclose(v, ref, rtol=1e-10, atol=1e-10 * np.abs(ref).max())


@pytest.mark.parametrize("name", NAMES)
def test_vjp_matches_central_finite_differences(name):
    rep = _fitted(name)
    G = _cotangent(name, rep, PROBES, 1)
    for (Z, R), v, s in zip(PROBES, rep.vjp(PROBES, G), _row_slices(name, PROBES)):
        assert _rel(v, _fd_vjp(rep, Z, R, G[s])) <= 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_jacobian_matches_central_finite_differences(name):
    rep = _fitted(name)
    mol = PROBES[1]
    (J,) = rep.jacobian(mol)
    Z, R = mol.molecule(0)
    X = rep.transform(_displaced(Z, R)).reshape(len(Z), 3, 2, *J.shape[:-2])
    fd = np.moveaxis((X[:, :, 0] - X[:, :, 1]) / (2 * H), (0, 1), (-2, -1))
    assert _rel(J, fd) <= 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_gradient_is_invariant_under_rigid_motions(name):
    """Σ_a ∂E/∂R_a = 0 (translations) and Σ_a R_a × ∂E/∂R_a = 0 (rotations) for any E(X)."""
    rep = _fitted(name)
    G = _cotangent(name, rep, PROBES, 2)
    for (_, R), v in zip(PROBES, rep.vjp(PROBES, G)):
        scale = np.abs(v).max() * max(np.abs(R).max(), 1.0)
        assert np.abs(v.sum(axis=0)).max() <= 1e-11 * scale
        assert np.abs(np.cross(R, v).sum(axis=0)).max() <= 1e-11 * scale


@pytest.mark.parametrize("name", NAMES)
def test_bad_cotangents_raise(name):
    rep = _fitted(name)
    rows = _rows(name, PROBES)
    for bad in (np.zeros((rows, rep.n_features_ + 1)), np.zeros((rows + 1, rep.n_features_))):
        with pytest.raises(ShapeMismatchError):
            rep.vjp(PROBES, bad)
    G = np.zeros((rows, rep.n_features_))
    G[0, 0] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        rep.vjp(PROBES, G)


# ---------------------------------------------------------------------------------------------- limits
@pytest.mark.parametrize("name", NAMES)
def test_unknown_element(name):
    rep = _fitted(name)
    G = np.ones((_rows(name, FOREIGN), rep.n_features_))
    if rep.limits_elements:
        for call in (lambda: rep.transform(FOREIGN), lambda: rep.vjp(FOREIGN, G), lambda: rep.jacobian(FOREIGN)):
            with pytest.raises(UnknownElementError):
                call()
    else:
        assert np.isfinite(rep.transform(FOREIGN)).all()
        assert rep.vjp(FOREIGN, G)[0].shape == (3, 3)


@pytest.mark.parametrize("name", NAMES)
def test_molecule_too_large(name):
    rep = _rep(name).fit(TRAIN[[0, 1, 2]])  # at most 4 atoms, 3 H
    G = np.ones((_rows(name, LARGE), rep.n_features_))
    if rep.limits_size:
        for call in (lambda: rep.transform(LARGE), lambda: rep.vjp(LARGE, G), lambda: rep.jacobian(LARGE)):
            with pytest.raises(RepresentationSizeError):
                call()
        assert issubclass(RepresentationSizeError, ValueError)
    else:
        X = rep.transform(LARGE)
        assert X.shape == (_rows(name, LARGE), rep.n_features_) and np.isfinite(X).all()


@pytest.mark.parametrize("name", NAMES)
def test_sized_for_holds_every_molecule_within_the_sizes(name):
    counts = {1: 5, 6: 2, 7: 1, 8: 1}
    template = _rep(name)
    sized = template.sized_for(8, counts)
    assert sized is not template and type(sized) is type(template)
    assert not [k for k in vars(sized) if k.endswith("_") and not k.startswith("_")]
    small = clone(sized).fit(TRAIN[[1, 4]])  # 2-3 atoms
    large = clone(sized).fit(LARGE)  # 8 atoms, 5 H, 2 C, 1 O
    assert small.n_features_ == large.n_features_  # the layout is the sizes', not the data's
    np.testing.assert_array_equal(small.transform(LARGE), large.transform(LARGE))


# ---------------------------------------------------------------------------------------------- API and files
@pytest.mark.parametrize("name", NAMES)
def test_sklearn_params_and_clone(name):
    rep = _rep(name)
    assert not [k for k in vars(rep) if k.endswith("_") and not k.startswith("_")]
    params = rep.get_params()
    c = clone(rep)
    assert c is not rep and repr(c.get_params()) == repr(params)
    assert repr(type(rep)(**params).get_params()) == repr(params)  # __init__ only stores its arguments
    rep.fit(TRAIN)
    c = clone(rep)
    assert not hasattr(c, "n_features_") and repr(c.get_params()) == repr(params)


@pytest.mark.parametrize("name", NAMES)
def test_model_file_round_trip(name, tmp_path):
    rep = _fitted(name)
    save_model(rep, tmp_path / "rep.npz")
    again = load_model(tmp_path / "rep.npz")
    assert type(again) is type(rep) and repr(again.get_params()) == repr(rep.get_params())
    np.testing.assert_array_equal(again.transform(PROBES), rep.transform(PROBES))
    energies = np.random.default_rng(5).normal(size=len(TRAIN))
    model = MolecularKRR(_rep(name), sigma=50.0, lam=1e-6)
    model.fit(TRAIN, energies)  # per-atom representations: the local kernel (molkrr.derivative_krr)
    model.save(tmp_path / "model.npz")
    loaded = load_model(tmp_path / "model.npz")
    assert type(loaded.representation_) is type(rep)
    np.testing.assert_array_equal(loaded.predict(PROBES), model.predict(PROBES))
    for a, b in zip(loaded.predict_forces(PROBES), model.predict_forces(PROBES)):
        np.testing.assert_array_equal(a, b)
