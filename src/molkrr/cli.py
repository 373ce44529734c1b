"""The ``molkrr`` command: train, predict, demo, learn-metric, paper.

Bad input ends with a one-line ``Error: ...`` on stderr and exit status 1 (2 for usage errors),
never a traceback.
"""

from __future__ import annotations

import functools
import sys
import time
from typing import Any, Callable

import click
import numpy as np

from .errors import MolkrrError
from .kernels import KERNELS
from .representations import REPRESENTATIONS

CHUNK = 1000  # molecules per progress-bar step


def _friendly(func: Callable) -> Callable:
    """Turn expected failures into one-line click errors."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except click.ClickException:
            raise
        except (MolkrrError, ValueError, OSError, KeyError, TypeError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise click.ClickException(f"{type(exc).__name__}: {msg}") from None

    return wrapper


def _progress(iterable, desc: str, quiet: bool, **kw):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, disable=quiet, file=sys.stderr, dynamic_ncols=True, **kw)


def _load_training_data(dataset, xyz, n_train, n_test, prop, unit, energy_key, seed, quiet):
    from .datasets import load_qm9, read_xyz

    if (dataset is None) == (xyz is None):
        raise click.UsageError("give exactly one of --dataset qm9 or --xyz FILE")
    if xyz is not None:
        mols = read_xyz(xyz, energy_key=energy_key)
        if mols.energies is None:
            raise click.ClickException(f"{xyz}: frames carry no '{energy_key}' values to train on")
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(mols))
        n_test = min(n_test or 0, len(mols) - 1)
        test, train = perm[:n_test], perm[n_test:]
        if n_train:
            train = train[:n_train]
        return mols[train], (mols[test] if n_test else None), unit
    if n_train is None:
        raise click.UsageError("--n-train is required with --dataset qm9")
    unit = unit or "kcal/mol"
    if not quiet:
        click.echo(f"loading QM9 ({n_train + (n_test or 0)} molecules, seed {seed}) ...", err=True)
    mols = load_qm9(n_train + (n_test or 0), seed=seed, property=prop, unit=unit)
    return mols[:n_train], (mols[n_train:] if n_test else None), unit


def _make_model(representation, kernel, sigma, lam, unit, metric=None, qm9=False):
    """A MolecularKRR; for QM9 the representation is sized to hold every QM9 molecule."""
    from .datasets.qm9 import representation_params
    from .model import MolecularKRR
    from .representations import make_representation

    rep = make_representation(representation, **(representation_params(representation) if qm9 else {}))
    return MolecularKRR(rep, kernel=kernel, sigma=sigma, lam=lam, metric=metric, energy_unit=unit)


# ----------------------------------------------------------------------------- commands
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="molkrr")
def cli() -> None:
    """Kernel ridge regression on molecules, with analytic forces and metric learning."""


def _representation_option(default: str):
    return click.option("--representation", type=click.Choice(REPRESENTATIONS), default=default, show_default=True)


_rep_option = _representation_option("cm-sorted")
_kernel_option = click.option("--kernel", type=click.Choice(sorted(KERNELS)), default="gaussian", show_default=True)
_quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")


@cli.command()
@click.option("--dataset", type=click.Choice(["qm9"]), help="Train on QM9 (offline, from the qm9pack package).")
@click.option("--xyz", type=click.Path(dir_okay=False), help="Train on an (extended) XYZ file with energies.")
@click.option("--energy-key", default="energy", show_default=True, help="extXYZ info key holding the energy.")
@click.option("--n-train", type=click.IntRange(2), help="Training molecules (required for QM9).")
@click.option("--n-test", type=click.IntRange(0), default=0, show_default=True, help="Held-out molecules to report MAE on.")
@click.option("--property", "prop", default="atomization_energy", show_default=True, help="QM9 target.")
@click.option("--unit", default=None, help="Energy unit. QM9: Ha, eV or kcal/mol (default kcal/mol); XYZ: the unit the file is in (recorded with the model).")
@_rep_option
@_kernel_option
@click.option("--sigma", type=click.FloatRange(min=0, min_open=True), help="Kernel width; selected automatically if omitted.")
@click.option("--lam", type=click.FloatRange(min=0), help="Ridge; selected with sigma if omitted.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), default="model.npz", show_default=True)
@_quiet_option
@_friendly
def train(dataset, xyz, energy_key, n_train, n_test, prop, unit, representation, kernel, sigma, lam, seed, output, quiet):
    """Train a model and save it (npz + JSON header, no pickle)."""
    if sigma is not None and lam is None:
        lam = 1e-8
    train_set, test_set, unit = _load_training_data(dataset, xyz, n_train, n_test, prop, unit, energy_key, seed, quiet)
    model = _make_model(representation, kernel, sigma, lam, unit, qm9=dataset == "qm9")
    t0 = time.perf_counter()
    model.fit(train_set, progress=not quiet)
    seconds = time.perf_counter() - t0
    click.echo(
        f"trained on {len(train_set)} molecules in {seconds:.1f} s ({representation}, {kernel} kernel, "
        f"sigma={model.sigma_:.4g}, lambda={model.lam_:.1e})"
    )
    if test_set is not None and len(test_set):
        pred = model.predict(test_set)
        mae = float(np.mean(np.abs(pred - test_set.energies)))
        click.echo(f"test MAE on {len(test_set)} molecules: {mae:.4g} {model.energy_unit or ''}".rstrip())
    model.save(output)
    click.echo(f"model written to {output}")


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.argument("xyz", metavar="FILE.xyz", type=click.Path(dir_okay=False))
@click.option("--forces", is_flag=True, help="Also predict forces (−∂E/∂R).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write an extended XYZ with the predictions.")
@_quiet_option
@_friendly
def predict(model_path, xyz, forces, output, quiet):
    """Predict energies (and forces) for every frame of an XYZ file."""
    from .datasets import read_xyz, write_xyz
    from .persistence import load_model

    model = load_model(model_path)
    mols = read_xyz(xyz)
    idx = np.arange(len(mols))
    chunks = [idx[i : i + CHUNK] for i in range(0, len(idx), CHUNK)]
    energies, all_forces = [], []
    for c in _progress(chunks, "predicting", quiet or len(chunks) < 2, unit="chunk"):
        if forces:
            e, f = model.predict_energies_and_forces(mols[c])
            all_forces.extend(f)
        else:
            e = model.predict(mols[c])
        energies.append(e)
    energies = np.concatenate(energies)
    unit = model.energy_unit or "(model units)"
    if output:
        write_xyz(output, mols, energies=energies, forces=all_forces if forces else None)
        click.echo(f"wrote {len(mols)} frames to {output}")
    else:
        for i, e in enumerate(energies):
            line = f"{i:6d}  E = {e: .6f} {unit}"
            if forces:
                line += f"  max|F| = {np.abs(all_forces[i]).max():.4g} {unit}/Å"
            click.echo(line)


@cli.command()
@click.option("--n-train", type=click.IntRange(10), default=2000, show_default=True)
@click.option("--n-test", type=click.IntRange(1), default=500, show_default=True)
@click.option("--representation", type=click.Choice(REPRESENTATIONS), default="fchl19", show_default=True)
@click.option("--kernel", type=click.Choice(sorted(KERNELS)), default="gaussian", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--parity", type=click.Path(dir_okay=False), help="Also write a parity plot (PNG) of the test predictions.")
@_quiet_option
@_friendly
def demo(n_train, n_test, representation, kernel, seed, parity, quiet):
    """Train on a QM9 subset, report the test MAE, and check forces for one molecule against finite differences."""
    from .datasets import load_qm9
    from .model import finite_difference_forces

    unit = "kcal/mol"
    click.echo(f"molkrr demo: QM9 atomisation energies, {representation} + {kernel} kernel")
    mols = load_qm9(n_train + n_test, seed=seed, unit=unit)
    train_set, test_set = mols[:n_train], mols[n_train:]
    model = _make_model(representation, kernel, None, None, unit, qm9=True)
    t0 = time.perf_counter()
    model.fit(train_set, progress=not quiet)
    seconds = time.perf_counter() - t0
    pred = model.predict(test_set)
    mae = float(np.mean(np.abs(pred - test_set.energies)))
    baseline = float(np.mean(np.abs(test_set.energies - train_set.energies.mean())))
    click.echo(f"trained on {n_train} molecules in {seconds:.1f} s (sigma={model.sigma_:.4g}, lambda={model.lam_:.1e})")
    click.echo(f"test MAE on {n_test} molecules: {mae:.3f} {unit}   (predicting the mean: {baseline:.1f} {unit})")
    if parity:
        from .plotting import plot_parity

        plot_parity(test_set.energies, pred, parity, unit=unit, label=f"{representation} + {kernel}, n = {n_train}")
        click.echo(f"parity plot written to {parity}")

    mol = test_set[0]
    model.predict_energies_and_forces(mol)  # first call compiles the representation's kernels (numba)
    t_analytic = np.inf
    for _ in range(10):  # best of 10: one call takes milliseconds, a single timing is mostly noise
        t0 = time.perf_counter()
        _, (F,) = model.predict_energies_and_forces(mol)
        t_analytic = min(t_analytic, time.perf_counter() - t0)
    t0 = time.perf_counter()
    h = 1e-2
    F_fd = finite_difference_forces(model, mol, h=h, points=4)
    t_fd = time.perf_counter() - t0
    from ase.data import chemical_symbols

    click.echo(f"\nforces on test molecule 0 ({unit}/Å): analytic vs five-point central finite differences (h = {h:g} Å)")
    click.echo(f"{'atom':>6} {'analytic Fx':>12} {'Fy':>10} {'Fz':>10} {'FD Fx':>12} {'Fy':>10} {'Fz':>10}")
    for a, (z, f, g) in enumerate(zip(mol.numbers, F, F_fd)):
        click.echo(f"{a:>3} {chemical_symbols[z]:<2} {f[0]:12.5f} {f[1]:10.5f} {f[2]:10.5f} {g[0]:12.5f} {g[1]:10.5f} {g[2]:10.5f}")
    rel = np.abs(F - F_fd).max() / max(np.abs(F_fd).max(), 1e-300)
    # E = ȳ + Σ α_m k_m sums terms of size |α_m| k_m: its round-off, divided by h, limits finite differences
    k_row = model.krr_.kernel_(model.features(mol), model.krr_.X_fit_)[0]
    fd_noise = 1.5 * np.finfo(float).eps * float(np.abs(model.krr_.alpha_) @ k_row) / h
    click.echo(
        f"max |analytic − FD| / max |F| = {rel:.2e};  analytic {t_analytic * 1e3:.2f} ms (best of 10), finite differences {t_fd * 1e3:.1f} ms"
    )
    click.echo(
        f"(finite differences carry round-off up to ~{fd_noise:.1e} {unit}/Å here: this model's |α| reach "
        f"{np.abs(model.krr_.alpha_).max():.1e} at lambda={model.lam_:.0e}; the analytic forces do not difference energies)"
    )


@cli.command("learn-metric")
@click.option("--dataset", type=click.Choice(["qm9"]), help="Learn on QM9 (offline).")
@click.option("--xyz", type=click.Path(dir_okay=False), help="Learn on an (extended) XYZ file with energies.")
@click.option("--energy-key", default="energy", show_default=True)
@click.option("--n-train", type=click.IntRange(10), default=4000, show_default=True)
@click.option("--n-val", type=click.IntRange(1), default=500, show_default=True, help="Validation molecules (trace, selection).")
@click.option("--n-test", type=click.IntRange(1), default=1000, show_default=True, help="Held-out molecules for the final MAEs.")
@click.option("--property", "prop", default="atomization_energy", show_default=True)
@click.option("--unit", default=None, help="Energy unit (QM9 default kcal/mol).")
@_representation_option("fchl19")
@click.option("--method", type=click.Choice(["mlkrr", "mlkr"]), default="mlkrr", show_default=True,
              help="MLKRR (Fabregat et al. 2022) or the MLKR baseline (Weinberger & Tesauro 2007).")
@click.option("--kernel", type=click.Choice(["gaussian", "matern32", "matern52"]), default="gaussian", show_default=True,
              help="Kernel of the metric learning and of both KRRs (MLKR: gaussian only).")
@click.option("--n-components", type=click.IntRange(1), help="Rows of A (default: n_features).")
@click.option("--init", type=click.Choice(["identity", "pca", "random"]), default="identity", show_default=True)
@click.option("--sigma", type=click.FloatRange(min=0, min_open=True), help="Initial σ (default: tuned plain KRR's).")
@click.option("--lam", type=click.FloatRange(min=0), default=1e-10, show_default=True,
              help="λ during metric learning (paper: 1e-9 with its kernel prefactor).")
@click.option("--learn-sigma", is_flag=True, help="Optimise σ with A.")
@click.option("--max-iter", type=click.IntRange(1), default=300, show_default=True)
@click.option("--shuffle-every", type=click.IntRange(1), default=10, show_default=True,
              help="L-BFGS iterations between reshuffles of the α/A split (paper: 30).")
@click.option("--alpha-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.3, show_default=True,
              help="Share of the training set in the α split, the rest is the A split (paper: 0.5).")
@click.option("--validation-every", type=click.IntRange(1), default=10, show_default=True)
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Checkpoint file: written during the run, resumed from if present.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), default="mlkrr_model.npz", show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False), default="mlkrr_trace.png", show_default=True, help="PNG of the optimisation trace.")
@_quiet_option
@_friendly
def learn_metric(dataset, xyz, energy_key, n_train, n_val, n_test, prop, unit, representation, method, kernel, n_components, init, sigma,
                 lam, learn_sigma, max_iter, shuffle_every, alpha_fraction, validation_every, checkpoint, seed, output, plot, quiet):
    """Learn an MLKRR (or MLKR) metric, compare KRR with and without it, save the model and the trace.

    --lam, --shuffle-every and --alpha-fraction apply to MLKRR only (MLKR has no ridge and no split).
    The defaults (reshuffle every 10 iterations, 30 % of the data in the α split, λ = 1e-10) did better
    than the paper's protocol on 4,000 QM9 molecules (docs/mlkrr.md, section 6).
    """
    from .metric import MLKR, MLKRR, compare_metrics
    from .model import MolecularKRR
    from .plotting import plot_optimisation_trace

    if method == "mlkr" and checkpoint:
        raise click.UsageError("--checkpoint is for MLKRR (it resumes at reshuffles; MLKR runs one L-BFGS segment)")
    if method == "mlkr" and kernel != "gaussian":
        raise click.UsageError("MLKR (the baseline) uses the Gaussian kernel only")
    t_start = time.perf_counter()
    train_set, rest, unit = _load_training_data(dataset, xyz, n_train, n_val + n_test, prop, unit, energy_key, seed, quiet)
    if rest is None or len(rest) < 2:
        raise click.ClickException("not enough molecules left for validation and test sets")
    n_val = min(n_val, len(rest) - 1)
    val_set, test_set = rest[:n_val], rest[n_val:]
    base = _make_model(representation, kernel, None, None, unit, qm9=dataset == "qm9")
    rep = base.representation.fit(train_set)
    X, Xv, Xt = (rep.transform(m) for m in (train_set, val_set, test_set))
    y, yv, yt = train_set.energies, val_set.energies, test_set.energies

    common = dict(
        n_components=n_components, init=init, sigma=sigma or 1.0, learn_sigma=learn_sigma, max_iter=max_iter,
        random_state=seed, verbose=0 if quiet else 1, validation_every=validation_every,
    )
    if method == "mlkrr":
        learner = MLKRR(lam=lam, shuffle_every=shuffle_every, alpha_fraction=alpha_fraction, kernel=kernel, **common)
        fit_options, trace_labels = {"checkpoint": checkpoint}, {}
    else:
        learner = MLKR(**common)
        fit_options = {}
        trace_labels = {"train_label": "train (leave-one-out NW)", "validation_label": "validation (NW on training set)"}
    result = compare_metrics(learner, X, y, Xv, yv, Xt, yt, kernel=kernel, sigma_from_plain=sigma is None,
                             fit_params=fit_options, progress=not quiet, log=click.echo)
    click.echo(f"plain tuned KRR test MAE: {result.mae_plain:.4g} {unit or ''}")
    click.echo(f"{method.upper()} ({learner.n_iter_} iterations, {result.seconds_learning:.0f} s) + tuned KRR test MAE: "
               f"{result.mae_learned:.4g} {unit or ''}")
    click.echo(f"change vs plain KRR: {100 * result.change:+.1f}%")

    learned = result.learned
    model = MolecularKRR(rep, kernel=kernel, sigma=learned.sigma, lam=learned.lam, metric=learner,
                         prefit_metric=True, energy_unit=unit)
    model.fit(train_set)
    model.save(output)
    plot_optimisation_trace(learner.history_, plot, unit=unit or "", baseline=result.mae_plain, learned=result.mae_learned,
                            title=f"{method.upper()} on {len(train_set)} molecules ({representation})", **trace_labels)
    click.echo(f"model written to {output}, trace to {plot}; total {time.perf_counter() - t_start:.0f} s")


@cli.command()
@click.option("--scale", type=click.Choice(["test", "quick", "full"]), default="quick", show_default=True,
              help="full: the paper's sizes (24,000 molecules, hours); quick: minutes; test: seconds (for the tests).")
@click.option("--output", "-o", type=click.Path(file_okay=False), default="paper", show_default=True,
              help="Folder for the figures, results.json and the resumable cache.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-supplementary", is_flag=True, help="Skip the HOMO–LUMO gap and Bag of Bonds curves.")
@_quiet_option
@_friendly
def paper(scale, output, seed, no_supplementary, quiet):
    """Reproduce the MLKRR paper (Fabregat et al. 2022): figures 3–7, learning curves, results.json."""
    from .paper import run_paper

    run_paper(scale, output, seed=seed, supplementary=not no_supplementary, log=(lambda _m: None) if quiet else click.echo)
    click.echo(f"results in {output}/results.json")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``molkrr`` command."""
    cli.main(args=argv, prog_name="molkrr")


if __name__ == "__main__":  # pragma: no cover
    main()
