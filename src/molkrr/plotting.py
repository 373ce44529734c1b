"""Figures for papers: the MLKRR optimisation trace and parity plots (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def plot_optimisation_trace(
    history: Mapping[str, Sequence[Any]],
    path: str | os.PathLike,
    *,
    unit: str = "",
    title: str = "MLKRR optimisation",
    baseline: float | None = None,
) -> None:
    """Train and validation MAE per L-BFGS iteration (the MLKRR paper's figure 3), saved as PNG.

    history : a learner's ``history_`` (keys iteration, train_mae, and optionally val_iteration,
        val_mae, segment). baseline : an MAE to draw as a horizontal line (e.g. plain tuned KRR).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 3.2), dpi=200)
    it = np.asarray(history.get("iteration", []), dtype=float)
    train = np.asarray(history.get("train_mae", []), dtype=float)
    if it.size:
        ax.plot(it, train, lw=0.8, color="tab:blue", label="train (A split)")
    vit = np.asarray(history.get("val_iteration", []), dtype=float)
    val = np.asarray(history.get("val_mae", []), dtype=float)
    if vit.size and val.size:
        ax.plot(vit, val, lw=1.4, color="tab:orange", label="validation")
    if baseline is not None:
        ax.axhline(baseline, color="0.4", lw=0.8, ls="--", label="plain KRR (test)")
    ax.set_xlabel("L-BFGS iteration")
    ax.set_ylabel(f"MAE ({unit})" if unit else "MAE")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)


def plot_parity(
    y_true: Any,
    y_pred: Any,
    path: str | os.PathLike,
    *,
    unit: str = "",
    label: str = "",
) -> None:
    """Predicted vs reference values with the MAE in the corner, saved as PNG."""
    plt = _pyplot()
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    mae = float(np.mean(np.abs(y_pred - y_true)))
    fig, ax = plt.subplots(figsize=(3.4, 3.2), dpi=200)
    lo, hi = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
    ax.plot([lo, hi], [lo, hi], color="0.6", lw=0.8)
    ax.scatter(y_true, y_pred, s=4, alpha=0.6, lw=0)
    u = f" ({unit})" if unit else ""
    ax.set_xlabel(f"reference{u}")
    ax.set_ylabel(f"predicted{u}")
    ax.text(0.04, 0.94, f"{label}\nMAE = {mae:.3g}{' ' + unit if unit else ''}".strip(), transform=ax.transAxes, va="top")
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)
