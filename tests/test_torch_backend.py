"""The torch backend against the numpy backend: equal to 1e-10 (float64) for the kernel layer, KRR,
forces and the MLKRR/MLKR objectives, on torch-CPU and (when present) CUDA; backend selection and
its typed errors. Skipped where torch is not installed, except the checks that need no torch."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

import molkrr
from molkrr import MLKR, MLKRR, CoulombMatrix, KernelRidge, MolecularKRR, Molecules, load_model
from molkrr.backends import get_backend, set_backend
from molkrr.errors import (
    BackendUnavailableError,
    DeviceMemoryError,
    InvalidInputError,
    NotDifferentiableError,
    NumericalError,
)
from molkrr.kernels import Matern, make_kernel
from molkrr.linalg import JitterWarning
from molkrr.metric import mlkr_loss_and_grad, mlkrr_loss_and_grad
from molkrr.metric import _array_objectives
from molkrr.metric.mlkr import _mlkr
from molkrr.metric.mlkrr import _objective
from molecule_factory import random_molecules

try:
    import torch
except ImportError:  # CI without the torch extra
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")
HAS_CUDA = torch is not None and torch.cuda.is_available()
DEVICES = [
    pytest.param("cpu", marks=needs_torch),
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU")),
]
KERNELS = ["gaussian", "matern32", "matern52", "laplacian", "linear"]
STATIONARY = ["gaussian", "matern32", "matern52"]
RTOL = 1e-10


def close(a, b, rtol=RTOL):
    """Equal to rtol relative to the largest magnitude of b (entries near 0 are compared on that scale)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape
    scale = max(np.abs(b).max(), 1e-300)
    err = np.abs(a - b).max() / scale
    assert err <= rtol, f"relative difference {err:.2e} > {rtol:.0e}"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The test problems are tiny: one torch thread avoids thread start-up and spinning on a shared machine."""
    if torch is None:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(autouse=True)
def _no_global_default(monkeypatch):
    """Each test starts and ends with the numpy default (set_backend is process-wide)."""
    monkeypatch.delenv("MOLKRR_BACKEND", raising=False)
    monkeypatch.delenv("MOLKRR_DEVICE", raising=False)
    set_backend(None)
    yield
    set_backend(None)


def small_blocks(device):
    """A torch backend whose kernel blocks hold 7 rows of 40 columns: every streamed loop runs many blocks."""
    from molkrr.backends.torch_backend import TorchBackend

    be = TorchBackend(device)
    be.block_elements = 7 * 40
    return be


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def sigma_of(kernel_name):
    return 2.5 if kernel_name != "laplacian" else 6.0


# ------------------------------------------------------------------------------ selection and errors
def test_import_molkrr_does_not_import_torch():
    code = "import sys, molkrr, molkrr.backends; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_backend_names_and_devices_are_checked():
    assert get_backend().name == "numpy"
    assert get_backend("numpy", "cpu").name == "numpy"
    with pytest.raises(InvalidInputError, match="unknown backend"):
        get_backend("jax")
    with pytest.raises(InvalidInputError, match="device"):
        get_backend("torch", "gpu0")
    with pytest.raises(InvalidInputError, match="numpy backend runs on the CPU"):
        get_backend("numpy", "cuda")
    with pytest.raises(InvalidInputError, match="unknown backend"):
        KernelRidge(backend="tensorflow").fit(np.eye(3), np.ones(3))


def test_missing_torch_is_a_typed_error(monkeypatch):
    import molkrr.backends as backends

    monkeypatch.setitem(sys.modules, "molkrr.backends.torch_backend", None)  # import fails as without torch
    monkeypatch.setattr(backends, "_CACHE", {})
    with pytest.raises(BackendUnavailableError, match="molkrr\\[torch\\]"):
        get_backend("torch", "cpu")
    with pytest.raises(BackendUnavailableError):
        MLKRR(backend="torch", max_iter=1).fit(np.eye(4), np.arange(4.0))


@needs_torch
@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU")
def test_cuda_without_gpu_is_a_typed_error():
    with pytest.raises(BackendUnavailableError, match="no CUDA GPU"):
        get_backend("torch", "cuda")


@needs_torch
def test_global_default_and_environment(monkeypatch, rng):
    X, y = rng.standard_normal((30, 4)), rng.standard_normal(30)
    set_backend("torch", "cpu")
    m = KernelRidge(sigma=2.0, lam=1e-3).fit(X, y)
    m.predict(X[:3])
    assert any(k.startswith("_rows_torch_cpu") for k in vars(m))
    monkeypatch.setenv("MOLKRR_BACKEND", "torch")
    monkeypatch.setenv("MOLKRR_DEVICE", "cpu")
    set_backend(None)  # back to the environment, read again
    assert get_backend().name == "torch" and get_backend().device == "cpu"
    m2 = KernelRidge(sigma=2.0, lam=1e-3, backend="numpy").fit(X, y)  # an explicit backend wins
    m2.predict(X[:3])
    assert not any(k.startswith("_rows_torch") for k in vars(m2))
    assert molkrr.set_backend is set_backend


# ------------------------------------------------------------------------------ kernel layer
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", KERNELS)
def test_kernel_values_and_gradients_equal_numpy(device, name, rng):
    k = make_kernel(name, sigma_of(name))
    A, B, w = rng.standard_normal((9, 6)), rng.standard_normal((23, 6)), rng.standard_normal(23)
    for be in (get_backend("torch", device), small_blocks(device)):
        close(be.kernel_matrix(k, A, B), k(A, B))
        K = be.kernel_matrix(k, B)
        close(K, k(B))
        assert np.array_equal(K, K.T)
        v, g = be.value_and_gradient(k, A, B, w)
        v0, g0 = k.value_and_gradient(A, B, w)
        close(v, v0)
        close(g, g0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", STATIONARY)
def test_gradient_and_second_derivative_coefficients_equal_numpy(device, name, rng):
    k = make_kernel(name, 1.7)
    A, B = rng.standard_normal((8, 5)), rng.standard_normal((11, 5))
    B[3] = A[2]  # a coincident pair: u = 0, where Matérn 3/2's g″ is replaced by its limit
    be = get_backend("torch", device)
    close(be.gradient_coefficients(k, A, B), k.gradient_coefficients(A, B))
    c1, c2 = be.second_derivative_coefficients(k, A, B)
    d1, d2 = k.second_derivative_coefficients(A, B)
    close(c1, d1)
    close(c2, d2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["laplacian", "linear"])
def test_no_second_derivatives_for_non_stationary_kernels(device, name):
    be, k = get_backend("torch", device), make_kernel(name, 1.0)
    with pytest.raises(NotDifferentiableError):
        be.second_derivative_coefficients(k, np.ones((2, 3)), np.zeros((2, 3)))


@pytest.mark.parametrize("device", DEVICES)
def test_padded_features_n_active_equal_numpy(device, rng):
    k = make_kernel("matern52", 3.0)
    A, B, w = rng.standard_normal((4, 10)), rng.standard_normal((30, 10)), rng.standard_normal(30)
    A[:, 6:] = 0.0
    v, g = get_backend("torch", device).value_and_gradient(k, A, B, w, n_active=6)
    v0, g0 = k.value_and_gradient(A, B, w, n_active=6)
    close(v, v0)
    close(g, g0)
    assert not g[:, 6:].any()


# ------------------------------------------------------------------------------ KRR and forces
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", KERNELS)
def test_kernel_ridge_equals_numpy(device, name, rng):
    X, Xq = rng.standard_normal((60, 5)), rng.standard_normal((17, 5))
    y = np.sin(X[:, 0]) + X[:, 1] ** 2
    lam = 1.0 if name == "linear" else 1e-4  # the linear kernel is rank 5: keep α well conditioned
    ref = KernelRidge(name, sigma_of(name), lam).fit(X, y)
    m = KernelRidge(name, sigma_of(name), lam, backend="torch", device=device).fit(X, y)
    close(m.alpha_, ref.alpha_)
    assert m.lam_ == ref.lam_
    close(m.predict(Xq), ref.predict(Xq))
    v, g = m.predict_with_gradient(Xq)
    v0, g0 = ref.predict_with_gradient(Xq)
    close(v, v0)
    close(g, g0)
    Y = np.stack([y, np.cos(X[:, 2])], axis=1)  # several targets at once
    close(KernelRidge(name, sigma_of(name), lam, backend="torch", device=device).fit(X, Y).predict(Xq),
          KernelRidge(name, sigma_of(name), lam).fit(X, Y).predict(Xq))


@needs_torch
def test_krr_jitter_policy_equals_numpy(rng):
    be = small_blocks("cpu")
    k = make_kernel("gaussian", 0.3)
    X = rng.standard_normal((40, 3))
    y = rng.standard_normal(40)
    X[20:], y[20:] = X[:20], y[:20]  # duplicate molecules: with λ = 0, K is singular
    with pytest.warns(JitterWarning):
        alpha, lam = be.krr_fit(k, X, y, 0.0)
    with pytest.warns(JitterWarning):
        ref = KernelRidge(k, lam=0.0, center=False).fit(X, y)
    assert lam == ref.lam_ > 0  # the same step of the jitter ladder
    # α_i − α_{i+20} is rounding noise amplified by 1/jitter (~1e-16/1e-10): equal to ~1e-6, not 1e-10
    close(alpha, ref.alpha_, rtol=1e-4)


@needs_torch
def test_non_finite_kernel_is_a_numerical_error():
    be = get_backend("torch", "cpu")
    with pytest.raises(NumericalError, match="NaN"):
        be.spd_factor(lambda: torch.full((3, 3), float("nan"), dtype=torch.float64))




@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["gaussian", "matern52", "laplacian"])
def test_molecular_krr_forces_equal_numpy(device, name, tmp_path):
    mols = random_molecules(40, seed=5)
    train, test = mols[:32], mols[32:]
    ref = MolecularKRR(CoulombMatrix("sorted"), kernel=name, sigma=30.0, lam=1e-6).fit(train)
    m = MolecularKRR(CoulombMatrix("sorted"), kernel=name, sigma=30.0, lam=1e-6, backend="torch",
                     device=device).fit(train)
    assert m.krr_.backend == "torch" and m.krr_.device == device
    e, f = m.predict_energies_and_forces(test)
    e0, f0 = ref.predict_energies_and_forces(test)
    close(e, e0)
    for a, b in zip(f, f0):
        close(a, b)
    path = tmp_path / "model.npz"
    m.save(path)  # backend and device are parameters: saved as data, used again after loading
    loaded = load_model(path)
    assert loaded.krr_.backend == "torch"
    close(loaded.predict(test), e0)


# ------------------------------------------------------------------------------ metric learning
@pytest.fixture
def split(rng):
    d = 6
    Xa, XA = rng.standard_normal((45, d)), rng.standard_normal((38, d))
    A = np.eye(d) + 0.2 * rng.standard_normal((d, d))
    return A, Xa, np.sin(Xa[:, 0]) + Xa[:, 1], XA, np.sin(XA[:, 0]) + XA[:, 1]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel", ["gaussian", "matern52", Matern(nu=1.5)], ids=str)
@pytest.mark.parametrize("components", [6, 3])
def test_mlkrr_loss_and_gradient_equal_numpy(device, kernel, components, split):
    A, Xa, ya, XA, yA = split
    A = A[:components]
    args = (A, Xa, ya, XA, yA, 2.0, 1e-3)
    loss0, grad0, s0 = mlkrr_loss_and_grad(*args, kernel, return_sigma_grad=True)
    loss, grad, s = mlkrr_loss_and_grad(*args, kernel, return_sigma_grad=True, backend="torch", device=device)
    close(loss, loss0)
    close(grad, grad0)
    close(s, s0)
    # streamed in many row blocks (Q, K′ and K_αα), with the α of the auxiliary output
    k = make_kernel(kernel) if isinstance(kernel, str) else kernel
    loss1, grad1, aux1 = _array_objectives.mlkrr(small_blocks(device), k, *args, want_aux=True)
    loss2, grad2, aux2 = _objective(k)(*args, want_aux=True)
    close(loss1, loss2)
    close(grad1, grad2)
    close(aux1["alpha"], aux2["alpha"])
    close(aux1["train_mae"], aux2["train_mae"])


@pytest.mark.parametrize("device", DEVICES)
def test_mlkrr_singular_system_is_a_numerical_error(device, split):
    A, Xa, ya, XA, yA = split
    Xa = np.vstack([Xa, Xa])
    ya = np.concatenate([ya, ya])
    with pytest.raises(NumericalError, match="increase lam"):
        mlkrr_loss_and_grad(A, Xa, ya, XA, yA, 2.0, 0.0, backend="torch", device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("components", [6, 2])
def test_mlkr_loss_and_gradient_equal_numpy(device, components, split):
    A, X, y = split[0][:components], split[1], split[2]
    loss0, grad0 = mlkr_loss_and_grad(A, X, y, 1.5)
    close(*[np.array(v) for v in (mlkr_loss_and_grad(A, X, y, 1.5, backend="torch", device=device)[0], loss0)])
    close(mlkr_loss_and_grad(A, X, y, 1.5, backend="torch", device=device)[1], grad0)
    loss1, grad1, aux = _array_objectives.mlkr(small_blocks(device), A, X, y, 1.5, want_aux=True)
    close(loss1, loss0)
    close(grad1, grad0)
    assert aux["train_mae"] > 0


@pytest.mark.parametrize("kernel", ["gaussian", "matern52", Matern(nu=1.5)], ids=str)
@pytest.mark.parametrize("components", [6, 3])
def test_objectives_on_the_array_operations_run_on_numpy_too(kernel, components, split):
    """The objectives written once against the backend operations (what torch runs) equal numpy's BLAS-level
    ones on the numpy backend, streamed in one block and in many (relative to the largest entry)."""
    from molkrr.backends.numpy_backend import NumpyBackend

    A, Xa, ya, XA, yA = split
    A = A[:components]
    args = (A, Xa, ya, XA, yA, 2.0, 1e-3)
    k = make_kernel(kernel) if isinstance(kernel, str) else kernel
    loss0, grad0, aux0 = _objective(k)(*args, want_aux=True)
    mlkr0 = _mlkr(A, Xa, ya, 1.5, want_aux=True)
    for block_rows in (4096, 7):
        be = NumpyBackend()
        be.block_rows = block_rows
        loss, grad, aux = _array_objectives.mlkrr(be, k, *args, want_aux=True)
        close(loss, loss0, rtol=1e-12)
        assert np.abs(grad - grad0).max() <= 1e-12 * np.abs(grad0).max()
        assert np.abs(aux["alpha"] - aux0["alpha"]).max() <= 1e-12 * np.abs(aux0["alpha"]).max()
        loss, grad, aux = _array_objectives.mlkr(be, A, Xa, ya, 1.5, want_aux=True)
        close(loss, mlkr0[0], rtol=1e-12)
        assert np.abs(grad - mlkr0[1]).max() <= 1e-12 * np.abs(mlkr0[1]).max()


@needs_torch
def test_one_jitter_policy(monkeypatch, rng):
    """torch follows molkrr.linalg's jitter schedule (JITTER_STEPS is read from there, not copied)."""
    import molkrr.linalg

    k = make_kernel("gaussian", 0.3)
    X = rng.standard_normal((30, 3))
    X[15:] = X[:15]
    K = k(X)
    monkeypatch.setattr(molkrr.linalg, "JITTER_STEPS", (3e-7, 1e-3))
    with pytest.warns(JitterWarning, match="3e-07 x mean diagonal"):
        _, lam = get_backend("torch", "cpu").spd_factor(lambda: torch.as_tensor(K.copy()), 0.0)
    with pytest.warns(JitterWarning, match="3e-07 x mean diagonal"):
        _, lam0 = molkrr.linalg.spd_factor(lambda: K.copy(), 0.0)
    assert lam == pytest.approx(lam0, rel=1e-12) and lam0 == pytest.approx(3e-7 * np.mean(np.diag(K)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel", ["gaussian", "matern52"])
def test_metric_learners_fit_the_same_on_both_backends(device, kernel, rng):
    X = rng.standard_normal((40, 4))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1]
    common = dict(sigma=2.0, lam=1e-4, max_iter=3, shuffle_every=2, random_state=0, kernel=kernel)
    ref = MLKRR(**common).fit(X, y)
    m = MLKRR(**common, backend="torch", device=device).fit(X, y)
    close(m.components_, ref.components_, rtol=1e-8)
    close(m.history_["loss"], ref.history_["loss"], rtol=1e-8)
    if kernel == "gaussian":
        ref = MLKR(sigma=2.0, max_iter=3).fit(X, y)
        m = MLKR(sigma=2.0, max_iter=3, backend="torch", device=device).fit(X, y)
        close(m.components_, ref.components_, rtol=1e-8)


# ------------------------------------------------------------------------------ device memory
@needs_torch
def test_too_large_for_the_device_says_which_n_fits(monkeypatch, split):
    A, Xa, ya, XA, yA = split
    be = small_blocks("cpu")
    monkeypatch.setattr(be, "free_memory", lambda: 20_000)  # bytes
    with pytest.raises(DeviceMemoryError, match=r"fits there up to about n_α = \d+"):
        _array_objectives.mlkrr(be, make_kernel("gaussian"), A, Xa, ya, XA, yA, 2.0, 1e-3)
    with pytest.raises(DeviceMemoryError, match=r"KRR fit of up to about n = \d+"):
        be.krr_fit(make_kernel("gaussian", 1.0), Xa, ya, 1e-3)
    with pytest.raises(DeviceMemoryError, match=r"MLKR objective fits there up to about n = \d+"):
        _array_objectives.mlkr(be, A, Xa, ya, 2.0)
    assert issubclass(DeviceMemoryError, MemoryError)


@needs_torch
def test_out_of_memory_during_the_objective_is_a_typed_error(monkeypatch, split):
    A, Xa, ya, XA, yA = split
    be = small_blocks("cpu")

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.20 GiB")

    monkeypatch.setattr(_array_objectives, "_mlkrr", oom)
    with pytest.raises(DeviceMemoryError, match="ran out of memory.*fits there up to about n_α"):
        _array_objectives.mlkrr(be, make_kernel("gaussian"), A, Xa, ya, XA, yA, 2.0, 1e-3)
    monkeypatch.setattr(be, "free_memory", lambda: 10**9)  # as on a GPU: sized by the memory free at the start
    # 2 n_α² float64 in 0.9 GB: n_α ≈ 7,500
    with pytest.raises(DeviceMemoryError, match=r"1\.0 GB were free\); the MLKRR objective fits .* n_α = 7,470"):
        _array_objectives.mlkrr(be, make_kernel("gaussian"), A, Xa, ya, XA, yA, 2.0, 1e-3)


# ------------------------------------------------------------------------------ float32
@needs_torch
def test_float32_kernel_layer_is_accurate_to_single_precision(rng):
    k = make_kernel("gaussian", 2.0)
    A, B, w = rng.standard_normal((9, 6)), rng.standard_normal((23, 6)), rng.standard_normal(23)
    be = get_backend("torch", "cpu", "float32")
    assert be.dtype == torch.float32
    v, g = be.value_and_gradient(k, A, B, w)
    v0, g0 = k.value_and_gradient(A, B, w)
    assert v.dtype == np.float64  # numpy float64 at the boundary
    close(v, v0, rtol=1e-5)
    close(g, g0, rtol=1e-5)
    with pytest.raises(InvalidInputError, match="float32"):
        get_backend("numpy", None, "float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_backend("torch", "cpu", "float64")


@needs_torch
@pytest.mark.parametrize("targets", ["energy+forces", "forces"])
def test_force_training_through_the_torch_backend_equals_numpy(targets):
    """The derivative-observation solve (K + Λ factorised and solved on the backend) on torch-CPU equals numpy's
    to 1e-10 relative to the largest entry: weights, energies, forces and the predictive std."""
    from molkrr.datasets.frames import read_frames
    from molkrr.datasets.md import shipped_trajectory_path
    from molkrr.representations import FCHL19

    frames = read_frames(shipped_trajectory_path())[0]
    train, query = frames[0:400:40], frames[1200:1203]
    fits = {}
    for name in ("numpy", "torch"):
        model = MolecularKRR(FCHL19(form="atomic"), sigma=2.0, lam=1e-5, lam_forces=1e-6, targets=targets,
                             energy_unit="eV", backend=name, device="cpu" if name == "torch" else None)
        fits[name] = model.fit(train)
    a, b = fits["torch"], fits["numpy"]

    def close(x, y, rtol=1e-10):
        x, y = np.asarray(x), np.asarray(y)
        assert np.abs(x - y).max() <= rtol * np.abs(y).max()

    # the weights solve a system of condition ~ mean diagonal / λ_F ≈ 4e6: they agree to that times rounding,
    # what they predict (below) to 1e-10
    close(a.krr_.W_, b.krr_.W_, 1e-8)
    if targets != "forces":
        close(a.krr_.alpha_, b.krr_.alpha_, 1e-8)
    (Ea, Fa), (Eb, Fb) = a.predict_energies_and_forces(query), b.predict_energies_and_forces(query)
    close(Ea, Eb)
    close(np.concatenate(Fa), np.concatenate(Fb))
    # the std is sqrt(s²(prior − ‖L⁻¹k‖²)): the difference of near-equal terms amplifies the factor's rounding
    close(a.predict(query, return_std=True)[1], b.predict(query, return_std=True)[1], 1e-8)
