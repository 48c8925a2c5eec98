"""Markdown table of a clip ablation, per clip setting, with every probed step of every seed pooled.

    .venv/bin/python scripts/ablation_table.py 'runs/smollm2-random-reward-ablation/*' --label SmolLM2-135M
    .venv/bin/python scripts/ablation_table.py 'runs/issue12*/cpu-random-reward/*' --label builtin:tiny --max-step 4

``clipctl analyze-clip-stats`` averages within a run, then across runs; this
table pools the steps of all seeds of a setting instead, which is what a short
run with few probed steps per seed needs: the per-step clip-attributed
entropy changes (docs/definitions.md section 8) with their standard error
over steps (sd / sqrt(n)), the share of steps on which each clip moved entropy
the paper's way, the signs of the Theorem 2 brackets, how often the
predicted drift has the sign of the attributed change, and each setting's
final entropy against the baseline setting's run with the same seed (same
prompts at every step, so the difference is paired). ``--max-step`` keeps
only the first steps (to set a long run next to a short one).

The attributions are the Shapley split, recomputed from the replay entropies
(``analysis.attribution_columns``, so runs logged before the split read the
same); "acted" comes from the event counts (``analysis.clip_events``). The
plain means mix the clip's direction with damping of the step's own change
(docs/analysis.md, "Attribution regression"): they are description. The
directional effect is the regression intercept of ``clipctl
analyze-clip-stats RUNS --regression``, the paired setting effect with its
interval that of ``--paired``; this table does not replace them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from clipctl.analysis import (  # noqa: E402
    Columns, clip_events, config_value, format_value, load_runs, mean_se,
)


def fmt_mean_se(v: np.ndarray) -> str:
    mean, se, n = mean_se(v)
    return f"{mean:+.4f} ± {se:.4f} (n={n})" if n else "-"


def share(mask: np.ndarray, of: np.ndarray) -> str:
    n = int(of.sum())
    return f"{(mask & of).sum() / n:.2f} ({int((mask & of).sum())}/{n})" if n else "-"


def _steps(runs: list, max_step: int | None) -> list[pd.DataFrame]:
    out = []
    for run in runs:
        s = run.steps if max_step is None else run.steps[run.steps["step"] <= max_step]
        out.append(s.assign(seed=config_value(run, "train.seed")))
    return out


def paired_difference(steps: list[pd.DataFrame], base: list[pd.DataFrame]) -> np.ndarray:
    """Last ``entropy_post`` minus the baseline setting's, run by run with the same seed (same prompts)."""
    last = {int(s["seed"].iloc[0]): float(s["entropy_post"].iloc[-1]) for s in base if len(s)}
    return np.array([
        float(s["entropy_post"].iloc[-1]) - last[int(s["seed"].iloc[0])]
        for s in steps if len(s) and int(s["seed"].iloc[0]) in last
    ])


def setting_row(label: str, runs: list, max_step: int | None, base: list | None = None) -> dict:
    steps = _steps(runs, max_step)
    df = pd.concat(steps, ignore_index=True)
    arrays = {c: df[c].to_numpy(dtype=float, na_value=np.nan) for c in df if pd.api.types.is_numeric_dtype(df[c])}
    col = Columns.of_arrays(arrays)
    probed = np.isfinite(col["clip_attributed_dH"])
    low, high, attr = col["clip_low_attributed_dH"], col["clip_high_attributed_dH"], col["clip_attributed_dH"]
    events = clip_events(col)
    acted_low, acted_high = probed & events["low"], probed & events["high"]
    drift = col["thm2_drift"]
    both = probed & events["any"] & (attr != 0) & np.isfinite(drift) & (drift != 0)
    change = [
        float(s["entropy_post"].iloc[-1] - s["entropy"].iloc[0]) for s in steps if len(s)
    ]
    b_low, b_high = col["thm2_low"], col["thm2_high"]
    return {
        "setting": label,
        "runs x steps": f"{len(runs)} x {int(df.groupby('seed')['step'].count().max())}",
        "entropy at step 1": f"{np.mean([s['entropy'].iloc[0] for s in steps]):.3f}",
        "entropy change": fmt_mean_se(np.array(change)),
        "final entropy minus baseline's (same seed)": (
            fmt_mean_se(paired_difference(steps, _steps(base, max_step))) if base else "-"
        ),
        "clip_low_frac": f"{np.nanmean(col['clip_low_frac']) * 100:.2f} %",
        "clip_high_frac": f"{np.nanmean(col['clip_high_frac']) * 100:.2f} %",
        "probed (clip acted)": f"{int(probed.sum())} ({int((probed & events['any']).sum())})",
        "clip-low Shapley dH per step, plain mean (damping-confounded)": fmt_mean_se(low[acted_low]),
        "clip-high Shapley dH per step, plain mean (damping-confounded)": fmt_mean_se(high[acted_high]),
        "clip-low raised": share(low > 0, acted_low),
        "clip-high lowered": share(high < 0, acted_high),
        "thm2_low > 0": share(b_low > 0, np.isfinite(b_low)),
        "thm2_high > 0": share(b_high > 0, np.isfinite(b_high)),
        "thm2_drift sign = attributed": share(np.sign(drift) == np.sign(attr), both),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="run directories or quoted globs")
    ap.add_argument("--label", default="", help="prefix of each row's setting (e.g. the model)")
    ap.add_argument("--max-step", type=int, default=None, help="only steps <= this")
    ap.add_argument("--transpose", action="store_true", help="one column per setting")
    ap.add_argument("--baseline", default="0.2/0.2", help="setting the others' final entropy is compared with")
    args = ap.parse_args()
    runs = load_runs(args.runs)
    groups: dict[str, list] = {}
    for run in runs:
        key = f"{format_value(config_value(run, 'algo.eps_low'))}/{format_value(config_value(run, 'algo.eps_high'))}"
        groups.setdefault(key, []).append(run)
    order = ["0.2/0.2", "0.2/inf", "1/0.2", "0.1/inf"]
    keys = sorted(groups, key=lambda k: (order.index(k) if k in order else len(order), k))
    base = groups.get(args.baseline)
    table = pd.DataFrame([
        setting_row(f"{args.label} {k}".strip(), groups[k], args.max_step, base if k != args.baseline else None)
        for k in keys
    ])
    if args.transpose:
        table = table.set_index("setting").T.reset_index().rename(columns={"index": "quantity"})
    print("| " + " | ".join(table.columns) + " |")
    print("|" + "---|" * len(table.columns))
    for row in table.itertuples(index=False):
        print("| " + " | ".join(str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
