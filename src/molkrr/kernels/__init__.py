"""Kernels on feature vectors: values, gradients and second-derivative blocks — the one kernel layer.

The σ convention (stated once, used everywhere in molkrr)
-------------------------------------------------------
With r = ‖a − b‖₂ (Euclidean) and r₁ = ‖a − b‖₁ (Manhattan):

================  ==============================  =====================================================  ==========================
name              object                          k(a, b)                                                equals
================  ==============================  =====================================================  ==========================
``gaussian``      ``Gaussian(sigma)``             exp(−r² / (2σ²))                                       sklearn RBF, γ = 1/(2σ²);
                                                                                                         qmllib gaussian_kernel
``laplacian``     ``Laplacian(sigma)``            exp(−r₁ / σ)                                           sklearn laplacian, γ = 1/σ;
                                                                                                         qmllib laplacian_kernel
``matern32``      ``Matern(nu=1.5, sigma)``       (1 + √3 r/σ) exp(−√3 r/σ)                              sklearn Matern(σ, ν=1.5)
``matern52``      ``Matern(nu=2.5, sigma)``       (1 + √5 r/σ + 5r²/(3σ²)) exp(−√5 r/σ)                  sklearn Matern(σ, ν=2.5)
``linear``        ``Linear()``                    a · b                                                  (no σ)
================  ==============================  =====================================================  ==========================

The MLKRR paper writes its Gaussian as exp(−r²/σ_p²)/(√(2π)σ_p): σ = σ_p/√2, and the prefactor
only rescales λ.

Kernels are objects (scikit-learn-style parameters, cloneable, saved in model files); the names
are shortcuts (:func:`make_kernel`). ``value_and_gradient(A, B, w)`` returns Σ_m w_m k(a_i, b_m) and
its gradient ∂/∂a_i (exactly what a KRR prediction and its forces need, w = α);
``second_derivative_coefficients(A, B)`` the compact ∂²k/∂a∂bᵀ blocks force training needs
(:mod:`molkrr.kernels.base`). Adding a kernel is one new module in this package that registers
itself with ``@register(name)``: every module here is imported below.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from ..errors import InvalidInputError
from ..schema import Spec, choice
from .base import Kernel, StationaryKernel, check_sigma
from .blocks import ROW_BLOCK, STREAM_BLOCK, squared_distances
from .registry import KERNELS, register

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_") and _info.name not in ("base", "blocks", "registry"):
        importlib.import_module(f"{__name__}.{_info.name}")

from .gaussian import SINGLE_QUERY_MIN_ROWS, Gaussian, GaussianKernel  # noqa: E402
from .laplacian import Laplacian, LaplacianKernel  # noqa: E402
from .linear import Linear, LinearKernel  # noqa: E402
from .matern import Matern, Matern32Kernel, Matern52Kernel  # noqa: E402


def make_kernel(kernel: "str | Kernel", sigma: float | None = None) -> Kernel:
    """A kernel object from a registered name (with width ``sigma``) or an object.

    For an object, ``sigma`` (if not None) replaces its σ; the object itself is never modified.
    """
    if isinstance(kernel, Kernel):
        return kernel if sigma is None else kernel.with_sigma(sigma)
    if isinstance(kernel, str):
        try:
            factory = KERNELS[kernel]
        except KeyError:
            raise InvalidInputError(f"unknown kernel {kernel!r}; choose one of {sorted(KERNELS)}") from None
        k = factory(sigma=1.0 if sigma is None else sigma)
        if k.has_length_scale:
            check_sigma(k.sigma)
        return k
    raise InvalidInputError(f"kernel must be a name ({sorted(KERNELS)}) or a molkrr kernel object, got {kernel!r}")


def kernel_names() -> list[str]:
    """The registered kernel names, sorted (``make_kernel``'s names, the CLI's ``--kernel`` choices)."""
    return sorted(KERNELS)


def kernel_classes() -> list[type]:
    """The classes of every registered kernel (what model files may name)."""
    classes: list[type] = []
    for factory in KERNELS.values():
        cls = factory if isinstance(factory, type) else type(factory())
        if cls not in classes:
            classes.append(cls)
    return classes


class KernelField(Spec):
    """A kernel parameter in a model file (:mod:`molkrr.schema`): a registered name, or a kernel object
    (read and checked as its own node)."""

    def check(self, v: Any, where: str, node: Any) -> Any:
        return v if isinstance(v, Kernel) else choice(v, where, KERNELS)


def kernel_name(kernel: "str | Kernel") -> str:
    """The registry name of a kernel given by name or object."""
    return kernel if isinstance(kernel, str) else kernel.name


__all__ = [
    "KERNELS",
    "ROW_BLOCK",
    "SINGLE_QUERY_MIN_ROWS",
    "STREAM_BLOCK",
    "Gaussian",
    "GaussianKernel",
    "Kernel",
    "KernelField",
    "Laplacian",
    "LaplacianKernel",
    "Linear",
    "LinearKernel",
    "Matern",
    "Matern32Kernel",
    "Matern52Kernel",
    "StationaryKernel",
    "kernel_classes",
    "kernel_name",
    "kernel_names",
    "make_kernel",
    "register",
    "squared_distances",
]
