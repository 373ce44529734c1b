"""Predictive uncertainty of energy-trained kernel ridge regression: the posterior standard deviation.

The convention, stated here once
--------------------------------
KRR with kernel k, ridge λ and training targets y (centred: y − ȳ, ȳ the training mean, or 0 with
``center=False``) is the posterior mean of a Gaussian process

    f ~ GP(ȳ, s² k),   observed as y_m = f(x_m) + ε_m,   ε_m ~ N(0, s² λ),

since the mean ȳ + k_xᵀ (K + λI)⁻¹ (y − ȳ) does not depend on s². The scale s² is the one number
KRR does not fix; molkrr takes the **maximum-likelihood scale** of this GP for the fitted σ and λ,

    s² = (y − ȳ)ᵀ (K + λI)⁻¹ (y − ȳ) / n   (= αᵀ (K + λI) α / n = ‖Lᵀα‖² / n, L Lᵀ = K + λI),

and the noise variance of one training observation is then s² λ. The standard deviations returned are
those of the *model's* energy f(x) (the latent function, as scikit-learn's
``GaussianProcessRegressor.predict(return_std=True)``), not of a new noisy observation:

    var[E(x)]       = s² (k(x, x) − k_xᵀ (K + λI)⁻¹ k_x),
    var[∂E/∂R_ic]   = s² (J_icᵀ H J_ic − g_icᵀ (K + λI)⁻¹ g_ic),   std of the force F_ic = −∂E/∂R_ic,

with z = A x(R) the features the KRR sees, J_ic = ∂z/∂R_ic (n_components,) from the representation's
``jacobian`` and the metric's A, H = ∂²k(z, z′)/∂z∂z′ᵀ at z′ = z (c₁ I for a stationary kernel,
c₁ = −2 g′(0)/σ²: 1/σ² for the Gaussian) and g_ic = ∂k_x/∂R_ic = G J_ic, G_m = ∂k(z, z_m)/∂z. Both
are computed with triangular solves against the Cholesky factor L (never an inverse). Not included: the
uncertainty of ȳ, of σ and λ, and of s² itself. Energies are in the model's ``energy_unit``, force
standard deviations in energy_unit/Å.

The factor L
------------
``KernelRidge.fit`` (exact solver, numpy backend) keeps L in memory when it is at most
:data:`KEEP_FACTOR_MAX_BYTES`; otherwise, after ``load_model``, after a fit on another backend or when
σ, λ or the training rows changed, L is rebuilt from the stored training features on first use (one
n×n kernel matrix and one Cholesky, as in ``fit``). L is never written to model files.

The feature level (the factor, s², :func:`krr_std`, :func:`krr_energy_and_force_std`) is
:mod:`molkrr.krr_posterior`, which ``KernelRidge.fit`` and ``KernelRidge.predict(return_std=True)`` use
without importing this module; this module adds the molecule level (``MolecularKRR``) on top.

Supported: :class:`~molkrr.krr.KernelRidge` with the exact solver, any kernel for energies, a
stationary kernel (Gaussian, Matérn) for forces; :class:`~molkrr.MolecularKRR` with a global
representation and ``targets='energy'``, and every exact :class:`~molkrr.derivative_krr.DerivativeKRR`
model (force targets, local kernels: :mod:`molkrr.derivative_uncertainty`, the same convention with the
training rows of derivative observations). Anything else (sparse models, ``solver='falkon'``, model files
without training geometries) raises :class:`~molkrr.errors.UncertaintyNotSupportedError`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.utils.validation import check_is_fitted

from .errors import NotDifferentiableError, UncertaintyNotSupportedError
from .kernels import StationaryKernel

# the feature level and the kept factor live one layer down, where KernelRidge reaches them without importing
# this module (molkrr.krr_posterior); their names stay importable from here
from .krr_posterior import (KEEP_FACTOR_MAX_BYTES, SOLVE_BLOCK, check_exact, forget_factor,  # noqa: F401
                            gp_scale, krr_energy_and_force_std, krr_std, posterior_factor, remember_factor)

__all__ = [
    "KEEP_FACTOR_MAX_BYTES",
    "check_supported",
    "energy_and_force_std",
    "energy_std",
    "gp_scale",
    "krr_energy_and_force_std",
    "krr_std",
    "posterior_factor",
    "predict_energies_and_forces_with_std",
    "predict_with_std",
]

# ------------------------------------------------------------------------------------ molecule level
def check_supported(model: Any, *, forces: bool = False) -> None:
    """Raise :class:`~molkrr.errors.UncertaintyNotSupportedError` unless a fitted MolecularKRR can give the
    posterior std of its energies (and, with ``forces=True``, of its forces)."""
    from .krr import KernelRidge

    check_is_fitted(model)
    krr = model.krr_
    if not isinstance(krr, KernelRidge):  # force targets, local kernels: molkrr.derivative_uncertainty
        from .derivative_uncertainty import check_supported as check_derivative

        check_derivative(model, forces=forces)
        return
    check_exact(krr)
    if forces:
        if not getattr(model.representation_, "differentiable", False):
            raise NotDifferentiableError(f"{type(model.representation_).__name__} has no derivative with respect to positions")
        if not isinstance(krr.kernel_, StationaryKernel):
            raise UncertaintyNotSupportedError(
                f"force std is not supported for the {krr.kernel_.name!r} kernel (use gaussian, matern32 or matern52)"
            )


def energy_std(model: Any, molecules: Any) -> np.ndarray:
    """Posterior std of a fitted MolecularKRR's energies (n_molecules,), in its energy unit."""
    check_supported(model)
    if _is_derivative(model):
        from .applicability import check_elements
        from .derivative_uncertainty import posterior_std
        from .molecules import as_molecules

        mols = as_molecules(molecules)
        check_elements(model, mols)  # refuse elements not seen in training, as predict does
        return posterior_std(model, mols, forces=False)[0]
    return krr_std(model.krr_, model.features(molecules))


def _is_derivative(model: Any) -> bool:
    from .krr import KernelRidge

    return not isinstance(model.krr_, KernelRidge)


def energy_and_force_std(model: Any, molecules: Any) -> tuple[np.ndarray, list[np.ndarray]]:
    """(energy std (n_molecules,), force std: one (n_atoms_i, 3) array per molecule) of a fitted MolecularKRR."""
    from .molecules import as_molecules

    check_supported(model, forces=True)
    mols = as_molecules(molecules)
    if _is_derivative(model):
        from .applicability import check_elements
        from .derivative_uncertainty import posterior_std

        check_elements(model, mols)  # refuse elements not seen in training, as predict does
        return posterior_std(model, mols, forces=True)
    Z = model.features(mols)
    A = None if model.metric_ is None else np.asarray(model.metric_.components_, dtype=np.float64)
    jac = []
    for Jx in model.representation_.jacobian(mols):  # (d, n_atoms, 3): ∂x/∂R, then ∂z/∂R = A ∂x/∂R
        jac.append(Jx if A is None else (A @ Jx.reshape(Jx.shape[0], -1)).reshape(A.shape[0], *Jx.shape[1:]))
    return krr_energy_and_force_std(model.krr_, Z, jac)


def predict_with_std(model: Any, molecules: Any) -> tuple[np.ndarray, np.ndarray]:
    """(energies, energy std), both (n_molecules,): ``model.predict`` and the posterior std."""
    check_supported(model)
    return model.predict(molecules), energy_std(model, molecules)


def predict_energies_and_forces_with_std(model: Any, molecules: Any) -> tuple[np.ndarray, list, np.ndarray, list]:
    """(energies, forces, energy std (n_molecules,), force std: one (n_atoms_i, 3) array per molecule):
    ``model.predict_energies_and_forces`` and the posterior stds."""
    from .molecules import as_molecules

    check_supported(model, forces=True)
    mols = as_molecules(molecules)
    energies, forces = model.predict_energies_and_forces(mols)
    return (energies, forces, *energy_and_force_std(model, mols))
