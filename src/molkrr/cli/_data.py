"""Data and model helpers the training commands share: loading and splitting data sets and labelled frames,
the model a command trains, σ/λ selection on validation frames, test errors."""

from __future__ import annotations

import click
import numpy as np

from ..errors import SplitSizeError


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
    from ..datasets import load_qm9, read_xyz
    from ..datasets.qm9 import N_MOLECULES

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
    from ..datasets.qm9 import representation_params
    from ..model import MolecularKRR
    from ..representations import make_representation

    extra = {}
    if targets != "energy":
        if "targets" not in MolecularKRR._get_param_names():
            raise click.ClickException(f"--targets {targets}: this molkrr trains on energies only (use --targets energy)")
        extra["targets"] = targets
    rep = make_representation(representation, **(representation_params(representation) if qm9 else {}))
    return MolecularKRR(rep, kernel=kernel, sigma=sigma, lam=lam, metric=metric, energy_unit=unit, **extra, **solver)



def _read_frames_for_cli(path, unit, energy_key):
    """read_frames, with the missing-unit error naming --unit."""
    from ..datasets.frames import MissingUnitError, read_frames

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
    from ..datasets import block_split

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
    """(sigma, lambda) with the least energy MAE on the validation frames (a grid; the given ones fixed).

    The representation is fitted on the training frames; σ's grid is :func:`molkrr.selection.default_sigmas` of the
    training features; :func:`molkrr.selection.select_hyperparameters` scores every (σ, λ) on the validation rows
    (``validation_rows``: the training frames train, the validation frames validate) and warns once when the
    choice lies on an edge of its grid (shown as a ``warning:`` line by the commands, :func:`._shared._friendly`).
    """
    from ..krr import KernelRidge
    from ..representations import make_representation
    from ..selection import DEFAULT_LAMS, default_sigmas, select_hyperparameters

    rep = make_representation(representation).fit(train_set)
    X, Xv = rep.transform(train_set), rep.transform(valid_set)
    sigmas = [sigma] if sigma is not None else default_sigmas(X, kernel)
    lams = [lam] if lam is not None else list(DEFAULT_LAMS)
    n = X.shape[0]
    result = select_hyperparameters(
        np.concatenate([X, Xv]), np.concatenate([train_set.energies, valid_set.energies]), kernel=kernel, sigmas=sigmas,
        lams=lams, validation_rows=np.arange(n, n + Xv.shape[0]), progress=not quiet,
    )
    # the reported MAE is the chosen model's, fitted as training will fit it (the grid's scores come from one
    # eigendecomposition per σ and may differ from it in the last digits)
    mae = float(np.mean(np.abs(KernelRidge(kernel, result.sigma, result.lam).fit(X, train_set.energies).predict(Xv)
                               - valid_set.energies)))
    click.echo(f"selected on {len(valid_set)} validation frames: sigma={result.sigma:.4g}, lambda={result.lam:.0e} "
               f"(validation MAE {mae:.4g} {unit or ''})".replace(" )", ")"))
    return float(result.sigma), float(result.lam)


def _report_test_errors(model, test_set, unit):
    """Energy MAE on the test frames, and force MAE when they carry forces and the model has them."""
    from ..errors import NotDifferentiableError

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

