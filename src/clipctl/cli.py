"""The ``clipctl`` command line: a thin skin over the library.

Each command parses its options, builds a config, calls one library function
and prints. Library errors (``ClipctlError``) become one ``Error: ...`` line and
exit code 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import functools
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
        console.print(f"[bold][{section}][/bold]")
        for key, value in cfg[section].items():
            console.print(f"  {key} = {_fmt(value)!r}  # {field_help(section, key)}", markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
