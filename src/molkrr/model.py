"""MolecularKRR: representation → optional metric → kernel ridge regression; energies and forces.

Energy goes forward through a chain of three links, E = krr(metric(rep(R))) with
z = A x(R) (A = identity without a metric); forces come back through the same links as
vector–Jacobian products, F = −rep.vjp(metric.vjp(∂E/∂z)). Each link owns its own shortcuts: the
representation says which features can depend on positions (padding), the metric whether that
survives it, the kernel layer chooses its single-query path. See docs/forces.md.
"""

from __future__ import annotations

import copy
import os
import sys
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.utils.validation import check_is_fitted

from ._validation import check_model_params, check_targets
from .applicability import check_elements, training_elements
from .baseline import baseline_energies, check_baseline, fit_element_energies, resolve_baseline
from .errors import InvalidInputError, NotDifferentiableError, ShapeMismatchError
from .kernels import Kernel, make_kernel
from .krr import KernelRidge
from .selection import DEFAULT_LAMS, select_hyperparameters
from .metric.base_metric import as_metric
from .molecules import Molecules, as_molecules


#: Fitted arrays of an exact DerivativeKRR model: the training molecules' atomic numbers (n_atoms_total,),
#: positions (n_atoms_total, 3) in Å and offsets (n_molecules + 1,), for the predictive std (molkrr.uncertainty).
TRAINING_GEOMETRY = ("train_numbers_", "train_positions_", "train_offsets_")


class MolecularKRR(RegressorMixin, BaseEstimator):
    """Kernel ridge regression on molecules, with analytic forces.

    Parameters
    ----------
    representation : Representation, optional
        Maps molecules to features (default: sorted Coulomb matrix). Cloned and fitted in ``fit``.
    kernel : str or Kernel
        Kernel name or object, see :mod:`molkrr.kernels` (σ convention there), e.g. 'gaussian' or
        ``molkrr.kernels.Matern(nu=2.5)``.
    sigma, lam : float or None
        Kernel width and ridge. σ: a number is used as given; None takes the kernel object's σ if it
        has one, else selects σ. λ: None selects it. Selection is by validation MAE in ``fit``
        (:func:`molkrr.krr.select_hyperparameters`); kernels without a length scale (``Linear``)
        have only λ selected.
    metric : transformer with ``components_``, optional
        A learned linear map z = A x (e.g. :class:`molkrr.MLKRR`), fitted on the training features.
    prefit_metric : bool
        Use ``metric`` as already fitted (neither cloned nor refitted): metric learning can take hours,
        and its result is then reused for any number of KRR fits.
    center : bool
        Fit to y minus its mean.
    energy_unit : str, optional
        Unit of the energies (e.g. 'eV', 'kcal/mol', 'Ha'); recorded with the model and used by the
        ASE calculator. Forces are in energy_unit / Å.
    solver : {'auto', 'cholesky', 'falkon'}
        KRR solver, see :class:`molkrr.KernelRidge` ('falkon': Nyström + preconditioned CG for large n).
    n_centers : int, optional
        Nyström centres for ``solver='falkon'``.
    backend, device : str or None
        Where the KRR fit, predictions and forces' kernel part compute ('numpy' or 'torch';
        'cpu', 'cuda', 'cuda:N'; None: the process default), passed to the KernelRidge
        (:mod:`molkrr.backends`); for force targets and local kernels the factorisation and solve of
        K + Λ (the Gram matrix is built on numpy). σ/λ selection, representations and the metric run on numpy.

    targets : {'energy', 'forces', 'energy+forces'}
        What the model is trained on. 'forces' and 'energy+forces' solve KRR with derivative
        observations (:mod:`molkrr.derivative_krr`, needs the molecules' forces and a Gaussian or
        Matérn kernel); 'forces' fixes the energy offset from the training energies (as GDML does).
        A representation with one row per atom (``FCHL19(form='atomic')``, CLI name 'fchl19-local')
        selects the local kernel Σ_{i∈A} Σ_{j∈B, Z_i=Z_j} k(x_i, x_j), for any targets.
    baseline : {'auto', 'elements', 'mean', None}
        Prior mean of the energies, subtracted before the KRR and added back in predictions
        (:mod:`molkrr.baseline`): 'elements' fits one energy per element by least squares (the
        dressed-atom baseline local kernels need across compositions), 'mean' and None leave the
        energies to ``center``; 'auto' is 'elements' for local representations, 'mean' otherwise.
        No coordinate dependence: forces are unchanged.
    n_sparse : int or None
        Sparse local KRR (local representations, energy targets): ``n_sparse`` inducing atomic
        environments in all, shared among the elements in proportion to their counts, instead of every
        training molecule (:mod:`molkrr.solvers.sparse_local`): training O(n·M²) streamed over molecules,
        prediction reads M environments. None: the exact solve. σ/λ, when not given, are selected with
        the exact local kernel on at most 2,000 of the training molecules.
    lam_forces : float or None
        Ridge on the force rows ([E]²/Å²) when forces are trained; None selects it (with σ and λ)
        by validation force MAE (:func:`molkrr.force_selection.select_force_hyperparameters`).

    Fitted attributes: ``representation_``, ``metric_`` (or None), ``krr_`` (a KernelRidge, or a
    :class:`~molkrr.derivative_krr.DerivativeKRR` for force targets and local kernels), ``sigma_``,
    ``lam_`` and, for force targets, ``lam_forces_``; ``baseline_`` ('elements' or 'mean'),
    ``baseline_elements_`` and ``baseline_energies_`` (per-element energies, empty for 'mean'); ``elements_`` (atomic numbers of the training
    set: prediction refuses others, see :mod:`molkrr.applicability`); for an exact DerivativeKRR (force
    targets or a local kernel, ``n_sparse=None``) the training geometries ``train_numbers_``,
    ``train_positions_`` (Å) and ``train_offsets_``, from which the predictive std rebuilds its training rows.
    """

    def __init__(
        self,
        representation: Any = None,
        kernel: "str | Kernel" = "gaussian",
        sigma: float | None = None,
        lam: float | None = 1e-8,
        metric: Any = None,
        prefit_metric: bool = False,
        center: bool = True,
        energy_unit: str | None = None,
        solver: str = "auto",
        n_centers: int | None = None,
        backend: str | None = None,
        device: str | None = None,
        targets: str = "energy",
        lam_forces: float | None = None,
        baseline: str | None = "auto",
        n_sparse: int | None = None,
    ) -> None:
        self.representation = representation
        self.kernel = kernel
        self.sigma = sigma
        self.lam = lam
        self.metric = metric
        self.prefit_metric = prefit_metric
        self.center = center
        self.energy_unit = energy_unit
        self.solver = solver
        self.n_centers = n_centers
        self.backend = backend
        self.device = device
        self.targets = targets
        self.lam_forces = lam_forces
        self.baseline = baseline
        self.n_sparse = n_sparse

    # ------------------------------------------------------------------ fitting
    def fit(self, molecules: Any, y: Any = None, *, progress: bool = False, steps: "FitSteps | None" = None
            ) -> "MolecularKRR":
        """Fit on molecules (Molecules or ase.Atoms list) and energies y (default: the molecules' energies).

        steps : who computes the features and solves the KRR of the energy path with a global representation
            (default :class:`FitSteps`: here, in memory); :mod:`molkrr.solvers.dask` passes its own to shard both
            over Dask workers. Everything else (checks, representation, baseline, σ/λ, the fitted attributes)
            is this method's, whoever solves.
        """
        check_model_params(self)  # molkrr._validation: the one parameter-check helper
        check_baseline(self.baseline)
        for key in TRAINING_GEOMETRY:  # set again by the exact derivative-observation fit only
            self.__dict__.pop(key, None)
        steps = FitSteps() if steps is None else steps
        mols = as_molecules(molecules)
        y = _energies(mols, y)
        if self.representation is None:
            from .representations.coulomb import CoulombMatrix

            rep = CoulombMatrix()
        else:
            rep = clone(self.representation)
        self.representation_ = rep.fit(mols)
        # --- the energy baseline (molkrr.baseline): the KRR fits what it leaves
        from .derivative_krr import is_local

        if self.n_sparse is not None and not is_local(rep):
            raise InvalidInputError("n_sparse (inducing atomic environments) needs a local representation, "
                                    "e.g. FCHL19(form='atomic'); for a global one use solver='falkon'")
        self.baseline_ = resolve_baseline(self.baseline, is_local(rep))
        if self.baseline_ == "elements":
            self.baseline_elements_, self.baseline_energies_ = fit_element_energies(mols, y)
            y = y - baseline_energies(mols, self.baseline_elements_, self.baseline_energies_)
        else:
            self.baseline_elements_, self.baseline_energies_ = np.zeros(0, dtype=np.int64), np.zeros(0)
        kernel = make_kernel(self.kernel)
        sigma = self.sigma
        if sigma is None and not isinstance(self.kernel, str):
            sigma = kernel.sigma  # the object's own σ, if it has one
        # --- force targets and local kernels: KRR with derivative observations (molkrr.derivative_krr)
        from .derivative_krr import check_targets as check_target_kind

        targets = check_target_kind(self.targets)
        if targets != "energy" or is_local(rep):
            from .force_selection import derivative_hyperparameters, fit_derivative_krr

            if self.metric is not None:
                raise InvalidInputError("a learned metric is not supported with force targets or local kernels (yet)")
            if not steps.in_memory:
                raise InvalidInputError(f"{type(steps).__name__} fits energies with a global representation only")
            sigma, lam, lam_f = derivative_hyperparameters(
                self.representation_, mols, y, kernel=kernel, targets=targets, sigma=sigma, lam=self.lam,
                lam_forces=self.lam_forces, center=self.center, progress=progress)
            from .backends import get_backend

            krr = fit_derivative_krr(self.representation_, mols, y, kernel=kernel, sigma=sigma, lam=lam,
                                     lam_forces=lam_f, targets=targets, center=self.center, n_sparse=self.n_sparse,
                                     progress=progress, backend=get_backend(self.backend, self.device))
            if self.n_sparse is None:  # the predictive std rebuilds the training rows' Jacobians from these (molkrr.uncertainty)
                self.train_numbers_ = np.array(mols.numbers, dtype=np.int64)
                self.train_positions_ = np.array(mols.positions, dtype=np.float64)
                self.train_offsets_ = np.array(mols.offsets, dtype=np.int64)
            return self._fitted(mols, None, sigma, lam, krr, lam_forces=lam_f)
        # --- energies with a global representation: KernelRidge
        X = steps.features(self.representation_, mols, progress=progress)
        if steps.in_memory and X.shape[0] != len(mols):
            raise ShapeMismatchError(
                f"{type(rep).__name__} gives {X.shape[0]} feature rows for {len(mols)} molecules; MolecularKRR "
                "needs one row per molecule (use a global representation, e.g. FCHL19(form='global'))"
            )
        lam = self.lam
        needs_selection = (kernel.has_length_scale and sigma is None) or lam is None
        if not steps.in_memory and (needs_selection or (self.metric is not None and not self.prefit_metric)):
            raise InvalidInputError(f"{type(steps).__name__} needs sigma and lam given and no metric, or a prefit one "
                                    "(prefit_metric=True): selection and metric learning need the features in memory")
        if self.metric is not None and self.prefit_metric:
            check_is_fitted(self.metric)
            metric = copy.deepcopy(self.metric)
            X = steps.transform(metric, X)
        elif self.metric is not None:
            metric = clone(self.metric).fit(X, y)
            X = metric.transform(X)
        else:
            metric = None
        if needs_selection:  # molkrr.selection: one eigendecomposition per σ, one grid-edge warning
            sel = select_hyperparameters(
                X,
                y,
                kernel=kernel,
                sigmas=None if sigma is None else [sigma],
                lams=DEFAULT_LAMS if lam is None else [lam],
                center=self.center,
                progress=progress,
            )
            sigma, lam = sel.sigma, sel.lam
        sigma = float(sigma) if kernel.has_length_scale else None
        if progress:
            width = f"sigma={sigma:.4g}, " if sigma is not None else ""
            print(f"solving the kernel system of {len(y)} molecules ({width}lambda={float(lam):.1e})", file=sys.stderr)
        krr = KernelRidge(
            self.kernel, sigma, float(lam), self.center, solver=self.solver, n_centers=self.n_centers,
            backend=self.backend, device=self.device,
        )
        krr = steps.solve(krr, X, y, progress=progress)
        return self._fitted(mols, metric, sigma, lam, krr)

    def fit_appended(self, molecules: Any, n_previous: int, y: Any = None, *, progress: bool = False) -> "MolecularKRR":
        """Refit on ``molecules`` whose first ``n_previous`` are the last fit's training molecules, in its order, and
        the rest new (on-the-fly learning appends frames; :mod:`molkrr.active`).

        At the fitted σ, λ, λ_F and with the fitted representation, an exact derivative-observation model
        (force targets or a local kernel, no ``n_sparse``) extends the Cholesky factor its last fit kept
        (:meth:`molkrr.derivative_krr.DerivativeKRR.extend`: O(n_rows² × new rows) instead of a new O(n_rows³)
        factorisation); the model equals ``fit`` at those hyperparameters to round-off. Anything else (no kept
        factor, another model kind, the first molecules changed, new elements) is a full ``fit`` with σ, λ, λ_F
        fixed to the fitted values. Returns self.
        """
        check_is_fitted(self)
        mols = as_molecules(molecules)
        y = _energies(mols, y)
        krr = self.krr_
        previous = getattr(self, "train_offsets_", None)
        same = (previous is not None and hasattr(krr, "extend") and isinstance(n_previous, (int, np.integer))
                and 0 < n_previous < len(mols) and len(previous) == n_previous + 1
                and np.array_equal(mols.offsets[: n_previous + 1], previous)
                and np.array_equal(mols.numbers[: previous[-1]], self.train_numbers_)
                and np.array_equal(mols.positions[: previous[-1]], self.train_positions_)
                and set(np.unique(mols.numbers).tolist()) <= set(np.asarray(self.elements_).tolist()))
        if not same:
            fixed = {"sigma": self.sigma_, "lam": self.lam_}
            if hasattr(self, "lam_forces_"):
                fixed["lam_forces"] = self.lam_forces_
            return self.set_params(**fixed).fit(mols, y, progress=progress)
        if self.baseline_ == "elements":
            self.baseline_elements_, self.baseline_energies_ = fit_element_energies(mols, y)
            y = y - baseline_energies(mols, self.baseline_elements_, self.baseline_energies_)
        from .derivative_krr import training_environments

        env, grads = training_environments(self.representation_, mols, krr.targets)
        krr.extend(env, y, grads, n_previous=int(n_previous), progress=progress)
        self.train_numbers_ = np.array(mols.numbers, dtype=np.int64)
        self.train_positions_ = np.array(mols.positions, dtype=np.float64)
        self.train_offsets_ = np.array(mols.offsets, dtype=np.int64)
        return self._fitted(mols, None, self.sigma_, self.lam_, krr, lam_forces=getattr(self, "lam_forces_", None))

    def _fitted(self, mols: Molecules, metric: Any, sigma: float | None, lam: float, krr: Any, *,
                lam_forces: float | None = None) -> "MolecularKRR":
        """Set the fitted attributes of every fit path at one place (the baseline and representation_ are set above)."""
        self.metric_ = metric
        self.sigma_ = sigma
        self.lam_ = float(lam)
        if lam_forces is not None:
            self.lam_forces_ = float(lam_forces)
        self.krr_ = krr
        self.elements_ = training_elements(mols)  # molkrr.applicability: the elements predict accepts
        return self

    # ------------------------------------------------------------------ prediction
    def features(self, molecules: Any) -> np.ndarray:
        """The features the KRR sees, z = A x(R): shape (n_molecules, n_components) (rows per atom for a local kernel)."""
        check_is_fitted(self)
        mols = as_molecules(molecules)
        check_elements(self, mols)  # molkrr.applicability: refuse elements not seen in training
        return as_metric(self.metric_).transform(self.representation_.transform(mols))

    def predict(self, molecules: Any, return_std: bool = False) -> Any:
        """Energies, shape (n_molecules,), in ``energy_unit``.

        return_std : also return the posterior standard deviation of each energy (n_molecules,), as
            ``(energies, std)``; the convention (GP view of KRR, maximum-likelihood scale) is in
            :mod:`molkrr.uncertainty`. Exact models only: the Cholesky solver, or a force-trained /
            local-kernel model with ``n_sparse=None`` (else :class:`~molkrr.errors.UncertaintyNotSupportedError`).
        """
        if return_std:  # molkrr.uncertainty: the posterior std beside this method's energies
            from .uncertainty import predict_with_std

            return predict_with_std(self, molecules)
        check_is_fitted(self)
        mols = as_molecules(molecules)
        if not isinstance(self.krr_, KernelRidge):  # derivative-observation / local-kernel model
            from .derivative_krr import predict_energies

            check_elements(self, mols)  # molkrr.applicability: refuse elements not seen in training
            return predict_energies(self.representation_, self.krr_, mols) + self._baseline(mols)
        Z = self.features(mols)
        return self.krr_.predict(Z) + self._baseline(mols)

    def _baseline(self, mols: Molecules) -> np.ndarray | float:
        """The fitted baseline energies of ``mols`` (n_molecules,), or 0 (molkrr.baseline)."""
        elements = getattr(self, "baseline_elements_", None)
        if elements is None or len(elements) == 0:
            return 0.0
        return baseline_energies(mols, elements, self.baseline_energies_)

    def predict_forces(self, molecules: Any) -> list[np.ndarray]:
        """Forces −∂E/∂R: one (n_atoms_i, 3) array per molecule, in energy_unit / Å."""
        return self.predict_energies_and_forces(molecules)[1]

    def predict_energies_and_forces(self, molecules: Any, return_std: bool = False) -> tuple:
        """(energies (n_molecules,), forces: list of (n_atoms_i, 3)) sharing one feature evaluation.

        return_std : also return the posterior standard deviations, as ``(energies, forces, energy_std
            (n_molecules,), force_std: list of (n_atoms_i, 3))`` in energy_unit and energy_unit/Å
            (:mod:`molkrr.uncertainty`; a stationary kernel is needed for the force std).
        """
        if return_std:  # molkrr.uncertainty: the posterior std beside this method's energies and forces
            from .uncertainty import predict_energies_and_forces_with_std

            return predict_energies_and_forces_with_std(self, molecules)
        check_is_fitted(self)
        mols = as_molecules(molecules)
        check_elements(self, mols)  # molkrr.applicability: refuse elements not seen in training
        rep, metric, krr = self.representation_, as_metric(self.metric_), self.krr_
        if not getattr(rep, "differentiable", False):
            raise NotDifferentiableError(f"{type(rep).__name__} has no derivative with respect to positions")
        if not krr.kernel_.differentiable:
            raise NotDifferentiableError(f"kernel {krr.kernel_.name!r} is not differentiable")
        if not isinstance(krr, KernelRidge):  # derivative-observation / local-kernel model
            from .derivative_krr import predict_energies_and_forces

            energies, forces = predict_energies_and_forces(rep, krr, mols)
            return energies + self._baseline(mols), forces
        Z = metric.transform(rep.transform(mols))
        # features that cannot depend on positions (padding) need no kernel work, if the metric keeps them apart
        needed = metric.output_support(rep.feature_support(mols))
        energies, dE_dz = krr.predict_with_gradient(Z, n_active=needed)  # (n,), (n, n_components)
        forces = [-g for g in rep.vjp(mols, metric.vjp(dE_dz))]
        return energies + self._baseline(mols), forces

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted model to ``path`` (npz + JSON header, no pickle); see :func:`molkrr.load_model`."""
        from .persistence import save_model  # the container sits above the estimators: imported late, one way

        save_model(self, path)

    @classmethod
    def model_file_schema(cls) -> Any:
        """The fields a model file holds for a MolecularKRR, and their checks (:mod:`molkrr.schema`)."""
        return _model_file_schema()


def finite_difference_forces(model: Any, molecule: Any, h: float = 1e-4, *, points: int = 2) -> np.ndarray:
    """Forces −∂E/∂R (n_atoms, 3) of one molecule by central differences of ``model.predict`` (step h in Å).

    points : 2 for the (f(x+h) − f(x−h))/2h stencil (error O(h²)), 4 for the five-point stencil
        (f(x−2h) − 8f(x−h) + 8f(x+h) − f(x+2h))/12h (error O(h⁴)), which allows a larger h and so
        less round-off when the model's α are large (small λ, many training molecules).
    A check for the analytic forces, never used to compute them: 3·points·n_atoms energy evaluations.
    """
    mol = as_molecules(molecule)
    if len(mol) != 1:
        raise ShapeMismatchError(f"finite_difference_forces takes one molecule, got {len(mol)}")
    stencils = {2: ((1.0, 0.5), (-1.0, -0.5)), 4: ((2.0, -1 / 12), (1.0, 8 / 12), (-1.0, -8 / 12), (-2.0, 1 / 12))}
    if points not in stencils:
        raise InvalidInputError(f"points must be 2 or 4, got {points}")
    R = mol.positions
    displaced = []
    for step, _ in stencils[points]:
        for a in range(R.shape[0]):
            for k in range(3):
                Rd = R.copy()
                Rd[a, k] += step * h
                displaced.append(mol.with_positions(Rd))
    E = model.predict(Molecules.concatenate(displaced)).reshape(len(stencils[points]), -1)
    weights = np.array([w for _, w in stencils[points]])
    return -(weights @ E / h).reshape(R.shape)


def transform_in_chunks(rep: Any, mols: Molecules, *, progress: bool = False, chunk: int = 1000) -> np.ndarray:
    """rep.transform(mols), a chunk of molecules at a time, with an optional progress bar."""
    if not progress or len(mols) <= chunk:
        return rep.transform(mols)
    from tqdm.auto import tqdm

    starts = range(0, len(mols), chunk)
    parts = [rep.transform(mols[s : s + chunk]) for s in tqdm(starts, desc=type(rep).__name__, unit="chunk", file=sys.stderr)]
    return np.concatenate(parts)


class FitSteps:
    """The steps of :meth:`MolecularKRR.fit`'s energy path (global representation) that an executor may take over.

    The default computes here, in memory. :class:`molkrr.solvers.dask.DaskFitSteps` keeps the features on
    Dask workers (``in_memory = False``: the fit then needs σ, λ given and no metric or a prefit one).
    """

    #: The features are an (n, d) array in this process (σ/λ selection and metric learning can read them).
    in_memory = True

    def features(self, rep: Any, mols: Molecules, *, progress: bool = False) -> Any:
        """The training features of ``mols`` under the fitted ``rep``: (n_molecules, d)."""
        return transform_in_chunks(rep, mols, progress=progress)

    def transform(self, metric: Any, X: Any) -> Any:
        """The features through a fitted metric, z = A x: (n_molecules, n_components)."""
        return metric.transform(X)

    def solve(self, krr: KernelRidge, X: Any, y: np.ndarray, *, progress: bool = False) -> KernelRidge:
        """``krr`` (unfitted, σ and λ set) fitted on the features X and energies y (n_molecules,)."""
        return krr.fit(X, y, progress=progress)


def energies_of(mols: Molecules, y: Any = None) -> np.ndarray:
    """The training energies (n_molecules,): ``y`` checked against ``mols``, or the molecules' own energies."""
    return _energies(mols, y)


def _energies(mols: Molecules, y: Any) -> np.ndarray:
    if y is None:
        if mols.energies is None:
            raise ShapeMismatchError("no energies given: pass y or molecules that carry energies")
        return check_targets(mols.energies)
    y = check_targets(y).reshape(-1)
    if y.shape[0] != len(mols):
        raise ShapeMismatchError(f"{y.shape[0]} energies for {len(mols)} molecules")
    return y


# ------------------------------------------------------------------------------------ model files
def _model_file_schema() -> Any:
    """MolecularKRR's parameters, its fitted parts (each read and checked as its own node first) and how
    they must agree with each other and with the model's templates (molkrr.schema)."""
    from .derivative_krr import TARGETS, DerivativeKRR
    from .kernels import KernelField
    from .krr import SOLVER_PARAMS
    from .metric.base_metric import MetricLearner
    from .representations.base import Representation
    from .schema import Bool, Choice, Elements, FloatArray, Int, IntArray, Nested, Number, Schema, Sigma, Text

    return Schema(
        params={
            "representation": Nested("representation", Representation, fitted=False, none_ok=True),
            "kernel": KernelField(),
            **{k: SOLVER_PARAMS[k] for k in ("solver", "n_centers", "backend", "device")},
            "sigma": Sigma(none_ok=True),
            "lam": Number(lo=0.0, none_ok=True),
            "metric": Nested("metric", MetricLearner, fitted=False, none_ok=True),
            "prefit_metric": Bool(),
            "center": Bool(),
            "energy_unit": Text(256, none_ok=True),
            "baseline": Choice(("auto", "elements", "mean"), none_ok=True),
            "n_sparse": Int(1, none_ok=True),
            "targets": Choice(TARGETS),
            "lam_forces": Number(lo=0.0, none_ok=True),
        },
        fitted={
            "representation_": Nested("representation", Representation, fitted=True, then=_check_representation),
            "lam_forces_": Number(lo=0.0, none_ok=True, required=False),
            "metric_": Nested("metric", MetricLearner, fitted=True, none_ok=True, then=_check_metric),
            "sigma_": Sigma(none_ok=True),
            "lam_": Number(lo=0.0),
            "baseline_": Choice(("elements", "mean"), required=False, then=_check_baseline),  # absent before baselines
            "krr_": Nested("krr", (KernelRidge, DerivativeKRR), fitted=True, then=_check_krr),
            "elements_": Elements(then=_check_supported_elements),
            # absent in files written before the predictive std of DerivativeKRR models (their std is refused)
            "train_numbers_": IntArray(1, 118, required=False, then=_needs_offsets),
            "train_positions_": FloatArray(2, required=False, then=_needs_offsets),
            "train_offsets_": IntArray(0, 2**62, required=False, then=_check_training_geometry),
        },
        # files of model format 2 written before these parameters existed: the values they were fitted with
        added={"baseline": (1, "mean"), "n_sparse": (1, None)},
    )


def _check_representation(rep: Any, where: str, node: Any) -> None:
    """fit clones the template: the fitted representation carries exactly the model's parameters."""
    from .derivative_krr import DerivativeKRR
    from .schema import fail, same

    template = node.params["representation"]
    if template is None:
        from .representations.coulomb import CoulombMatrix

        template = CoulombMatrix()
    if type(rep) is not type(template) or not same(rep.get_params(deep=False), template.get_params(deep=False)):
        raise fail(f"{where}.params", "differ from the model's representation parameters")
    krr, _ = node.f("krr_")  # a DerivativeKRR (force targets, local kernels) takes rows per atom
    if getattr(rep, "form", "global") != "global" and not isinstance(krr, DerivativeKRR):
        raise fail(where, "MolecularKRR needs one feature row per molecule (a global representation)")


def _check_metric(metric: Any, where: str, node: Any) -> None:
    from .schema import fail, same

    template = node.params["metric"]
    if (metric is None) != (template is None) or (
        metric is not None
        and (type(metric) is not type(template) or not same(metric.get_params(deep=False), template.get_params(deep=False)))
    ):
        raise fail(where, "differs from the model's metric parameter")


def _check_baseline(kind: str, where: str, node: Any) -> None:
    """baseline_elements_ and baseline_energies_ (molkrr.baseline), present with baseline_."""
    from .schema import MAX_ABS_COEFFICIENT, elements, fail, float_array, int_array

    found, where = node.f("baseline_elements_")
    energies, e_where = node.f("baseline_energies_")
    if kind == "mean":
        found = int_array(found, where, 1, 118)
        if found.size:
            raise fail(where, "must be empty for baseline 'mean'")
    else:
        found = elements(found, where)
    node.fitted["baseline_elements_"] = found.astype(np.int64)
    float_array(energies, e_where, 1, shape=(found.size,), max_abs=MAX_ABS_COEFFICIENT)


def _check_krr(krr: Any, where: str, node: Any) -> None:
    """The KRR's features are the representation's (through the metric's components_, if any)."""
    from .schema import fail

    rep, metric = node.fitted["representation_"], node.fitted["metric_"]
    if not isinstance(krr, KernelRidge):  # DerivativeKRR: force targets or a local kernel (molkrr.derivative_krr)
        if krr.X_.shape[1] != int(rep.n_features_):
            raise fail(f"{where}.fitted.X_", f"has {krr.X_.shape[1]} columns but the representation gives "
                                             f"{int(rep.n_features_)} features")
        return
    kernel, sigma, lam = node.params["kernel"], node.fitted["sigma_"], float(node.fitted["lam_"])
    sigma = None if sigma is None else float(sigma)
    if (krr.kernel != kernel or (None if krr.sigma is None else float(krr.sigma)) != sigma or float(krr.lam) != lam
            or krr.center != node.params["center"]):
        raise fail(where, f"kernel {krr.kernel!r}, sigma {krr.sigma!r}, lam {krr.lam!r} differ from the model's "
                          f"{kernel!r}, sigma_ {sigma!r}, lam_ {lam!r}")
    if krr.alpha_.ndim != 1:
        raise fail(f"{where}.fitted.alpha_", "must be 1-D (one energy per molecule)")
    d_rep, d_krr = int(rep.n_features_), krr.X_fit_.shape[1]
    if metric is None and d_krr != d_rep:
        raise fail(f"{where}.fitted.X_fit_", f"has {d_krr} columns but the representation gives {d_rep} features")
    if metric is not None and metric.components_.shape != (d_krr, d_rep):
        raise fail(f"{node.where}.fitted.metric_.fitted.components_", f"has shape {metric.components_.shape}, "
                   f"expected ({d_krr}, {d_rep}) (KRR features × representation features)")


def _check_supported_elements(found: np.ndarray, where: str, node: Any) -> None:
    """The elements an energy model was trained on lie within what its representation supports."""
    from .applicability import supported_elements
    from .schema import fail

    rep = node.fitted["representation_"]
    supported = supported_elements(rep) if isinstance(node.fitted["krr_"], KernelRidge) else None
    if supported is not None:
        outside = np.setdiff1d(found, supported)
        if outside.size:
            raise fail(where, f"lists element {int(outside[0])}, which the {type(rep).__name__} does not support")


def _needs_offsets(value: Any, where: str, node: Any) -> None:
    node.f("train_offsets_")  # the training geometry comes whole: numbers, positions and offsets


def _check_training_geometry(offsets: np.ndarray, where: str, node: Any) -> None:
    """train_numbers_, train_positions_ and train_offsets_ describe the molecules the DerivativeKRR was fitted on."""
    from .derivative_krr import DerivativeKRR, is_local
    from .schema import fail

    numbers, n_where = node.f("train_numbers_")
    positions, p_where = node.f("train_positions_")
    n = numbers.shape[0]
    if offsets.shape[0] < 2 or offsets[0] != 0 or offsets[-1] != n or np.any(np.diff(offsets) < 1):
        raise fail(where, f"must rise from 0 to the {n} training atoms, at least one atom per molecule")
    if positions.shape != (n, 3):
        raise fail(p_where, f"has shape {positions.shape}, expected ({n}, 3)")
    krr = node.fitted["krr_"]
    if not isinstance(krr, DerivativeKRR):
        raise fail(where, "training geometries belong to a DerivativeKRR model (force targets, local kernels)")
    n_env = n if is_local(node.fitted["representation_"]) else offsets.shape[0] - 1
    if krr.X_.shape[0] != n_env:
        raise fail(where, f"describe {n_env} training environments, the KRR holds {krr.X_.shape[0]}")
    if np.setdiff1d(numbers, node.fitted["elements_"]).size:
        raise fail(n_where, "lists an element that is not among the model's elements_")
