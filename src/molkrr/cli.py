"""The ``molkrr`` command: train, predict, demo, learn-metric, paper.

Exit status: 0 on success; 1 with a one-line ``Error: <message>`` on stderr for bad input (any
:class:`~molkrr.errors.MolkrrError`, an unreadable or unwritable file); 2 for usage errors (click);
70 (``EX_SOFTWARE``) with the full traceback for anything else, which is a bug in molkrr.
"""

from __future__ import annotations

import functools
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np

from .errors import MolkrrError, SplitSizeError
from .kernels import KERNELS
from .representations import REPRESENTATIONS, representation_names
from .solvers.registry import solver_names

CHUNK = 1000  # molecules per progress-bar step
#: Exit status for an unexpected exception (a bug), after its traceback: EX_SOFTWARE of sysexits.h.
EXIT_BUG = 70


def _friendly(func: Callable) -> Callable:
    """Bad input → ``Error: <message>`` and exit 1; a bug → its traceback and exit :data:`EXIT_BUG`."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except MolkrrError as exc:
            raise click.ClickException(_one_line(exc)) from None
        except OSError as exc:  # the file system said no: missing directory, permissions, disk full
            name = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            raise click.ClickException(f"{name}{exc.strerror or _one_line(exc)}") from None
        except MemoryError:
            raise click.ClickException("not enough memory for this run (try fewer molecules)") from None
        except Exception:
            traceback.print_exc()
            click.echo(
                f"molkrr: internal error (exit status {EXIT_BUG}): this is a bug in molkrr, not a problem with your "
                "input; please report it with the traceback above",
                err=True,
            )
            sys.exit(EXIT_BUG)

    return wrapper


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _progress(iterable, desc: str, quiet: bool, **kw):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, disable=quiet, file=sys.stderr, dynamic_ncols=True, **kw)


def _check_split(source, available, n_train, n_valid, n_test, what="molecules"):
    """SplitSizeError naming the request and the count when a random split asks for more than ``source`` holds.

    ``n_train`` None means "the rest", which must leave at least 2 molecules for training.
    """
    n_valid, n_test = n_valid or 0, n_test or 0
    if (n_train or 2) + n_valid + n_test <= available:
        return
    parts = [f"{n} {name}" for n, name in ((n_train, "training"), (n_valid, "validation"), (n_test, "test")) if n]
    asked = " + ".join(parts) + f" {what}" + ("" if n_train else " and at least 2 for training")
    raise SplitSizeError(f"asked for {asked} but {source} holds {available} {what}")


def _load_training_data(dataset, xyz, n_train, n_test, prop, unit, energy_key, seed, quiet, n_valid=0):
    """(train, held-out or None, unit): held-out = ``n_valid`` + ``n_test`` molecules, validation first."""
    from .datasets import load_qm9, read_xyz
    from .datasets.qm9 import N_MOLECULES

    if (dataset is None) == (xyz is None):
        raise click.UsageError("give exactly one of --dataset qm9 or --xyz FILE")
    n_held = (n_valid or 0) + (n_test or 0)
    if xyz is not None:
        mols = read_xyz(xyz, energy_key=energy_key, require_energies=True)
        _check_split(xyz, len(mols), n_train, n_valid, n_test, "frames")
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(mols))
        test, train = perm[:n_held], perm[n_held:]
        if n_train:
            train = train[:n_train]
        return mols[train], (mols[test] if n_held else None), unit
    if n_train is None:
        raise click.UsageError("--n-train is required with --dataset qm9")
    _check_split("QM9", N_MOLECULES, n_train, n_valid, n_test)
    unit = unit or "kcal/mol"
    if not quiet:
        click.echo(f"loading QM9 ({n_train + n_held} molecules, seed {seed}) ...", err=True)
    mols = load_qm9(n_train + n_held, seed=seed, property=prop, unit=unit)
    return mols[:n_train], (mols[n_train:] if n_held else None), unit


def _make_model(representation, kernel, sigma, lam, unit, metric=None, qm9=False, targets="energy", **solver):
    """A MolecularKRR; for QM9 the representation is sized to hold every QM9 molecule.

    ``targets`` other than "energy" is passed on (MolecularKRR's force training); a MolecularKRR without
    that parameter is refused with an error naming --targets.
    """
    from .datasets.qm9 import representation_params
    from .model import MolecularKRR
    from .representations import make_representation

    extra = {}
    if targets != "energy":
        if "targets" not in MolecularKRR._get_param_names():
            raise click.ClickException(f"--targets {targets}: this molkrr trains on energies only (use --targets energy)")
        extra["targets"] = targets
    rep = make_representation(representation, **(representation_params(representation) if qm9 else {}))
    return MolecularKRR(rep, kernel=kernel, sigma=sigma, lam=lam, metric=metric, energy_unit=unit, **extra, **solver)


# ----------------------------------------------------------------------------- commands
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="molkrr")
def cli() -> None:
    """Kernel ridge regression on molecules, with analytic forces and metric learning."""


def _representation_option(default: str):
    return click.option("--representation", type=click.Choice(representation_names()), default=default, show_default=True,
                        help="Per-atom forms (fchl19-local, fchl19-atomic) use the local kernel (sum over atom pairs).")


_rep_option = _representation_option("cm-sorted")
_kernel_option = click.option("--kernel", type=click.Choice(sorted(KERNELS)), default="gaussian", show_default=True)
_quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")


@cli.command()
@click.option("--dataset", type=click.Choice(["qm9"]), help="Train on QM9 (offline, from the qm9pack package).")
@click.option("--xyz", type=click.Path(dir_okay=False), help="Train on an (extended) XYZ file with energies (split at random unless --split block).")
@click.option("--data", type=click.Path(dir_okay=False),
              help="Train on labelled frames: sGDML/MD17 .npz or extended XYZ (split in blocks of frames unless --split random).")
@click.option("--train", "train_file", type=click.Path(dir_okay=False), help="Training frames (.npz or extended XYZ), with --valid/--test files.")
@click.option("--valid", "valid_file", type=click.Path(dir_okay=False), help="Validation frames: select sigma and lambda on them.")
@click.option("--test", "test_file", type=click.Path(dir_okay=False), help="Test frames: report energy (and force) MAE on them.")
@click.option("--split", type=click.Choice(["auto", "random", "block"]), default="auto", show_default=True,
              help="Split of --data/--xyz: 'block' trains on the first 2/3 of the frames and validates/tests on later "
                   "blocks (MD trajectories: consecutive frames are correlated); 'auto' is block for --data, random for --xyz.")
@click.option("--energy-key", default="energy", show_default=True, help="extXYZ info key holding the energy.")
@click.option("--n-train", type=click.IntRange(2), help="Training molecules (required for QM9; default: the whole training "
              "block/file). Asking for more than the data holds is an error, never a silent cut.")
@click.option("--n-valid", type=click.IntRange(0), help="Validation frames for selecting sigma and lambda (block split: default the whole validation block when they are to be selected).")
@click.option("--n-test", type=click.IntRange(0), help="Held-out molecules to report MAE on (random split/QM9: default 0; block split: default the whole test block).")
@click.option("--property", "prop", default="atomization_energy", show_default=True, help="QM9 target.")
@click.option("--unit", default=None, help="Energy unit. QM9: Ha, eV or kcal/mol (default kcal/mol). Files: required when the file does not record its unit (MD17 .npz: kcal/mol); converts when it does.")
@click.option("--targets", type=click.Choice(["energy", "energy+forces", "forces"]), default="energy", show_default=True,
              help="What to train on (forces need a file with forces).")
@_rep_option
@_kernel_option
@click.option("--sigma", type=click.FloatRange(min=0, min_open=True), help="Kernel width; selected automatically if omitted.")
@click.option("--lam", type=click.FloatRange(min=0), help="Ridge; selected with sigma if omitted.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--solver", type=click.Choice(solver_names(include_auto=True)), default="auto", show_default=True,
              help="Exact Cholesky, or Nyström + preconditioned CG (falkon) for large n; auto: exact while it fits.")
@click.option("--n-centers", type=click.IntRange(1), default=None, help="Nyström centres for --solver falkon.")
@click.option("--n-sparse", type=click.IntRange(1), default=None,
              help="Sparse local KRR (fchl19-local, energy targets): this many inducing atomic environments in all.")
@click.option("--baseline", type=click.Choice(["auto", "elements", "mean"]), default="auto", show_default=True,
              help="Energy baseline: 'elements' fits one energy per element (the dressed-atom baseline local kernels "
                   "need across compositions); auto: elements for per-atom representations, mean otherwise.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default="model.npz", show_default=True)
@_quiet_option
@_friendly
def train(dataset, xyz, data, train_file, valid_file, test_file, split, energy_key, n_train, n_valid, n_test, prop, unit,
          targets, representation, kernel, sigma, lam, seed, solver, n_centers, n_sparse, baseline, output, quiet):
    """Train a model and save it (npz + JSON header, no pickle).

    Every training frame must carry a finite energy of magnitude at most 1e100 (an error names the
    first frame that does not); the model records the elements it was trained on and predict refuses
    others unless --allow-element is given.
    """
    if sigma is not None and lam is None:
        lam = 1e-8
    sources = [name for name, v in (("--dataset", dataset), ("--xyz", xyz), ("--data", data), ("--train", train_file)) if v]
    if len(sources) != 1:
        raise click.UsageError("give exactly one of --dataset qm9, --xyz FILE, --data FILE or --train FILE")
    if (valid_file or test_file) and not train_file:
        raise click.UsageError("--valid and --test go with --train FILE")
    if dataset is not None:
        if targets != "energy":
            raise click.UsageError(f"--targets {targets}: QM9 has no forces (use --targets energy)")
        train_set, test_set, unit = _load_training_data(dataset, None, n_train, n_test, prop, unit, energy_key, seed, quiet)
        valid_set = None
    else:
        train_set, valid_set, test_set, unit = _load_frame_sets(
            xyz or data, train_file, valid_file, test_file, ("random" if xyz else "block") if split == "auto" else split,
            n_train, n_valid, n_test, unit, energy_key, seed, need_valid=sigma is None or lam is None,
        )
        if targets != "energy" and train_set.forces is None:
            raise click.ClickException(
                f"--targets {targets}: {train_file or xyz or data} has no forces to train on (use --targets energy)"
            )
    if valid_set is not None and (sigma is None or lam is None) and targets == "energy":
        sigma, lam = _select_on_validation(train_set, valid_set, representation, kernel, sigma, lam, unit, quiet)
    model = _make_model(representation, kernel, sigma, lam, unit, qm9=dataset == "qm9", targets=targets,
                        solver=solver, n_centers=n_centers, n_sparse=n_sparse, baseline=baseline)
    t0 = time.perf_counter()
    model.fit(train_set, progress=not quiet)
    seconds = time.perf_counter() - t0
    click.echo(
        f"trained on {len(train_set)} molecules in {seconds:.1f} s ({representation}, {kernel} kernel, "
        f"sigma={model.sigma_:.4g}, lambda={model.lam_:.1e})"
    )
    if test_set is not None and len(test_set):
        _report_test_errors(model, test_set, unit)
    model.save(output)
    click.echo(f"model written to {output}")


# ----------------------------------------------------------------------------- labelled frames: splits, units
def _read_frames_for_cli(path, unit, energy_key):
    """read_frames, with the missing-unit error naming --unit."""
    from .datasets.frames import MissingUnitError, read_frames

    try:
        mols, unit = read_frames(path, unit=unit, energy_key=energy_key, require_energies=True)
    except MissingUnitError:
        raise click.ClickException(
            f"{path} does not record the unit of its energies: give --unit (e.g. --unit eV; MD17 .npz files: --unit kcal/mol)"
        ) from None
    if mols.energies is None:
        raise click.ClickException(f"{path}: frames carry no energies to train on")
    return mols, unit


def _load_frame_sets(path, train_file, valid_file, test_file, split, n_train, n_valid, n_test, unit, energy_key, seed,
                     need_valid):
    """(train, valid or None, test or None, unit) from one split file or from explicit --train/--valid/--test files."""
    from .datasets import block_split

    if train_file:
        train_set, unit = _read_frames_for_cli(train_file, unit, energy_key)  # fixes the unit for the others
        valid_set, test_set = (None if f is None else _read_frames_for_cli(f, unit, energy_key)[0] for f in (valid_file, test_file))

        def evenly(mols, k, name, path):  # k frames evenly spaced through the file (all when k is None or 0)
            if mols is not None and k and k > len(mols):
                raise SplitSizeError(f"asked for {k} {name} frames but {path} holds {len(mols)} frames")
            return mols if mols is None or not k or k >= len(mols) else mols[np.round(np.linspace(0, len(mols) - 1, k)).astype(int)]

        return (evenly(train_set, n_train, "training", train_file), evenly(valid_set, n_valid, "validation", valid_file),
                evenly(test_set, n_test, "test", test_file), unit)
    mols, unit = _read_frames_for_cli(path, unit, energy_key)
    if len(mols) < 2:
        raise click.ClickException(f"{path} holds {len(mols)} frames; training needs at least 2")
    if split == "block":
        if n_valid is None:  # the whole validation block when sigma or lambda is to be selected, else none
            n_valid = None if need_valid else 0
        blocks = block_split(len(mols), None, 0 if n_valid == 0 else None, None)  # the whole blocks
        over = [f"{k} {name} frames but the {name} block holds {len(b)} (frames {b[0]}..{b[-1]})"
                for k, name, b in zip((n_train, n_valid, n_test), ("training", "validation", "test"), blocks)
                if k and k > len(b)]
        if over:
            raise SplitSizeError(f"{path} holds {len(mols)} frames, split in blocks (--split block): asked for "
                                 f"{'; '.join(over)}; ask for fewer or use --split random")
        train, valid, test = block_split(len(mols), n_train, n_valid, n_test)
        return mols[train], (mols[valid] if len(valid) else None), (mols[test] if len(test) else None), unit
    _check_split(path, len(mols), n_train, n_valid, n_test, "frames")
    n_valid, n_test = n_valid or 0, n_test or 0
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(mols))
    test, valid, train = perm[:n_test], perm[n_test : n_test + n_valid], perm[n_test + n_valid :]
    if n_train:
        train = train[:n_train]
    return mols[train], (mols[valid] if n_valid else None), (mols[test] if n_test else None), unit


def _select_on_validation(train_set, valid_set, representation, kernel, sigma, lam, unit, quiet):
    """(sigma, lambda) with the least energy MAE on the validation frames (a grid; the given ones fixed)."""
    from .krr import DEFAULT_LAMS, KernelRidge, default_sigmas
    from .representations import make_representation

    rep = make_representation(representation).fit(train_set)
    X, Xv = rep.transform(train_set), rep.transform(valid_set)
    y, yv = train_set.energies, valid_set.energies
    sigmas = [sigma] if sigma is not None else default_sigmas(X, kernel)
    lams = [lam] if lam is not None else list(DEFAULT_LAMS)
    scores = np.full((len(sigmas), len(lams)), np.inf)
    for i, s in enumerate(_progress(sigmas, "selecting sigma, lambda on validation", quiet, unit="sigma")):
        for j, l in enumerate(lams):
            scores[i, j] = np.mean(np.abs(KernelRidge(kernel, s, l).fit(X, y).predict(Xv) - yv))
    i, j = np.unravel_index(np.argmin(scores), scores.shape)
    click.echo(f"selected on {len(valid_set)} validation frames: sigma={sigmas[i]:.4g}, lambda={lams[j]:.0e} "
               f"(validation MAE {scores[i, j]:.4g} {unit or ''})".replace(" )", ")"))
    for name, k, grid in (("sigma", i, sigmas), ("lambda", j, lams)):
        if len(grid) > 1 and k in (0, len(grid) - 1):
            click.echo(f"warning: the selected {name} lies on the edge of its grid ({grid[0]:.3g} .. {grid[-1]:.3g})", err=True)
    return float(sigmas[i]), float(lams[j])


def _report_test_errors(model, test_set, unit):
    """Energy MAE on the test frames, and force MAE when they carry forces and the model has them."""
    from .errors import NotDifferentiableError

    u = unit or ""
    if test_set.forces is not None:
        try:
            energies, forces = model.predict_energies_and_forces(test_set)
        except NotDifferentiableError:
            energies, forces = model.predict(test_set), None
    else:
        energies, forces = model.predict(test_set), None
    mae = float(np.mean(np.abs(energies - test_set.energies)))
    line = f"test MAE on {len(test_set)} molecules: {mae:.4g} {u}".rstrip()
    if forces is not None:
        f_mae = float(np.mean(np.abs(np.concatenate(forces) - test_set.forces)))
        line += f"; forces {f_mae:.4g} {u}/Å (predicting zero: {float(np.mean(np.abs(test_set.forces))):.4g})"
    click.echo(line)


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.argument("xyz", metavar="FILE", type=click.Path(dir_okay=False))
@click.option("--forces", is_flag=True, help="Also predict forces (−∂E/∂R).")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write an extended XYZ with the predictions (energy, forces; the model's unit recorded).")
@click.option("--allow-element", "allow", multiple=True, metavar="SYMBOL",
              help="Predict for an element the model was not trained on (repeatable); only where the model's "
              "representation is defined for it. Without it such molecules are refused.")
@_quiet_option
@_friendly
def predict(model_path, xyz, forces, output, allow, quiet):
    """Predict energies (and forces) for every frame of FILE (XYZ/extended XYZ or sGDML .npz).

    When FILE carries reference energies (forces) in a recorded unit, the MAE against them is printed too.
    """
    from .applicability import allow_elements
    from .datasets.frames import file_energy_unit, read_frames, write_frames
    from .model import MolecularKRR
    from .persistence import load_model

    model = load_model(model_path, kind=MolecularKRR)
    if allow:
        allow_elements(model, allow)
    file_unit = file_energy_unit(xyz)
    mols, _ = read_frames(xyz, unit=model.energy_unit if file_unit else None, require_unit=False)
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
        write_frames(output, mols.with_labels(None, None), energy_unit=model.energy_unit, energies=energies,
                     forces=all_forces if forces else None)
        click.echo(f"wrote {len(mols)} frames to {output}")
    else:
        for i, e in enumerate(energies):
            line = f"{i:6d}  E = {e: .6f} {unit}"
            if forces:
                line += f"  max|F| = {np.abs(all_forces[i]).max():.4g} {unit}/Å"
            click.echo(line)
    if file_unit and model.energy_unit and mols.energies is not None:
        line = f"against the file's reference: energy MAE {np.mean(np.abs(energies - mols.energies)):.4g} {unit}"
        if forces and mols.forces is not None:
            line += f", force MAE {np.mean(np.abs(np.concatenate(all_forces) - mols.forces)):.4g} {unit}/Å"
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


#: (σ, λ, λ_forces) chosen by force MAE for the shipped ethanol trajectory with fchl19-local
#: (``python benchmarks/force_training.py FILE --n-train 200``); the demo's default for force targets.
FORCE_DEMO_HYPERPARAMETERS = (2.036, 3.65e-5, 3.66e-6)


@cli.command("demo-md")
@click.option("--data", type=click.Path(dir_okay=False),
              help="Trajectory to use (default: the shipped GFN2-xTB ethanol trajectory, 1,500 frames at 500 K).")
@click.option("--unit", default=None, help="Energy unit of --data when the file does not record it.")
@click.option("--n-train", type=click.IntRange(10), default=400, show_default=True, help="Training frames, from the first 2/3 of the trajectory.")
@click.option("--n-valid", type=click.IntRange(2), default=100, show_default=True, help="Validation frames (a later block) for sigma and lambda.")
@click.option("--n-test", type=click.IntRange(1), default=300, show_default=True, help="Test frames, from the last block.")
@click.option("--targets", type=click.Choice(["energy", "energy+forces", "forces"]), default="energy", show_default=True)
@click.option("--representation", type=click.Choice(representation_names()), default="fchl19", show_default=True)
@click.option("--sigma", type=click.FloatRange(min=0, min_open=True),
              help="Kernel width. Default: selected on the validation frames for energy targets; for force targets "
              f"{FORCE_DEMO_HYPERPARAMETERS[0]:g} (with lambda {FORCE_DEMO_HYPERPARAMETERS[1]:g}, lambda_forces "
              f"{FORCE_DEMO_HYPERPARAMETERS[2]:g}: selected on force MAE for the shipped ethanol trajectory by "
              "benchmarks/force_training.py).")
@click.option("--lam", type=click.FloatRange(min=0), help="Ridge on energy rows (with --sigma).")
@click.option("--lam-forces", type=click.FloatRange(min=0), help="Ridge on force rows (with --sigma).")
@click.option("--nve-steps", type=click.IntRange(0), default=200, show_default=True, help="Velocity-Verlet steps (0.5 fs) of the NVE check.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the NVE run's initial velocities.")
@_quiet_option
@_friendly
def demo_md(data, unit, n_train, n_valid, n_test, targets, representation, sigma, lam, lam_forces, nve_steps, seed, quiet):
    """Train on MD frames (GFN2-xTB), test energies and forces on later frames, run a short NVE through the ASE calculator.

    Frames are split in blocks (train on the first 2/3 of the trajectory, validate and test on later blocks),
    so no test frame has a near-copy in training. Errors in meV and meV/Å (the trajectory's unit converted).
    """
    from .datasets import block_split
    from .datasets.md import shipped_trajectory_path

    path = data or shipped_trajectory_path()
    mols, unit = _read_frames_for_cli(path, unit, "energy")
    if mols.forces is None:
        raise click.ClickException(f"{path} has no forces to test against")
    train, valid, test = block_split(len(mols), n_train, n_valid, n_test)
    train_set, valid_set, test_set = mols[train], mols[valid], mols[test]
    to_mev = 1000 * _ev_per(unit)
    click.echo(f"molkrr demo-md: {Path(path).name}, {len(mols)} frames of {_formula(mols)}; {representation}, targets={targets}")
    click.echo(f"block split: train {len(train)} frames from 0..{train.max()}, validation {len(valid)} from "
               f"{valid.min()}..{valid.max()}, test {len(test)} from {test.min()}..{test.max()}")
    extra = {}
    if targets == "energy" and (sigma is None or lam is None):
        sigma, lam = _select_on_validation(train_set, valid_set, representation, "gaussian", sigma, lam, unit, quiet)
    elif targets != "energy":
        if sigma is None:  # force-MAE selection takes minutes: the demo uses the setting it found once
            sigma, lam, lam_forces = FORCE_DEMO_HYPERPARAMETERS
        lam = 1e-6 if lam is None else lam
        extra["lam_forces"] = lam_forces if lam_forces is not None else lam / 10
    model = _make_model(representation, "gaussian", sigma, lam, unit, targets=targets)
    model.set_params(**extra)
    t0 = time.perf_counter()
    model.fit(train_set, progress=not quiet)
    click.echo(f"trained on {len(train_set)} frames in {time.perf_counter() - t0:.1f} s (sigma={model.sigma_:.4g}, lambda={model.lam_:.1e})")
    t0 = time.perf_counter()
    energies, forces = model.predict_energies_and_forces(test_set)
    t_pred = (time.perf_counter() - t0) / len(test_set)
    F_ref, F = test_set.forces, np.concatenate(forces)
    e_mae = to_mev * float(np.mean(np.abs(energies - test_set.energies)))
    e_base = to_mev * float(np.mean(np.abs(test_set.energies - train_set.energies.mean())))
    f_mae = to_mev * float(np.mean(np.abs(F - F_ref)))
    f_base = to_mev * float(np.mean(np.abs(F_ref)))
    click.echo(f"held-out energy MAE: {e_mae:8.2f} meV     (predicting the training mean: {e_base:.1f} meV)")
    click.echo(f"held-out force MAE:  {f_mae:8.1f} meV/Å   (predicting zero force: {f_base:.1f} meV/Å)")
    click.echo(f"prediction: {1000 * t_pred:.2f} ms per frame (energy and forces, {len(test_set)} frames in one batch)")
    if nve_steps:
        drift, fluct, ms_per_step = _nve_drift(model, test_set[0], nve_steps, seed)
        click.echo(f"NVE through MolkrrCalculator, {nve_steps} steps of 0.5 fs from test frame 0 (300 K velocities): "
                   f"total energy drift {1000 * drift:+.2f} meV, max deviation {1000 * fluct:.2f} meV ({ms_per_step:.2f} ms/step)")


def _nve_drift(model, mol, steps, seed):
    """(final − initial total energy, max |deviation| (eV), ms per step) of a velocity-Verlet run through MolkrrCalculator."""
    from ase import units
    from ase.md.velocitydistribution import Stationary, ZeroRotation
    from ase.md.verlet import VelocityVerlet

    from .calculator import MolkrrCalculator
    from .datasets.md import thermalize

    atoms = mol.to_ase()[0]
    atoms.calc = MolkrrCalculator(model)
    thermalize(atoms, 300.0, np.random.default_rng(seed))
    Stationary(atoms)
    ZeroRotation(atoms)
    dyn = VelocityVerlet(atoms, 0.5 * units.fs)
    totals = [atoms.get_total_energy()]
    dyn.attach(lambda: totals.append(atoms.get_total_energy()), interval=1)
    t0 = time.perf_counter()
    dyn.run(steps)
    ms = 1000 * (time.perf_counter() - t0) / steps
    totals = np.array(totals)
    return float(totals[-1] - totals[0]), float(np.abs(totals - totals[0]).max()), ms


def _ev_per(unit):
    from .calculator import ev_per_unit

    return ev_per_unit(unit)


def _formula(mols):
    from ase import Atoms

    return Atoms(numbers=mols.molecule(0)[0]).get_chemical_formula()


@cli.command("run-md")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.argument("start", metavar="START.xyz", type=click.Path(dir_okay=False))
@click.option("--steps", type=click.IntRange(1), default=1000, show_default=True, help="MD steps.")
@click.option("--timestep", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True, help="fs.")
@click.option("--temperature", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="K: the Maxwell-Boltzmann velocities (and the Langevin bath).")
@click.option("--ensemble", type=click.Choice(["nve", "langevin"]), default="nve", show_default=True,
              help="Velocity Verlet (NVE) or Langevin dynamics.")
@click.option("--friction", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True,
              help="Langevin friction, 1/fs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the velocities and the Langevin noise.")
@click.option("--interval", type=click.IntRange(1), default=10, show_default=True,
              help="Write every K-th step to the trajectory (step 0 included).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True,
              help="Trajectory: extended XYZ with energy (eV), forces (eV/Å) and momenta, written as the run goes.")
@click.option("--unit", default=None, help="Energy unit of the model, when its file does not record one.")
@click.option("--allow-element", "allow", multiple=True, metavar="SYMBOL",
              help="Run with an element the model was not trained on (repeatable); only where the model's "
              "representation is defined for it.")
@_quiet_option
@_friendly
def run_md_command(model_path, start, steps, timestep, temperature, ensemble, friction, seed, interval, output, unit,
                   allow, quiet):
    """Molecular dynamics with a trained model, through ASE and MolkrrCalculator, from the first frame of START.xyz.

    Reports the time per step beside the model's own prediction time for one frame (measured in the same
    run), the total-energy drift (NVE) and the mean temperature. An interrupted run (Ctrl-C) keeps the
    frames written so far, prints its report and exits with status 130. See molkrr.dynamics.
    """
    from .datasets.frames import read_frames
    from .dynamics import run_md
    from .model import MolecularKRR
    from .persistence import load_model

    model = load_model(model_path, kind=MolecularKRR)
    if allow:
        from .applicability import allow_elements

        allow_elements(model, allow)
    mols, _ = read_frames(start, require_unit=False)
    if len(mols) > 1:
        click.echo(f"note: {start} holds {len(mols)} frames; starting from the first", err=True)
    atoms = mols[0].with_labels(None, None).to_ase()[0]
    report = run_md(model, atoms, steps=steps, timestep_fs=timestep, temperature_K=temperature, ensemble=ensemble,
                    friction_per_fs=friction, seed=seed, interval=interval, output=output, energy_unit=unit,
                    progress=not quiet)
    click.echo(report.summary())
    if report.interrupted:
        sys.exit(130)


# ----------------------------------------------------------------------------- MD data (molkrr.datasets.md)
@cli.command("md")
@click.argument("structure", metavar="MOLECULE|FILE.xyz")
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True,
              help="Trajectory file: extended XYZ (.extxyz, .xyz, optionally .gz) or sGDML .npz.")
@click.option("--frames", "n_frames", type=click.IntRange(1), default=1500, show_default=True, help="Frames to record.")
@click.option("--stride", type=click.IntRange(1), default=10, show_default=True, help="MD steps between recorded frames.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=500.0, show_default=True, help="K.")
@click.option("--timestep", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True, help="fs.")
@click.option("--friction", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True, help="Langevin friction, 1/fs.")
@click.option("--equilibration", type=click.IntRange(0), default=1000, show_default=True, help="Unrecorded steps before the first frame.")
@click.option("--method", type=click.Choice(["GFN2-xTB", "GFN1-xTB", "IPEA1-xTB"]), default="GFN2-xTB", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@_quiet_option
@_friendly
def md(structure, output, n_frames, stride, temperature, timestep, friction, equilibration, method, seed, quiet):
    """Langevin MD labelled with xTB (tblite): energies in eV and forces in eV/Å, units recorded in the file.

    MOLECULE is a built-in name (ethanol, malonaldehyde, aspirin, ... or any ase.collections.g2 name such as
    CH3CH2OH) or an XYZ file whose first frame starts the run. Needs the optional package tblite
    (pip install 'molkrr[md]').
    """
    from .datasets.md import run_langevin, write_trajectory
    from .datasets.sgdml import write_sgdml_npz

    t0 = time.perf_counter()
    frames = run_langevin(structure, n_frames=n_frames, stride=stride, temperature=temperature, timestep=timestep,
                          friction=friction, equilibration=equilibration, seed=seed, method=method, progress=not quiet)
    if str(output).endswith(".npz"):
        from .molecules import Molecules

        write_sgdml_npz(output, Molecules.from_ase(frames), energy_unit="eV", name=frames[0].get_chemical_formula(),
                        theory=f"{method} (tblite), Langevin {temperature:g} K")
    else:
        write_trajectory(output, frames)
    energies = np.array([a.get_potential_energy() for a in frames])
    click.echo(
        f"wrote {len(frames)} frames of {frames[0].get_chemical_formula()} ({method}, {temperature:g} K, "
        f"{n_frames * stride * timestep / 1000:g} ps recorded) to {output} in {time.perf_counter() - t0:.0f} s; "
        f"energy spread {1000 * energies.std():.0f} meV (eV, eV/Å)"
    )


@cli.command("learn-metric")
@click.option("--dataset", type=click.Choice(["qm9"]), help="Learn on QM9 (offline).")
@click.option("--xyz", type=click.Path(dir_okay=False), help="Learn on an (extended) XYZ file with energies.")
@click.option("--energy-key", default="energy", show_default=True)
@click.option("--n-train", type=click.IntRange(10), default=4000, show_default=True,
              help="Training molecules. With --xyz, n-train + n-val + n-test beyond the file's frames is an error, "
              "never a silent cut.")
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
    train_set, rest, unit = _load_training_data(dataset, xyz, n_train, n_test, prop, unit, energy_key, seed, quiet,
                                                n_valid=n_val)
    val_set, test_set = rest[:n_val], rest[n_val:]  # n_val, n_test ≥ 1 and checked against the data
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
