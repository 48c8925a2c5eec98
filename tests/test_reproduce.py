"""clipctl reproduce: the verdict rule and the power computation by hand and against naive loops,
the claims registry, generated sweep files, and bad input through the CLI (one Error line, nothing written)."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from clipctl.cli import app
from clipctl.effects import t_quantile
from clipctl.reproduce import CLAIMS, claims, verdict

runner = CliRunner()


def one_error_line(result, text: str) -> None:
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert result.exit_code != 0, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert text in lines[0], lines[0]
    assert "Traceback" not in result.output


# ---------------------------------------------------------------- the rule


@pytest.mark.parametrize("lo,hi,direction,expected", [
    (0.1, 0.5, +1, "supported"), (0.1, 0.5, -1, "contradicted"),
    (-0.5, -0.1, -1, "supported"), (-0.5, -0.1, +1, "contradicted"),
    (-0.1, 0.5, +1, "inconclusive"), (-0.1, 0.5, -1, "inconclusive"),
    (0.0, 0.5, +1, "inconclusive"),  # touching 0 does not exclude it
    (math.nan, math.nan, +1, "inconclusive"), (-math.inf, 1.0, +1, "inconclusive"),
])
def test_verdict_rule(lo, hi, direction, expected):
    assert verdict.verdict(lo, hi, direction) == expected


def test_verdict_needs_a_direction():
    with pytest.raises(ValueError):
        verdict.verdict(0.1, 0.2, 0)


def test_overall_rule():
    assert verdict.overall(["supported", "supported"]) == "supported"
    assert verdict.overall(["supported", "inconclusive"]) == "inconclusive"
    assert verdict.overall(["supported", "contradicted", "inconclusive"]) == "contradicted"
    assert verdict.overall([]) == "inconclusive"


def test_estimate_interval_by_hand():
    # n = 4 pairs, mean 1, se 0.2: t_{0.975, 3} = 3.182446 -> CI 1 +- 0.636489, supported for > 0.
    e = verdict.estimate("x", "s", +1, "paired", n=4, mean=1.0, se=0.2, df=3)
    assert e["ci_low"] == pytest.approx(1 - 0.2 * 3.182446, abs=1e-6)
    assert e["ci_high"] == pytest.approx(1 + 0.2 * 3.182446, abs=1e-6)
    assert e["verdict"] == "supported"
    # sd = 0.2 * sqrt(4) = 0.4, d = 2.5: n = 4 gives ((3.1824 + 0.9785) * 0.4)^2 = 2.77 <= 4; n = 3: 3.92 > 3.
    assert e["seeds_for_80pct_power"] == 4
    assert e["zero_spread"] is False
    flat = verdict.estimate("x", "s", +1, "share", n=3, mean=0.3, se=0.0, df=2)
    assert (flat["ci_low"], flat["ci_high"], flat["zero_spread"]) == (0.3, 0.3, True)
    one = verdict.estimate("x", "s", -1, "paired", n=1, mean=1.0, se=math.nan, df=None)
    assert one["verdict"] == "inconclusive" and one["seeds_for_80pct_power"] is None


# ---------------------------------------------------------------- power


def test_normal_quantiles():
    assert verdict.normal_quantile(0.975) == pytest.approx(1.959963985, abs=1e-8)
    assert verdict.normal_quantile(0.8) == pytest.approx(0.841621234, abs=1e-8)


def test_seeds_for_power_by_hand():
    # Effect size 1 (mean 1, sd 1): normal start (1.96 + 0.8416)^2 = 7.85;
    # n = 9: ((t_{.975,8} 2.306 + t_{.8,8} 0.889) * 1)^2 = 10.21 > 9; n = 10: (2.262 + 0.883)^2 = 9.89 <= 10.
    assert verdict.seeds_for_power(1.0, 1.0) == 10
    # Effect size 0.5: n = 33: (2.0369 + 0.8531)^2 * 4 = 33.42 > 33; n = 34: (2.0345 + 0.8527)^2 * 4 = 33.35 <= 34.
    assert verdict.seeds_for_power(-0.5, 1.0) == 34
    assert verdict.seeds_for_power(0.0, 1.0) is None
    assert verdict.seeds_for_power(1.0, 0.0) is None
    assert verdict.seeds_for_power(math.nan, 1.0) is None
    assert verdict.seeds_for_power(1e-9, 1.0) is None  # beyond MAX_SEEDS


def naive_seeds(mean: float, sd: float) -> int:
    n = 2
    while ((t_quantile(0.975, n - 1) + t_quantile(0.8, n - 1)) * sd / abs(mean)) ** 2 > n:
        n += 1
    return n


@pytest.mark.parametrize("ratio", [0.05, 0.3, 0.7, 1.0, 1.3, 2.0, 3.7])
def test_seeds_for_power_equals_a_naive_scan(ratio):
    assert verdict.seeds_for_power(1.0, ratio) == naive_seeds(1.0, ratio)


# ---------------------------------------------------------------- the registry and its sweeps


def test_registry_lists_the_issue_claims():
    assert {"fig1-fig2", "thm1-thm2", "fig3", "fig4", "fig5", "fig6-fig7", "loss-families"} <= set(CLAIMS)
    for c in CLAIMS.values():
        assert c.quote and c.statistic and c.scales and set(c.scales) <= set(claims.SCALES)
    assert {"tiny", "smollm2"} <= set(CLAIMS["fig3"].scales)


def test_list_command_shows_every_claim():
    result = runner.invoke(app, ["reproduce", "list"])
    assert result.exit_code == 0, result.output
    for cid in CLAIMS:
        assert f"{cid} (" in result.output


def test_fig3_default_is_the_shipped_sweep():
    from clipctl.sweep import SWEEP_DIR

    plan = claims.CLAIMS["fig3"].scales["tiny"].plans(3, 50)[0]
    assert plan.source == SWEEP_DIR / "cpu-random-reward.toml" and plan.name == "cpu-random-reward"
    plan = claims.CLAIMS["fig3"].scales["smollm2"].plans(5, 4)[0]
    assert plan.source == SWEEP_DIR / "smollm2-random-reward-ablation.toml"


def test_overridden_sweep_keeps_the_cases_and_changes_seeds_and_steps(tmp_path):
    from clipctl.sweep import expand, load_sweep

    plan = claims.shipped_sweep("lm", "smollm2-random-reward-ablation", 2, 3)
    assert plan.source is None and plan.name == "smollm2-random-reward-ablation-n2-t3"
    path = tmp_path / "s.toml"
    path.write_text(plan.text)
    spec, shipped = load_sweep(path), load_sweep("smollm2-random-reward-ablation")
    assert spec.cases == shipped.cases and spec.seeds == [0, 1]
    assert spec.fixed == {**shipped.fixed, "train.steps": 3}
    assert len(expand(spec)) == 8 and math.isinf(spec.cases[1]["algo.eps_high"])


# ---------------------------------------------------------------- bad input


def test_unknown_claim():
    one_error_line(runner.invoke(app, ["reproduce", "fig99", "--scale", "tiny"]), "unknown claim 'fig99'; valid: fig1-fig2")


def test_scale_without_runs(tmp_path):
    result = runner.invoke(app, ["reproduce", "fig5", "--scale", "tiny", "--out", str(tmp_path / "o")])
    one_error_line(result, "claim fig5 has no runs at scale 'tiny'; scales it has: paper")
    assert not (tmp_path / "o").exists()


def test_too_few_seeds(tmp_path):
    one_error_line(runner.invoke(app, ["reproduce", "fig3", "--seeds", "1", "--out", str(tmp_path)]), "--seeds 1 must be at least 2")


def test_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(app, ["reproduce", "fig3", "--scale", "tiny", "--seeds", "2", "--steps", "1", "--out", str(blocker / "o")])
    one_error_line(result, "--out")
    assert blocker.read_text() == "x"


def test_dir_of_another_config_is_refused_and_left_alone(tmp_path):
    state = tmp_path / "reproduce.json"
    other = {"claim": "fig3", "scale": "tiny", "seeds": 3, "steps": 50, "plans": ["cpu-random-reward"]}
    state.write_text(json.dumps(other))
    before = state.read_bytes()
    result = runner.invoke(app, ["reproduce", "fig3", "--scale", "tiny", "--seeds", "2", "--steps", "4", "--out", str(tmp_path)])
    one_error_line(result, "holds a reproduction of another config (seeds 3 there, 2 here)")
    assert state.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["reproduce.json"]


def test_dir_with_a_sweep_of_another_spec_is_refused(tmp_path):
    # A sweep folder of the same name made with other runs: sweep's own check refuses it before anything runs.
    sd = tmp_path / "cpu-random-reward-n2-t4"
    sd.mkdir()
    stored = {"name": sd.name, "preset": "tiny-cpu", "runs": [{"name": "other", "overrides": []}]}
    (sd / "sweep.json").write_text(json.dumps(stored))
    result = runner.invoke(app, ["reproduce", "fig3", "--scale", "tiny", "--seeds", "2", "--steps", "4", "--out", str(tmp_path)])
    one_error_line(result, "already exists")
    assert sorted(p.name for p in tmp_path.iterdir()) == [sd.name] and sorted(p.name for p in sd.iterdir()) == ["sweep.json"]


def test_dry_run_lists_the_runs_and_writes_nothing(tmp_path):
    out = tmp_path / "o"
    result = runner.invoke(app, ["reproduce", "fig4", "--scale", "tiny", "--seeds", "2", "--steps", "3", "--out", str(out), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "fig4-tiny-n2-t3" in result.output and "random_gaussian-s1" in result.output and "sim-gaussian-n2" in result.output
    assert not out.exists()


# ---------------------------------------------------------------- the whole command (slow)


@pytest.mark.slow
def test_fig3_tiny_twice_trains_once_and_writes_the_same_report(tmp_path):
    args = ["reproduce", "fig3", "--scale", "tiny", "--seeds", "2", "--steps", "4", "--out", str(tmp_path)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    report = (tmp_path / "report.md").read_text()
    data = json.loads((tmp_path / "claims.json").read_text())
    assert data["claim"] == "fig3" and data["seeds"] == 2 and data["steps"] == 4
    assert [e["id"] for e in data["estimates"]] == ["clip-low", "clip-high", "dominance"]
    assert data["verdict"] in verdict.VERDICTS and all(e["verdict"] in verdict.VERDICTS for e in data["estimates"])
    assert len(data["runs"]) == 8 and all(len(r["config_hash"]) == 12 for r in data["runs"])
    assert "> both clip-high and clip-low influence the entropy" in report and "![figures/entropy.png]" in report
    for r in data["runs"]:  # every run listed, never a selection
        assert r["run"].split("/")[-1] in report
    figures = {p.name: p.read_bytes() for p in (tmp_path / "figures").iterdir()}
    assert set(figures) == {"entropy.png", "paired.png", "attribution.png"}

    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "0 to run" in second.output and "start " not in second.output
    assert (tmp_path / "report.md").read_text() == report
    assert {p.name: p.read_bytes() for p in (tmp_path / "figures").iterdir()} == figures


def test_loss_families_plan_the_shipped_family_sweeps():
    from clipctl.sweep import SWEEP_DIR

    plan = claims.CLAIMS["loss-families"].scales["tiny"].plans(5, 30)[0]
    assert plan.source == SWEEP_DIR / "loss-families.toml" and plan.name == "loss-families"
    plan = claims.CLAIMS["loss-families"].scales["smollm2"].plans(2, 4)[0]
    assert plan.source == SWEEP_DIR / "smollm2-loss-families.toml"


# ---------------------------------------------------------------- decisions on simulated runs (fast)


@pytest.fixture(scope="module")
def sim_runs(tmp_path_factory):
    from clipctl.simulate import DynamicsConfig, run_dynamics

    out = tmp_path_factory.mktemp("sim")
    return run_dynamics(out, grid=[(0.2, 0.2)], seeds=3, base=DynamicsConfig(steps=6, actions=10))


def test_fig4_decision_is_the_t_interval_of_entropy_changes(sim_runs):
    import numpy as np
    import pandas as pd

    ev = claims.Evidence({"sim": sim_runs})
    (e,) = claims.decide_fig4(ev)
    changes = []
    for p in sim_runs:  # naive: first step's entropy to the last step's post-update entropy, per run
        steps = pd.concat([pd.read_parquet(f) for f in sorted((p / "steps").glob("*.parquet"))]).sort_values("step")
        changes.append(float(steps["entropy_post"].iloc[-1] - steps["entropy"].iloc[0]))
    mean, se = np.mean(changes), np.std(changes, ddof=1) / math.sqrt(3)
    assert e["n"] == 3 and e["estimate"] == pytest.approx(mean) and e["se"] == pytest.approx(se)
    assert e["ci_high"] == pytest.approx(mean + t_quantile(0.975, 2) * se)
    assert e["direction"] == "< 0" and e["verdict"] == verdict.verdict(e["ci_low"], e["ci_high"], -1)


def test_bracket_decision_is_a_clustered_mean(sim_runs):
    import numpy as np
    import pandas as pd

    from clipctl.effects import mean_clustered

    ev = claims.Evidence({"lm": sim_runs})
    out = {e["id"]: e for e in claims.decide_brackets(ev)}
    assert set(out) == set(claims.BRACKETS)
    values, labels = [], []
    for p in sim_runs:
        steps = pd.concat([pd.read_parquet(f) for f in sorted((p / "steps").glob("*.parquet"))]).sort_values("step")
        values += list(steps["thm2_low"].astype(float))
        labels += [p.name] * len(steps)
    mean, se = mean_clustered(np.array(values), labels)
    assert out["thm2_low"]["estimate"] == pytest.approx(mean) and out["thm2_low"]["se"] == pytest.approx(se)
    assert out["thm2_low"]["n"] == 3 and ev.figures == [("brackets.png", "lm", "theory", {})]


def test_family_decision_is_the_clustered_regression_intercept_per_side(sim_runs):
    # The regression itself has its hand and naive tests (tests/test_effects.py, tests/test_analysis.py);
    # here: one estimate per side, read from the report's rows, with the side's direction and df = runs - 1.
    from clipctl import analysis

    ev = claims.Evidence({"lm": sim_runs})
    out = {e["id"]: e for e in claims.decide_families(ev)}
    assert set(out) == {"nan:clip-low", "nan:clip-high"}  # simulator runs carry no algo.policy_loss
    reg = analysis.build_report(analysis.load_runs([str(p) for p in sim_runs]), [claims.FAMILY_KEY]).regression()
    for side, direction in (("low", 1), ("high", -1)):
        e, r = out[f"nan:clip-{side}"], reg[reg["attribution"] == f"clip_{side}_attributed_dH"].iloc[0]
        assert e["n"] == 3 == r["n_clusters"] and e["direction"] == ("> 0" if direction > 0 else "< 0")
        assert e["estimate"] == pytest.approx(r["intercept"]) and e["se"] == pytest.approx(r["intercept_se"])
        assert e["ci_high"] == pytest.approx(r["intercept"] + t_quantile(0.975, 2) * r["intercept_se"])
        assert e["verdict"] == verdict.verdict(e["ci_low"], e["ci_high"], direction)
    assert ev.tables[0][0].startswith("Attribution regression per policy loss")
    assert [(f, kw) for f, _, _, kw in ev.figures] == [(f, {"group_by": [claims.FAMILY_KEY]}) for f in ("entropy.png", "attribution.png")]


def test_simulated_runs_are_done_once_written(sim_runs):
    from clipctl.reproduce import runner

    out = sim_runs[0].parent
    plan = claims.SimPlan("sim", out.name, ((0.2, 0.2),), 3, (("steps", 6), ("actions", 10)))
    req = runner.Request("thm1-thm2", "tiny", 3, 10, out.parent)
    assert [(d, done) for d, done in runner._sim_dirs(req, plan)] == [(p, True) for p in sim_runs]
    other = claims.SimPlan("sim", out.name, ((0.2, 0.2),), 3, (("steps", 7), ("actions", 10)))
    assert not any(done for _, done in runner._sim_dirs(req, other))


def test_fig3_tiny_plans_the_shipped_sweeps_runs_in_dir(tmp_path):
    # The same folder names as `clipctl sweep cpu-random-reward --out DIR`: such runs are found and reused.
    from clipctl.reproduce import plan_table
    from clipctl.sweep import expand, load_sweep

    plan = plan_table("fig3", "tiny", out=tmp_path)
    assert set(plan["plan"]) == {"cpu-random-reward"}
    assert list(plan["run"]) == [r.name for r in expand(load_sweep("cpu-random-reward"))]
    assert set(plan["action"]) == {"new"} and list(tmp_path.iterdir()) == []
