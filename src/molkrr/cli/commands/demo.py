"""``molkrr demo``: a QM9 subset, its test MAE, and one molecule's forces against finite differences."""

from __future__ import annotations

import time

import click
import numpy as np

from ...kernels import kernel_names
from ...representations import REPRESENTATIONS
from .._data import _make_model
from .._shared import _friendly, _quiet_option, cli


@cli.command()
@click.option("--n-train", type=click.IntRange(10), default=2000, show_default=True)
@click.option("--n-test", type=click.IntRange(1), default=500, show_default=True)
@click.option("--representation", type=click.Choice(REPRESENTATIONS), default="fchl19", show_default=True)
@click.option("--kernel", type=click.Choice(kernel_names()), default="gaussian", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--parity", type=click.Path(dir_okay=False), help="Also write a parity plot (PNG) of the test predictions.")
@_quiet_option
@_friendly
def demo(n_train, n_test, representation, kernel, seed, parity, quiet):
    """Train on a QM9 subset, report the test MAE, and check forces for one molecule against finite differences."""
    from ...datasets import load_qm9
    from ...model import finite_difference_forces

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
        from ...plotting import plot_parity

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

