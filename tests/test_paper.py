"""`molkrr paper`: the MLKRR paper's protocol end to end at the tiny ``--scale test`` (the outputs exist,
the numbers are sane, a second call resumes from the cache), and the paper's hyperparameter conversion."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from molkrr.cli import cli
from molkrr.paper import SCALES, paper_hyperparameters

FIGURES = ("fig3_traces.png", "fig4_components.png", "fig5_variances.png", "fig6_learning_curves.png", "fig7_maps.png",
           "figS1_gap.png", "figS2_bob.png")


def test_paper_hyperparameters_follow_the_documented_conversion():
    sigma, lam = paper_hyperparameters()
    assert sigma == pytest.approx(55 / math.sqrt(2)) and lam == pytest.approx(1e-9 * math.sqrt(2 * math.pi) * 55)
    # the same predictions: K_p = c K with c = 1/(√(2π) σ_p), so (K_p + λ_p I)⁻¹ K_p-rows = (K + λ_p/c I)⁻¹ K-rows
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20, 3)) * 30, rng.standard_normal(20)
    d2 = ((X[:, None] - X[None]) ** 2).sum(-1)
    sp, lp = 55.0, 1e-3
    Kp = np.exp(-d2 / sp**2) / (math.sqrt(2 * math.pi) * sp)
    s, l = paper_hyperparameters(sp, lp)
    K = np.exp(-d2 / (2 * s**2))
    ref = K @ np.linalg.solve(K + l * np.eye(20), y)  # y ~ N(0, 1): round-off relative to the largest prediction
    np.testing.assert_allclose(Kp @ np.linalg.solve(Kp + lp * np.eye(20), y), ref, rtol=0, atol=1e-8 * np.abs(ref).max())


def run_paper(tmp_path, scale):
    """`molkrr paper --scale SCALE` into tmp_path/paper (skipped without QM9): (output folder, results.json),
    after checking that every figure was written."""
    from molkrr.errors import DatasetError
    from molkrr.datasets import load_qm9

    try:
        load_qm9(2)
    except DatasetError as exc:
        pytest.skip(f"QM9 data unavailable: {exc}")
    out = tmp_path / "paper"
    res = CliRunner().invoke(cli, ["paper", "--scale", scale, "--output", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    for f in FIGURES:
        assert (out / f).stat().st_size > 5000, f
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_paper_command_test_scale(tmp_path):
    out, r = run_paper(tmp_path, "test")
    sc = SCALES["test"]
    c = r["energy"]["curves"]
    for space in ("krr", "mlkr", "mlkrr"):
        tuned = [c[space]["tuned"][str(N)]["test_mae"] for N in sc.sizes]
        paper = [c[space]["paper"][str(N)]["test_mae"] for N in sc.sizes]
        # QM9 atomisation energies span ~ 1000 kcal/mol (predicting the mean: ~ 190): a working tuned KRR is within
        # tens of kcal/mol at these sizes; the paper's fixed (σ, λ) on MLKR's metric may be far worse, never absurd
        assert all(0.5 < v < 60 for v in tuned), (space, tuned)
        assert all(0.5 < v < 200 for v in paper), (space, paper)
        assert tuned[-1] < tuned[0]  # more data helps
    # tuned on validation: never worse on validation than the paper's fixed (σ, λ)
    for N in sc.sizes:
        assert c["krr"]["tuned"][str(N)]["val_mae"] <= c["krr"]["paper"][str(N)]["val_mae"] + 1e-9
    s = r["summary"]
    assert s["N"] == sc.sizes[-1] and s["mlkrr_vs_krr_tuned"] == pytest.approx(s["mlkrr_tuned"] / s["krr_tuned"] - 1)
    learner = r["energy"]["learners"]["mlkrr"]
    assert 0 < learner["n_iter"] <= sc.mlkrr["max_iter"] and learner["params"]["batch_size"] == sc.mlkrr["batch_size"]
    assert len(r["qm9_ids"]["test"]) == sc.n_test and not set(r["qm9_ids"]["test"]) & set(r["qm9_ids"]["train"])
    for name in ("gap", "bob"):
        assert 0 < s[f"{name}_mlkrr_tuned"] and -0.9 < s[f"{name}_change"] < 2.0
    assert "| KRR, validation-tuned |" in (out / "summary.md").read_text()
    # a second call finds every step in the cache and reproduces the numbers
    res2 = CliRunner().invoke(cli, ["paper", "--scale", "test", "--output", str(out), "--quiet", "--no-supplementary"])
    assert res2.exit_code == 0, res2.output
    r2 = json.loads((out / "results.json").read_text())
    assert r2["energy"]["curves"] == c and r2["seconds_total_this_call"] < r["seconds_total_this_call"]


@pytest.mark.slow
def test_paper_command_quick_scale(tmp_path):
    """`molkrr paper --scale quick` (the issue's minutes-long scale, about a minute on an idle 2-core machine):
    every figure, and numbers a chemist would accept at 1,000 training molecules."""
    _, r = run_paper(tmp_path, "quick")
    s = r["summary"]
    assert s["N"] == 1000
    # QM9 FCHL19 KRR at 1,000 molecules: about 3 kcal/mol tuned, 4–5 with the paper's σ_p = 55
    assert 2.0 < s["krr_tuned"] < 4.5 and s["krr_tuned"] < s["krr_paper"] < 7.0
    assert -0.15 < s["mlkrr_vs_krr_tuned"] < 0.15  # the learned metric neither breaks nor (at this size) transforms KRR
    assert s["mlkrr_vs_krr_paper"] < -0.1  # against the paper's own baseline it gains, as the paper reports
    assert s["mlkr_vs_krr_tuned"] > 0.0  # MLKR is worse than KRR: the paper's sign
    assert 0.2 < s["gap_krr_tuned"] < 0.6  # eV
    assert r["seconds_total_this_call"] < 900
