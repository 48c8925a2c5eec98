"""Everything ``clipctl`` prints: rich tables, their layout, progress bars, and the one value formatter.

``cell`` turns any value into table text (floats to a format spec, ints and
strings as they are, nan/inf as words, ``mean±sd``); every table here goes
through it. ``analysis_tables`` lays out the per-metric tables of
``analyze-clip-stats`` and ``simulate dynamics`` so that they fit the terminal
without splitting a metric name or a number across lines.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Optional

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

console = Console()
err_console = Console(stderr=True)


def say(msg: str, *, err: bool = False) -> None:
    """One plain line: no rich markup (paths hold brackets), no wrapping inside words."""
    (err_console if err else console).print(msg, markup=False, highlight=False, soft_wrap=True)


def note(msg: str) -> None:
    say(msg, err=True)


def cell(value, spec: str = ".3g", sd=None, *, two_lines: bool = False) -> str:
    """``value`` as table text; with ``sd``, ``mean±sd`` (``±sd`` on a second line if ``two_lines``).

    None and pandas' NA are an empty cell; ints (numpy's too) and strings print
    as they are; other numbers use ``spec``, which prints nan, inf and -inf as words.
    """
    if value is None or type(value).__name__ == "NAType":
        return ""
    if isinstance(value, numbers.Integral) or not isinstance(value, numbers.Real):
        text = str(value)
    else:
        text = format(float(value), spec)
    if sd is None:
        return text
    return f"{text}\n±{cell(sd, spec)}" if two_lines else f"{text}±{cell(sd, spec)}"


def toml_literal(value) -> str:
    """A config value as a preset file writes it (``presets NAME``): TOML from ``tomli_w``, full precision,
    so it reads back equal; lists on one line; ``None`` as the config's ``"none"``."""
    import tomli_w

    if value is None:
        return '"none"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    return tomli_w.dumps({"v": value})[len("v = "):].rstrip("\n")


def print_all(target: Console, items: list) -> None:
    """Tables with their styling; legend lines as plain text (a group label may hold brackets)."""
    for item in items:
        target.print(item) if isinstance(item, Table) else target.print(item, markup=False, highlight=False)


def as_text(items: list, width: int) -> str:
    """What ``print_all`` would show on a terminal ``width`` columns wide, as plain text (for a file)."""
    import io

    recorder = Console(file=io.StringIO(), width=width, record=True)
    print_all(recorder, items)
    return recorder.export_text()


# ---------------------------------------------------------------- progress bars


class _Bar:
    """A progress bar; lines logged while it runs print above it, before it starts on stderr."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def log(self, msg: str) -> None:
        (self.progress.console if self.progress.live.is_started else err_console).print(msg, markup=False, highlight=False)


class TrainBar(_Bar):
    """``train``'s bar: steps done, and the last step's reward, entropy and clip fractions."""

    announced: Optional[Path] = None  # the run directory of the last start, for the Ctrl-C line

    def __init__(self, quiet: bool):
        TrainBar.announced = None
        super().__init__(Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[stats]}"), console=console, disable=quiet, transient=False,
        ))
        self.task = None

    def on_start(self, run_dir: Path, first: int, total: int) -> None:
        say(f"run directory: {run_dir}")
        TrainBar.announced = run_dir
        self.task = self.progress.add_task("train", total=total, completed=first - 1, stats="")
        self.progress.start()  # only now: an error before this point prints its one line alone

    def on_step(self, m: dict) -> None:
        stats = (
            f"reward {m['reward_mean']:.3f}  entropy {m['entropy']:.3f}  "
            f"clip_low {m['clip_low_frac']:.4f}  clip_high {m['clip_high_frac']:.4f}"
        )
        self.progress.update(self.task, advance=1, stats=stats)

    def stop(self) -> None:
        self.progress.stop()


class EvalBar(_Bar):
    """``eval-passk``'s bar over samples; a context manager that removes the bar when done."""

    def __init__(self, quiet: bool):
        super().__init__(Progress(
            TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TextColumn("samples"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console,
            disable=quiet or not console.is_terminal,  # a bar in a pipe or log file is noise
            transient=True,  # the results table replaces the bar; an error leaves only its Error: line
        ))
        self.task = self.progress.add_task("eval", total=None)

    def on_progress(self, done: int, total: int) -> None:
        self.progress.update(self.task, completed=done, total=total)

    def __enter__(self) -> "EvalBar":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)


# ---------------------------------------------------------------- tables of single commands


SUMMARY_KEYS = (
    "entropy", "entropy_post", "reward_mean", "clip_low_frac", "clip_high_frac",
    "ratio_below_frac", "ratio_above_frac", "thm2_drift", "approx_kl", "response_length_mean", "step_seconds",
)


def summary_table(steps, title: str) -> Table:
    """First, last and mean of the headline metrics of a run's steps table."""
    table = Table(title=title)
    table.add_column("metric")
    for col in ("first", "last", "mean"):
        table.add_column(col, justify="right")
    for key in SUMMARY_KEYS:
        if key in steps:
            col = steps[key]
            table.add_row(key, *(cell(float(v), ".4g") for v in (col.iloc[0], col.iloc[-1], col.mean())))
    return table


def presets_table(rows) -> Table:
    """``(name, description)`` pairs."""
    table = Table(title="presets")
    table.add_column("name")
    table.add_column("description")
    for name, description in rows:
        table.add_row(name, description)
    return table


def preset_lines(cfg: dict, sections, field_help) -> list[str]:
    """A resolved config as TOML, each value commented with its field's help."""
    lines = []
    for section in sections:
        lines += ["", f"[{section}]"]
        lines += [f"{key} = {toml_literal(value)}  # {field_help(section, key)}" for key, value in cfg[section].items()]
    return lines


def passk_table(results, target: str, n: int, temperature: float) -> Table:
    """One row per (step, dataset, k): pass@k, mean@n and the bootstrap interval."""
    first = results.iloc[0]
    table = Table(title=(
        f"pass@k: {escape(target)} on {escape(first['dataset'])} "
        f"({int(first['n_problems'])} problems, n={n}, T={cell(temperature, '.4g')})"
    ))
    for col in ("step", "dataset", "k", "pass@k", "mean@n", "95% CI (pass@k)"):
        table.add_column(col, justify="left" if col == "dataset" else "right")
    for row in results.itertuples(index=False):
        table.add_row(
            cell(row.step), escape(row.dataset), cell(row.k), cell(row.pass_at_k, ".4f"), cell(row.mean_at_n, ".4f"),
            f"[{cell(row.ci_low, '.4f')}, {cell(row.ci_high, '.4f')}]",
        )
    return table


def check_table(results, eta: float) -> Table:
    """``simulate check``: each trial's exact entropy change next to Theorems 1 and 2."""
    table = Table(title=f"one exact step on the expected clipped objective, eta={cell(eta, '.4g')}, mu*nu=0.5, d(s)=1")
    for col in ("trial", "P(X)", "P(Y)", "H", "dH PG", "Thm 1", "rel err", "dH NPG", "Thm 2", "rel err "):
        table.add_column(col, justify="right", overflow="fold")
    for r in results:
        table.add_row(
            cell(r.trial), cell(r.p, ".2f"), cell(r.q, ".2f"), cell(r.entropy, ".3f"),
            cell(r.dH_pg, ".3e"), cell(r.thm1_pred, ".3e"), cell(r.thm1_rel_err, ".1e"),
            cell(r.dH_npg, ".3e"), cell(r.thm2_pred, ".3e"), cell(r.thm2_rel_err, ".1e"),
        )
    return table


def check_summary(results, thm: str, tol: float = 0.01) -> str:
    """One line per theorem: how close the exact step came to the prediction, and the error's order in eta."""
    import numpy as np

    errs = np.array([getattr(r, f"{thm}_rel_err") for r in results])
    orders = np.array([getattr(r, f"{thm}_order") for r in results])
    name = {"thm1": "Theorem 1 (policy gradient)", "thm2": "Theorem 2 (natural policy gradient)"}[thm]
    return (
        f"{name}: relative error median {np.median(errs):.2e}, max {errs.max():.2e}; "
        f"{int((errs <= tol).sum())}/{len(errs)} trials within {tol:.0%}; "
        f"error order log10(err(eta)/err(eta/10)) median {np.nanmedian(orders):.2f} (2 = second-order remainder)"
    )


def frame_table(df, title: str) -> Table:
    """A data frame as a compact table (sweep plans and summaries): numbers right-aligned, 3 digits."""
    headers = {"exit_code": "exit", "wall_seconds": "wall s", "entropy_change": "entropy\nchange",
               "avg_clip_low_frac": "clip-lo\nfrac", "avg_clip_high_frac": "clip-hi\nfrac"}
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for col in df.columns:
        justify = "right" if df[col].dtype.kind in "iuf" else "left"
        width = min(40, max(map(len, df[col].astype(str)), default=6)) if col == "run" else None
        table.add_column(headers.get(col, str(col)), justify=justify, overflow="fold", min_width=width)
    for row in df.itertuples(index=False):
        table.add_row(*(cell(v) for v in row))
    return table


def sweep_table(summary, title: str) -> Table:
    """The sweep's summary: one status cell (exit code and progress only where a run is not done) keeps it narrow."""
    import pandas as pd

    summary = summary.copy()
    summary["status"] = [
        s if s == "done" else f"{s} ({'' if pd.isna(code) else f'exit {code}, '}step {last}/{total})"
        for s, code, last, total in zip(summary["status"], summary["exit_code"], summary["last_step"], summary["steps"])
    ]
    summary = summary.drop(columns=["exit_code", "last_step", "steps"])
    summary["wall_seconds"] = summary["wall_seconds"].round().astype(int)
    return frame_table(summary, title)


def status_table(status, title: str) -> Table:
    """``sweep status`` and a Slurm submission: each run's status, progress, exit code and array task."""
    import pandas as pd

    status = status.assign(progress=[f"{a}/{b}" for a, b in zip(status["last_step"], status["steps"])])
    status["exit_code"] = ["" if pd.isna(c) else str(c) for c in status["exit_code"]]
    columns = ["run", "status", "progress", "exit_code", *(c for c in ("job", "queue") if c in status)]
    return frame_table(status[columns].fillna(""), title)


def plan_table(plan) -> Table:
    """``sweep --dry-run``: what each run would do and how far it got."""
    plan = plan.assign(progress=[f"{a}/{b}" for a, b in zip(plan["last_step"], plan["steps"])])
    return frame_table(plan[["run", "action", "progress"]], f"plan: {len(plan)} runs (dry run, nothing started)")


# ---------------------------------------------------------------- per-metric tables that fit the terminal


def table_width(widths: list[int]) -> int:
    """Printed width of a rich ``Table`` (default box, edges, padding 1) with these column widths."""
    return sum(widths) + 3 * len(widths) + 1


def _longest_word(text: str) -> int:
    """Width a header needs: its longest line (a group label) or word."""
    return max((len(w) for line in text.split("\n") for w in ([line] if "\n" in text else line.split())), default=0)


def analysis_tables(frame, *, per_run: bool, metrics, title: str, width: int) -> list:
    """Tables (and legends) that fit in ``width`` columns: one row per metric, one column per group or run.

    Values carry 3 significant digits (``mean±sd`` across a group's runs).
    Metric names and numbers are never split across lines: when the table is
    too wide, the first of these that fits is used: ``±sd`` on a second line
    of the cell; columns headed ``G1``, ``G2``, ... (``R1``, ... per run) with
    a legend below; the columns spread over several tables; metric names
    replaced by ``m1``, ``m2``, ... with a legend.
    """
    heads, cells = [], []
    for _, row in frame.iterrows():
        # A group's label on lines of its own: one per config key, then the run count.
        heads.append(str(row["run"]) if per_run else ",\n".join(str(row["group"]).split(", ")) + f"\n({int(row['n_runs'])} runs)")
    for m in metrics:
        if per_run:
            cells.append([(float(v), None) for v in frame[m]])
        else:
            cells.append([
                (float(a), None if math.isnan(float(b)) else float(b)) for a, b in zip(frame[f"{m}_mean"], frame[f"{m}_std"])
            ])
    n_cols = len(heads)
    prefix = "R" if per_run else "G"
    short_heads = [f"{prefix}{j + 1}" for j in range(n_cols)]

    def col_width(j: int, two_lines: bool, labels: list[str]) -> int:
        texts = [cell(row[j][0], sd=row[j][1], two_lines=two_lines) for row in cells]
        return max([_longest_word(labels[j]), *(len(line) for t in texts for line in t.split("\n"))])

    def layout(two_lines: bool, labels: list[str], names: list[str]) -> Optional[list[list[int]]]:
        """Column blocks (lists of column indices) that each fit, or None."""
        name_w = max(len(n) for n in ["metric", *names])
        blocks, current = [], []
        for j in range(n_cols):
            trial = current + [j]
            if table_width([name_w, *(col_width(k, two_lines, labels) for k in trial)]) <= width:
                current = trial
            elif current:
                blocks.append(current)
                current = [j]
                if table_width([name_w, col_width(j, two_lines, labels)]) > width:
                    return None
            else:
                return None
        return blocks + [current] if current else blocks or [[]]

    names = list(metrics)
    short_names = [f"m{i + 1}" for i in range(len(names))]
    attempts = [
        (False, heads, names, False), (True, heads, names, False),
        (False, short_heads, names, False), (True, short_heads, names, False),
        (True, short_heads, names, True), (True, short_heads, short_names, True),
    ]
    for two_lines, labels, row_names, allow_blocks in attempts:
        blocks = layout(two_lines, labels, row_names)
        if blocks is not None and (allow_blocks or len(blocks) == 1):
            break
    else:  # nothing fits even one value column: the narrowest layout, one column per table
        two_lines, labels, row_names = True, short_heads, short_names
        blocks = [[j] for j in range(n_cols)] or [[]]

    out: list = []
    name_w = max(len(n) for n in ["metric", *row_names])
    for block in blocks:
        part = title if len(blocks) == 1 else f"{title} [columns {block[0] + 1}-{block[-1] + 1} of {n_cols}]"
        table = Table(title=escape(part))
        table.add_column("metric", no_wrap=True, min_width=name_w)
        for j in block:
            w = col_width(j, two_lines, labels)
            table.add_column(escape(labels[j]), justify="right", overflow="fold", min_width=w, max_width=w)
        for i, name in enumerate(row_names):
            table.add_row(name, *(cell(cells[i][j][0], sd=cells[i][j][1], two_lines=two_lines) for j in block))
        out.append(table)
    if labels is short_heads:
        out.extend(Text(f"{label}: {' '.join(head.split())}") for label, head in zip(short_heads, heads))
    if row_names is short_names:
        out.extend(Text(f"{short}: {name}") for short, name in zip(short_names, names))
    return out


# ---------------------------------------------------------------- attribution regression and paired effects


def _pm(value, se) -> str:
    """``value±se``: 3 significant digits for the estimate, 2 for its error."""
    return f"{cell(value)}±{cell(se, '.2g')}"


def _ci(low, high) -> str:
    return f"[{cell(low, '.2g')},{cell(high, '.2g')}]"


_SHORT_ATTRIBUTION = {"clip_attributed_dH": "total", "clip_low_attributed_dH": "low", "clip_high_attributed_dH": "high"}
_SHORT_QUANTITY = {"entropy_end": "end", "entropy_last_half": "last half"}


def _numeric_table(title: str, columns: tuple[str, ...], left: int = 1) -> Table:
    """A table whose first ``left`` columns are left-aligned, the others right-aligned; no cell split across lines."""
    table = Table(title=escape(title))
    for j, col in enumerate(columns):
        table.add_column(col, justify="left" if j < left else "right", no_wrap=True)
    return table


def regression_tables(frame, title: str) -> list:
    """``analysis.attribution_regression`` as one small table per group (a title line first).

    A row per clip that is on in the group: steps (after merging those shared
    by construction), clusters (runs), steps shared, steps with clip events;
    intercept±SE, its 95 % CI and reading; slope±SE; the plain mean±SE.
    """
    out: list = [Text(title)]
    for group, rows in frame.groupby("group", sort=False):
        rows = rows[rows["n_steps"] > 0]  # a clip that is off in this group has no row
        if rows.empty:
            continue
        table = _numeric_table(str(group), ("clip", "steps", "intercept±SE\n[95% CI]\nreading", "slope±SE", "plain\nmean±SE"), 0)
        for row in rows.itertuples(index=False):
            table.add_row(
                _SHORT_ATTRIBUTION.get(row.attribution, row.attribution),
                f"n={row.n_steps}\nruns={row.n_clusters}\nshared={row.n_shared}\nacted={row.n_acted}",
                f"{_pm(row.intercept, row.intercept_se)}\n{_ci(row.intercept_ci_low, row.intercept_ci_high)}\n"
                f"{row.intercept_reading}", _pm(row.slope, row.slope_se), _pm(row.mean, row.mean_se),
            )
        out.append(table)
    return out


def paired_tables(frame, title: str) -> list:
    """``analysis.paired_effects``: a title line, then per setting its end-of-run and last-half rows
    (the per-step rows go to csv/json/parquet and ``clipctl plot --kind paired``)."""
    out: list = [Text(title)]
    rows = frame[frame["quantity"] != "entropy_step"]
    for (group, baseline), sub in rows.groupby(["group", "baseline"], sort=False):
        table = _numeric_table(f"{group}  minus  {baseline}", ("entropy", "pairs", "mean±SE", "95% CI", "signs +/-", "reading"), 1)
        for row in sub.itertuples(index=False):
            table.add_row(
                _SHORT_QUANTITY.get(row.quantity, row.quantity), cell(row.n_pairs), _pm(row.mean, row.se),
                _ci(row.ci_low, row.ci_high), f"{row.n_pos}/{row.n_neg}", row.reading,
            )
        out.append(table)
    return out
