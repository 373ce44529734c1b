"""Checks at the boundaries that the corpus does not reach through files: objects edited in memory before
compiled code runs, the parameter-check helpers, fit and save refusing what would make a useless model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

import molkrr
from molkrr import _validation as v
from molkrr.errors import (
    InputTypeError,
    InvalidInputError,
    MolkrrError,
    RepresentationSizeError,
    ShapeMismatchError,
    UnknownElementError,
)

GOOD = Path(__file__).parent / "data" / "inputs" / "good"


@pytest.fixture(scope="module")
def train():
    return molkrr.datasets.read_xyz(GOOD / "train.extxyz")


@pytest.mark.parametrize("rep", [molkrr.CoulombMatrix(), molkrr.BagOfBonds(), molkrr.FCHL19(elements=[1, 6, 8], nRs2=4, nRs3=3)])
def test_unchecked_batch_is_refused_before_compiled_code(rep, train):
    rep.fit(train)
    m = train[:3]
    bad_offsets = molkrr.Molecules(m.numbers, m.positions, np.array([0, 2, 500]), validate=False)
    with pytest.raises(ShapeMismatchError, match="offsets"):
        rep.transform(bad_offsets)
    bad_element = molkrr.Molecules(np.where(m.numbers == 1, 300, m.numbers), m.positions, m.offsets, validate=False)
    with pytest.raises(UnknownElementError):
        rep.transform(bad_element)


def test_coulomb_n_features_edited_in_memory_is_refused(train):
    """The SIGSEGV of issue 9: n_features_ smaller than size_(size_+1)/2 let the compiled loop write past X."""
    rep = molkrr.CoulombMatrix().fit(train)
    for n_features in (rep.n_features_ - 5, rep.n_features_ + 1, 1):
        rep.n_features_ = n_features
        with pytest.raises(RepresentationSizeError, match="n_features_"):
            rep.transform(train)
        with pytest.raises(RepresentationSizeError):
            rep.vjp(train, np.zeros((len(train), n_features)))


def test_bag_of_bonds_edited_in_memory_is_refused(train):
    rep = molkrr.BagOfBonds().fit(train)
    G = np.zeros((len(train), rep.n_features_))
    rep.n_features_ -= 3
    with pytest.raises(RepresentationSizeError):
        rep.vjp(train, G[:, :-3])
    rep = molkrr.BagOfBonds().fit(train)
    rep.bag_sizes_ = rep.bag_sizes_ - 100
    with pytest.raises(RepresentationSizeError):
        rep.transform(train)


def test_failed_fit_leaves_the_model_unfitted(train):
    model = molkrr.MolecularKRR(molkrr.CoulombMatrix(size=2), sigma=10.0)
    with pytest.raises(RepresentationSizeError):
        model.fit(train)
    with pytest.raises(NotFittedError):
        check_is_fitted(model)


def test_training_refuses_overflowing_targets(train):
    y = train.energies.copy()
    y[4] = 1e250
    with pytest.raises(InvalidInputError, match="entry 4"):
        molkrr.MolecularKRR(sigma=10.0).fit(train, y)


def test_save_refuses_what_load_would_refuse(train, tmp_path):
    model = molkrr.MolecularKRR(sigma=10.0).fit(train)
    model.krr_.alpha_ = model.krr_.alpha_.copy()
    model.krr_.alpha_[0] = np.nan
    with pytest.raises(InvalidInputError, match="alpha_"):
        model.save(tmp_path / "nan.npz")
    assert not (tmp_path / "nan.npz").exists()


def test_model_parameters_checked_by_the_shared_helper(train):
    for bad in (dict(kernel="rbf"), dict(sigma=-1.0), dict(lam="small"), dict(center="yes"), dict(energy_unit=5)):
        with pytest.raises(InvalidInputError):
            molkrr.MolecularKRR(**bad).fit(train)


def test_helpers():
    assert v.check_int(np.int32(3), "n", 1) == 3
    for bad in (True, 2.0, "3", 0):
        with pytest.raises(InvalidInputError, match="n must be"):
            v.check_int(bad, "n", 1)
    with pytest.raises(InvalidInputError, match="in 1..5"):
        v.check_int(6, "n", 1, 5)
    assert v.check_positive(0, "lam", allow_zero=True) == 0.0
    for bad in (0.0, -1, np.nan, np.inf, "1", None, True, 10**400):
        with pytest.raises(InvalidInputError):
            v.check_positive(bad, "sigma")
    assert v.check_choice("a", "x", ("a", "b")) == "a"
    with pytest.raises(InvalidInputError, match="'a', 'b'"):
        v.check_choice(["a"], "x", ("a", "b"))
    with pytest.raises(InvalidInputError, match="overflow"):
        v.check_targets([1.0, -1e101])
    np.testing.assert_array_equal(v.check_targets([1, 2]), [1.0, 2.0])
    err = v.as_molkrr_error(ValueError("Found array with dim 3, while dim <= 2 is required"))
    assert isinstance(err, ShapeMismatchError)


def test_every_error_is_also_the_matching_builtin():
    import molkrr.errors as errors

    for name in dir(errors):
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, MolkrrError) and cls is not MolkrrError:
            assert any(b in cls.__mro__ for b in (ValueError, TypeError, IndexError, ArithmeticError, RuntimeError, MemoryError)), name
    assert issubclass(InputTypeError, TypeError)


def test_read_xyz_require_energies_names_the_frame(tmp_path):
    path = tmp_path / "partial.extxyz"
    path.write_text("2\nenergy=1.0\nH 0 0 0\nH 0 0 0.7\n2\n\nH 0 0 0\nH 0 0 0.8\n")
    assert molkrr.datasets.read_xyz(path).energies is None  # for prediction, labels are optional
    with pytest.raises(molkrr.errors.DatasetError, match="frame 1 has no 'energy' value"):
        molkrr.datasets.read_xyz(path, require_energies=True)
