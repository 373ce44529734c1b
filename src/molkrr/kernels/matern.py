"""Matérn kernels with ν = 3/2 and 5/2 (once and twice mean-square differentiable)."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from ..schema import Number, Schema, fail, show
from .base import StationaryKernel
from .registry import register


class Matern(StationaryKernel):
    """Matérn kernel of smoothness ν ∈ {1.5, 2.5} (scikit-learn's Matern(length_scale=σ, nu=ν)).

    With ρ = √(2ν u), u = r²/σ²:

    * ν = 1.5: k = (1 + ρ) e^{−ρ};           g′ = −(3/2) e^{−ρ};        g″ = (9/(4ρ)) e^{−ρ}
    * ν = 2.5: k = (1 + ρ + ρ²/3) e^{−ρ};    g′ = −(5/6)(1 + ρ) e^{−ρ};  g″ = (25/12) e^{−ρ}

    For ν = 1.5, g″ diverges like 1/ρ at ρ = 0 while its term (4/σ⁴) g″ δδᵀ of the second-derivative
    block vanishes like ρ; it is returned as 0 there (the block's limit).
    """

    def __init__(self, nu: float = 2.5, sigma: float | None = None) -> None:
        self.nu = nu
        self.sigma = sigma

    @property
    def name(self) -> str:  # type: ignore[override]
        """'matern32' or 'matern52', the registry name."""
        return {1.5: "matern32", 2.5: "matern52"}.get(self.nu, "matern")

    @classmethod
    def model_file_schema(cls) -> Schema:
        """σ as every kernel's, and ν ∈ {1.5, 2.5} (:mod:`molkrr.schema`)."""
        return super().model_file_schema().extend(params={"nu": Number(then=_check_nu)})

    def _nu(self) -> float:
        if self.nu not in (1.5, 2.5):
            raise InvalidInputError(f"Matern supports nu=1.5 and nu=2.5, got {self.nu!r}")
        return float(self.nu)

    def profile(self, u, order=0, xp=np):
        nu = self._nu()
        rho = xp.sqrt((2.0 * nu) * u)
        e = xp.exp(-rho)
        if nu == 1.5:
            g = (1.0 + rho) * e
            if order == 0:
                return (g,)
            g1 = -1.5 * e
            if order == 1:
                return g, g1
            safe = xp.where(rho > 0, rho, 1.0) if xp is not np else np.where(rho > 0, rho, 1.0)
            g2 = xp.where(rho > 0, 2.25 * e / safe, 0.0 * e)
            return g, g1, g2
        g = (1.0 + rho + rho * rho / 3.0) * e
        if order == 0:
            return (g,)
        g1 = (-5.0 / 6.0) * (1.0 + rho) * e
        if order == 1:
            return g, g1
        return g, g1, (25.0 / 12.0) * e


@register("matern32")
def _matern32(sigma: float | None = None) -> Matern:
    return Matern(nu=1.5, sigma=sigma)


@register("matern52")
def _matern52(sigma: float | None = None) -> Matern:
    return Matern(nu=2.5, sigma=sigma)


def Matern32Kernel(sigma: float | None = None) -> Matern:  # noqa: N802 - the name used before kernels were objects
    """Matern(nu=1.5, sigma)."""
    return Matern(nu=1.5, sigma=sigma)


def Matern52Kernel(sigma: float | None = None) -> Matern:  # noqa: N802 - the name used before kernels were objects
    """Matern(nu=2.5, sigma)."""
    return Matern(nu=2.5, sigma=sigma)


def _check_nu(nu, where, node) -> None:
    if float(nu) not in (1.5, 2.5):
        raise fail(where, f"must be 1.5 or 2.5, got {show(nu)}")
