"""Markdown table of the policy-loss comparison (issue 25, docs/losses.md "The comparison").

    .venv/bin/python scripts/family_table.py 'runs/loss-families/*' --label "default bounds"
    .venv/bin/python scripts/family_table.py 'runs/loss-families-matched/*' 'runs/loss-families/vanilla*' \
        --label "matched bounds"

Per ``algo.policy_loss``: the clip-side shares (mean over runs of each run's
mean share of tokens per step), the covariance shares, the Theorem 2
brackets of its regions (``thm2_low``, ``thm2_high``: mean over runs of each
run's mean over the steps where the region is not empty), entropy at the end
(mean and sd over seeds), the paired end-of-run entropy difference from
``vanilla`` (same seed: same prompts, sampler uniforms and first step; t
interval over seeds, ``analysis.paired_effects``), and the regression
intercept of each side's Shapley attribution on the unclipped step's change
(the directional effect at zero unclipped change, run-clustered SE;
``analysis.attribution_regression``) with the slope (damping). Readings
follow ``effects.reading`` (resolved only beyond max(2, t) SE).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from clipctl.analysis import build_report, load_runs  # noqa: E402

KEY = "algo.policy_loss"


def _pm(mean: float, err: float, digits: int = 4) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{mean:+.{digits}f} ± {err:.{digits}f}" if math.isfinite(err) else f"{mean:+.{digits}f}"


def _bracket(v: pd.Series) -> str:
    v = v[v.notna()]
    return f"{v.mean():+.2f}" if len(v) else "-"


def table(patterns: list[str]) -> str:
    report = build_report(load_runs(patterns), [KEY])
    per_run = report.per_run.copy()
    cov = {str(r.path): r.steps for r in report.runs}  # the covariance shares are not in the per-run summary
    for side in ("low", "high"):
        per_run[f"avg_cov_{side}_frac"] = [cov[p][f"cov_{side}_frac"].mean() for p in per_run["path"]]
        per_run[f"avg_thm2_{side}"] = [cov[p][f"thm2_{side}"].mean() for p in per_run["path"]]  # NaN steps skipped
    paired = report.paired(f"{KEY}=vanilla")
    end = paired[paired["quantity"] == "entropy_end"].set_index(KEY)
    reg = report.regression()
    rows = ["| policy loss | runs | clip-low share (%) | clip-high share (%) | cov low / high (%) | entropy end (mean ± sd) "
            "| Thm 2 brackets low / high (nats) | end minus vanilla: mean [95 % CI], +/- seeds "
            "| clip-low intercept (nats/step) | clip-high intercept | slopes low / high |",
            "|---|---:|---:|---:|---|---|---|---|---|---|---|"]
    for loss, g in per_run.groupby(KEY, sort=False):
        r = reg[reg[KEY] == loss].set_index("attribution")

        def side(name: str) -> str:
            if name not in r.index or not r.loc[name, "n_steps"]:
                return "-"
            row = r.loc[name]
            return f"{_pm(row['intercept'], row['intercept_se'])} ({row['intercept_reading']})"

        def slope(name: str) -> str:
            if name not in r.index or not r.loc[name, "n_steps"] or not math.isfinite(r.loc[name, "slope"]):
                return "-"
            return f"{r.loc[name, 'slope']:+.2f}"

        if loss in end.index:
            e = end.loc[loss]
            vs = (f"{e['mean']:+.2f} [{e['ci_low']:+.2f}, {e['ci_high']:+.2f}], "
                  f"{int(e['n_pos'])}+/{int(e['n_neg'])}-: {e['reading']}")
        else:
            vs = "(reference)"
        cov = f"{100 * g['avg_cov_low_frac'].mean():.2f} / {100 * g['avg_cov_high_frac'].mean():.2f}"
        rows.append(
            f"| {loss} | {len(g)} | {100 * g['avg_clip_low_frac'].mean():.2f} | {100 * g['avg_clip_high_frac'].mean():.2f} "
            f"| {cov} | {g['entropy_end'].mean():.2f} ± {g['entropy_end'].std():.2f} "
            f"| {_bracket(g['avg_thm2_low'])} / {_bracket(g['avg_thm2_high'])} | {vs} "
            f"| {side('clip_low_attributed_dH')} | {side('clip_high_attributed_dH')} "
            f"| {slope('clip_low_attributed_dH')} / {slope('clip_high_attributed_dH')} |"
        )
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="run directories or glob patterns (vanilla runs of the same seeds included)")
    ap.add_argument("--label", default="", help="a heading line above the table")
    args = ap.parse_args(argv)
    text = table(args.runs)
    print(f"**{args.label}**\n\n{text}" if args.label else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
