"""analysis.py on synthetic run directories with planted values, and the analyze-clip-stats CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from clipctl import analysis
from clipctl.schema import STAT_KEYS, SUM_KEYS
from clipctl.cli import app
from clipctl.runlog import atomic_write_json, read_run, write_parquet_atomic
from runlogs import write_part

runner = CliRunner()
NAN = math.nan


def make_run(root, name, *, eps_low=0.2, eps_high=0.2, seed=0, lr=1e-4, kind="random_bernoulli", steps=None, updates=None):
    """A run directory as clipctl train writes it: run.json + one steps part per step."""
    run_dir = root / name
    config = {
        "algo": {"eps_low": eps_low, "eps_high": eps_high, "dual_clip_c": None},
        "reward": {"kind": kind, "p": 0.5},
        "train": {"seed": seed, "steps": 3},
        "optim": {"lr": lr},
    }
    atomic_write_json(run_dir / "run.json", {"name": name, "config": config})
    steps = steps if steps is not None else default_steps()
    for row in steps.to_dict(orient="records"):
        write_part(run_dir, "steps", int(row["step"]), [row])
    if updates is not None:
        for step, rows in updates.groupby("step"):
            write_part(run_dir, "updates", int(step), rows)
    return run_dir


def default_steps(**over) -> pd.DataFrame:
    cols = {
        "step": [1, 2, 3, 4],
        "entropy": [2.0, 1.9, 1.8, 1.7],
        "entropy_post": [1.95, 1.85, 1.75, 1.5],
        "clip_low_frac": [0.1, 0.2, 0.3, 0.4],
        "clip_high_frac": [0.0, 0.0, 0.1, 0.1],
        "ratio_below_frac": [0.2, 0.2, 0.2, 0.2],
        "ratio_above_frac": [0.1, 0.3, 0.1, 0.3],
        "thm1_low": [0.5, -0.1, NAN, 0.2],
        "thm1_high": [0.1, 0.1, 0.1, 0.1],
        "thm2_low": [1.0, 1.0, -1.0, NAN],
        "thm2_high": [NAN, NAN, NAN, NAN],
        "thm1_drift": [1.0, -1.0, 2.0, 3.0],
        "thm2_drift": [1.0, -1.0, 2.0, 3.0],
        "n_tokens": [10.0, 20.0, 30.0, 40.0],
        "reward_mean": [0.5, 0.4, 0.6, 0.5],
    }
    cols.update(over)
    return pd.DataFrame(cols)


def probe_cols(steps: pd.DataFrame) -> pd.DataFrame:
    """Four replays on steps 1, 3, 4 (step 2 not probed), dyadic so that every difference is exact.

    Logged attributions are planted wrong: analysis recomputes them from the replays.
    """
    steps = steps.copy()
    steps["entropy_post_replay"] = [1.75, NAN, 1.5, 1.5]
    steps["entropy_post_noclip"] = [1.5, NAN, 1.75, 1.25]
    steps["entropy_post_lowonly"] = [1.625, NAN, 1.5, 1.25]
    steps["entropy_post_highonly"] = [1.5625, NAN, 1.75, 1.5]
    for c in ("clip_attributed_dH", "clip_low_attributed_dH", "clip_high_attributed_dH"):
        steps[c] = [9.0, NAN, 9.0, 9.0]
    return steps


# ---------------------------------------------------------------- per-run values


def test_planted_per_run_values(tmp_path):
    make_run(tmp_path, "r0")
    per_run, _ = analysis.analyze_runs([tmp_path / "r0"])
    row = per_run.iloc[0]
    assert row["run"] == "r0"
    assert row["algo.eps_low"] == 0.2 and row["algo.eps_high"] == 0.2
    assert row["reward.kind"] == "random_bernoulli" and row["train.seed"] == 0 and row["optim.lr"] == 1e-4
    assert row["n_steps"] == 4
    assert row["entropy_start"] == 2.0
    assert row["entropy_end"] == 1.5  # the last step's entropy_post
    assert row["entropy_change"] == pytest.approx(-0.5)
    assert row["entropy_change_rel"] == pytest.approx(-0.25)
    assert row["avg_clip_low_frac"] == pytest.approx(0.25)
    assert row["avg_clip_high_frac"] == pytest.approx(0.05)
    assert row["avg_ratio_above_frac"] == pytest.approx(0.2)
    # Shares of positive brackets among finite steps only.
    assert row["thm1_low_pos_share"] == pytest.approx(2 / 3)
    assert row["thm1_high_pos_share"] == 1.0
    assert row["thm2_low_pos_share"] == pytest.approx(2 / 3)
    assert math.isnan(row["thm2_high_pos_share"])


def test_entropy_end_falls_back_to_entropy(tmp_path):
    make_run(tmp_path, "r0", steps=default_steps(entropy_post=[1.95, 1.85, 1.75, NAN]))
    row = analysis.analyze_runs([tmp_path / "r0"])[0].iloc[0]
    assert row["entropy_end"] == 1.7
    assert row["entropy_change"] == pytest.approx(-0.3)


def test_raw_change_comparison(tmp_path):
    # raw = entropy_post - entropy = [-0.05, -0.05, -0.05, -0.2]: all negative;
    # drift signs (+, -, +, +) agree on one step in four.
    make_run(tmp_path, "r0")
    row = analysis.analyze_runs([tmp_path / "r0"])[0].iloc[0]
    steps = default_steps()
    raw = (steps["entropy_post"] - steps["entropy"]).to_numpy()  # ties broken by rounding, as in the run
    drift = np.array([1.0, -1.0, 2.0, 3.0])
    assert row["thm2_vs_raw_sign_agree"] == pytest.approx(0.25)
    assert row["thm2_vs_raw_pearson"] == pytest.approx(np.corrcoef(drift, raw)[0, 1])
    ranks_d, ranks_r = pd.Series(drift).rank(), pd.Series(raw).rank()
    assert row["thm2_vs_raw_spearman"] == pytest.approx(np.corrcoef(ranks_d, ranks_r)[0, 1])
    assert row["thm1_vs_raw_sign_agree"] == pytest.approx(0.25)


def test_no_probe_columns_give_nan(tmp_path):
    make_run(tmp_path, "r0")
    row = analysis.analyze_runs([tmp_path / "r0"])[0].iloc[0]
    assert row["n_probed"] == 0
    for c in ("clip_attributed_dH_avg", "clip_low_raises_share", "thm2_vs_attr_sign_agree"):
        assert math.isnan(row[c]), c


def test_attributed_statistics(tmp_path):
    make_run(tmp_path, "r0", steps=probe_cols(default_steps()))
    row = analysis.analyze_runs([tmp_path / "r0"])[0].iloc[0]
    assert row["n_probed"] == 3
    # By hand from the replays (R, N, L, H) of steps 1, 3, 4:
    # total R - N = (0.25, -0.25, 0.25); low 1/2[(L - N) + (R - H)] = (0.15625, -0.25, 0);
    # high 1/2[(H - N) + (R - L)] = (0.09375, 0, 0.25); alone L - N = (0.125, -0.25, 0), H - N = (0.0625, 0, 0.25).
    low = np.array([0.15625, -0.25, 0.0])
    assert row["clip_low_attributed_dH_avg"] == pytest.approx(low.mean())
    assert row["clip_low_attributed_dH_se"] == pytest.approx(low.std(ddof=1) / math.sqrt(3))
    assert row["clip_high_attributed_dH_avg"] == pytest.approx(0.34375 / 3)
    assert row["clip_attributed_dH_avg"] == pytest.approx(0.25 / 3)
    assert row["clip_low_alone_dH_avg"] == pytest.approx(-0.125 / 3)
    assert row["clip_interaction_dH_avg"] == pytest.approx(0.0625 / 3)  # R - L - H + N = (0.0625, 0, 0)
    assert row["noclip_dH_avg"] == pytest.approx((-0.5 - 0.05 - 0.45) / 3)
    # "Acted" from the events: clip-low on steps 1, 3, 4; clip-high (clip_high_frac > 0) on steps 3, 4 only.
    assert row["n_clip_steps"] == 3 and row["n_clip_low_steps"] == 3 and row["n_clip_high_steps"] == 2
    assert row["clip_low_raises_share"] == pytest.approx(1 / 3)
    assert row["clip_high_lowers_share"] == 0.0  # (0, 0.25) on steps 3, 4
    # drift on probed steps (1, 2, 3) vs total (0.25, -0.25, 0.25): two agreements in three.
    assert row["thm2_vs_attr_sign_agree"] == pytest.approx(2 / 3)
    assert row["thm2_vs_attr_pearson"] == pytest.approx(np.corrcoef([1.0, 2.0, 3.0], [0.25, -0.25, 0.25])[0, 1])


def test_eval_summary_first_and_last(tmp_path):
    run_dir = make_run(tmp_path, "r0")
    summary = pd.DataFrame(
        {
            "step": [10, 0, 10, 0, 5],
            "dataset": ["gsm8k", "gsm8k", "math500", "math500", "gsm8k"],
            "n": [8] * 5,
            "k": [8] * 5,
            "temperature": [0.6] * 5,
            "pass_at_k": [0.5, 0.7, 0.2, 0.3, 0.6],
            "mean_at_n": [0.3, 0.25, 0.1, 0.12, 0.28],
            "ci_low": [0.0] * 5,
            "ci_high": [1.0] * 5,
        }
    )
    write_parquet_atomic(summary, run_dir / "eval" / "summary.parquet")
    row = analysis.analyze_runs([run_dir])[0].iloc[0]
    assert row["eval_gsm8k_k8_first_step"] == 0 and row["eval_gsm8k_k8_last_step"] == 10
    assert row["eval_gsm8k_k8_pass_at_k_first"] == 0.7
    assert row["eval_gsm8k_k8_pass_at_k_last"] == 0.5
    assert row["eval_gsm8k_k8_mean_at_n_last"] == 0.3
    assert row["eval_math500_k8_pass_at_k_first"] == 0.3
    assert row["eval_math500_k8_mean_at_n_last"] == 0.1


# ---------------------------------------------------------------- combining minibatches


def _sums(**kw) -> dict:
    base = {k: 0.0 for k in SUM_KEYS}
    base.update(kw)
    return base


def test_combine_updates_weights_by_region_size():
    updates = pd.DataFrame(
        [
            {"step": 1, "epoch": 0, "minibatch": 0, **_sums(n_tokens=10, n_below=1, w_sum=10.0, w_sum_below=1.0,
                                                           gap_wsum_below=4.0, qdev_wsum_below=0.5)},
            {"step": 1, "epoch": 0, "minibatch": 1, **_sums(n_tokens=30, n_below=3, w_sum=30.0, w_sum_below=3.0,
                                                           gap_wsum_below=0.0, qdev_wsum_below=0.3, n_clip_low=2)},
            {"step": 2, "epoch": 0, "minibatch": 0, **_sums(n_tokens=5, n_above=5, w_sum=5.0, w_sum_above=5.0,
                                                           gap_wsum_above=-5.0)},
        ]
    )
    out = analysis.combine_updates(updates).set_index("step")
    # Region-weighted: (4 + 0) / (1 + 3) = 1.0, not the mean of means (4 + 0) / 2 = 2.
    assert out.loc[1, "thm2_low"] == pytest.approx(1.0)
    assert out.loc[1, "ratio_below_frac"] == pytest.approx(4 / 40)
    assert out.loc[1, "clip_low_frac"] == pytest.approx(2 / 40)
    assert out.loc[1, "thm1_low"] == pytest.approx(0.8 / 4)  # (0.5 + 0.3) / (1 + 3)
    assert out.loc[1, "thm2_drift"] == pytest.approx(0.1 * 1.0)  # Y empty: its term counts 0
    assert math.isnan(out.loc[1, "thm2_high"])  # empty region: NaN, never 0
    assert math.isnan(out.loc[2, "thm2_low"])
    assert out.loc[2, "thm2_high"] == pytest.approx(-1.0)
    assert set(STAT_KEYS) <= set(out.columns)


def test_combine_updates_matches_the_steps_table_of_a_simulated_run(tmp_path):
    from clipctl.simulate import DynamicsConfig, simulate_run, write_run

    cfg = DynamicsConfig(steps=6, lr=8.0)
    steps, updates = simulate_run(cfg)
    run = read_run(write_run(tmp_path / "sim", cfg, steps, updates))
    combined = analysis.combine_updates(run.updates).set_index("step")
    for key in STAT_KEYS:
        np.testing.assert_allclose(combined[key].to_numpy(), run.steps.set_index("step")[key].to_numpy(), equal_nan=True)


def test_estimator_vs_exact_columns_by_hand(tmp_path):
    # drift estimates [1, -1, 2, 3] against exact [2, 1, 1, NaN] (thm1) / [0.5, -0.5, 2, 3] (thm2)
    steps = default_steps(
        thm1_drift_exact=[2.0, 1.0, 1.0, NAN], thm2_drift_exact=[0.5, -0.5, 2.0, 3.0],
        ratio_below_frac_exact=[0.1, 0.1, 0.2, 0.2], ratio_above_frac_exact=[0.2, 0.2, 0.2, 0.2],
    )
    row = analysis.analyze_runs([make_run(tmp_path, "sim", steps=steps)])[0].iloc[0]
    # signs (+,-,+) vs (+,+,+) on the 3 finite steps: 2 of 3 agree; thm2: 4 of 4
    assert row["thm1_vs_exact_sign_agree"] == pytest.approx(2 / 3)
    assert row["thm2_vs_exact_sign_agree"] == 1.0
    # rel. RMSE thm1: errors (-1, -2, 1), exact (2, 1, 1): sqrt((1 + 4 + 1) / 3) / sqrt((4 + 1 + 1) / 3) = 1
    assert row["thm1_vs_exact_rel_rmse"] == pytest.approx(1.0)
    # thm2: errors (0.5, -0.5, 0, 0), exact^2 (0.25, 0.25, 4, 9): sqrt(0.5 / 4) / sqrt(13.5 / 4)
    assert row["thm2_vs_exact_rel_rmse"] == pytest.approx(math.sqrt(0.5 / 13.5))
    assert row["avg_ratio_below_frac_exact"] == pytest.approx(0.15)
    # runs without exact columns (clipctl train) have none of these columns
    plain = analysis.analyze_runs([make_run(tmp_path, "train")])[0]
    assert not [c for c in plain.columns if "exact" in c]


def test_simulated_runs_report_estimator_agreement(tmp_path):
    from clipctl.simulate import DynamicsConfig, run_dynamics

    run_dynamics(tmp_path, grid=[(0.2, 0.2)], seeds=1, base=DynamicsConfig(steps=40))
    row = analysis.analyze_runs([tmp_path])[0].iloc[0]
    assert row["thm2_vs_exact_sign_agree"] > 0.7 and row["thm2_vs_exact_pearson"] > 0.5, row
    result = runner.invoke(app, ["analyze-clip-stats", str(tmp_path)])
    assert result.exit_code == 0 and "thm2_vs_exact_sign_agree" in result.output, result.output


# ---------------------------------------------------------------- groups


def test_grouping_mean_and_std_across_seeds(tmp_path):
    changes = {}
    for seed, post in enumerate([1.5, 1.2, 0.9]):
        make_run(tmp_path, f"sym-s{seed}", seed=seed, steps=default_steps(entropy_post=[1.95, 1.85, 1.75, post]))
        changes[seed] = post - 2.0
    for seed in range(2):
        make_run(tmp_path, f"noh-s{seed}", eps_high=math.inf, seed=seed)
    per_run, per_group = analysis.analyze_runs([str(tmp_path / "*")])
    assert len(per_run) == 5
    assert list(per_group["n_runs"]) == [2, 3]  # noh-* sorts first
    sym = per_group[per_group["algo.eps_high"] == 0.2].iloc[0]
    vals = np.array(list(changes.values()))
    assert sym["entropy_change_mean"] == pytest.approx(vals.mean())
    assert sym["entropy_change_std"] == pytest.approx(vals.std(ddof=1))
    assert sym["group"] == "eps_low=0.2, eps_high=0.2"
    noh = per_group[per_group["algo.eps_high"] == math.inf].iloc[0]
    assert noh["group"] == "eps_low=0.2, eps_high=inf"
    assert noh["entropy_change_std"] == 0.0


def test_group_by_any_config_key(tmp_path):
    make_run(tmp_path, "a", lr=1e-4)
    make_run(tmp_path, "b", lr=1e-3, seed=1)
    make_run(tmp_path, "c", lr=1e-3, seed=2)
    _, per_group = analysis.analyze_runs([tmp_path], group_by="optim.lr")
    assert list(per_group["optim.lr"]) == [1e-4, 1e-3]
    assert list(per_group["n_runs"]) == [1, 2]
    assert math.isnan(per_group.iloc[0]["entropy_change_std"])  # one run: no spread


def test_a_key_an_older_run_lacks_reads_as_its_default(tmp_path):
    # A sweep resumed after an upgrade: seed 0 was made before algo.entropy_coef_min existed (its
    # run.json lacks it), seed 1 logs the default 0.0. They are one setting; a run at -0.01 is another.
    import json

    make_run(tmp_path, "old", seed=0)
    for name, seed, value in (("new", 1, 0.0), ("signed", 2, -0.01)):
        run = make_run(tmp_path, name, seed=seed)
        meta = json.loads((run / "run.json").read_text())
        meta["config"]["algo"]["entropy_coef_min"] = value
        atomic_write_json(run / "run.json", meta)
    _, per_group = analysis.analyze_runs([tmp_path])
    assert dict(zip(per_group["algo.entropy_coef_min"], per_group["n_runs"])) == {0.0: 2, -0.01: 1}
    assert analysis.config_value(analysis.read_run(tmp_path / "old"), "algo.entropy_coef_min") == 0.0
    assert math.isnan(analysis.config_value(analysis.read_run(tmp_path / "old"), "algo.no_such_key"))


def test_a_folder_of_runs_stands_for_its_runs(tmp_path):
    make_run(tmp_path, "a")
    make_run(tmp_path, "b", seed=1)
    assert [p.name for p in analysis.resolve_runs([tmp_path])] == ["a", "b"]
    assert [p.name for p in analysis.resolve_runs([tmp_path / "a", str(tmp_path / "*")])] == ["a", "b"]


# ---------------------------------------------------------------- CLI


def test_cli_table_csv_json_parquet(tmp_path):
    make_run(tmp_path, "a", steps=probe_cols(default_steps()))
    make_run(tmp_path, "b", seed=1, eps_high=math.inf)
    result = runner.invoke(app, ["analyze-clip-stats", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "entropy_change" in result.output and "eps_high=inf" in result.output
    result = runner.invoke(app, ["analyze-clip-stats", str(tmp_path), "--per-run", "-m", "entropy_change"])
    assert result.exit_code == 0 and "-0.5" in result.output
    result = runner.invoke(app, ["analyze-clip-stats", str(tmp_path), "-f", "csv", "--per-run"])
    assert result.exit_code == 0
    assert result.output.splitlines()[0].startswith("run,path,algo.eps_low,algo.eps_high")
    result = runner.invoke(app, ["analyze-clip-stats", str(tmp_path), "-f", "json", "-m", "entropy_change"])
    rows = json.loads(result.output)
    assert [r["algo.eps_high"] for r in rows] == [0.2, "inf"]
    assert rows[0]["entropy_change_std"] is None  # one run per group: NaN -> null
    out = tmp_path / "out" / "groups.parquet"
    result = runner.invoke(app, ["analyze-clip-stats", str(tmp_path / "a"), str(tmp_path / "b"), "-f", "parquet", "-o", str(out)])
    assert result.exit_code == 0, result.output
    back = pd.read_parquet(out)
    assert list(back["n_runs"]) == [1, 1]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp file left


def assert_error(result, *needles):
    assert result.exit_code != 0, result.output
    out = result.output.strip()
    assert out.startswith("Error:"), out
    assert "Traceback" not in out
    assert len(out.splitlines()) == 1, out
    for needle in needles:
        assert needle in out, (needle, out)


def test_cli_errors(tmp_path):
    make_run(tmp_path, "a")
    empty = tmp_path / "empty"
    atomic_write_json(empty / "run.json", {"config": {"algo": {"eps_low": 0.2}}})
    cases = [
        ([str(tmp_path / "nomatch*")], ("no runs matched", "nomatch*")),
        ([str(empty)], ("has no steps",)),
        ([str(tmp_path / "a"), "-g", "algo.nope"], ("unknown group key 'algo.nope'", "algo.eps_high", "optim.lr")),
        ([str(tmp_path / "a"), "-m", "nope"], ("unknown metric 'nope'", "entropy_change")),
        ([str(tmp_path / "a"), "-f", "xml"], ("'--format' / '-f': 'xml' is not one of 'table', 'csv'",)),
        ([str(tmp_path / "a"), "-f", "parquet"], ("--out",)),
        ([str(tmp_path / "a"), "-f", "csv", "-o", "/proc/clipctl/x.csv"], ("cannot write", "writable")),
        ([str(tmp_path / "missing")], ("does not exist",)),
    ]
    for args, needles in cases:
        assert_error(runner.invoke(app, ["analyze-clip-stats", *args]), *needles)


def test_unknown_step_metric_lists_valid_ones(tmp_path):
    runs = analysis.load_runs([make_run(tmp_path, "a")])
    with pytest.raises(analysis.AnalysisError, match="unknown metric 'nope'; valid step metrics: .*entropy"):
        analysis.curves(runs, "nope")


def test_acted_comes_from_clip_events_not_from_attributed_changes():
    from clipctl.analysis import Columns, _attribution_summary, attribution_columns

    # Replay noise makes every attributed change non-zero; only step 2 had clip events.
    arrays = {
        "step": np.array([1.0, 2.0, 3.0]), "entropy": np.full(3, 2.0), "entropy_post": np.full(3, 1.5),
        "entropy_post_replay": np.array([1.5 + 1e-7, 1.4, 1.5 - 1e-7]), "entropy_post_noclip": np.full(3, 1.5),
        "entropy_post_lowonly": np.array([1.5, 1.4, 1.5]), "entropy_post_highonly": np.full(3, 1.5),
        "n_clip_low": np.array([0.0, 3.0, 0.0]), "clip_low_frac": np.array([0.5, 0.5, 0.5]),  # counts win
        "probe_noise": np.array([-1e-7, 0.0, 1e-7]),
    }
    out = _attribution_summary(Columns({**arrays, **attribution_columns(arrays)}))
    assert out["n_clip_steps"] == 1 and out["n_clip_low_steps"] == 1 and out["n_clip_high_steps"] == 0
    assert out["clip_low_raises_share"] == 0.0  # step 2: low = 1/2[(1.4 - 1.5) + (1.4 - 1.5)] < 0
    assert math.isnan(out["clip_high_lowers_share"])
    assert out["probe_noise_abs_max"] == 1e-7 and out["probe_noise_abs_mean"] == pytest.approx(2e-7 / 3)
    assert "attributed_within_noise" not in out


def test_correlations_by_hand_and_against_a_naive_loop():
    # Ties share their average rank: x ranks (3.5, 1, 3.5, 2), y ranks (1, 2, 4, 3).
    x, y = [3.0, 1.0, 3.0, 2.0], [1.0, 2.0, 9.0, 5.0]
    rx, ry = np.array([3.5, 1.0, 3.5, 2.0]), np.array([1.0, 2.0, 4.0, 3.0])
    dx, dy = rx - rx.mean(), ry - ry.mean()
    assert math.isclose(analysis.spearman(x, y), (dx @ dy) / math.sqrt((dx @ dx) * (dy @ dy)))
    rng = np.random.default_rng(0)
    for n in (3, 7, 50):
        a, b = rng.normal(size=n), rng.normal(size=n)
        ma, mb = sum(a) / n, sum(b) / n
        num = sum((ai - ma) * (bi - mb) for ai, bi in zip(a, b))
        den = math.sqrt(sum((ai - ma) ** 2 for ai in a) * sum((bi - mb) ** 2 for bi in b))
        assert math.isclose(analysis.pearson(a, b), num / den, rel_tol=1e-12)
    # Non-finite rows are dropped; fewer than 3 rows or a constant series give NaN.
    assert math.isclose(analysis.pearson([1, 2, 3, math.nan], [1, 2, 4, 0]), analysis.pearson([1, 2, 3], [1, 2, 4]))
    assert math.isnan(analysis.pearson([1, 2], [1, 2])) and math.isnan(analysis.spearman([1, 1, 1], [1, 2, 3]))


def test_read_run_reads_each_table_on_first_use(tmp_path):
    run = tmp_path / "r"
    atomic_write_json(run / "run.json", {"name": "r", "config": {}})
    write_part(run, "steps", 1, pd.DataFrame({"step": [1], "entropy": [1.0]}))
    write_part(run, "samples", 1, pd.DataFrame({"step": [1], "response": ["x"]}))
    (run / "samples" / "step-000001.parquet").write_bytes(b"torn")  # only a reader of samples meets it
    r = read_run(run)
    assert r.steps["entropy"].tolist() == [1.0]
    from clipctl.errors import RunDirError

    with pytest.raises(RunDirError, match="samples"):
        r.samples
