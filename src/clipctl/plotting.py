"""Tables -> figures (matplotlib, Agg; no pyplot state). No analysis beyond ``clipctl.analysis``.

Runs of one group (by default one clip setting and reward: the seeds of one
configuration) are drawn as the mean across runs with a band (min-max or
±1 sd across runs). Legend labels name the clip settings
(``eps_low=0.2, eps_high=inf``) plus any other group key that varies.
``plot_runs`` returns the ``Figure``; ``save_figure`` writes it atomically.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from clipctl import analysis
from clipctl.errors import ClipctlError
from clipctl.runlog import Run, atomic_write_bytes

KINDS = ("entropy", "clip", "theory", "reward", "passk", "attribution", "dashboard", "control", "paired")
SUFFIXES = (".png", ".svg", ".pdf")
BANDS = ("minmax", "sd")

UNITS = {
    "entropy": "entropy (nats)",
    "fraction": "fraction of tokens",
    "thm1": "bracket (prob x nats)",
    "thm2": "bracket (nats)",
    "reward": "mean reward",
    "dH": "entropy change per step (nats)",
    "dH_cum": "cumulative entropy change (nats)",
    "score": "score (fraction of problems)",
    "paired": "entropy, setting minus baseline (nats)",
}


MAX_SMOOTH = 1_000_000  # a rolling window in steps; far beyond any run, small enough for pandas


class PlotError(ClipctlError):
    """A plot cannot be drawn or written as asked."""


def check_output(out: Path) -> None:
    """Fail early on a suffix matplotlib is not asked to write."""
    if Path(out).suffix.lower() not in SUFFIXES:
        raise PlotError(f"--out '{out}' must end in one of {', '.join(SUFFIXES)}")


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise PlotError(f"unknown plot kind '{kind}'; valid: {', '.join(KINDS)}")


LABEL_WIDTH = 48


def wrap_label(label: str, width: int = LABEL_WIDTH) -> str:
    """A legend label of many ``key=value`` parts broken into lines at ``", "`` so that the legend does not
    squeeze the axes; a label of one part, however long, stays on one line."""
    lines: list[str] = []
    for part in label.split(", "):
        if lines and len(lines[-1]) + 2 + len(part) <= width:
            lines[-1] += ", " + part
        else:
            lines.append(part)
    return ",\n".join(lines)


class _Style:
    """Group -> colour and legend label, shared by every panel of a figure."""

    def __init__(self, runs: Sequence[Run], keys: Sequence[str]):
        self.keys = list(keys)
        values = [{k: analysis.config_value(r, k) for k in keys} for r in runs]
        groups = list(dict.fromkeys(analysis.group_label(v, keys) for v in values))
        shown = analysis.label_keys(values, keys)
        self.label = {}
        for v in values:
            self.label[analysis.group_label(v, keys)] = wrap_label(analysis.group_label(v, shown))
        cycle = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9"]
        self.color = {g: cycle[i % len(cycle)] for i, g in enumerate(groups)}


class _Plotter:
    def __init__(self, runs, keys, *, x="step", smooth=1, normalize=False, band="minmax", baseline=None):
        if band not in BANDS:
            raise PlotError(f"unknown band '{band}'; valid: {', '.join(BANDS)}")
        if x not in analysis.X_AXES:
            raise PlotError(f"unknown x axis '{x}'; valid: {', '.join(analysis.X_AXES)}")
        self.runs, self.keys = runs, list(keys)
        self.x, self.smooth, self.normalize, self.band = x, smooth, normalize, band
        self.baseline = baseline
        self.style = _Style(runs, self.keys)

    @property
    def xlabel(self) -> str:
        return "training step" if self.x == "step" else "tokens trained on (cumulative)"

    def has(self, metric: str) -> bool:
        for run in self.runs:
            if metric in run.steps and np.isfinite(run.steps[metric].astype(float)).any():
                return True
        return False

    def metric(self, ax, metric, *, suffix="", linestyle="-", normalize=False, cumulative=False) -> int:
        """Mean line + band per group; returns the number of lines drawn."""
        long = analysis.curves(
            self.runs, metric, group_by=self.keys, x=self.x, smooth=self.smooth,
            normalize=normalize, cumulative=cumulative,
        )
        agg = analysis.aggregate_curves(long)
        n = 0
        for group, rows in agg.groupby("group", sort=False):
            xs, mean = rows["x"].to_numpy(), rows["mean"].to_numpy()
            if self.band == "minmax":
                lo, hi = rows["min"].to_numpy(), rows["max"].to_numpy()
            else:
                sd = np.nan_to_num(rows["std"].to_numpy())
                lo, hi = mean - sd, mean + sd
            color = self.style.color[group]
            label = self.style.label[group] + suffix
            ax.plot(xs, mean, color=color, linestyle=linestyle, label=label, marker="." if len(xs) < 3 else None)
            ax.fill_between(xs, lo, hi, color=color, alpha=0.15, linewidth=0)
            n += 1
        return n

    def finish(self, ax, title, ylabel, *, zero_line=False):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(self.xlabel)
        ax.set_ylabel(ylabel)
        if zero_line:
            ax.axhline(0.0, color="0.5", linewidth=0.8, linestyle=":")
        ax.grid(alpha=0.3)
        if any(not line.get_label().startswith("_") for line in ax.get_lines()):
            ax.legend(fontsize=7, loc="best")

    # ------------------------------------------------------------ panels

    def entropy(self, ax):
        self.metric(ax, "entropy", normalize=self.normalize)
        ylabel = "entropy / initial entropy (ratio)" if self.normalize else UNITS["entropy"]
        self.finish(ax, "Policy entropy (Eq. 4, rollout batch under pi_old)", ylabel)

    def clip(self, ax_low, ax_high):
        self.metric(ax_low, "clip_low_frac")
        self.finish(ax_low, "Clip-low: r < 1 - eps_low and A < 0", UNITS["fraction"])
        self.metric(ax_high, "clip_high_frac")
        self.finish(ax_high, "Clip-high: r > 1 + eps_high and A > 0", UNITS["fraction"])

    def clip_both(self, ax):
        self.metric(ax, "clip_low_frac", suffix=" (clip-low)")
        self.metric(ax, "clip_high_frac", suffix=" (clip-high)", linestyle="--")
        self.finish(ax, "Clip fractions (solid: clip-low, dashed: clip-high)", UNITS["fraction"])

    def reward(self, ax):
        self.metric(ax, "reward_mean")
        self.finish(ax, "Reward (batch mean)", UNITS["reward"])


def _keys(runs: Sequence[Run], group_by) -> list[str]:
    keys = analysis.parse_keys(group_by) or analysis.default_group_keys(runs)
    analysis.check_group_keys(runs, keys)
    return keys


def plot_runs(
    paths_or_globs: Sequence[str],
    kind: str,
    *,
    group_by: Optional[Sequence[str] | str] = None,
    normalize: bool = False,
    smooth: int = 1,
    x: str = "step",
    band: str = "minmax",
    baseline: Optional[str] = None,
    note: Optional[Callable[[str], None]] = None,
) -> Figure:
    """Draw one ``kind`` of figure for the runs named by paths or globs (``note``: runs skipped);
    ``baseline``: the ``paired`` kind's baseline setting (``analysis.paired_effects``)."""
    check_kind(kind)
    if not 1 <= smooth <= MAX_SMOOTH:
        raise PlotError(f"--smooth must be at least 1 and at most {MAX_SMOOTH} steps, got {smooth}")
    runs = analysis.load_runs(paths_or_globs, note)
    keys = _keys(runs, group_by)
    p = _Plotter(runs, keys, x=x, smooth=smooth, normalize=normalize, band=band, baseline=baseline)
    n_runs, n_groups = len(runs), len(p.style.color)
    caption = f"{n_runs} run(s) in {n_groups} group(s); line: mean across runs, band: " + (
        "min-max" if band == "minmax" else "±1 sd"
    )
    return _DRAW[kind](p, caption)


def _figure(nrows: int, ncols: int, width: float = 6.0, height: float = 4.0):
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _draw_entropy(p: _Plotter, caption: str) -> Figure:
    fig, axes = _figure(1, 1, 7.0, 4.5)
    p.entropy(axes[0, 0])
    fig.suptitle(f"Entropy\n{caption}", fontsize=9)
    return fig


def _draw_clip(p: _Plotter, caption: str) -> Figure:
    fig, axes = _figure(1, 2)
    p.clip(axes[0, 0], axes[0, 1])
    fig.suptitle(f"Clip events per step (definitions.md section 6)\n{caption}", fontsize=9)
    return fig


def _draw_theory(p: _Plotter, caption: str) -> Figure:
    fig, axes = _figure(2, 2)
    panels = (
        ("thm1_low", "Thm 1 clip-low bracket E[Q] - E[Q|X]", UNITS["thm1"]),
        ("thm1_high", "Thm 1 clip-high bracket E[Q] - E[Q|Y]", UNITS["thm1"]),
        ("thm2_low", "Thm 2 clip-low bracket E[-log pi|X] - H", UNITS["thm2"]),
        ("thm2_high", "Thm 2 clip-high bracket E[-log pi|Y] - H", UNITS["thm2"]),
    )
    for ax, (metric, title, unit) in zip(axes.flat, panels):
        if p.has(metric):
            p.metric(ax, metric)
        p.finish(ax, title, unit, zero_line=True)
    fig.suptitle(
        f"Theory brackets (definitions.md section 7; > 0 means clip-low raises / clip-high lowers entropy)\n{caption}", fontsize=9
    )
    return fig


def _draw_reward(p: _Plotter, caption: str) -> Figure:
    fig, axes = _figure(1, 1, 7.0, 4.5)
    p.reward(axes[0, 0])
    fig.suptitle(f"Reward\n{caption}", fontsize=9)
    return fig


def _draw_passk(p: _Plotter, caption: str) -> Figure:
    ev = analysis.eval_curves(p.runs, group_by=p.keys)
    if ev.empty:
        raise PlotError(
            "none of the runs has eval/summary.parquet; run `clipctl eval-passk` on them first"
        )
    datasets = list(dict.fromkeys(ev["dataset"]))
    agg = analysis.aggregate_eval(ev)
    fig, axes = _figure(1, len(datasets))
    for ax, dataset in zip(axes.flat, datasets):
        rows = agg[agg["dataset"] == dataset]
        for (group, k), sub in rows.groupby(["group", "k"], sort=False):
            color = p.style.color[group]
            xs = sub["step"].to_numpy(dtype=float)
            for col, ls, name in (("pass_at_k", "-", f"pass@{int(k)}"), ("mean_at_n", "--", "mean@n")):
                mean = sub[f"{col}_mean"].to_numpy()
                if p.band == "minmax":
                    lo, hi = sub[f"{col}_min"].to_numpy(), sub[f"{col}_max"].to_numpy()
                else:
                    sd = np.nan_to_num(sub[f"{col}_std"].to_numpy())
                    lo, hi = mean - sd, mean + sd
                ax.plot(xs, mean, color=color, linestyle=ls, marker="o", markersize=3,
                        label=f"{p.style.label[group]}: {name}")
                ax.fill_between(xs, lo, hi, color=color, alpha=0.15, linewidth=0)
        ax.set_title(f"{dataset}: pass@k (solid) and mean@n (dashed)", fontsize=10)
        ax.set_xlabel("training step (checkpoint)")
        ax.set_ylabel(UNITS["score"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"Evaluation (definitions.md section 9)\n{caption}", fontsize=9)
    return fig


def _draw_attribution(p: _Plotter, caption: str) -> Figure:
    if not p.has("clip_attributed_dH"):
        raise PlotError(
            "no probed steps in these runs (clip-probe columns missing or all NaN); "
            "train with --set log.clip_probe_every=N or use clipctl simulate dynamics"
        )
    fig, axes = _figure(1, 3, 5.5, 4.2)
    ax_step, ax_cum, ax_ent = axes[0]
    p.metric(ax_step, "clip_low_attributed_dH", suffix=" (clip-low)")
    p.metric(ax_step, "clip_high_attributed_dH", suffix=" (clip-high)", linestyle="--")
    p.finish(ax_step, "Clip-attributed entropy change per step", UNITS["dH"], zero_line=True)
    p.metric(ax_cum, "clip_low_attributed_dH", suffix=" (clip-low)", cumulative=True)
    p.metric(ax_cum, "clip_high_attributed_dH", suffix=" (clip-high)", linestyle="--", cumulative=True)
    p.finish(ax_cum, "Cumulative clip-attributed change", UNITS["dH_cum"], zero_line=True)
    p.entropy(ax_ent)
    fig.suptitle(
        f"Clip attribution (definitions.md section 8: replay without clipping; solid clip-low, dashed clip-high)\n{caption}",
        fontsize=9,
    )
    return fig


def _draw_dashboard(p: _Plotter, caption: str) -> Figure:
    fig, axes = _figure(2, 2)
    p.entropy(axes[0, 0])
    p.clip_both(axes[0, 1])
    ax = axes[1, 0]
    if p.has("thm2_low"):
        p.metric(ax, "thm2_low", suffix=" (low)")
    if p.has("thm2_high"):
        p.metric(ax, "thm2_high", suffix=" (high)", linestyle="--")
    p.finish(ax, "Thm 2 brackets (solid: clip-low, dashed: clip-high)", UNITS["thm2"], zero_line=True)
    p.reward(axes[1, 1])
    fig.suptitle(f"Dashboard\n{caption}", fontsize=9)
    return fig


def _draw_control(p: _Plotter, caption: str) -> Figure:
    """Entropy against its target, the knobs the controller set, and reward."""
    fig, axes = _figure(2, 2)
    ax = axes[0, 0]
    p.metric(ax, "entropy")
    if p.has("entropy_target"):
        p.metric(ax, "entropy_target", suffix=" (target)", linestyle=":")
    p.finish(ax, "Entropy (Eq. 4, solid) and target (dotted)", UNITS["entropy"])
    ax = axes[0, 1]
    for metric, linestyle in (("eps_low", "-"), ("eps_high", "--")):
        if p.has(metric):
            p.metric(ax, metric, suffix=f" ({metric})", linestyle=linestyle)
    if not p.has("eps_low"):  # runs from before the knobs were logged
        ax.text(0.5, 0.5, "clip bounds not logged by these runs", ha="center", va="center", transform=ax.transAxes)
    p.finish(ax, "Clip bounds used each step (solid: eps_low, dashed: eps_high; inf not drawn)", "bound")
    for ax, metric, title, unit in (
        (axes[1, 0], "entropy_coef", "Entropy-bonus coefficient used each step (bonus controller's knob)", "coefficient"),
    ):
        if p.has(metric):
            p.metric(ax, metric)
        else:  # runs from before the knobs were logged
            ax.text(0.5, 0.5, f"{metric} not logged by these runs", ha="center", va="center", transform=ax.transAxes)
        p.finish(ax, title, unit)
    p.reward(axes[1, 1])
    fig.suptitle(f"Entropy control\n{caption}", fontsize=9)
    return fig


def _draw_paired(p: _Plotter, caption: str) -> Figure:
    """Per step, each setting's paired entropy difference from its baseline with the 95 % t band;
    beside it the end-of-run and last-half differences with their intervals."""
    frame = analysis.build_report(p.runs, p.keys).paired(p.baseline)
    fig, axes = _figure(1, 2, 6.0, 4.2)
    ax_step, ax_end = axes[0]
    summary = frame[frame["quantity"] != "entropy_step"]
    for i, ((group, baseline), rows) in enumerate(frame[frame["quantity"] == "entropy_step"].groupby(["group", "baseline"], sort=False)):
        color = p.style.color.get(group, f"C{i % 10}")
        label = f"{p.style.label.get(group, group)} minus {p.style.label.get(baseline, baseline)}"
        xs = rows["step"].to_numpy(dtype=float)
        ax_step.plot(xs, rows["mean"].to_numpy(), color=color, label=label, marker="." if len(xs) < 3 else None)
        ax_step.fill_between(xs, rows["ci_low"].to_numpy(), rows["ci_high"].to_numpy(), color=color, alpha=0.15, linewidth=0)
        mine = summary[(summary["group"] == group) & (summary["baseline"] == baseline)]
        pos = i + np.array([-0.12, 0.12])[: len(mine)]
        mean = mine["mean"].to_numpy()
        err = np.vstack([mean - mine["ci_low"].to_numpy(), mine["ci_high"].to_numpy() - mean])
        ax_end.errorbar(pos, mean, yerr=np.nan_to_num(err), fmt="o", color=color, capsize=3, label=label)
    p.x = "step"  # paired differences are taken step by step
    p.finish(ax_step, "Paired entropy difference per step (line: mean over seeds; band: 95% t CI)", UNITS["paired"], zero_line=True)
    settings = list(dict.fromkeys(summary["group"]))
    ax_end.set_xticks(range(len(settings)))
    ax_end.set_xticklabels([p.style.label.get(g, g).replace(", ", "\n") for g in settings], fontsize=7)
    p.finish(ax_end, "End of run (left point) and last-half mean (right point), 95% t CI", UNITS["paired"], zero_line=True)
    ax_end.set_xlabel("setting")
    caption = caption.split(";")[0] + "; line: mean over seeds of the paired difference, band: 95% t CI"
    fig.suptitle(f"Paired setting effects (same seeds; docs/analysis.md)\n{caption}", fontsize=9)
    return fig


_DRAW = {
    "entropy": _draw_entropy,
    "clip": _draw_clip,
    "theory": _draw_theory,
    "reward": _draw_reward,
    "passk": _draw_passk,
    "attribution": _draw_attribution,
    "dashboard": _draw_dashboard,
    "control": _draw_control,
    "paired": _draw_paired,
}


def save_figure(fig: Figure, out: Path) -> Path:
    """Write ``fig`` to ``out`` (format from the suffix) via a temp file and rename."""
    out = Path(out)
    check_output(out)
    buf = io.BytesIO()
    fig.savefig(buf, format=out.suffix.lower().lstrip("."), dpi=120)
    try:
        atomic_write_bytes(out, buf.getvalue())
    except OSError as e:
        raise PlotError(f"cannot write {out}: {e.strerror or e}; choose a writable --out path") from None
    return out


def plot_to_file(paths_or_globs: Sequence[str], kind: str, out: Path, **kw) -> Path:
    """Check the output first (cheap), then draw and save."""
    check_kind(kind)
    check_output(out)
    return save_figure(plot_runs(paths_or_globs, kind, **kw), out)


__all__ = ["KINDS", "PlotError", "plot_runs", "plot_to_file", "save_figure"]
