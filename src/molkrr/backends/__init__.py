"""Compute backends: the array operations molkrr's algorithms are written against, and where they run.

* ``"numpy"`` (default): :class:`~molkrr.backends.numpy_backend.NumpyBackend`, molkrr's numpy/scipy
  calls (scipy's dgemm, the in-place LAPACK Cholesky of :mod:`molkrr.linalg`) on the CPU.
* ``"torch"`` (the ``torch`` extra): :class:`~molkrr.backends.torch_backend.TorchBackend`, the same
  operations on torch tensors, on the CPU or a CUDA device. torch is imported only when asked for.

Estimators (``KernelRidge``, ``MolecularKRR``, ``MLKRR``, ``MLKR``) and the objective functions take
``backend=`` and ``device=`` ("cpu", "cuda", "cuda:N"); ``None`` means the process default, set by
:func:`set_backend` or the environment variables ``MOLKRR_BACKEND`` and ``MOLKRR_DEVICE`` (read at
first use; numpy if neither). Arrays go in and come back as numpy arrays; float64 unless a backend
is built with ``dtype="float32"`` (see docs/gpu.md for when that is accurate enough).

The seam
--------
A backend is an object with ``name``, ``device``, ``dtype``, ``xp`` (its array namespace, for the
kernels' ``profile(u, order, xp=)``) and these operations on its own arrays:

* arrays: ``asarray(x)`` (to the device), ``to_numpy(a)`` (float64 numpy, the public boundary),
  ``empty(shape)``, ``zeros(shape)``, ``concat(arrays, axis)``, ``copy(a)``;
* arithmetic: ``matmul(a, b, *, trans_a, trans_b, out, beta)`` (GEMM), ``sq_norms(X)``,
  ``squared_distances(A, B, b_sqnorms=None)``, ``exp_(a)`` and ``clamp_min_(a, lo)`` (in place),
  ``fill_diagonal(M, value, offset=0)``, ``sum(a, axis)``, ``row_max(M)``, ``mean_abs(a)``;
* factorisations: ``cholesky(H)`` (lower factor; NumericalError if not positive definite; numpy
  factors in place), ``spd_factor(build, lam)`` (the one jitter policy, :func:`molkrr.linalg.spd_factor`),
  ``spd_solve(L, b)``, ``spd_matmul(H, L, V)`` (H V given H's factor);
* memory: ``rows_per_block(n_cols)`` (rows of a streamed block), ``itemsize()``,
  ``memory_guard(what, need_bytes, fits)`` (a context: DeviceMemoryError before or during a
  computation that does not fit the device; nothing on the CPU).

and the kernel layer and KRR solve the estimators call (outputs numpy): ``kernel_matrix(kernel, A,
B=None)``, ``value_and_gradient(kernel, A, B, w, *, b_sqnorms=None, n_active=None)``,
``gradient_coefficients``, ``second_derivative_coefficients`` (meanings: :mod:`molkrr.kernels.base`),
``krr_fit(kernel, X, y, lam, return_factor=False)`` → (α, λ used[, the factor a model keeps for the
predictive std, or None]),
``rows(X)`` → the training rows as the backend keeps them (a model caches it),
``krr_predict(kernel, X, rows, alpha)``, ``krr_value_and_gradient(kernel, X, rows, alpha, n_active=None)``.

Algorithms are written against these operations and live with their algorithm: the MLKRR and MLKR
objectives are :mod:`molkrr.metric._array_objectives` (numpy keeps its BLAS-level versions in
:mod:`molkrr.metric.mlkrr` and :mod:`molkrr.metric.mlkr` for speed and memory). This package imports no
algorithm (no :mod:`molkrr.metric`, no :mod:`molkrr.krr`). Adding a backend is one module with such a
class and one entry in ``_FACTORIES`` below.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, InvalidInputError
from .numpy_backend import NumpyBackend

#: Backend names, in the order they are documented.
BACKENDS = ("numpy", "torch")

_DEFAULT: dict[str, Any] = {"backend": None, "device": None, "dtype": None}
_ENVIRONMENT: list[tuple] = []  # (MOLKRR_BACKEND, MOLKRR_DEVICE) as read at first use
_CACHE: dict[tuple, Any] = {}
_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def _make_numpy(device: str | None, dtype: str | None) -> NumpyBackend:
    if device not in (None, "cpu"):
        raise InvalidInputError(f"the numpy backend runs on the CPU; device={device!r} needs backend='torch'")
    if dtype not in (None, "float64"):
        raise InvalidInputError(f"the numpy backend computes in float64; dtype={dtype!r} needs backend='torch'")
    return NumpyBackend()


def _make_torch(device: str | None, dtype: str | None) -> Any:
    try:
        from .torch_backend import TorchBackend
    except ImportError as exc:  # torch not installed
        raise BackendUnavailableError(
            f"backend='torch' needs PyTorch ({exc}); install it with: pip install 'molkrr[torch]'"
        ) from exc
    return TorchBackend(device, dtype or "float64")


#: backend name → factory(device, dtype).
_FACTORIES = {"numpy": _make_numpy, "torch": _make_torch}


def set_backend(backend: str | None = None, device: str | None = None, dtype: str | None = None) -> None:
    """Set the process default used where ``backend``/``device`` are None (None: back to the environment/numpy).

    Example: ``molkrr.set_backend("torch", device="cuda")`` runs every estimator created with the
    default ``backend=None`` on the GPU. The arguments are checked now (an unknown name, or a device
    this machine lacks, raises here).
    """
    if backend is not None:
        get_backend(backend, device, dtype)  # validate
    _DEFAULT.update(backend=backend, device=device, dtype=dtype)
    _ENVIRONMENT.clear()  # read again at the next use


def default_backend() -> tuple[str, str | None, str | None]:
    """(name, device, dtype) of the process default.

    From :func:`set_backend`, else the environment (MOLKRR_BACKEND, MOLKRR_DEVICE; read at first use
    and again after ``set_backend(None)``), else numpy.
    """
    if _DEFAULT["backend"] is not None:
        return _DEFAULT["backend"], _DEFAULT["device"], _DEFAULT["dtype"]
    if not _ENVIRONMENT:
        _ENVIRONMENT.append((os.environ.get("MOLKRR_BACKEND") or "numpy", os.environ.get("MOLKRR_DEVICE") or None))
    return (*_ENVIRONMENT[0], None)


def get_backend(backend: str | None = None, device: str | None = None, dtype: str | None = None) -> Any:
    """The backend object for a name ('numpy', 'torch'; None = the process default) and a device.

    device : 'cpu', 'cuda' or 'cuda:N'; None = the default device (for torch: 'cuda' when a GPU is
        available, else 'cpu'). dtype : 'float64' (default) or, for torch, 'float32'.
    Raises :class:`~molkrr.errors.InvalidInputError` for an unknown name or device string and
    :class:`~molkrr.errors.BackendUnavailableError` when torch or the device is missing.
    """
    if backend is None:
        backend, default_device, default_dtype = default_backend()
        device = default_device if device is None else device
        dtype = default_dtype if dtype is None else dtype
    key = (backend, device, dtype)
    cached = _CACHE.get(key) if isinstance(backend, str) and isinstance(device, (str, type(None))) else None
    if cached is not None:  # checked when it was made; this is the per-call path of every estimator
        return cached
    if not isinstance(backend, str) or backend not in _FACTORIES:
        raise InvalidInputError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if device is not None:
        if not isinstance(device, str) or not _DEVICE_RE.match(device):
            raise InvalidInputError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if dtype not in (None, "float64", "float32"):
        raise InvalidInputError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    _CACHE[key] = _FACTORIES[backend](device, dtype)
    return _CACHE[key]


def is_numpy(backend: Any) -> bool:
    """True for the numpy backend (solvers that exist only on numpy, e.g. FALKON, check it)."""
    return getattr(backend, "name", None) == "numpy"


__all__ = ["BACKENDS", "NumpyBackend", "default_backend", "get_backend", "is_numpy", "set_backend"]
