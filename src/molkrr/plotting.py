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


# --- figures of `molkrr paper` (the MLKRR paper's figures 3–7) -----------------------------------
def plot_metric_traces(histories: Mapping[str, Mapping[str, Sequence[Any]]], path: str | os.PathLike, *,
                       unit: str = "") -> None:
    """Figure 3: loss and validation MAE of each learner against L-BFGS iteration and wall time.

    histories : learner name ↦ its ``history_`` (iteration, loss, seconds, val_iteration, val_mae).
    The loss is each learner's own objective on its current split, so it is drawn relative to its
    first value.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.2), dpi=200)
    for (name, h), color in zip(histories.items(), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        it = np.asarray(h.get("iteration", []), dtype=float)
        loss = np.asarray(h.get("loss", []), dtype=float)
        if it.size and loss.size and loss[0] > 0:
            axes[0].plot(it, loss / loss[0], lw=0.8, color=color, label=name)
        t = np.cumsum(np.asarray(h.get("seconds", []), dtype=float))
        vit = np.asarray(h.get("val_iteration", []), dtype=int)
        val = np.asarray(h.get("val_mae", []), dtype=float)
        if vit.size:
            axes[1].plot(vit, val, lw=1.2, color=color, label=name)
            axes[2].plot(t[np.clip(vit - 1, 0, max(len(t) - 1, 0))] if t.size else vit, val, lw=1.2, color=color,
                         label=name)
    u = f" ({unit})" if unit else ""
    axes[0].set(xlabel="L-BFGS iteration", ylabel="loss / initial loss", yscale="log", title="training loss")
    axes[1].set(xlabel="L-BFGS iteration", ylabel=f"validation MAE{u}", yscale="log", title="validation MAE")
    axes[2].set(xlabel="wall time (s)", ylabel=f"validation MAE{u}", yscale="log", title="validation MAE")
    for ax in axes:
        ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)


def plot_metric_components(matrices: Mapping[str, Any], path: str | os.PathLike, *, zoom: int = 48) -> None:
    """Figure 4: each learned A as a heatmap (symmetric colour scale) and a zoom on its leading block."""
    plt = _pyplot()
    k = len(matrices)
    fig, axes = plt.subplots(2, k, figsize=(3.6 * k, 6.6), dpi=200, squeeze=False)
    for j, (name, A) in enumerate(matrices.items()):
        A = np.asarray(A, dtype=float)
        z = min(zoom, *A.shape)
        for i, (M, title) in enumerate(((A, f"A ({name})"), (A[:z, :z], f"A ({name}), first {z}×{z}"))):
            vmax = float(np.quantile(np.abs(M), 0.995)) or 1.0
            im = axes[i, j].imshow(M, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
            axes[i, j].set_title(title, fontsize=8)
            fig.colorbar(im, ax=axes[i, j], shrink=0.75)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)


def plot_feature_variances(features: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Figure 5: the variance of each feature, sorted in decreasing order, for each feature space."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 3.2), dpi=200)
    for name, Z in features.items():
        v = np.sort(np.var(np.asarray(Z, dtype=float), axis=0))[::-1]
        ax.plot(np.arange(1, v.size + 1), np.maximum(v, 1e-300), lw=1.0, label=name)
    ax.set(xlabel="feature (sorted)", ylabel="variance", yscale="log", xscale="log")
    ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)


def plot_learning_curves(curves: Mapping[str, Mapping[str, Mapping[str, Any]]], path: str | os.PathLike, *,
                         unit: str = "", title: str = "") -> None:
    """Figure 6: test MAE against training size (log–log), one panel per protocol.

    curves : label ↦ {'paper': {N: {'test_mae': …}}, 'tuned': {N: {'test_mae': …}}} (a protocol may
    be empty or missing; panels are drawn for the protocols any curve has).
    """
    plt = _pyplot()
    protocols = [p for p in ("paper", "tuned") if any(c.get(p) for c in curves.values())]
    titles = {"paper": "paper's protocol (σ_p = 55, λ_p = 1e-9)", "tuned": "σ, λ tuned on validation"}
    fig, axes = plt.subplots(1, len(protocols), figsize=(4.4 * len(protocols), 3.4), dpi=200, squeeze=False)
    for ax, p in zip(axes[0], protocols):
        for (label, c), marker in zip(curves.items(), "os^dv"):
            pts = sorted((int(N), r["test_mae"]) for N, r in (c.get(p) or {}).items())
            if pts:
                ax.plot(*zip(*pts), marker=marker, ms=4, lw=1.0, label=label)
        ax.set(xscale="log", yscale="log", xlabel="training molecules N",
               ylabel=f"test MAE ({unit})" if unit else "test MAE", title=titles[p])
        _plain_log_ticks(ax.yaxis)
        ax.legend(frameon=False, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)


def plot_feature_maps(maps: Mapping[str, Mapping[str, Any]], colour: Any, path: str | os.PathLike, *,
                      unit: str = "") -> None:
    """Figure 7: 2-D maps (rows: t-SNE, PCA) of the same molecules in each feature space (columns),
    coloured by ``colour`` (e.g. the atomisation energy).

    maps : space label ↦ {'t-SNE': (n, 2), 'PCA': (n, 2)}.
    """
    plt = _pyplot()
    kinds = ("t-SNE", "PCA")
    k = len(maps)
    fig, axes = plt.subplots(2, k, figsize=(3.4 * k, 6.4), dpi=200, squeeze=False)
    c = np.asarray(colour, dtype=float)
    for j, (name, d) in enumerate(maps.items()):
        for i, kind in enumerate(kinds):
            P = np.asarray(d[kind], dtype=float)
            sc = axes[i, j].scatter(P[:, 0], P[:, 1], c=c, s=3, lw=0, cmap="viridis")
            axes[i, j].set_title(f"{kind}: {name}", fontsize=8)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    fig.colorbar(sc, ax=axes, shrink=0.6, label=f"atomisation energy ({unit})" if unit else "")
    fig.savefig(os.fspath(path), bbox_inches="tight")
    plt.close(fig)
