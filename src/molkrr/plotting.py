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
    learned: float | None = None,
    train_label: str = "train (A split)",
    validation_label: str = "validation (KRR on α split)",
) -> None:
    """Train and validation MAE per L-BFGS iteration (the MLKRR paper's figure 3), saved as PNG.

    history : a learner's ``history_`` (keys iteration, train_mae, and optionally val_iteration,
        val_mae, segment). For MLKRR the train MAE is that of the current A split and the validation
        MAE that of the KRR on the current α split (the default labels; pass others for MLKR).
    baseline, learned : test MAEs drawn as horizontal lines (plain tuned KRR, and tuned KRR
        retrained on all transformed training data).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=200)
    it = np.asarray(history.get("iteration", []), dtype=float)
    train = np.asarray(history.get("train_mae", []), dtype=float)
    if it.size:
        ax.plot(it, train, lw=0.8, color="tab:blue", label=train_label)
    vit = np.asarray(history.get("val_iteration", []), dtype=float)
    val = np.asarray(history.get("val_mae", []), dtype=float)
    if vit.size and val.size:
        ax.plot(vit, val, lw=1.4, color="tab:orange", label=validation_label)
    u = f" {unit}" if unit else ""
    if baseline is not None:
        ax.axhline(baseline, color="0.4", lw=0.8, ls="--", label=f"plain tuned KRR, test: {baseline:.3g}{u}")
    if learned is not None:
        ax.axhline(learned, color="tab:green", lw=1.0, ls="-.", label=f"tuned KRR on A·x, test: {learned:.3g}{u}")
    ax.set_xlabel("L-BFGS iteration")
    ax.set_ylabel(f"MAE ({unit})" if unit else "MAE")
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis)
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)


def _plain_log_ticks(axis) -> None:
    """Label a log axis with plain numbers (2.5, 3, 4) instead of powers of ten."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(FormatStrFormatter(""))


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
