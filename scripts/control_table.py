"""Held-out tables of the entropy-control experiment (issue 24, docs/entropy-control.md).

    .venv/bin/python scripts/control_table.py 'runs/entropy-control-fixed/*' 'runs/entropy-control-two-sided/*' \
        --seeds 2,3,4,5,6 --out docs/entropy-control/held-out

Arms are told apart by their config (reward kind, controller, target, clip
bounds), not by run names. A condition is a reward kind and a target (a number
or a schedule); its arms are the controller runs with that target and every
fixed run (no ``algo.entropy_target``) of the same reward kind, scored against
the per-step target the controller runs of the same seed logged
(``entropy_target`` column), so one fixed run serves every target. Per arm and
seed: ``analysis.target_tracking`` (last-half tracking error of each target
piece, overshoot, settling within 10 %), reward over the last half, collapse
(end < 25 % of start) and explosion (> 150 %). Per arm: the mean and worst
tracking error over the seeds, and the paired difference (same seed: same
prompts, sampler uniforms and first step) of tracking error from the best
fixed arm of the condition (lowest mean over the same seeds; chosen on the
seeds reported, which favours the fixed arm) with its t interval
(``effects.paired_summary``) and reading (``effects.reading``).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from clipctl.analysis import COLLAPSE_RATIO, EXPLODE_RATIO, config_value, load_runs, target_tracking  # noqa: E402
from clipctl.effects import paired_summary, reading  # noqa: E402


def _arm(run) -> str:
    ctrl = config_value(run, "algo.entropy_controller")
    if ctrl == "off":
        return f"fixed {config_value(run, 'algo.eps_low'):g}/{config_value(run, 'algo.eps_high'):g}"
    gains = f"kp {config_value(run, 'algo.controller_kp'):g}, ki {config_value(run, 'algo.controller_ki'):g}"
    if config_value(run, "algo.controller_model") != "none":  # a key older runs lack reads as its default
        frac, gain = config_value(run, "algo.controller_model_frac"), config_value(run, "algo.controller_model_gain")
        gains = f"thm2 model, frac {frac:g}, gain {gain:g}, " + gains
    if ctrl == "bonus":
        gains += f", scale {config_value(run, 'algo.entropy_coef_scale'):g}"
        floor = config_value(run, "algo.entropy_coef_min")
        if floor:
            gains += f", signed to {floor:g}"
    return f"{ctrl} controller ({gains})"


def _target_label(run) -> str:
    a = run.config.get("algo", {})
    schedule = a.get("entropy_target_schedule")
    return f"{a.get('entropy_target')}" + (f", then {schedule}" if schedule else "")


def score(entropy: np.ndarray, target: np.ndarray, reward: np.ndarray) -> dict:
    n = min(len(entropy), len(target))
    h, t = entropy[:n], target[:n]
    row = {k: v for k, v in target_tracking(h, t).items()}
    row["track_err_pct"] = 100 * row.pop("track_err_rel")
    row["overshoot_pct"] = 100 * row.pop("overshoot_rel")
    row["reward_last_half"] = float(np.nanmean(reward[n // 2:n]))
    row["collapsed"] = bool(h[-1] < COLLAPSE_RATIO * h[0])
    row["exploded"] = bool(h[-1] > EXPLODE_RATIO * h[0])
    return row


def per_seed(runs, seeds: set[int]) -> pd.DataFrame:
    rows, fixed, targets = [], [], {}
    for run in runs:
        seed = int(config_value(run, "train.seed"))
        if seed not in seeds:
            continue
        s = run.steps
        kind = config_value(run, "reward.kind")
        item = (kind, seed, _arm(run), s["entropy"].to_numpy(float), s["reward_mean"].to_numpy(float))
        if run.config.get("algo", {}).get("entropy_target") is None:
            fixed.append(item)
            continue
        label = _target_label(run)
        targets.setdefault((kind, label, seed), s["entropy_target"].to_numpy(float))
        rows.append({"reward": kind, "target": label, "seed": seed, "arm": item[2],
                     **score(item[3], s["entropy_target"].to_numpy(float), item[4])})
    for kind, seed, arm, h, r in fixed:
        for (k, label, s), t in targets.items():
            if k == kind and s == seed:
                rows.append({"reward": kind, "target": label, "seed": seed, "arm": arm, **score(h, t, r)})
    return pd.DataFrame(rows)


def _paired(wide: pd.DataFrame, new: str, old: str) -> dict:
    """``new`` minus ``old`` tracking error paired by seed (rows of ``wide``): the summary and its reading."""
    p = paired_summary((wide[new] - wide[old]).to_numpy())
    return {**p, "reading": reading(p["mean"], p["se"], p["n_pairs"] - 1, "worse", "better")}


def arm_table(df: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (kind, label), cond in df.groupby(["reward", "target"], sort=True):
        wide = cond.pivot(index="seed", columns="arm", values="track_err_pct")
        fixed_arms = [a for a in wide.columns if a.startswith("fixed")]
        best = min(fixed_arms, key=lambda a: wide[a].mean()) if fixed_arms else None
        for arm, g in cond.groupby("arm", sort=True):
            g = g.sort_values("seed")
            row = {
                "reward": kind, "target": label, "arm": arm, "n_seeds": len(g),
                "track_err_per_seed": " / ".join(f"{v:.1f}" for v in g["track_err_pct"]),
                "track_err_mean": g["track_err_pct"].mean(), "track_err_worst": g["track_err_pct"].max(),
                "under_10pct": f"{int((g['track_err_pct'] < 10).sum())}/{len(g)}",
                "overshoot_mean": g["overshoot_pct"].mean(),
                "settling_median": g["settling_steps"].median(),
                "unsettled": int(g["settling_steps"].isna().sum()),
                "reward_last_half": g["reward_last_half"].mean(),
                "collapsed": int(g["collapsed"].sum()), "exploded": int(g["exploded"].sum()),
                "best_fixed": best,
            }
            if best is not None and arm != best:
                row.update({f"vs_best_{k}": v for k, v in _paired(wide, arm, best).items()})
            out.append(row)
    return pd.DataFrame(out)


def versus_table(df: pd.DataFrame, new: str, old: str) -> pd.DataFrame:
    """Per condition, ``new`` minus ``old`` tracking error paired by seed; arms picked by exact label."""
    out = []
    for (kind, label), cond in df.groupby(["reward", "target"], sort=True):
        wide = cond.pivot(index="seed", columns="arm", values="track_err_pct")
        if new not in wide or old not in wide:
            continue
        out.append({"reward": kind, "target": label, "new": new, "old": old, **_paired(wide, new, old)})
    return pd.DataFrame(out)


def versus_markdown(table: pd.DataFrame) -> str:
    lines = [f"**{table['new'].iloc[0]} minus {table['old'].iloc[0]}** (tracking error, % points, paired by seed)", "",
             "| reward, target | pairs | mean [95 % CI] | +/- seeds | reading |", "|---|---:|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['reward']}, {r['target']} | {int(r['n_pairs'])} | {r['mean']:+.1f} [{r['ci_low']:+.1f}, "
                     f"{r['ci_high']:+.1f}] | {int(r['n_pos'])}+/{int(r['n_neg'])}- | {r['reading']} |")
    return "\n".join(lines + [""])


def _fmt(v, digits=1) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def markdown(table: pd.DataFrame) -> str:
    lines = []
    for (kind, label), cond in table.groupby(["reward", "target"], sort=True):
        lines += [f"**{kind}, target {label}** (best fixed arm: {cond['best_fixed'].iloc[0]})", "",
                  "| arm | tracking error per seed (%) | mean | worst | < 10 % | overshoot (%) | settling (median steps; unsettled) "
                  "| reward | collapsed / exploded | minus best fixed: mean [95 % CI], +/- seeds |",
                  "|---|---|---:|---:|---|---:|---|---:|---|---|"]
        for _, r in cond.iterrows():
            vs = "(baseline)" if r["arm"] == r["best_fixed"] else "(no fixed arm)" if r["best_fixed"] is None else (
                f"{r['vs_best_mean']:+.1f} [{r['vs_best_ci_low']:+.1f}, {r['vs_best_ci_high']:+.1f}], "
                f"{int(r['vs_best_n_pos'])}+/{int(r['vs_best_n_neg'])}-: {r['vs_best_reading']}")
            lines.append(
                f"| {r['arm']} | {r['track_err_per_seed']} | {_fmt(r['track_err_mean'])} | {_fmt(r['track_err_worst'])} "
                f"| {r['under_10pct']} | {_fmt(r['overshoot_mean'])} | {_fmt(r['settling_median'], 0)}; {r['unsettled']} "
                f"| {_fmt(r['reward_last_half'], 3)} | {r['collapsed']} / {r['exploded']} | {vs} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="run directories or glob patterns (fixed and controller runs)")
    ap.add_argument("--seeds", default="2,3,4,5,6", help="seeds to report (the held-out ones)")
    ap.add_argument("--out", help="write OUT.md, OUT-arms.csv and OUT-seeds.csv too")
    ap.add_argument("--versus", action="append", default=[], metavar="NEW=OLD",
                    help="also a paired table of arm NEW minus arm OLD (exact arm labels); repeatable")
    args = ap.parse_args(argv)
    seeds = {int(s) for s in args.seeds.split(",")}
    df = per_seed(load_runs(args.runs), seeds)
    if df.empty:
        raise SystemExit("Error: no controller runs with those seeds; check the patterns and --seeds")
    table = arm_table(df)
    text = markdown(table)
    for pair in args.versus:
        new, sep, old = pair.partition("=")
        vs = versus_table(df, new.strip(), old.strip()) if sep else pd.DataFrame()
        if vs.empty:
            raise SystemExit(f"Error: --versus {pair!r} names no two arms of one condition; use NEW=OLD with the "
                             f"arm labels of the table, one of: {'; '.join(sorted(df['arm'].unique()))}")
        text += "\n" + versus_markdown(vs)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.md").write_text(text)
        table.to_csv(f"{args.out}-arms.csv", index=False)
        df.to_csv(f"{args.out}-seeds.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
