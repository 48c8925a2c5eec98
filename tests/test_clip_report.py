"""analyze-clip-stats' attribution report on constructed runs: default grouping, shared steps,
the attribution regression, paired setting effects, and their bad-input errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from clipctl import analysis, effects
from clipctl.cli import app
from clipctl.runlog import atomic_write_json
from runlogs import write_part
from test_analysis import assert_error
from test_effects import _naive_ols_clustered

runner = CliRunner()


def write_run(root, name, *, eps_low=0.2, eps_high=0.2, seed=0, temperature=1.0, steps: pd.DataFrame, simulate=False):
    config = {
        "algo": {"eps_low": eps_low, "eps_high": eps_high, "dual_clip_c": None},
        "reward": {"kind": "random_bernoulli"},
        "train": {"seed": seed, "steps": len(steps)},
        "rollout": {"temperature": temperature},
    }
    if simulate:  # the simulator restates its own parameters in a section of their own
        config["simulate"] = {"eps_low": eps_low, "eps_high": eps_high, "seed": seed, "reward": "bernoulli"}
    atomic_write_json(root / name / "run.json", {"name": name, "config": config})
    for row in steps.to_dict(orient="records"):
        write_part(root / name, "steps", int(row["step"]), [row])
    return root / name


def probed_steps(x, total, low_share=0.5, entropy=None, low_events=None, high_events=None) -> pd.DataFrame:
    """Steps whose replays give unclipped change ``x`` and total ``total`` per step; the Shapley low part is
    ``low_share * total`` (lowonly and highonly placed symmetrically so that the interaction is 0)."""
    x, total = np.asarray(x, float), np.asarray(total, float)
    n = len(x)
    h = np.full(n, 2.0) if entropy is None else np.asarray(entropy, float)
    noclip = h + x
    return pd.DataFrame({
        "step": np.arange(1, n + 1), "entropy": h, "entropy_post": noclip + total,
        "entropy_post_replay": noclip + total, "entropy_post_noclip": noclip,
        "entropy_post_lowonly": noclip + low_share * total, "entropy_post_highonly": noclip + (1 - low_share) * total,
        "clip_low_frac": np.ones(n) * 0.1 if low_events is None else low_events,
        "clip_high_frac": np.ones(n) * 0.1 if high_events is None else high_events,
        "reward_mean": np.full(n, 0.5), "thm1_drift": np.ones(n), "thm2_drift": np.ones(n),
    })


# ---------------------------------------------------------------- default grouping


def test_default_grouping_is_every_key_that_differs(tmp_path):
    steps = probed_steps([0.1, -0.1], [0.01, 0.02])
    for t in (0.7, 1.0):
        for seed in (0, 1):
            write_run(tmp_path, f"t{t}-s{seed}", temperature=t, seed=seed, steps=steps, simulate=True)
            write_run(tmp_path, f"noh-t{t}-s{seed}", eps_high=math.inf, temperature=t, seed=seed, steps=steps, simulate=True)
    runs = analysis.load_runs([tmp_path])
    # seeds left out; simulate.eps_* repeat algo.eps_* and simulate.seed is a seed; train.steps is equal everywhere
    assert analysis.default_group_keys(runs) == ["algo.eps_low", "algo.eps_high", "rollout.temperature"]
    _, per_group = analysis.analyze_runs([tmp_path])
    assert list(per_group["n_runs"]) == [2, 2, 2, 2]  # temperatures 0.7 and 1.0 are no longer pooled
    assert "rollout.temperature=0.7" in per_group["group"].iloc[0]
    result = runner.invoke(app, ["analyze-clip-stats", str(tmp_path)], terminal_width=200)
    assert result.exit_code == 0 and "rollout.temperature=0.7" in result.output, result.output
    # One setting, seeds only: the clip knobs alone (every label names them).
    assert analysis.default_group_keys(analysis.load_runs([tmp_path / "t0.7-s0", tmp_path / "t0.7-s1"])) == [
        "algo.eps_low", "algo.eps_high"]


def test_simulate_section_that_splits_runs_like_the_reward_is_left_out(tmp_path):
    steps = probed_steps([0.1, -0.1], [0.01, 0.02])
    a = write_run(tmp_path, "a", steps=steps, simulate=True)
    b = write_run(tmp_path, "b", steps=steps, simulate=True)
    cfg = json.loads((b / "run.json").read_text())
    cfg["config"]["reward"]["kind"], cfg["config"]["simulate"]["reward"] = "random_gaussian", "gaussian"
    atomic_write_json(b / "run.json", cfg)
    assert analysis.default_group_keys(analysis.load_runs([a, b])) == ["algo.eps_low", "algo.eps_high", "reward.kind"]


# ---------------------------------------------------------------- shared steps


def test_step_one_of_one_family_is_shared_across_settings(tmp_path):
    steps = probed_steps([0.1, -0.1, 0.2], [0.01, 0.02, -0.01])
    for seed in (0, 1):
        write_run(tmp_path, f"sym-s{seed}", seed=seed, steps=steps)
        write_run(tmp_path, f"hi-s{seed}", eps_low=1.0, seed=seed, steps=steps)
    write_run(tmp_path, "sym-t07-s0", temperature=0.7, steps=steps)  # another family: nothing shared
    report = analysis.clip_report([tmp_path], group_by="algo.eps_low,algo.eps_high")
    shared = report.steps[report.steps["shared"]]
    assert sorted(zip(shared["run"].map(lambda p: p.rsplit("/", 1)[1]), shared["step"])) == [
        ("hi-s0", 1), ("hi-s1", 1), ("sym-s0", 1), ("sym-s1", 1)]
    per_run = report.per_run.set_index("run")
    assert per_run.loc["sym-s0", "n_shared_steps"] == 1 and per_run.loc["sym-t07-s0", "n_shared_steps"] == 0
    # Within a seed step 1's units agree; across seeds they differ.
    first = report.steps[report.steps["step"] == 1]
    units = dict(zip(first["run"].map(lambda p: p.rsplit("/", 1)[1]), first["unit"]))
    assert units["sym-s0"] == units["hi-s0"] != units["sym-s1"]


# ---------------------------------------------------------------- attribution regression


def test_regression_per_group_and_pooled_matches_naive_least_squares(tmp_path):
    rng = np.random.default_rng(1)
    rows = {}
    for seed in range(3):
        x = rng.normal(scale=0.1, size=6)
        for name, eps_low in (("sym", 0.2), ("hi", 1.0)):
            total = 0.004 - 0.3 * x + rng.normal(scale=0.002, size=6)
            total[0] = -0.3 * x[0] + 0.001 * seed  # step 1: the same y in both settings of a seed
            share = 0.5 if eps_low < 1 else 0.0  # eps_low = 1: clip-low off, high takes the total
            write_run(tmp_path, f"{name}-s{seed}", eps_low=eps_low, seed=seed, steps=probed_steps(x, total, share))
            rows[(name, seed)] = (x, total)
    report = analysis.clip_report([tmp_path])
    reg = report.regression().set_index(["group", "attribution"])

    # Per group (one setting, three seeds): the plain fit over its 18 steps, clustered by run.
    xs = np.concatenate([rows[("sym", s)][0] for s in range(3)])
    ys = np.concatenate([rows[("sym", s)][1] for s in range(3)])
    clusters = [s for s in range(3) for _ in range(6)]
    icpt, slope, se_i, se_s = _naive_ols_clustered(list(xs), list(ys), clusters)
    got = reg.loc[("eps_low=0.2, eps_high=0.2", "clip_attributed_dH")]
    assert got["n_steps"] == 18 and got["n_clusters"] == 3 and got["n_shared"] == 3
    assert got["intercept"] == pytest.approx(icpt) and got["slope"] == pytest.approx(slope)
    assert got["intercept_se"] == pytest.approx(se_i) and got["slope_se"] == pytest.approx(se_s)
    low = reg.loc[("eps_low=0.2, eps_high=0.2", "clip_low_attributed_dH")]
    assert low["slope"] == pytest.approx(slope / 2) and low["intercept"] == pytest.approx(icpt / 2)
    assert reg.loc[("eps_low=1, eps_high=0.2", "clip_low_attributed_dH")]["n_steps"] == 0  # clip-low off there

    # Pooled clip-high: both settings, each seed's step 1 counted once (here the same x and, by construction, y).
    pooled = reg.loc[(analysis.POOLED_LABEL, "clip_high_attributed_dH")]
    px, py, pc = [], [], []
    for seed in range(3):
        (xs_sym, y_sym), (xs_hi, y_hi) = rows[("sym", seed)], rows[("hi", seed)]
        px += [xs_sym[0]] + list(xs_sym[1:]) + list(xs_hi[1:])
        py += [(0.5 * y_sym[0] + y_hi[0]) / 2] + list(0.5 * y_sym[1:]) + list(y_hi[1:])
        pc += [seed] * 11  # one cluster per seed: the two settings of a seed share their random numbers
    icpt, slope, se_i, se_s = _naive_ols_clustered(px, py, pc)
    assert pooled["n_steps"] == 33 and pooled["n_shared"] == 6 and pooled["n_clusters"] == 3
    assert pooled["intercept"] == pytest.approx(icpt) and pooled["slope"] == pytest.approx(slope)
    assert pooled["intercept_se"] == pytest.approx(se_i) and pooled["slope_se"] == pytest.approx(se_s)

    # The CLI shows the same numbers in its table and writes them with --regression.
    out = tmp_path / "reg.csv"
    result = runner.invoke(app, ["analyze-clip-stats", str(tmp_path), "--regression", "-f", "csv", "-o", str(out)])
    assert result.exit_code == 0, result.output
    back = pd.read_csv(out)
    assert set(back["attribution"]) == set(analysis.REGRESSED_COLUMNS) and "intercept_se" in back
    result = runner.invoke(app, ["analyze-clip-stats", str(tmp_path)], terminal_width=200)
    assert result.exit_code == 0 and "intercept±SE" in result.output and analysis.POOLED_LABEL in result.output


def test_regression_reads_acted_from_events(tmp_path):
    x, total = [0.1, -0.2, 0.3, 0.05], [0.0, 0.01, -0.02, 0.0]
    for seed in (0, 1):
        write_run(tmp_path, f"s{seed}", seed=seed,
                  steps=probed_steps(x, total, low_events=[0, 0.1, 0.1, 0], high_events=[0, 0, 0.2, 0]))
    reg = analysis.clip_report([tmp_path]).regression().set_index("attribution")
    assert reg.loc["clip_low_attributed_dH", "n_acted"] == 4  # steps 2, 3 of each seed
    assert reg.loc["clip_high_attributed_dH", "n_acted"] == 2
    assert reg.loc["clip_attributed_dH", "n_acted"] == 4


# ---------------------------------------------------------------- paired effects


def paired_world(tmp_path):
    """Baseline 0.2/0.2 and setting 0.1/inf, seeds 0-2, 4 steps; the setting's entropy is the baseline's
    plus ``a_s * (step - 1)``, and its final entropy_post plus ``4 a_s``, with a_s = 0.1, 0.2, 0.6."""
    slopes = {0: 0.1, 1: 0.2, 2: 0.6}
    for seed, a in slopes.items():
        base = 2.0 + 0.01 * seed - 0.1 * np.arange(4)
        write_run(tmp_path, f"sym-s{seed}", seed=seed, steps=probed_steps([0.1] * 4, [0.0] * 4, entropy=base))
        mine = base + a * np.arange(4)
        write_run(tmp_path, f"low-s{seed}", eps_low=0.1, eps_high=math.inf, seed=seed,
                  steps=probed_steps([0.1] * 4, [4 * a - 3 * a] * 4, entropy=mine))
    write_run(tmp_path, "low-s9", eps_low=0.1, eps_high=math.inf, seed=9, steps=probed_steps([0.1] * 4, [0.0] * 4))
    return slopes


def test_paired_effects_by_hand(tmp_path):
    slopes = paired_world(tmp_path)
    frame = analysis.clip_report([tmp_path]).paired()
    assert set(frame["baseline"]) == {"eps_low=0.2, eps_high=0.2"}
    rows = frame.set_index("quantity")
    # End: the last step's entropy_post = entropy + x + total, the setting's (base + 3a) + 0.1 + a against the
    # baseline's base + 0.1 + 0: 4a per seed = (0.4, 0.8, 2.4); seed 9 has no baseline run and stays unpaired.
    end = rows.loc["entropy_end"]
    d = np.array([4 * a for a in slopes.values()])
    assert end["n_pairs"] == 3 and end["mean"] == pytest.approx(d.mean())
    assert end["se"] == pytest.approx(d.std(ddof=1) / math.sqrt(3))
    t2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    assert end["ci_low"] == pytest.approx(d.mean() - t2 * d.std(ddof=1) / math.sqrt(3))
    assert end["n_pos"] == 3 and end["n_neg"] == 0
    # Last half of 4 steps (steps 3, 4): differences 2a and 3a, mean 2.5a.
    half = rows.loc["entropy_last_half"]
    assert half["mean"] == pytest.approx(np.mean([2.5 * a for a in slopes.values()]))
    # Per step: (step - 1) a; step 1 is 0 in every pair (same start by construction).
    steps = frame[frame["quantity"] == "entropy_step"].set_index("step")
    assert list(steps.index) == [1.0, 2.0, 3.0, 4.0]
    assert steps.loc[1.0, "mean"] == 0.0 and steps.loc[1.0, "n_pos"] == 0
    assert steps.loc[3.0, "mean"] == pytest.approx(2 * np.mean(list(slopes.values())))
    assert steps.loc[3.0, "se"] == pytest.approx(2 * np.std(list(slopes.values()), ddof=1) / math.sqrt(3))
    # The CLI table and a csv with every row.
    result = runner.invoke(app, ["analyze-clip-stats", str(tmp_path), "--paired"], terminal_width=200)
    assert result.exit_code == 0 and "last half" in result.output and "minus" in result.output, result.output
    result = runner.invoke(app, ["analyze-clip-stats", str(tmp_path), "--baseline", "algo.eps_low=0.2,algo.eps_high=0.2",
                                 "-f", "csv"])
    assert result.exit_code == 0 and result.output.count("entropy_step") == 4, result.output


def test_paired_baseline_can_be_any_group(tmp_path):
    paired_world(tmp_path)
    frame = analysis.clip_report([tmp_path]).paired("algo.eps_low=0.1,algo.eps_high=inf")
    end = frame.set_index("quantity").loc["entropy_end"]
    assert end["group"] == "eps_low=0.2, eps_high=0.2" and end["mean"] < 0 and end["n_neg"] == 3


def test_paired_bad_inputs_are_one_error_line(tmp_path):
    paired_world(tmp_path)
    other = tmp_path / "other"
    steps = probed_steps([0.1, 0.2], [0.0, 0.0])
    write_run(other, "sym-s0", seed=0, steps=steps)
    write_run(other, "low-s1", eps_low=0.1, eps_high=math.inf, seed=1, steps=steps)
    lone = tmp_path / "lone"
    write_run(lone, "low-s0", eps_low=0.1, eps_high=math.inf, seed=0, steps=steps)
    cases = [
        ([str(tmp_path), "--baseline", "algo.eps_low=0.3,algo.eps_high=0.2"],
         ("unknown baseline 'algo.eps_low=0.3,algo.eps_high=0.2'", "eps_low=0.1, eps_high=inf", "--baseline")),
        ([str(tmp_path), "--baseline", "algo.nope=1"], ("unknown baseline key 'algo.nope'", "algo.eps_low")),
        ([str(tmp_path), "--baseline", "train.steps=4"], ("baseline key 'train.steps' is not a group key", "--group-by")),
        ([str(tmp_path), "--baseline", "algo.eps_low"], ("is not KEY=VALUE",)),
        ([str(other), "--paired"], ("no paired runs", "same seeds")),
        ([str(lone), "--paired"], ("unknown baseline", "no --baseline given")),
        ([str(tmp_path), "--paired", "--per-run"], ("choose the table",)),
        ([str(tmp_path), "--regression", "-m", "entropy_change"], ("--metrics",)),
    ]
    for args, needles in cases:
        assert_error(runner.invoke(app, ["analyze-clip-stats", *args]), *needles)
    result = runner.invoke(app, ["plot", str(other), "--kind", "paired", "--out", str(tmp_path / "p.png")])
    assert_error(result, "no paired runs")
    assert not (tmp_path / "p.png").exists()


def test_duplicate_runs_cannot_be_paired(tmp_path):
    paired_world(tmp_path)
    write_run(tmp_path / "again", "sym-s0", seed=0, steps=probed_steps([0.1] * 4, [0.0] * 4))
    assert_error(runner.invoke(app, ["analyze-clip-stats", str(tmp_path), str(tmp_path / "again" / "sym-s0"), "--paired"]),
                 "have the same seed and config", "leave one out")


def test_paired_plot_draws_the_band(tmp_path):
    from clipctl import plotting

    paired_world(tmp_path)
    fig = plotting.plot_runs([str(tmp_path)], "paired")
    line = [ln for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")][0]
    assert list(line.get_xdata()) == [1.0, 2.0, 3.0, 4.0]
    assert line.get_ydata()[2] == pytest.approx(2 * np.mean([0.1, 0.2, 0.6]))
    assert "minus" in line.get_label()
    # The band is the t interval with pairs - 1 df: at step 3, mean +- t_{0.975, 2} SE.
    band = fig.axes[0].collections[0].get_paths()[0].vertices[:, 1]
    se = 2 * np.std([0.1, 0.2, 0.6], ddof=1) / math.sqrt(3)
    assert band.max() == pytest.approx(3 * np.mean([0.1, 0.2, 0.6]) + effects.t_quantile(0.975, 2) * 3 * se / 2)
