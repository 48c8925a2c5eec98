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

    return wrapper


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
    debug: bool = DEBUG_OPTION,
):
    """Train with GRPO / Dr. GRPO / DAPO and log entropy and clip statistics every step."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from clipctl.config import load_config
    from clipctl.trainer import train as run_training

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

    def on_step(m: dict) -> None:
        stats = (
            f"reward {m['reward_mean']:.3f}  entropy {m['entropy']:.3f}  "
            f"clip_low {m['clip_low_frac']:.4f}  clip_high {m['clip_high_frac']:.4f}"
        )
        progress.update(task, advance=1, stats=stats)

    with progress:
        result = run_training(
            cfg, out=out, name=name, preset=preset, resume=resume, overrides=tuple(set_),
            command_line=["clipctl", *sys.argv[1:]], log=log, on_start=on_start, on_step=on_step,
        )
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

    from clipctl.eval_driver import evaluate

    progress = Progress(
        TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TextColumn("samples"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=quiet,
        transient=True,  # the results table replaces the bar; an error leaves only its Error: line
    )
    task = progress.add_task("eval", total=None)

    def log(msg: str) -> None:
        (progress.console if progress.live.is_started else err_console).print(msg, markup=False, highlight=False)

    def on_progress(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    try:
        with progress:
            results = evaluate(
                target, dataset, n=n, ks=_parse_ks(k), temperature=temperature, top_p=top_p,
                max_new_tokens=max_new_tokens, seed=seed, limit=limit, engine=engine, checkpoints=checkpoints,
                out=out, problem_col=problem_col, answer_col=answer_col, id_col=id_col, grader=grader,
                template=template, batch_prompts=batch_prompts, grader_processes=grader_processes, dtype=dtype,
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


# ---------------------------------------------------------------- sweep (issue 5)


def _frame_table(df, title: str) -> Table:
    table = Table(title=title)
    for col in df.columns:
        table.add_column(str(col), justify="right" if df[col].dtype.kind in "iuf" else "left")
    for row in df.itertuples(index=False):
        table.add_row(*("" if v is None or (isinstance(v, float) and math.isnan(v) and False) else _fmt(v) for v in row))
    return table


@app.command()
@handle_errors
def sweep(
    spec: str = typer.Argument(..., help="Sweep file (.toml) or the name of a shipped one (presets/sweeps/)."),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help="Folder that holds sweep folders: runs go to OUT/SWEEP/RUN/."),
    jobs: Optional[int] = typer.Option(
        None, "--jobs", "-j", help="Runs at once (default: 1 on CPU, one per GPU set with --gpus)."
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
    from clipctl import sweep as sweeps

    if print_commands:
        for line in sweeps.print_commands(spec, out):
            typer.echo(line)
        return
    if dry_run:
        plan = sweeps.run_sweep(spec, out=out, jobs=jobs, gpus=gpus, gpus_per_run=gpus_per_run,
                                retry_failed=retry_failed, dry_run=True)
        console.print(_frame_table(plan.drop(columns=["command"]), f"plan: {len(plan)} runs (dry run, nothing started)"))
        return

    def log(msg: str) -> None:
        console.print(msg, markup=False, highlight=False)

    try:
        manifest = sweeps.run_sweep(spec, out=out, jobs=jobs, gpus=gpus, gpus_per_run=gpus_per_run,
                                    retry_failed=retry_failed, log=log)
    except KeyboardInterrupt:
        err_console.print("Interrupted; trainers stopped. Run the same command again to resume.", markup=False)
        raise typer.Exit(130)
    sweep_dir = (out / sweeps.load_sweep(spec).name).absolute()
    console.print(_frame_table(sweeps.summarize(manifest, sweep_dir), f"sweep {sweep_dir}"))
    failed = manifest.loc[manifest["status"] == "failed", "run"].tolist()
    if failed:
        raise sweeps.SweepError(
            f"{len(failed)} of {len(manifest)} runs failed (e.g. {failed[0]}); see {sweep_dir}/logs/<run>.log, "
            "fix the cause, then rerun with --retry-failed"
        )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
