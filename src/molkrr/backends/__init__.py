"""Compute backends: where the kernel layer, the KRR solve and the metric-learning objectives run.

* ``"numpy"`` (default): the code of :mod:`molkrr.kernels`, :mod:`molkrr.linalg`, :mod:`molkrr.krr` and
  :mod:`molkrr.metric`, on the CPU — unchanged by this module.
* ``"torch"`` (the ``torch`` extra): the same computations on torch tensors, on the CPU or a CUDA
  device (:mod:`molkrr.backends.torch_backend`). torch is imported only when this backend is asked for.

Estimators (``KernelRidge``, ``MolecularKRR``, ``MLKRR``, ``MLKR``) and the objective functions take
``backend=`` and ``device=`` ("cpu", "cuda", "cuda:N"); ``None`` means the process default, set by
:func:`set_backend` or the environment variables ``MOLKRR_BACKEND`` and ``MOLKRR_DEVICE`` (read at
first use; numpy if neither). Arrays go in and come back as numpy arrays; float64 unless a backend
is built with ``dtype="float32"`` (see docs/gpu.md for when that is accurate enough).

The seam
--------
A backend is an object with ``name`` and ``device`` and these methods (inputs are numpy arrays or
the backend's own arrays, ``asarray(x)``; outputs are numpy arrays and floats):

* kernel layer: ``kernel_matrix(kernel, A, B=None)``, ``value_and_gradient(kernel, A, B, w, *,
  b_sqnorms=None, n_active=None)``, ``gradient_coefficients(kernel, A, B)``,
  ``second_derivative_coefficients(kernel, A, B)`` — the meaning of each is that of the kernel
  method of the same name (:mod:`molkrr.kernels.base`);
* KRR: ``krr_fit(kernel, X, y, lam)`` → (α, λ used; the jitter policy of :func:`molkrr.linalg.spd_factor`),
  ``rows(X)`` → the training rows as the backend keeps them (a model caches it),
  ``krr_predict(kernel, X, rows, alpha)``, ``krr_value_and_gradient(kernel, X, rows, alpha, n_active=None)``;
* metric learning: ``mlkrr(kernel, A, Xa, ya, XA, yA, sigma, lam, want_aux=False)`` and
  ``mlkr(A, X, y, sigma, want_aux=False)`` → (loss, ∂L/∂A, aux), the private objectives of
  :mod:`molkrr.metric.mlkrr` and :mod:`molkrr.metric.mlkr`.

Adding a backend is one module with such a class and one entry in ``_FACTORIES`` below.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, InvalidInputError, NotDifferentiableError

#: Backend names, in the order they are documented.
BACKENDS = ("numpy", "torch")

_DEFAULT: dict[str, Any] = {"backend": None, "device": None, "dtype": None}
_ENVIRONMENT: list[tuple] = []  # (MOLKRR_BACKEND, MOLKRR_DEVICE) as read at first use
_CACHE: dict[tuple, Any] = {}
_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")


class NumpyBackend:
    """The numpy code of molkrr behind the backend interface (estimators call that code directly)."""

    name = "numpy"
    device = "cpu"
    dtype = np.float64

    def asarray(self, x):
        return np.asarray(x, dtype=np.float64)

    # -- kernel layer ------------------------------------------------------------------------------
    def kernel_matrix(self, kernel, A, B=None):
        return kernel(A, B)

    def value_and_gradient(self, kernel, A, B, w, *, b_sqnorms=None, n_active=None):
        return kernel.value_and_gradient(A, B, w, b_sqnorms=b_sqnorms, n_active=n_active)

    def gradient_coefficients(self, kernel, A, B):
        if not hasattr(kernel, "gradient_coefficients"):
            raise NotDifferentiableError(f"kernel {kernel.name!r} has no gradient coefficients (not stationary)")
        return kernel.gradient_coefficients(A, B)

    def second_derivative_coefficients(self, kernel, A, B):
        return kernel.second_derivative_coefficients(A, B)

    # -- KRR ---------------------------------------------------------------------------------------
    def krr_fit(self, kernel, X, y, lam):
        from ..linalg import spd_factor, spd_solve

        X = np.ascontiguousarray(X, dtype=np.float64)
        L, lam_used = spd_factor(lambda: kernel(X), float(lam))
        return spd_solve(L, np.asarray(y, dtype=np.float64)), lam_used

    def rows(self, X):
        return X

    def krr_predict(self, kernel, X, rows, alpha):
        return kernel(X, rows) @ alpha

    def krr_value_and_gradient(self, kernel, X, rows, alpha, n_active=None):
        return kernel.value_and_gradient(X, rows, alpha, n_active=n_active)

    # -- metric learning ---------------------------------------------------------------------------
    def mlkrr(self, kernel, A, Xa, ya, XA, yA, sigma, lam, want_aux=False):
        from ..metric.mlkrr import _objective

        return _objective(kernel)(A, Xa, ya, XA, yA, sigma, lam, want_aux=want_aux)

    def mlkr(self, A, X, y, sigma, want_aux=False):
        from ..metric.mlkr import _mlkr

        return _mlkr(A, X, y, sigma, want_aux=want_aux)

    def __repr__(self) -> str:
        return "NumpyBackend()"


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
    """True for the numpy backend (whose callers run molkrr's numpy code directly)."""
    return getattr(backend, "name", None) == "numpy"


__all__ = ["BACKENDS", "NumpyBackend", "default_backend", "get_backend", "is_numpy", "set_backend"]
