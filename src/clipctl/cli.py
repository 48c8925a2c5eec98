"""The ``clipctl`` command line: a thin skin over the library.

Each command parses its options, builds a config, calls one library function
and prints. Library errors (``ClipctlError``) become one ``Error: ...`` line and
exit code 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from clipctl.errors import ClipctlError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Clip-controlled GRPO experiments on policy entropy (arXiv 2509.26114).",
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

DEBUG_OPTION = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")


def handle_errors(fn: Callable) -> Callable:
    """Turn ``ClipctlError`` into ``Error: <message>`` and exit 1 (traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = kwargs.get("debug", False) or os.environ.get("CLIPCTL_DEBUG") == "1"
        try:
            return fn(*args, **kwargs)
        except ClipctlError as e:
            if debug:
                raise
            err_console.print(f"Error: {e}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code)
        except KeyboardInterrupt:
            err_console.print("Interrupted; resume with --resume RUN_DIR", markup=False)
            raise typer.Exit(130)
        except Exception as e:  # a full disk outside the run writers (eval-passk, plot, analysis...)
            from clipctl.rundir import is_disk_full

            if debug or not is_disk_full(e):
                raise
            err_console.print(
                "Error: disk full (No space left on device); free some space and run the command again "
                "(finished work is kept)", markup=False, highlight=False, soft_wrap=True,
            )
            raise typer.Exit(1)

    return wrapper


def _note(msg: str) -> None:
    err_console.print(msg, markup=False, highlight=False, soft_wrap=True)


def _fmt(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf"
        return f"{value:.4g}"
    return str(value)


def _toml_value(value) -> str:
    """A config value as it would be written in a preset file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if value is None:
        return '"none"'
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


# ---------------------------------------------------------------- train


SUMMARY_KEYS = (
    "entropy", "entropy_post", "reward_mean", "clip_low_frac", "clip_high_frac",
    "ratio_below_frac", "ratio_above_frac", "thm2_drift", "approx_kl", "response_length_mean", "step_seconds",
)


def _summary_table(run_dir: Path) -> Table:
    from clipctl.runlog import read_run

    steps = read_run(run_dir).steps
    table = Table(title=f"{run_dir} ({len(steps)} steps)")
    table.add_column("metric")
    for col in ("first", "last", "mean"):
        table.add_column(col, justify="right")
    for key in SUMMARY_KEYS:
        if key in steps:
            col = steps[key]
            table.add_row(key, _fmt(float(col.iloc[0])), _fmt(float(col.iloc[-1])), _fmt(float(col.mean())))
    return table


@app.command()
@handle_errors
def train(
    preset: str = typer.Option("tiny-cpu", "--preset", "-p", help="Preset name (see `clipctl presets`) or a .toml path."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override, e.g. --set algo.eps_high=inf (repeatable)."),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help="Folder that holds run directories."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Run directory name (default: PRESET-TIMESTAMP)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue this run directory from its last checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    deepspeed: Optional[str] = typer.Option(
        None, "--deepspeed", help="Train with DeepSpeed: zero1, zero2, zero3 or a DeepSpeed .json config (see docs/distributed.md)."
    ),
    nproc: Optional[int] = typer.Option(
        None, "--nproc", min=1, help="Re-launch under torchrun with N processes on this machine (needs --deepspeed)."
    ),
    local_rank: Optional[int] = typer.Option(None, "--local_rank", "--local-rank", hidden=True, help="Set by the deepspeed launcher; ignored."),
    debug: bool = DEBUG_OPTION,
):
    """Train with GRPO / Dr. GRPO / DAPO and log entropy and clip statistics every step."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from clipctl.config import load_config
    from clipctl.trainer import train as run_training
    from clipctl.trainer.deepspeed import DEEPSPEED_CHOICES, check_launch
    from clipctl.trainer.launch import launched_world_size, relaunch, setup

    if nproc is not None and launched_world_size() == 1:
        if deepspeed is None:
            from clipctl.errors import ConfigError

            raise ConfigError(f"--nproc {nproc} needs --deepspeed {DEEPSPEED_CHOICES}")
        if not resume:  # fail here with one line, not once per process
            check_launch(load_config(preset, set_), nproc, deepspeed)
        args = ["train", "--preset", preset, "--out", str(out), "--deepspeed", deepspeed]
        args += [a for text in set_ for a in ("--set", text)]
        args += (["--name", name] if name else []) + (["--resume", str(resume)] if resume else [])
        args += (["--quiet"] if quiet else []) + (["--debug"] if debug else [])
        raise typer.Exit(relaunch(nproc, args))
    parallel = setup(deepspeed)
    cfg = None if resume else load_config(preset, set_)
    progress = Progress(
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"), console=console, disable=quiet, transient=False,
    )
    task = None

    def log(msg: str) -> None:
        (progress.console if progress.live.is_started else err_console).print(msg, markup=False, highlight=False)

    def on_start(run_dir: Path, first: int, total: int) -> None:
        nonlocal task
        console.print(f"run directory: {run_dir}", markup=False, highlight=False)
        task = progress.add_task("train", total=total, completed=first - 1, stats="")
        progress.start()  # only now: an error before this point prints its one line alone

    def on_step(m: dict) -> None:
        stats = (
            f"reward {m['reward_mean']:.3f}  entropy {m['entropy']:.3f}  "
            f"clip_low {m['clip_low_frac']:.4f}  clip_high {m['clip_high_frac']:.4f}"
        )
        progress.update(task, advance=1, stats=stats)

    try:
        result = run_training(
            cfg, out=out, name=name, preset=preset, resume=resume, overrides=tuple(set_),
            command_line=["clipctl", *sys.argv[1:]], log=log, on_start=on_start, on_step=on_step,
            parallel=parallel,
        )
    finally:
        progress.stop()
    console.print(_summary_table(result.run_dir))


# ---------------------------------------------------------------- presets


@app.command()
@handle_errors
def presets(
    name: Optional[str] = typer.Argument(None, help="Show this preset fully resolved (defaults + preset)."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Overrides to apply before showing."),
    debug: bool = DEBUG_OPTION,
):
    """List presets, or show one resolved."""
    from clipctl.config import SECTIONS, available_presets, config_to_dict, field_help, load_config, preset_description

    if name is None:
        table = Table(title="presets")
        table.add_column("name")
        table.add_column("description")
        for p in available_presets():
            table.add_row(p, preset_description(p))
        console.print(table)
        return
    cfg = config_to_dict(load_config(name, set_))
    for section in SECTIONS:
        console.print(f"\n[{section}]", markup=False, highlight=False)
        for key, value in cfg[section].items():
            console.print(f"{key} = {_toml_value(value)}  # {field_help(section, key)}", markup=False, highlight=False, soft_wrap=True)


# ---------------------------------------------------------------- eval-passk (issue 3)


def _parse_ks(text: str) -> list[int]:
    from clipctl.errors import ConfigError

    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--k {text!r} must be comma-separated integers, e.g. 1,8,32") from None


@app.command("eval-passk")
@handle_errors
def eval_passk(
    target: str = typer.Argument(..., help="Model (HF id, local folder, builtin:tiny) or run directory (evaluates its checkpoints)."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="gsm8k, math500, aime2024, aime2025, amc23, or a local .jsonl/.parquet file."),
    n: int = typer.Option(32, "--n", help="Samples per problem."),
    k: str = typer.Option("1,8,32", "--k", help="pass@k budgets, comma-separated, each <= --n."),
    temperature: float = typer.Option(0.6, "--temperature", help="Sampling temperature (> 0)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", help="Longest response, in tokens."),
    seed: int = typer.Option(0, "--seed", help="Sampling and bootstrap seed."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate only the first N problems."),
    engine: str = typer.Option("hf", "--engine", help="Rollout engine."),
    checkpoints: str = typer.Option("all", "--checkpoints", help="Run directories: all, last, or step-N,..."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output root (default RUN_DIR/eval, or runs/eval/<model>)."),
    problem_col: Optional[str] = typer.Option(None, "--problem-col", help="Problem column (default: the dataset's)."),
    answer_col: Optional[str] = typer.Option(None, "--answer-col", help="Gold answer column (default: the dataset's)."),
    id_col: Optional[str] = typer.Option(None, "--id-col", help="Problem id column (default: the dataset's, else the row number)."),
    grader: Optional[str] = typer.Option(None, "--grader", help="gsm8k or math_verify (default: the dataset's; math_verify for local files)."),
    template: Optional[str] = typer.Option(None, "--template", help="Prompt template with {problem} (default: the dataset's)."),
    batch_prompts: int = typer.Option(8, "--batch-prompts", help="Problems per generate call."),
    grader_processes: int = typer.Option(0, "--grader-processes", help="Grading worker processes; 0 grades inline."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    debug: bool = DEBUG_OPTION,
):
    """Sample N responses per problem and report unbiased pass@k, mean@n and bootstrap intervals."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from clipctl.eval_driver import EvalSettings, evaluate

    progress = Progress(
        TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TextColumn("samples"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console,
        disable=quiet or not console.is_terminal,  # a bar in a pipe or log file is noise
        transient=True,  # the results table replaces the bar; an error leaves only its Error: line
    )
    task = progress.add_task("eval", total=None)

    def log(msg: str) -> None:
        (progress.console if progress.live.is_started else err_console).print(msg, markup=False, highlight=False)

    def on_progress(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    try:
        with progress:
            settings = EvalSettings(
                n=n, ks=tuple(_parse_ks(k)), temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                seed=seed, limit=limit, batch_prompts=batch_prompts, grader_processes=grader_processes,
                problem_col=problem_col, answer_col=answer_col, id_col=id_col, grader=grader, template=template,
            )
            results = evaluate(
                target, dataset, settings, engine=engine, checkpoints=checkpoints, out=out, dtype=dtype,
                progress=on_progress, log=log,
            )
    except KeyboardInterrupt:
        err_console.print("Interrupted; rerun the same command to resume (finished batches are kept)", markup=False)
        raise typer.Exit(130)

    from rich.markup import escape

    first = results.iloc[0]
    table = Table(title=f"pass@k: {escape(target)} on {escape(first['dataset'])} ({int(first['n_problems'])} problems, n={n}, T={_fmt(temperature)})")
    for col in ("step", "dataset", "k", "pass@k", "mean@n", "95% CI (pass@k)"):
        table.add_column(col, justify="left" if col == "dataset" else "right")
    for row in results.itertuples(index=False):
        table.add_row(
            str(row.step), escape(row.dataset), str(row.k), f"{row.pass_at_k:.4f}", f"{row.mean_at_n:.4f}",
            f"[{row.ci_low:.4f}, {row.ci_high:.4f}]",
        )
    console.print(table)


# ---------------------------------------------------------------- analyze-clip-stats, plot, simulate (issue 4)


def _short(value) -> str:
    value = float(value)
    return _fmt(value) if math.isnan(value) or math.isinf(value) else f"{value:.3g}"


def _table_width(widths: list[int]) -> int:
    """Printed width of a rich ``Table`` (default box, edges, padding 1) with these column widths."""
    return sum(widths) + 3 * len(widths) + 1


def _longest_word(text: str) -> int:
    """Width a header needs: its longest line (a group label) or word."""
    return max((len(w) for line in text.split("\n") for w in ([line] if "\n" in text else line.split())), default=0)


def _analysis_tables(frame, *, per_run: bool, metrics, title: str, width: int) -> list:
    """What ``analyze-clip-stats`` prints: tables (and legends) that fit in ``width`` columns.

    One row per metric, one column per group (``mean±sd`` across runs) or per
    run; values carry 3 significant digits. Metric names and numbers are never
    split across lines: when the table is too wide, the first of these that
    fits is used: ``±sd`` on a second line of the cell; columns headed
    ``G1``, ``G2``, ... (``R1``, ... per run) with a legend below; the columns
    spread over several tables; metric names replaced by ``m1``, ``m2``, ...
    with a legend.
    """
    from rich.markup import escape
    from rich.text import Text

    heads, cells = [], []
    for _, row in frame.iterrows():
        # A group's label on lines of its own: one per config key, then the run count.
        heads.append(str(row["run"]) if per_run else ",\n".join(str(row["group"]).split(", ")) + f"\n({int(row['n_runs'])} runs)")
    for m in metrics:
        if per_run:
            cells.append([(_short(v), None) for v in frame[m]])
        else:
            cells.append([
                (_short(a), None if math.isnan(float(b)) else _short(b))
                for a, b in zip(frame[f"{m}_mean"], frame[f"{m}_std"])
            ])
    n_cols = len(heads)
    prefix = "R" if per_run else "G"
    short_heads = [f"{prefix}{j + 1}" for j in range(n_cols)]

    def cell_text(cell, two_lines: bool) -> str:
        mean, sd = cell
        return mean if sd is None else f"{mean}\n±{sd}" if two_lines else f"{mean}±{sd}"

    def col_width(j: int, two_lines: bool, labels: list[str]) -> int:
        texts = [cell_text(row[j], two_lines) for row in cells]
        return max([_longest_word(labels[j]), *(len(line) for t in texts for line in t.split("\n"))])

    def layout(two_lines: bool, labels: list[str], names: list[str]) -> Optional[list[list[int]]]:
        """Column blocks (lists of column indices) that each fit, or None."""
        name_w = max(len(n) for n in ["metric", *names])
        blocks, current = [], []
        for j in range(n_cols):
            trial = current + [j]
            if _table_width([name_w, *(col_width(k, two_lines, labels) for k in trial)]) <= width:
                current = trial
            elif current:
                blocks.append(current)
                current = [j]
                if _table_width([name_w, col_width(j, two_lines, labels)]) > width:
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
    for b, block in enumerate(blocks):
        part = title if len(blocks) == 1 else f"{title} [columns {block[0] + 1}-{block[-1] + 1} of {n_cols}]"
        table = Table(title=escape(part))
        table.add_column("metric", no_wrap=True, min_width=name_w)
        for j in block:
            w = col_width(j, two_lines, labels)
            table.add_column(escape(labels[j]), justify="right", overflow="fold", min_width=w, max_width=w)
        for i, name in enumerate(row_names):
            table.add_row(name, *(cell_text(cells[i][j], two_lines) for j in block))
        out.append(table)
    if labels is short_heads:
        out.extend(Text(f"{label}: {' '.join(head.split())}") for label, head in zip(short_heads, heads))
    if row_names is short_names:
        out.extend(Text(f"{short}: {name}") for short, name in zip(short_names, names))
    return out


def _print_all(target: Console, items: list) -> None:
    for item in items:
        target.print(item, markup=False, highlight=False) if not isinstance(item, Table) else target.print(item)


@app.command("analyze-clip-stats")
@handle_errors
def analyze_clip_stats(
    runs: List[str] = typer.Argument(
        ..., metavar="RUN_OR_GLOB", help="Run directories, quoted globs ('runs/*'), or a folder holding runs."
    ),
    group_by: Optional[str] = typer.Option(
        None, "--group-by", "-g", help="Comma-separated config keys section.key (default: algo.eps_low,algo.eps_high,reward.kind, plus algo.entropy_target,algo.entropy_controller when a run has a controller)."
    ),
    fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json | parquet."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write here instead of stdout (required for parquet)."),
    per_run: bool = typer.Option(False, "--per-run", help="Results per run instead of per group."),
    metrics: Optional[str] = typer.Option(
        None, "--metrics", "-m", help="Comma-separated per-run columns to keep (default: all; the table shows a summary set)."
    ),
    debug: bool = DEBUG_OPTION,
):
    """Entropy change, clip fractions and the theory-vs-measurement statistics per run and per clip setting."""
    from clipctl import analysis

    if fmt not in analysis.TABLE_FORMATS:
        raise analysis.AnalysisError(f"unknown --format '{fmt}'; valid: {', '.join(analysis.TABLE_FORMATS)}")
    if fmt == "parquet" and out is None:
        raise analysis.AnalysisError("--format parquet writes a binary file: add --out FILE.parquet")
    chosen = analysis.parse_keys(metrics)
    per_run_df, per_group_df = analysis.analyze_runs(runs, group_by=group_by, note=_note)
    frame = analysis.summary_frame(per_run_df, per_group_df, per_run_rows=per_run, metrics=chosen)
    if fmt == "table":
        shown = chosen or [m for m in analysis.TABLE_METRICS if m in per_run_df]
        title = f"{len(per_run_df)} run(s)" + ("" if per_run else f" in {len(per_group_df)} group(s); mean±sd across runs")
        if out is None:
            _print_all(console, _analysis_tables(frame, per_run=per_run, metrics=shown, title=title, width=console.width))
            return
        import io

        recorder = Console(file=io.StringIO(), width=200, record=True)
        _print_all(recorder, _analysis_tables(frame, per_run=per_run, metrics=shown, title=title, width=200))
        analysis.write_text(out, recorder.export_text())
    elif out is None:
        sys.stdout.write(analysis.to_text(frame, fmt))
        return
    else:
        analysis.write_table(frame, out, fmt)
    err_console.print(f"wrote {out}", markup=False, highlight=False)


@app.command()
@handle_errors
def plot(
    runs: List[str] = typer.Argument(
        ..., metavar="RUN_OR_GLOB", help="Run directories, quoted globs ('runs/*'), or a folder holding runs."
    ),
    kind: str = typer.Option(
        "dashboard", "--kind", "-k", help="entropy | clip | theory | reward | passk | attribution | dashboard | control."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Figure file: .png, .svg or .pdf."),
    normalize: bool = typer.Option(False, "--normalize", help="Entropy divided by each run's initial entropy (paper Fig. 4)."),
    group_by: Optional[str] = typer.Option(
        None, "--group-by", "-g", help="Comma-separated config keys section.key (default: algo.eps_low,algo.eps_high,reward.kind, plus algo.entropy_target,algo.entropy_controller when a run has a controller)."
    ),
    smooth: int = typer.Option(1, "--smooth", help="Trailing rolling mean over N steps, per run, before averaging."),
    x: str = typer.Option("step", "--x", help="x axis: step | tokens (cumulative tokens trained on)."),
    band: str = typer.Option("minmax", "--band", help="Band across runs of a group: minmax | sd (±1 sd)."),
    debug: bool = DEBUG_OPTION,
):
    """Plot runs grouped by clip setting: mean line across seeds with a band."""
    from clipctl.plotting import plot_to_file

    path = plot_to_file(
        runs, kind, out, group_by=group_by, normalize=normalize, smooth=smooth, x=x, band=band, note=_note
    )
    console.print(f"wrote {path}", markup=False, highlight=False)


def _check_table(results, eta: float) -> Table:
    table = Table(title=f"one exact step on the expected clipped objective, eta={_fmt(eta)}, mu*nu=0.5, d(s)=1")
    for col in ("trial", "P(X)", "P(Y)", "H", "dH PG", "Thm 1", "rel err", "dH NPG", "Thm 2", "rel err "):
        table.add_column(col, justify="right", overflow="fold")
    for r in results:
        table.add_row(
            str(r.trial), f"{r.p:.2f}", f"{r.q:.2f}", f"{r.entropy:.3f}",
            f"{r.dH_pg:.3e}", f"{r.thm1_pred:.3e}", f"{r.thm1_rel_err:.1e}",
            f"{r.dH_npg:.3e}", f"{r.thm2_pred:.3e}", f"{r.thm2_rel_err:.1e}",
        )
    return table


def _check_summary(results, thm: str, tol: float = 0.01) -> str:
    import numpy as np

    errs = np.array([getattr(r, f"{thm}_rel_err") for r in results])
    orders = np.array([getattr(r, f"{thm}_order") for r in results])
    name = {"thm1": "Theorem 1 (policy gradient)", "thm2": "Theorem 2 (natural policy gradient)"}[thm]
    return (
        f"{name}: relative error median {np.median(errs):.2e}, max {errs.max():.2e}; "
        f"{int((errs <= tol).sum())}/{len(errs)} trials within {tol:.0%}; "
        f"error order log10(err(eta)/err(eta/10)) median {np.nanmedian(orders):.2f} (2 = second-order remainder)"
    )


@app.command()
@handle_errors
def simulate(
    check: bool = typer.Option(False, "--check", help="Compare one exact PG/NPG step with Theorems 1 and 2."),
    dynamics: bool = typer.Option(False, "--dynamics", help="GRPO-like runs on a tabular policy, written as run directories."),
    actions: Optional[int] = typer.Option(None, "--actions", help="Actions of the tabular policy (default 20 with --check, 50 with --dynamics)."),
    eta: float = typer.Option(1e-3, "--eta", help="--check: step size."),
    trials: int = typer.Option(20, "--trials", help="--check: random policy pairs."),
    seed: int = typer.Option(0, "--seed", help="Seed (--dynamics: of the first run; seeds are seed..seed+seeds-1)."),
    eps_low: float = typer.Option(0.2, "--eps-low", help="--check: clip-low eps."),
    eps_high: float = typer.Option(0.2, "--eps-high", help="--check: clip-high eps (finite)."),
    steps: int = typer.Option(150, "--steps", help="--dynamics: steps per run."),
    seeds: int = typer.Option(4, "--seeds", help="--dynamics: seeds per clip setting."),
    samples: int = typer.Option(64, "--samples", help="--dynamics: actions sampled per step."),
    group_size: int = typer.Option(8, "--group-size", help="--dynamics: samples per GRPO group."),
    minibatches: int = typer.Option(4, "--minibatches", help="--dynamics: optimizer steps per epoch."),
    epochs: int = typer.Option(1, "--epochs", help="--dynamics: passes over each step's samples."),
    lr: float = typer.Option(4.0, "--lr", help="--dynamics: learning rate (SGD on logits by default)."),
    optimizer: str = typer.Option("sgd", "--optimizer", help="--dynamics: sgd | adam."),
    grid: str = typer.Option("0.2/0.2,0.2/inf,1.0/0.2,0.1/inf", "--grid", help="--dynamics: eps_low/eps_high settings, comma-separated."),
    reward: str = typer.Option("bernoulli", "--reward", help="--dynamics: bernoulli (p=0.5) | gaussian."),
    init_scale: float = typer.Option(1.0, "--init-scale", help="--dynamics: initial logits ~ N(0, s^2)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="--dynamics: folder for the run directories."),
    debug: bool = DEBUG_OPTION,
):
    """The paper's toy setting: one state, tabular softmax, random symmetric advantages."""
    from clipctl import simulate as sim

    if check == dynamics:
        raise sim.SimulateError("choose exactly one of --check or --dynamics")
    if check:
        results = sim.check_theorems(
            actions=actions or 20, eta=eta, trials=trials, seed=seed, eps_low=eps_low, eps_high=eps_high
        )
        console.print(_check_table(results, eta))
        for thm in ("thm1", "thm2"):
            console.print(_check_summary(results, thm), markup=False, highlight=False, soft_wrap=True)
        return
    if out is None:
        raise sim.SimulateError("--dynamics writes run directories: add --out DIR")
    base = sim.DynamicsConfig(
        seed=seed, actions=actions or 50, steps=steps, samples=samples, group_size=group_size,
        minibatches=minibatches, epochs=epochs, lr=lr, optimizer=optimizer, reward=reward, init_scale=init_scale,
    )
    paths = sim.run_dynamics(out, grid=sim.parse_grid(grid), seeds=seeds, base=base)
    console.print(f"wrote {len(paths)} run directories under {out}", markup=False, highlight=False)
    from clipctl import analysis

    per_run_df, per_group_df = analysis.analyze_runs([str(p) for p in paths])
    shown = (
        "avg_clip_low_frac", "avg_clip_high_frac", "thm2_vs_attr_sign_agree", "thm2_vs_attr_pearson",
        "thm2_vs_raw_sign_agree", "clip_low_attributed_dH_avg", "clip_high_attributed_dH_avg", "entropy_change",
    )
    _print_all(console, _analysis_tables(
        per_group_df, per_run=False, metrics=shown, title="per clip setting, mean±sd across seeds", width=console.width
    ))


# ---------------------------------------------------------------- sweep (issue 5)


def _frame_table(df, title: str) -> Table:
    import pandas as pd
    from rich import box

    headers = {"exit_code": "exit", "wall_seconds": "wall s", "entropy_change": "entropy\nchange",
               "avg_clip_low_frac": "clip-lo\nfrac", "avg_clip_high_frac": "clip-hi\nfrac"}
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for col in df.columns:
        justify = "right" if df[col].dtype.kind in "iuf" else "left"
        width = min(40, max(map(len, df[col].astype(str)), default=6)) if col == "run" else None
        table.add_column(headers.get(col, str(col)), justify=justify, overflow="fold", min_width=width)
    for row in df.itertuples(index=False):
        table.add_row(*(
            "" if v is None or v is pd.NA else f"{v:.3g}" if isinstance(v, float) and math.isfinite(v) else _fmt(v)
            for v in row
        ))
    return table


@app.command()
@handle_errors
def sweep(
    spec: str = typer.Argument(..., help="Sweep file (.toml) or the name of a shipped one (presets/sweeps/)."),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help="Folder that holds sweep folders: runs go to OUT/SWEEP/RUN/."),
    jobs: Optional[int] = typer.Option(
        None, "--jobs", "-j",
        help="Runs at once (default: 1 on CPU, one per GPU set with --gpus). Without OMP_NUM_THREADS each run gets cores/jobs threads.",
    ),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="GPU ids to share out, e.g. 0,1,2,3 (CUDA_VISIBLE_DEVICES per run)."),
    gpus_per_run: int = typer.Option(1, "--gpus-per-run", help="GPUs per run; parallel runs get disjoint sets."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run failed runs again (resuming them)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check everything and print the plan; run nothing."),
    print_commands: bool = typer.Option(
        False, "--print-commands", help="Print one shell line per run (for xargs or SLURM); run nothing."
    ),
    debug: bool = DEBUG_OPTION,
):
    """Run a grid of training runs from a sweep file; resumable, skips finished runs (docs/sweeps.md)."""
    import pandas as pd

    from clipctl import sweep as sweeps

    if print_commands:
        for line in sweeps.print_commands(spec, out):
            typer.echo(line)
        return
    if dry_run:
        plan = sweeps.run_sweep(spec, out=out, jobs=jobs, gpus=gpus, gpus_per_run=gpus_per_run,
                                retry_failed=retry_failed, dry_run=True)
        plan["progress"] = [f"{a}/{b}" for a, b in zip(plan["last_step"], plan["steps"])]
        console.print(f"sweep folder: {plan.attrs['sweep_dir']}", markup=False, highlight=False)
        console.print(_frame_table(plan[["run", "action", "progress"]], f"plan: {len(plan)} runs (dry run, nothing started)"))
        return

    def log(msg: str) -> None:
        console.print(msg, markup=False, highlight=False)

    try:
        manifest = sweeps.run_sweep(spec, out=out, jobs=jobs, gpus=gpus, gpus_per_run=gpus_per_run,
                                    retry_failed=retry_failed, log=log)
    except KeyboardInterrupt:
        err_console.print("Interrupted; trainers stopped. Run the same command again to resume.", markup=False)
        raise typer.Exit(130)
    sweep_dir = Path(manifest.attrs["sweep_dir"])
    summary = sweeps.summarize(manifest, sweep_dir)
    note = summary.attrs.get("note")
    # One status cell (exit code and progress only where the run is not done) keeps the table narrow.
    summary["status"] = [
        s if s == "done" else f"{s} ({'' if pd.isna(code) else f'exit {code}, '}step {last}/{total})"
        for s, code, last, total in zip(summary["status"], summary["exit_code"], summary["last_step"], summary["steps"])
    ]
    summary = summary.drop(columns=["exit_code", "last_step", "steps"])
    summary["wall_seconds"] = summary["wall_seconds"].round().astype(int)
    console.print(_frame_table(summary, f"sweep {sweep_dir} ({len(manifest)} runs)"))
    if note:
        console.print(note, markup=False, highlight=False)
    failed = manifest.loc[manifest["status"] == "failed", "run"].tolist()
    if failed:
        raise sweeps.SweepError(
            f"{len(failed)} of {len(manifest)} runs failed (e.g. {failed[0]}); see {sweep_dir}/logs/<run>.log, "
            "fix the cause, then rerun with --retry-failed"
        )


def main() -> None:
    # The deepspeed launcher puts --local_rank=N before the command name; the
    # rank comes from the environment (LOCAL_RANK), so drop it.
    sys.argv = [a for a in sys.argv if not a.startswith("--local_rank=")]
    app()


if __name__ == "__main__":
    main()
