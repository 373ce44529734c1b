"""The local (atom-centred) FCHL19 kernel against qmllib's FCHL19 GP/GDML kernels (the oracle).

qmllib's Gaussian kernels use exp(−‖a−b‖²/(2σ²)), molkrr's convention, so σ is passed unchanged.
qmllib's gradient rows are forces (−∂/∂R): its energy–gradient blocks are minus ours. Our Gram rows
are molecule by molecule [E, ∂E/∂R (3n)] (without the rigid-motion projection here); qmllib's are
[all energies, all gradients].
"""

from __future__ import annotations

import numpy as np
import pytest

from molkrr import derivative_krr as dk
from molkrr.kernels import Gaussian
from molkrr.model import MolecularKRR, finite_difference_forces
from molkrr.molecules import Molecules
from molkrr.representations import make_representation
from molkrr.representations.fchl19 import FCHL19

qmllib_kernels = pytest.importorskip("qmllib.kernels")
qmllib_reps = pytest.importorskip("qmllib.representations")

ELEMENTS = [1, 6, 8]
BASE = np.array([[0, 0, 0], [1.2, 0, 0], [-0.4, 1.0, 0.1], [1.6, 1.0, -0.2], [0.3, -0.9, 0.5]], dtype=float)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    numbers = [np.array([6, 8, 1, 1, 1]), np.array([6, 6, 1, 1, 1]), np.array([6, 8, 1, 1, 1])]
    positions = [BASE + 0.1 * rng.standard_normal(BASE.shape) for _ in numbers]
    return numbers, positions


def _qmllib(numbers, positions):
    X, dX = [], []
    for z, r in zip(numbers, positions):
        x, dx = qmllib_reps.generate_fchl19(z, r, elements=ELEMENTS, gradients=True, pad=len(z))
        X.append(x)
        dX.append(dx)
    return np.array(X), np.array(dX), [list(z) for z in numbers]


@pytest.fixture(scope="module")
def setup():
    numbers, positions = _batch()
    mols = Molecules.from_list(numbers, positions)
    rep = FCHL19(elements=ELEMENTS, form="atomic").fit(mols)
    X, dX, Q = _qmllib(numbers, positions)
    return mols, rep, X, dX, Q


@pytest.mark.parametrize("sigma", [1.5, 6.0])
def test_gram_matrix_equals_qmllib_gp_kernel(setup, sigma):
    mols, rep, X, dX, Q = setup
    env = dk.environments(rep, mols, jacobians=True, project_rigid=False)
    rows = dk.row_layout(env, "energy+forces")
    K = dk.gram_matrix(Gaussian(sigma), env, "energy+forces", rows, lower_only=False)
    n = len(mols)
    e_rows = rows[:-1]
    f_rows = np.concatenate([np.arange(rows[m] + 1, rows[m + 1]) for m in range(n)])
    ref = qmllib_kernels.get_gp_kernel(X, X, dX, dX, Q, Q, sigma)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(K[np.ix_(e_rows, e_rows)], ref[:n, :n], rtol=1e-10, atol=1e-12 * scale)
    np.testing.assert_allclose(K[np.ix_(e_rows, f_rows)], -ref[:n, n:], rtol=1e-10, atol=1e-12 * scale)
    np.testing.assert_allclose(K[np.ix_(f_rows, e_rows)], -ref[n:, :n], rtol=1e-10, atol=1e-12 * scale)
    np.testing.assert_allclose(K[np.ix_(f_rows, f_rows)], ref[n:, n:], rtol=1e-10, atol=1e-12 * scale)
    gdml = qmllib_kernels.get_gdml_kernel(X, X, dX, dX, Q, Q, sigma)
    np.testing.assert_allclose(K[np.ix_(f_rows, f_rows)], gdml, rtol=1e-10, atol=1e-12 * scale)
    local = qmllib_kernels.get_local_kernel(X, X, Q, Q, sigma)
    np.testing.assert_allclose(K[np.ix_(e_rows, e_rows)], local, rtol=1e-10, atol=1e-12 * scale)


def test_energy_model_equals_krr_on_qmllib_local_kernel():
    numbers, positions = [], []
    for seed in range(3):
        z, r = _batch(10 + seed)
        numbers += z
        positions += r
    rng = np.random.default_rng(2)
    y = rng.standard_normal(len(numbers))
    mols = Molecules.from_list(numbers, positions).with_labels(y)
    sigma, lam = 3.0, 1e-4
    model = MolecularKRR(FCHL19(elements=ELEMENTS, form="atomic"), sigma=sigma, lam=lam, baseline="mean").fit(mols)
    X, _, Q = _qmllib(numbers, positions)
    K = qmllib_kernels.get_local_kernel(X, X, Q, Q, sigma)
    alpha = np.linalg.solve(K + lam * np.eye(len(y)), y - y.mean())
    test_numbers, test_positions = _batch(3)
    Xt, _, Qt = _qmllib(test_numbers, test_positions)
    Kt = qmllib_kernels.get_local_kernel(Xt, X, Qt, Q, sigma)
    assert Kt.shape == (len(y), len(test_numbers))  # qmllib returns (N2, N1)
    expected = Kt.T @ alpha + y.mean()
    got = model.predict(Molecules.from_list(test_numbers, test_positions))
    # y ~ N(0, 1): a prediction near zero carries the round-off of its O(1) neighbours (qmllib sums in another order)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9 * np.abs(expected).max())
    # and its forces are the exact gradient of that energy
    test = Molecules.from_list(test_numbers[:1], test_positions[:1])
    fd = finite_difference_forces(model, test, h=1e-3, points=4)
    np.testing.assert_allclose(model.predict_forces(test)[0], fd, atol=1e-6 * max(1.0, np.abs(fd).max()))


def test_elements_are_matched():
    """Environments of different elements never meet: a C–O molecule and an all-H one have zero kernel."""
    mols = Molecules.from_list([np.array([6, 8]), np.array([1, 1])], [BASE[:2], BASE[:2] * 0.6])
    rep = FCHL19(elements=ELEMENTS, form="atomic").fit(mols)
    env = dk.environments(rep, mols, jacobians=True)
    rows = dk.row_layout(env, "energy+forces")
    K = dk.gram_matrix(Gaussian(2.0), env, "energy+forces", rows, lower_only=False)
    assert np.all(K[rows[0] : rows[1], rows[1] : rows[2]] == 0.0)
    assert K[0, 0] > 0


def test_registry_name_gives_the_local_kernel():
    rep = make_representation("fchl19-local")
    assert isinstance(rep, FCHL19) and rep.form == "atomic" and dk.is_local(rep)
