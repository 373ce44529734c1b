"""MolecularKRR.fit_appended / DerivativeKRR.extend: appending frames extends the kept Cholesky factor, and the
model equals a full fit on all frames at the same σ, λ, λ_F (tolerances relative to the largest entry)."""

from __future__ import annotations

import numpy as np
import pytest

from molkrr import MolecularKRR
from molkrr.datasets.frames import read_frames
from molkrr.datasets.md import shipped_trajectory_path
from molkrr.representations import FCHL19


@pytest.fixture(scope="module")
def frames():
    return read_frames(shipped_trajectory_path())[0][0:600:40]  # 15 frames of ethanol, eV and eV/Å


def _model(targets="energy+forces", **kw):
    return MolecularKRR(FCHL19(form="atomic"), sigma=2.0, lam=1e-5, lam_forces=1e-6, targets=targets,
                        energy_unit="eV", **kw)


def _close(a, b, rtol):
    a, b = np.asarray(a), np.asarray(b)
    assert np.abs(a - b).max() <= rtol * np.abs(b).max(), np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("targets", ["energy+forces", "forces", "energy"])
def test_appended_frames_give_the_full_fit(frames, targets):
    query = read_frames(shipped_trajectory_path())[0][1300:1303]
    full = _model(targets).fit(frames)
    grown = _model(targets).fit(frames[:9])
    factor = grown.krr_.kept_factor()
    assert factor is not None
    grown.fit_appended(frames[:12], 9).fit_appended(frames, 12)
    assert grown.krr_.kept_factor().shape[0] > factor.shape[0]  # the factor grew: no new fit replaced it
    _close(grown.krr_.alpha_, full.krr_.alpha_, 1e-8)
    _close(grown.krr_.W_, full.krr_.W_, 1e-8)
    E1, F1 = grown.predict_energies_and_forces(query)
    E0, F0 = full.predict_energies_and_forces(query)
    _close(E1, E0, 1e-10)
    _close(np.concatenate(F1), np.concatenate(F0), 1e-8)
    # the std reads the extended factor and the appended training geometries
    s1 = grown.predict(query, return_std=True)[1]
    s0 = full.predict(query, return_std=True)[1]
    _close(s1, s0, 1e-6)
    np.testing.assert_array_equal(grown.train_positions_, full.train_positions_)


def test_the_factor_extension_is_the_factor_of_the_whole(frames):
    full = _model().fit(frames)
    grown = _model().fit(frames[:10]).fit_appended(frames, 10)
    L0, L1 = full.krr_.kept_factor(), grown.krr_.kept_factor()
    _close(np.tril(L1), np.tril(L0), 1e-9)


def test_anything_else_is_a_full_fit_at_the_fitted_hyperparameters(frames):
    model = _model().fit(frames[:8])
    # the first frames changed: a full fit (σ, λ fixed to the fitted ones), same as fitting all
    other = frames[[1, 0, *range(2, 12)]]
    model.fit_appended(other, 8)
    ref = _model().fit(other)
    _close(model.krr_.alpha_, ref.krr_.alpha_, 1e-10)
    # a global energy model has no factor to extend: fit_appended is fit
    from molkrr import CoulombMatrix

    glob = MolecularKRR(CoulombMatrix("unsorted"), sigma=60.0, lam=1e-6, energy_unit="eV").fit(frames[:8])
    glob.fit_appended(frames, 8)
    ref = MolecularKRR(CoulombMatrix("unsorted"), sigma=60.0, lam=1e-6, energy_unit="eV").fit(frames)
    _close(glob.predict(frames), ref.predict(frames), 1e-12)
