"""``molkrr train``: fit a model on QM9, an XYZ file or labelled frames, report test errors, save it."""

from __future__ import annotations

import time

import click

from ...solvers.registry import solver_names
from .._data import _load_frame_sets, _load_training_data, _make_model, _report_test_errors, _select_on_validation
from .._shared import _friendly, _kernel_option, _quiet_option, _rep_option, cli


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
@click.option("--lam-forces", type=click.FloatRange(min=0),
              help="Ridge on the force rows with --targets energy+forces/forces ([E]²/Å²); selected (with sigma and "
              "lambda when they are omitted) by validation force MAE if omitted.")
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
          targets, representation, kernel, sigma, lam, lam_forces, seed, solver, n_centers, n_sparse, baseline, output, quiet):
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
    if lam_forces is not None:
        if targets == "energy":
            raise click.UsageError("--lam-forces goes with --targets energy+forces or forces")
        model.set_params(lam_forces=lam_forces)
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
