"""The paper's claims as data: what each says, which runs decide it at each scale, and how.

``CLAIMS`` maps a claim id to a frozen ``Claim``: the figure or theorem, the
quoted claim, and per scale (``tiny``, ``smollm2``, ``paper``) a ``Scale``
whose ``plans(seeds, steps)`` lists the runs it needs (``SweepPlan``: a sweep
of ``clipctl.sweep``; ``SimPlan``: runs of the tabular simulator), and a
``decide(evidence)`` that turns the finished runs into one estimate per
sub-statement (``verdict.estimate``) plus tables and figures. Quotes are from
arXiv 2509.26114; docs/reproduction.md lists every statistic and its rule.

No torch here: the simulator is imported only by the runner that runs a ``SimPlan``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from clipctl import analysis
from clipctl.reproduce.verdict import estimate
from clipctl.sweep import SWEEP_DIR, load_sweep, to_text

SCALES = ("tiny", "smollm2", "gpu", "paper")


@dataclass(frozen=True)
class SweepPlan:
    """A sweep the claim needs: a shipped sweep file used as is (``source``), or one written from ``text``."""

    label: str  # the key of its runs in the evidence
    name: str  # the sweep's name: its folder is DIR/<name>/
    source: Optional[Path] = None
    text: Optional[str] = None


@dataclass(frozen=True)
class SimPlan:
    """Runs of ``clipctl.simulate.run_dynamics`` in DIR/<name>/: a grid of clip settings x seeds."""

    label: str
    name: str
    grid: tuple[tuple[float, float], ...]
    seeds: int
    base: tuple[tuple[str, object], ...] = ()  # DynamicsConfig fields other than the defaults


@dataclass(frozen=True)
class Scale:
    seeds: int  # default --seeds
    steps: int  # default --steps (training steps of the LM runs)
    cost: str  # what a default call costs, measured where stated
    limit: str  # what this scale cannot show (one line in the report)
    plans: Callable[[int, int], list]
    jobs: Optional[int] = None  # default --jobs on a CPU (None: the sweep's default)


@dataclass
class Evidence:
    """The runs of each plan (label -> run directories) and the decided output."""

    runs: dict[str, list[Path]]
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, str, str, dict]] = field(default_factory=list)  # (file, label, plot kind, plot kwargs)


@dataclass(frozen=True)
class Claim:
    id: str
    source: str  # figure or theorem
    quote: str  # the paper's words
    needs: str  # the runs, in words
    statistic: str  # the deciding statistic, in words
    scales: dict[str, Scale]
    decide: Callable[[Evidence], list[dict]]


# ---------------------------------------------------------------- sweep files


def _toml(value) -> str:
    from clipctl.render import toml_literal

    return toml_literal(list(value) if isinstance(value, tuple) else value)


def _key(key: str) -> str:
    return '"' + key + '"'  # section.key names are letters, digits, _ and one dot: nothing to escape


def sweep_text(name: str, description: str, preset: str, *, fixed: dict, cases: Sequence[dict] = (),
               grid: Optional[dict] = None, seeds: Sequence[int] = (0,), name_template: Optional[str] = None) -> str:
    """A sweep file (docs/sweeps.md) as TOML text."""
    lines = [f"# Written by clipctl reproduce (docs/reproduction.md).", f"name = {_toml(name)}",
             f"description = {_toml(description)}", f"preset = {_toml(preset)}", f"seeds = {_toml(list(seeds))}"]
    if name_template:
        lines.append(f"name_template = {_toml(name_template)}")
    if cases:
        lines.append("cases = [")
        lines += ["    { " + ", ".join(f"{_key(k)} = {_toml(v)}" for k, v in c.items()) + " }," for c in cases]
        lines.append("]")
    lines.append("")
    lines.append("[set]")
    lines += [f"{_key(k)} = {_toml(v)}" for k, v in fixed.items()]
    if grid:
        lines += ["", "[grid]"] + [f"{_key(k)} = {_toml(list(v))}" for k, v in grid.items()]
    return "\n".join(lines) + "\n"


def _preset_steps(spec) -> int:
    from clipctl.config import load_config

    return int(spec.fixed.get("train.steps", load_config(spec.preset, []).train.steps))


def shipped_sweep(label: str, sweep: str, seeds: int, steps: int) -> SweepPlan:
    """A shipped sweep (presets/sweeps/NAME.toml) as is when ``seeds``/``steps`` are its own, else a copy
    with seeds 0..seeds-1 and ``train.steps = steps`` under a name that says so (its runs never mix)."""
    spec = load_sweep(sweep)
    own_seeds = list(spec.seeds) if spec.seeds is not None else None
    if own_seeds == list(range(seeds)) and _preset_steps(spec) == steps:
        return SweepPlan(label, spec.name, source=SWEEP_DIR / f"{sweep}.toml")
    name = f"{spec.name}-n{seeds}-t{steps}"
    text = sweep_text(name, f"{spec.description} (reproduce: {seeds} seeds, {steps} steps)", spec.preset,
                      fixed={**spec.fixed, "train.steps": steps}, cases=spec.cases, grid=spec.grid,
                      seeds=range(seeds), name_template=spec.name_template)
    return SweepPlan(label, name, text=text)


def built_sweep(label: str, stem: str, preset: str, seeds: int, steps: int, *, fixed: dict,
                cases: Sequence[dict] = (), name_template: Optional[str] = None) -> SweepPlan:
    name = f"{stem}-n{seeds}-t{steps}"
    text = sweep_text(name, f"clipctl reproduce: {stem}, {seeds} seeds, {steps} steps", preset,
                      fixed={**fixed, "train.steps": steps}, cases=cases, seeds=range(seeds), name_template=name_template)
    return SweepPlan(label, name, text=text)


# ---------------------------------------------------------------- statistics over runs

SYMMETRIC = {"algo.eps_low": 0.2, "algo.eps_high": 0.2}


def _report(paths: Sequence[Path]) -> analysis.ClipReport:
    runs = analysis.load_runs([str(p) for p in paths])
    keys = analysis.default_group_keys(runs)
    return analysis.build_report(runs, keys)


def _same(a, b) -> bool:
    return analysis.format_value(a) == analysis.format_value(b)


def _setting(lo, hi) -> str:
    return f"algo.eps_low={to_text(float(lo))},algo.eps_high={to_text(float(hi))}"


def paired_end(report: analysis.ClipReport, sub: str, statement: str, direction: int,
               setting: tuple[float, float], baseline: tuple[float, float]) -> dict:
    """Paired end-of-run entropy difference ``setting - baseline`` across seeds (``analysis.paired_effects``)."""
    table = report.paired(_setting(*baseline))
    row = table[(table["quantity"] == "entropy_end") & table["algo.eps_low"].map(lambda v: _same(v, setting[0]))
                & table["algo.eps_high"].map(lambda v: _same(v, setting[1]))]
    if row.empty:
        from clipctl.analysis import AnalysisError

        raise AnalysisError(f"no paired runs of {_setting(*setting)} against {_setting(*baseline)}; "
                            "both settings need runs of the same seeds")
    r = row.iloc[0]
    n = int(r["n_pairs"])
    return estimate(sub, statement, direction, "paired t across seeds (entropy_end, nats)", n=n, mean=float(r["mean"]),
                    se=float(r["se"]), df=n - 1 if n > 1 else None,
                    extra={"n_pos": int(r["n_pos"]), "n_neg": int(r["n_neg"]), "paired": True})


def one_sample(values: Sequence[float], sub: str, statement: str, direction: int, method: str, extra=None) -> dict:
    from clipctl.effects import paired_summary

    s = paired_summary(values)
    n = s["n_pairs"]
    return estimate(sub, statement, direction, method, n=n, mean=s["mean"], se=s["se"], df=n - 1 if n > 1 else None,
                    extra={"n_pos": s["n_pos"], "n_neg": s["n_neg"], **(extra or {})})


def clustered_mean(values: np.ndarray, clusters: Sequence[str], sub: str, statement: str, direction: int,
                   method: str) -> dict:
    from clipctl.effects import mean_clustered

    mean, se = mean_clustered(values, clusters)
    ok = np.isfinite(np.asarray(values, dtype=float))
    g = len(set(np.asarray(clusters, dtype=object)[ok]))
    return estimate(sub, statement, direction, method, n=g, mean=mean, se=se, df=g - 1 if g > 1 else None,
                    extra={"n_steps": int(ok.sum())})


def regression_rows(report: analysis.ClipReport) -> pd.DataFrame:
    """Per setting, the clip-low, clip-high and total attribution regressed on the unclipped change (CR1 SE)."""
    reg = report.regression()
    cols = ["group", "attribution", "n_steps", "n_clusters", "intercept", "intercept_se", "intercept_ci_low",
            "intercept_ci_high", "slope", "slope_se"]
    return reg[cols]


def intercept(report: analysis.ClipReport, setting: tuple[float, float], attribution: str, sub: str,
              statement: str, direction: int) -> dict:
    reg = report.regression()
    row = reg[(reg["attribution"] == attribution) & reg["algo.eps_low"].map(lambda v: _same(v, setting[0]))
              & reg["algo.eps_high"].map(lambda v: _same(v, setting[1]))]
    if row.empty or not math.isfinite(float(row.iloc[0]["intercept"])):
        return estimate(sub, statement, direction, f"clustered regression intercept of {attribution} (CR1 by run)",
                        n=0, mean=math.nan, se=math.nan, df=None, extra={"note": "no probed steps with clipping"})
    r = row.iloc[0]
    g = int(r["n_clusters"])
    return estimate(sub, statement, direction, f"clustered regression intercept of {attribution} (CR1 by run, df = runs - 1)",
                    n=g, mean=float(r["intercept"]), se=float(r["intercept_se"]), df=g - 1 if g > 1 else None,
                    extra={"n_steps": int(r["n_steps"]), "slope": float(r["slope"]), "slope_se": float(r["slope_se"])})


def per_run_rows(report: analysis.ClipReport, columns: Sequence[str]) -> pd.DataFrame:
    keep = ["run", *report.keys, "train.seed", *columns]
    pr = report.per_run
    return pr[[c for c in dict.fromkeys(keep) if c in pr.columns]]


# ---------------------------------------------------------------- the claims


def _fig3_plans(sweep: str) -> Callable[[int, int], list]:
    return lambda seeds, steps: [shipped_sweep("lm", sweep, seeds, steps)]


def decide_fig3(ev: Evidence) -> list[dict]:
    report = _report(ev.runs["lm"])
    out = [
        paired_end(report, "clip-low", "lowering eps_low (0.1/inf vs 0.2/inf) raises entropy", +1, (0.1, math.inf), (0.2, math.inf)),
        paired_end(report, "clip-high", "raising eps_high (0.2/inf vs 0.2/0.2) raises entropy", +1, (0.2, math.inf), (0.2, 0.2)),
        intercept(report, (0.2, 0.2), "clip_attributed_dH", "dominance",
                  "at 0.2/0.2 clip-high dominates: the total clip-attributed change at zero unclipped change is < 0", -1),
    ]
    ev.tables.append(("Attribution regression per setting (intercept: clip effect at zero unclipped change; SE clustered by run)",
                      regression_rows(report)))
    ev.tables.append(("Every run", per_run_rows(report, ["entropy_start", "entropy_end", "entropy_change",
                                                        "avg_clip_low_frac", "avg_clip_high_frac", "n_probed"])))
    ev.figures += [("entropy.png", "lm", "entropy", {}), ("paired.png", "lm", "paired", {}),
                   ("attribution.png", "lm", "attribution", {})]
    return out


def _fig4_tiny(seeds: int, steps: int) -> list:
    cases = [{"reward.kind": "random_bernoulli"}, {"reward.kind": "random_gaussian"}]
    return [
        built_sweep("lm", "fig4-tiny", "tiny-cpu", seeds, steps, cases=cases,
                    fixed={**SYMMETRIC, "log.clip_probe_every": 0}, name_template="{kind}-s{seed}"),
        SimPlan("sim-bernoulli", f"sim-bernoulli-n{seeds}", ((0.2, 0.2),), seeds, (("reward", "bernoulli"),)),
        SimPlan("sim-gaussian", f"sim-gaussian-n{seeds}", ((0.2, 0.2),), seeds, (("reward", "gaussian"),)),
    ]


def _fig4_paper(seeds: int, steps: int) -> list:
    models = [("qwen2.5-1.5b", "paper-random-reward"), ("llama3.2-1b", "paper-random-reward-llama3.2-1b"),
              ("olmo2-1b", "paper-random-reward-olmo2-1b")]
    plans = [built_sweep(f"model:{m}", f"fig4-{m}", preset, seeds, steps, fixed=dict(SYMMETRIC)) for m, preset in models]
    return plans + [shipped_sweep("rewards", "paper-reward-distribution", seeds, steps)]


def _entropy_change(report: analysis.ClipReport, rows: pd.DataFrame, sub: str, statement: str) -> dict:
    """``entropy_end - entropy_start`` of each run, t across seeds (paper: < 0)."""
    return one_sample(rows["entropy_change"].astype(float).to_numpy(), sub, statement, -1,
                      "t across seeds of entropy_end - entropy_start (nats; within-run difference)")


def _reward_tag(run) -> str:
    kind = analysis.format_value(analysis.config_value(run, "reward.kind"))
    if kind == "random_bernoulli":
        return f"{kind} p={analysis.format_value(analysis.config_value(run, 'reward.p'))}"
    return kind


def decide_fig4(ev: Evidence) -> list[dict]:
    out = []
    for label in ev.runs:
        report = _report(ev.runs[label])
        pr = report.per_run.assign(_reward=[_reward_tag(r) for r in report.runs])  # per_run rows follow report.runs
        for tag, rows in pr.groupby("_reward", sort=False):
            sub = f"{label}:{tag}" if pr["_reward"].nunique() > 1 else label
            out.append(_entropy_change(report, rows, sub, f"{label} with {tag} rewards at 0.2/0.2 lowers entropy"))
        ev.tables.append((f"Every run of {label}", per_run_rows(report, ["entropy_start", "entropy_end", "entropy_change"])))
        ev.figures.append((f"entropy-{label.replace(':', '-')}.png", label, "entropy", {}))
    return out


def _probed_tiny(seeds: int, steps: int) -> list:
    return [built_sweep("lm", "probed-tiny", "tiny-cpu", seeds, steps, fixed={**SYMMETRIC, "log.clip_probe_every": 1}),
            SimPlan("sim", f"sim-bernoulli-n{seeds}", ((0.2, 0.2),), seeds, (("reward", "bernoulli"),))]


def decide_thm(ev: Evidence) -> list[dict]:
    out = []
    sim = _report(ev.runs["sim"])
    for thm in ("thm1", "thm2"):
        shares = []
        for run in sim.runs:
            c = analysis.Columns.of_run(run)
            shares.append(analysis.sign_agreement(c[f"{thm}_drift_exact"], c["clip_attributed_dH"]))
        out.append(one_sample(np.asarray(shares) - 0.5, f"sim-{thm}",
                              f"tabular simulator: the exact Theorem {thm[-1]} first-order prediction has the sign of the exact clip-attributed entropy change (share of steps - 0.5)",
                              +1, "t across seeds of the per-run sign-agreement share minus 0.5",
                              extra={"shares": [round(float(s), 6) for s in shares]}))
    lm = _report(ev.runs["lm"])
    for thm in ("thm1", "thm2"):
        shares = lm.per_run[f"{thm}_vs_attr_sign_agree"].astype(float).to_numpy()
        out.append(one_sample(shares - 0.5, f"lm-{thm}",
                              f"tiny LM: the sampled Theorem {thm[-1]} prediction ({thm}_drift) has the sign of the probed clip-attributed change (share of probed steps - 0.5)",
                              +1, "t across seeds of the per-run sign-agreement share minus 0.5",
                              extra={"shares": [round(float(s), 6) for s in shares]}))
    ev.tables.append(("Every simulated run", per_run_rows(sim, ["thm1_vs_exact_sign_agree", "thm2_vs_exact_sign_agree",
                                                                "thm1_vs_exact_rel_rmse", "thm2_vs_exact_rel_rmse",
                                                                "thm1_vs_attr_sign_agree", "thm2_vs_attr_sign_agree"])))
    ev.tables.append(("Every LM run", per_run_rows(lm, ["n_probed", "n_clip_steps", "thm1_vs_attr_sign_agree",
                                                        "thm2_vs_attr_sign_agree", "thm1_vs_attr_pearson", "thm2_vs_attr_pearson"])))
    ev.figures += [("theory-lm.png", "lm", "theory", {}), ("attribution-lm.png", "lm", "attribution", {})]
    return out


BRACKETS = {"thm1_low": "(7) E[Q] - E[Q|X] >= 0", "thm1_high": "(7) E[Q] - E[Q|Y] >= 0",
            "thm2_low": "(8) E[-log pi|X] - H >= 0", "thm2_high": "(8) E[-log pi|Y] - H >= 0"}


def _brackets_tiny(seeds: int, steps: int) -> list:
    return [built_sweep("lm", "random-tiny", "tiny-cpu", seeds, steps, fixed={**SYMMETRIC, "log.clip_probe_every": 0})]


def decide_brackets(ev: Evidence) -> list[dict]:
    report = _report(ev.runs["lm"])
    values = {name: [] for name in BRACKETS}
    clusters = []
    for run in report.runs:
        c = analysis.Columns.of_run(run)
        for name in BRACKETS:
            values[name].append(c[name])
        clusters += [str(run.path)] * c.n
    out = [clustered_mean(np.concatenate(values[name]), clusters, name, f"condition {text} along random-reward training", +1,
                          "mean over steps, SE clustered by run (CR1), df = runs - 1") for name, text in BRACKETS.items()]
    ev.tables.append(("Every run (share of steps with a positive bracket)",
                      per_run_rows(report, [f"{n}_pos_share" for n in BRACKETS])))
    ev.figures.append(("brackets.png", "lm", "theory", {}))
    return out


def _fig5_paper(seeds: int, steps: int) -> list:
    return [shipped_sweep("lm", "paper-gsm8k-clip-low", seeds, steps)]


def decide_fig5(ev: Evidence) -> list[dict]:
    report = _report(ev.runs["lm"])
    out = [
        paired_end(report, "no-clip-high", "removing clip-high (0.2/inf vs 0.2/0.2) raises entropy", +1, (0.2, math.inf), (0.2, 0.2)),
        paired_end(report, "no-clip-low", "removing clip-low (1.0/0.2 vs 0.2/0.2) lowers entropy", -1, (1.0, 0.2), (0.2, 0.2)),
        paired_end(report, "above-collapse", "0.15/inf keeps entropy above 0.2/0.2 (no collapse)", +1, (0.15, math.inf), (0.2, 0.2)),
        paired_end(report, "below-explosion", "0.15/inf keeps entropy below 0.1/inf (no explosion)", -1, (0.15, math.inf), (0.1, math.inf)),
    ]
    ev.tables.append(("Every run", per_run_rows(report, ["entropy_start", "entropy_end", "entropy_change"])))
    ev.figures += [("entropy.png", "lm", "entropy", {}), ("paired.png", "lm", "paired", {})]
    return out


def decide_fig67(ev: Evidence) -> list[dict]:
    from clipctl.analysis import AnalysisError

    report = _report(ev.runs["lm"])
    pr = report.per_run
    pass_cols = sorted(c for c in pr.columns if c.startswith("eval_") and c.endswith("_pass_at_k_last"))
    if not pass_cols:
        raise AnalysisError("the runs have no eval summaries (eval/summary.parquet); evaluate their checkpoints with "
                            "clipctl eval-passk (docs/evaluation.md), then run reproduce again")
    out = []
    by = {(analysis.format_value(r["algo.eps_low"]), analysis.format_value(r["algo.eps_high"]), r["train.seed"]): r
          for r in pr.to_dict("records")}
    for col in pass_cols:
        mean_col = col.replace("_pass_at_k_last", "_mean_at_n_last")
        for lo, hi in ((0.15, math.inf), (0.2, math.inf)):
            for metric, what in ((col, "pass@k"), (mean_col, "mean@k")):
                diffs = [by[(analysis.format_value(lo), analysis.format_value(hi), s)][metric] - r[metric]
                         for (l, h, s), r in by.items() if (l, h) == ("0.2", "0.2")
                         and (analysis.format_value(lo), analysis.format_value(hi), s) in by]
                tag = col[len("eval_"):-len("_pass_at_k_last")]
                out.append(one_sample(diffs, f"{tag}:{to_text(lo)}/{to_text(hi)}:{what}",
                                      f"{to_text(lo)}/{to_text(hi)} vs 0.2/0.2: {what} at the last checkpoint is not lower ({tag})",
                                      +1, "paired t across seeds (last checkpoint)", extra={"paired": True}))
    ev.tables.append(("Every run", per_run_rows(report, pass_cols)))
    ev.figures.append(("passk.png", "lm", "passk", {}))
    return out


FAMILY_KEY = "algo.policy_loss"


def _family_plans(sweep: str) -> Callable[[int, int], list]:
    return lambda seeds, steps: [shipped_sweep("lm", sweep, seeds, steps)]


def decide_families(ev: Evidence) -> list[dict]:
    """Per policy loss, the directional effect of each side (docs/losses.md's events): the clustered regression
    intercept of ``clip_low_attributed_dH`` (the paper: > 0) and of ``clip_high_attributed_dH`` (< 0)."""
    runs = analysis.load_runs([str(p) for p in ev.runs["lm"]])
    report = analysis.build_report(runs, [FAMILY_KEY])  # every other differing key is a function of the family
    reg = report.regression()
    out = []
    for family in sorted({analysis.format_value(analysis.config_value(r, FAMILY_KEY)) for r in runs}):
        for side, direction, verb in (("low", +1, "raises"), ("high", -1, "lowers")):
            column = f"clip_{side}_attributed_dH"
            sub, statement = f"{family}:clip-{side}", f"{family}: its clip-{side} side {verb} entropy (intercept {'>' if direction > 0 else '<'} 0)"
            row = reg[(reg["attribution"] == column) & reg[FAMILY_KEY].map(lambda v: analysis.format_value(v) == family)]
            if row.empty or not math.isfinite(float(row.iloc[0]["intercept"])):
                out.append(estimate(sub, statement, direction, f"clustered regression intercept of {column} (CR1 by run)",
                                    n=0, mean=math.nan, se=math.nan, df=None,
                                    extra={"note": "no probed step where this side acted"}))
                continue
            r = row.iloc[0]
            g = int(r["n_clusters"])
            out.append(estimate(sub, statement, direction,
                                f"clustered regression intercept of {column} (CR1 by run, df = runs - 1)",
                                n=g, mean=float(r["intercept"]), se=float(r["intercept_se"]), df=g - 1 if g > 1 else None,
                                extra={"n_steps": int(r["n_steps"]), "slope": float(r["slope"]),
                                       "slope_se": float(r["slope_se"])}))
    ev.tables.append(("Attribution regression per policy loss (intercept: the side's effect at zero unclipped change; "
                      "SE clustered by run)", regression_rows(report)))
    families = set(report.per_run[FAMILY_KEY].map(analysis.format_value))
    if "vanilla" in families and len(families) > 1:
        paired = report.paired(f"{FAMILY_KEY}=vanilla")
        ev.tables.append(("End-of-run entropy minus vanilla's, same seed (paired t across seeds; no paper direction)",
                          paired[paired["quantity"] == "entropy_end"].drop(columns=["step"], errors="ignore")))
    ev.tables.append(("Every run", per_run_rows(report, ["entropy_start", "entropy_end", "avg_clip_low_frac",
                                                        "avg_clip_high_frac", "n_probed"])))
    by_family = {"group_by": [FAMILY_KEY]}  # the other differing keys (each family's bounds) follow from it
    ev.figures += [("entropy.png", "lm", "entropy", by_family), ("attribution.png", "lm", "attribution", by_family)]
    return out


TINY_COST = "tiny-cpu LM runs on a 2-core CPU"
CLAIMS: dict[str, Claim] = {c.id: c for c in (
    Claim(
        "fig1-fig2", "Figures 1 and 2, conditions (7) and (8)",
        "we empirically observe that Inequalities 7 are typically satisfied in practice [...] Inequalities 8 are typically satisfied in practice",
        "random-reward runs at 0.2/0.2 (the brackets are logged every step)",
        "each bracket's mean over steps, SE clustered by run; paper: > 0",
        {"tiny": Scale(3, 30, "3 runs x 30 steps of tiny-cpu, no probe: about 3 min on 2 cores",
                       "the built-in tiny model, not the paper's 1.5B instruct models", _brackets_tiny, jobs=2)},
        decide_brackets,
    ),
    Claim(
        "thm1-thm2", "Theorems 1 and 2",
        "clip-low increases entropy and clip-high decreases entropy [...] the entropy change is approximated by the first-order terms",
        "tabular simulator runs at 0.2/0.2 (exact) and probed tiny LM runs at 0.2/0.2",
        "per-run share of steps where the first-order prediction has the sign of the clip-attributed change, minus 0.5; t across seeds; paper: > 0",
        {"tiny": Scale(3, 10, "3 simulated runs (seconds) + 3 probed tiny-cpu runs x 10 steps: about 3 min on 2 cores",
                       "first order only: large clipped steps can leave the linear regime; the built-in tiny LM", _probed_tiny, jobs=2)},
        decide_thm,
    ),
    Claim(
        "fig3", "Figure 3",
        "both clip-high and clip-low influence the entropy, consistent with our theoretical predictions",
        "random-reward runs of 0.2/0.2, 0.2/inf, 1.0/0.2 and 0.1/inf, the same seeds in each, probed",
        "paired end-of-run entropy differences across seeds (0.1/inf - 0.2/inf > 0; 0.2/inf - 0.2/0.2 > 0) and, at 0.2/0.2, "
        "the clustered regression intercept of the total clip-attributed change (< 0: clip-high dominates)",
        {"tiny": Scale(3, 50, "the cpu-random-reward sweep: 12 runs x 50 steps, about 16 min on 2 idle cores (--jobs 2)",
                       "the built-in tiny model, far from the paper's 1.5B instruct model", _fig3_plans("cpu-random-reward"), jobs=2),
         "smollm2": Scale(5, 4, "the smollm2-random-reward-ablation sweep: 20 runs x 4 probed steps, about 1.5 h on 2 cores",
                          "SmolLM2-135M with 2 x 8 x 32 tokens per step: far from the paper's 1.5B model and hundreds of steps",
                          _fig3_plans("smollm2-random-reward-ablation"), jobs=2),
         "paper": Scale(3, 300, "the paper-random-reward-ablation grid (12 settings) x 3 seeds on GPUs (DeepSpeed, vLLM)",
                        "values the paper does not state are marked in the presets", _fig3_plans("paper-random-reward-ablation"))},
        decide_fig3,
    ),
    Claim(
        "fig4", "Figure 4",
        "Entropy change of different base models when trained with random rewards under symmetric clipping [...] with random rewards sampled from various probability distributions",
        "0.2/0.2 random-reward runs per model and per reward distribution",
        "per setting, the t interval across seeds of entropy_end - entropy_start; paper: < 0",
        {"tiny": Scale(3, 30, "6 tiny-cpu runs x 30 steps (Bernoulli and Gaussian rewards) + 6 simulated runs: about 5 min on 2 cores",
                       "one LM (tiny) and the tabular simulator stand in for 'across models'", _fig4_tiny, jobs=2),
         "paper": Scale(3, 300, "3 models + 4 reward distributions x 3 seeds on GPUs",
                        "values the paper does not state are marked in the presets", _fig4_paper)},
        decide_fig4,
    ),
    Claim(
        "fig5", "Figure 5",
        "The clip-low value eps_low = 0.15 balances entropy, preventing entropy collapse and entropy explosion",
        "GSM8K-reward runs of 0.2/0.2, 1.0/0.2, 0.2/inf, 0.15/inf, 0.1/inf, the same seeds in each",
        "paired end-of-run entropy differences across seeds (see the sub-statements)",
        {"paper": Scale(3, 300, "5 settings x 3 seeds of Qwen2.5-3B-Instruct on GSM8K (GPUs)",
                        "needs verifiable rewards on a model that can solve GSM8K: no CPU scale decides it",
                        _fig5_paper)},
        decide_fig5,
    ),
    Claim(
        "fig6-fig7", "Figures 6 and 7",
        "While all settings configurations show comparable mean@8 performance, training setups with high entropy show higher pass@8 performance",
        "the fig5 runs with eval summaries (clipctl eval-passk on their checkpoints)",
        "paired pass@k and mean@k differences at the last checkpoint, entropy-preserving setting - 0.2/0.2; paper: pass@k > 0, mean@k not lower",
        {"paper": Scale(3, 300, "the fig5 runs plus pass@k evaluation (GPUs)",
                        "needs verifiable rewards and pass@k on a capable model: no CPU scale decides it", _fig5_paper)},
        decide_fig67,
    ),
    Claim(
        "loss-families", "Theorems 1 and 2, beyond PPO-clip (docs/losses.md)",
        "clip-low increases entropy and clip-high decreases entropy",
        "random-reward runs of each policy loss (vanilla, cispo, gspo, dppo_tv, dppo_kl, clip_cov, kl_cov), the same seeds, probed every step",
        "per policy loss and side, the clustered regression intercept of the side's Shapley attribution on the unclipped change "
        "(low: > 0, high: < 0: the paper's direction carried to each family's own low and high sides)",
        {"tiny": Scale(5, 30, "the loss-families sweep: 35 runs x 30 probed steps, about 2 min a run on one core (--jobs 2: ~40 min)",
                       "the built-in tiny model at each family's default bounds (docs/losses.md: what those defaults are)",
                       _family_plans("loss-families"), jobs=2),
         "smollm2": Scale(2, 4, "the smollm2-loss-families sweep: vanilla, dppo_tv, clip_cov x 2 seeds x 4 probed steps, "
                          "5-8 min a run on a busy 2-core CPU (--jobs 2: about 25 min)",
                          "SmolLM2-135M, 2 x 8 x 32 tokens a step, 4 steps: few clip events, few seeds",
                          _family_plans("smollm2-loss-families"), jobs=2)},
        decide_families,
    ),
)}


def get_claim(claim_id: str) -> Claim:
    from clipctl.errors import ConfigError

    if claim_id not in CLAIMS:
        raise ConfigError(f"unknown claim '{claim_id}'; valid: {', '.join(CLAIMS)} (see clipctl reproduce list)")
    return CLAIMS[claim_id]


def get_scale(claim: Claim, scale: str) -> Scale:
    from clipctl.errors import ConfigError

    if scale not in claim.scales:
        raise ConfigError(f"claim {claim.id} has no runs at scale '{scale}'; scales it has: {', '.join(claim.scales)}")
    return claim.scales[scale]
