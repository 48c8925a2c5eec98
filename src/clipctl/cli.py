"""The ``clipctl`` command line: a thin skin over the library.

Each command parses its options, builds a config, calls one library function
and prints through ``clipctl.render``. Library errors (``ClipctlError``) and
usage errors (a bad choice, a missing option) become one ``Error: ...`` line
and a non-zero exit; ``--debug`` shows the traceback instead. Options that take
one of a fixed set of names list the names of the owning module's registry.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import importlib
import os
import sys
from pathlib import Path
from typing import Annotated, Callable, List, Optional

import typer
from typer._click.exceptions import NoArgsIsHelpError, UsageError  # typer vendors its own click
from typer.core import TyperGroup

from clipctl import render
from clipctl.errors import ClipctlError
from clipctl.render import console, note, say


@contextlib.contextmanager
def _usage_error_line():
    try:
        yield
    except NoArgsIsHelpError:  # the help itself, not an error
        raise
    except UsageError as e:
        # typer checks choices with pydantic, whose messages start "Value error, ".
        say(f"Error: {e.format_message().replace(': Value error, ', ': ')}", err=True)
        raise typer.Exit(e.exit_code)


class _Group(TyperGroup):
    """Prints usage errors as one ``Error: ...`` line, as library errors are, instead of a usage box."""

    def make_context(self, *args, **kwargs):
        with _usage_error_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _usage_error_line():
            return super().invoke(ctx)


app = typer.Typer(
    cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Clip-controlled GRPO experiments on policy entropy (arXiv 2509.26114).",
)
simulate_app = typer.Typer(
    cls=_Group, no_args_is_help=True,
    help="""The paper's toy setting: one state, tabular softmax, random symmetric advantages.

    Example:

        clipctl simulate check --trials 20
    """,
)
app.add_typer(simulate_app, name="simulate")

def _resume_hint(kwargs: dict) -> str:
    """``train``'s Ctrl-C line: the run directory it announced (or was given with --resume)."""
    run_dir = render.TrainBar.announced or kwargs.get("resume")
    if run_dir is None:
        return "Interrupted before the first step; run the same command again"
    return f"Interrupted; resume with clipctl train --resume {run_dir}"


def _one_line_errors(fn: Callable, interrupted: Callable[[dict], str]) -> Callable:
    """``ClipctlError`` (and a full disk) as ``Error: <message>`` and exit 1; tracebacks with --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = kwargs.get("debug", False) or os.environ.get("CLIPCTL_DEBUG") == "1"
        try:
            return fn(*args, **kwargs)
        except ClipctlError as e:
            if debug:
                raise
            say(f"{e.prefix}{e}", err=True)
            raise typer.Exit(e.exit_code)
        except KeyboardInterrupt:
            say(interrupted(kwargs), err=True)
            raise typer.Exit(130)
        except Exception as e:  # a full disk outside the run writers (eval-passk, plot, analysis...)
            from clipctl.rundir import is_disk_full

            if debug or not is_disk_full(e):
                raise
            say("Error: disk full (No space left on device); free some space and run the command again "
                "(finished work is kept)", err=True)
            raise typer.Exit(1)

    return wrapper


def command(parent: typer.Typer = app, name: Optional[str] = None, *, interrupted: str | Callable[[dict], str] = "Interrupted"):
    """Register a command whose library errors print as one line; ``interrupted`` is said on Ctrl-C
    (a str, or a function of the command's arguments)."""
    said = interrupted if callable(interrupted) else lambda kwargs: interrupted
    return lambda fn: parent.command(name)(_one_line_errors(fn, said))


class _Registry(enum.EnumMeta):
    """Typer reads a choice's names by iterating its Enum class; this one yields a registry's names."""

    def __iter__(cls):
        module, attr = cls.__registry__
        return iter(tuple(getattr(importlib.import_module(module), attr)))


def names(module: str, registry: str) -> type:
    """A choice of the names in ``module.registry`` (dict keys or a tuple): help lists them, a bad one fails
    while parsing, and the command receives the name as a str.

    The module is imported only when the option is parsed or its help shown:
    simulate, models and rollout import torch, which ``clipctl --help`` or
    ``presets`` should not wait 3 s for.
    """
    body = _Registry.__prepare__(registry, (enum.Enum,))
    body["__registry__"] = (module, registry)
    return _Registry(registry, (enum.Enum,), body)


# Each choice's names, read from the module that owns them.
PlotKind = names("clipctl.plotting", "KINDS")
Band = names("clipctl.plotting", "BANDS")
XAxis = names("clipctl.analysis", "X_AXES")
TableFormat = names("clipctl.analysis", "TABLE_FORMATS")
Optimizer = names("clipctl.simulate", "OPTIMIZERS")
SimReward = names("clipctl.simulate", "REWARD_KINDS")
Engine = names("clipctl.rollout", "ENGINES")
Grader = names("clipctl.data.rewards", "GRADERS")
Dtype = names("clipctl.models", "DTYPES")


# ---------------------------------------------------------------- options shared by commands


Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
Overrides = Annotated[List[str], typer.Option("--set", "-s", help="Override, e.g. --set algo.eps_high=inf (repeatable).")]
Runs = Annotated[List[str], typer.Argument(
    metavar="RUN_OR_GLOB", help="Run directories, quoted globs ('runs/*'), or a folder holding runs.",
)]
GroupBy = Annotated[Optional[str], typer.Option(
    "--group-by", "-g", help="Comma-separated config keys section.key (default: algo.eps_low,algo.eps_high,reward.kind, "
    "plus algo.entropy_target,algo.entropy_controller when a run has a controller).",
)]
Actions = Annotated[int, typer.Option("--actions", help="Actions of the tabular policy.")]


def out_option(help: str):
    return typer.Option("--out", "-o", help=help)


def seed_option(help: str):
    return typer.Option("--seed", help=help)


# ---------------------------------------------------------------- train and presets


@command(interrupted=_resume_hint)
def train(
    preset: Annotated[Optional[str], typer.Option("--preset", "-p", help="Preset name (see `clipctl presets`) or a .toml path [default: tiny-cpu].")] = None,
    set_: Overrides = [],
    out: Annotated[Optional[Path], out_option("Folder that holds run directories [default: runs].")] = None,
    name: Annotated[Optional[str], typer.Option("--name", "-n", help="Run directory name (default: PRESET-TIMESTAMP).")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue this run directory from its last checkpoint.")] = None,
    quiet: Quiet = False,
    deepspeed: Annotated[Optional[str], typer.Option(
        "--deepspeed", help="Train with DeepSpeed: zero1, zero2, zero3 or a DeepSpeed .json config (see docs/distributed.md).",
    )] = None,
    nproc: Annotated[Optional[int], typer.Option(
        "--nproc", min=1, help="Re-launch under torchrun with N processes on this machine (needs --deepspeed).",
    )] = None,
    nnodes: Annotated[int, typer.Option(
        "--nnodes", min=1, help="Machines of a --nproc run; start the same command on each (docs/cluster.md).",
    )] = 1,
    rdzv_endpoint: Annotated[Optional[str], typer.Option(
        "--rdzv-endpoint", help="HOST:PORT where the --nnodes machines meet (torchrun's c10d rendezvous).",
    )] = None,
    rdzv_id: Annotated[str, typer.Option(
        "--rdzv-id", help="Rendezvous id, the same on every machine (e.g. the Slurm job id).",
    )] = "clipctl",
    local_rank: Annotated[Optional[int], typer.Option(
        "--local_rank", "--local-rank", hidden=True, help="Set by the deepspeed launcher; ignored.",
    )] = None,
    debug: Debug = False,
):
    """Train with GRPO / Dr. GRPO / DAPO and log entropy and clip statistics every step.

    Example:

        clipctl train --preset tiny-cpu --set algo.eps_high=inf --out runs --name clip-low-only
    """
    from clipctl.config import load_config
    from clipctl.runlog import read_run
    from clipctl.trainer import train as run_training
    from clipctl.trainer.launch import launched_world_size, setup

    from clipctl.trainer.launch import Nodes

    nodes = Nodes(nnodes, rdzv_endpoint, rdzv_id)
    if launched_world_size() == 1 and (nproc is not None or nodes != Nodes()):
        _relaunch(nproc, nodes, preset, set_, out, name, resume, quiet, deepspeed, debug)
    parallel = setup(deepspeed)
    bar = render.TrainBar(quiet)
    try:
        result = run_training(
            None if resume else load_config(preset or "tiny-cpu", set_), out=out, name=name, preset=preset, resume=resume,
            overrides=tuple(set_), command_line=["clipctl", *sys.argv[1:]], log=bar.log, on_start=bar.on_start,
            on_step=bar.on_step, parallel=parallel,
        )
    finally:
        bar.stop()
    steps = read_run(result.run_dir).steps
    console.print(render.summary_table(steps, f"{result.run_dir} ({len(steps)} steps)"))


def _relaunch(nproc, nodes, preset, set_, out, name, resume, quiet, deepspeed, debug) -> None:
    """Run this same ``train`` under torchrun with ``nproc`` processes per machine, then exit with its code."""
    from clipctl.config import load_config
    from clipctl.errors import ConfigError
    from clipctl.trainer.deepspeed import DEEPSPEED_CHOICES, check_launch
    from clipctl.trainer.launch import relaunch

    nodes.check()
    if nproc is None:
        raise ConfigError("--nnodes, --rdzv-endpoint and --rdzv-id need --nproc N (processes per machine)")
    if deepspeed is None:
        raise ConfigError(f"--nproc {nproc} needs --deepspeed {DEEPSPEED_CHOICES}")
    if not resume:  # fail here with one line, not once per process
        check_launch(load_config(preset or "tiny-cpu", set_), nproc * nodes.count, deepspeed)
    # Only the flags given are passed on: --resume refuses a --preset or --out of another run.
    args = ["train", "--deepspeed", deepspeed] + (["--preset", preset] if preset else []) + (["--out", str(out)] if out else [])
    args += [a for text in set_ for a in ("--set", text)]
    args += (["--name", name] if name else []) + (["--resume", str(resume)] if resume else [])
    args += (["--quiet"] if quiet else []) + (["--debug"] if debug else [])
    raise typer.Exit(relaunch(nproc, args, nodes))


@command()
def presets(
    name: Annotated[Optional[str], typer.Argument(help="Show this preset fully resolved (defaults + preset).")] = None,
    set_: Overrides = [],
    debug: Debug = False,
):
    """List presets, or show one resolved.

    Example:

        clipctl presets tiny-cpu --set algo.eps_high=inf
    """
    from clipctl.config import SECTIONS, available_presets, config_to_dict, field_help, load_config, preset_description

    if name is None:
        console.print(render.presets_table((p, preset_description(p)) for p in available_presets()))
        return
    for line in render.preset_lines(config_to_dict(load_config(name, set_)), SECTIONS, field_help):
        say(line)


# ---------------------------------------------------------------- eval-passk


def _parse_ks(text: str) -> list[int]:
    from clipctl.errors import ConfigError

    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--k {text!r} must be comma-separated integers, e.g. 1,8,32") from None


@command(name="eval-passk", interrupted="Interrupted; rerun the same command to resume (finished batches are kept)")
def eval_passk(
    target: Annotated[str, typer.Argument(help="Model (HF id, local folder, builtin:tiny) or run directory (evaluates its checkpoints).")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="gsm8k, math500, aime2024, aime2025, amc23, or a local .jsonl/.parquet file.")],
    n: Annotated[int, typer.Option("--n", help="Samples per problem.")] = 32,
    k: Annotated[str, typer.Option("--k", help="pass@k budgets, comma-separated, each <= --n.")] = "1,8,32",
    temperature: Annotated[float, typer.Option("--temperature", help="Sampling temperature (> 0).")] = 0.6,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass.")] = 1.0,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Longest response, in tokens.")] = 512,
    seed: Annotated[int, seed_option("Sampling and bootstrap seed.")] = 0,
    limit: Annotated[int, typer.Option("--limit", help="Evaluate only the first N problems (0 = all).")] = 0,
    engine: Annotated[Engine, typer.Option("--engine", help="Rollout engine.")] = "hf",
    checkpoints: Annotated[str, typer.Option("--checkpoints", help="Run directories: all, last, or step-N,...")] = "all",
    out: Annotated[Optional[Path], out_option("Output root (default RUN_DIR/eval, or runs/eval/<model>).")] = None,
    problem_col: Annotated[Optional[str], typer.Option("--problem-col", help="Problem column (default: the dataset's).")] = None,
    answer_col: Annotated[Optional[str], typer.Option("--answer-col", help="Gold answer column (default: the dataset's).")] = None,
    id_col: Annotated[Optional[str], typer.Option("--id-col", help="Problem id column (default: the dataset's, else the row number).")] = None,
    grader: Annotated[Optional[Grader], typer.Option("--grader", help="Default: the dataset's; math_verify for local files.")] = None,
    template: Annotated[Optional[str], typer.Option("--template", help="Prompt template with {problem} (default: the dataset's).")] = None,
    batch_prompts: Annotated[int, typer.Option("--batch-prompts", help="Problems per generate call.")] = 8,
    grader_processes: Annotated[int, typer.Option("--grader-processes", help="Grading worker processes; 0 grades inline.")] = 0,
    dtype: Annotated[Dtype, typer.Option("--dtype", help="Model weights' dtype.")] = "float32",
    lock_wait: Annotated[float, typer.Option(
        "--lock-wait", min=0, help="Seconds to wait while another eval-passk writes the same output (0: fail at once).",
    )] = 3600.0,
    quiet: Quiet = False,
    debug: Debug = False,
):
    """Sample N responses per problem and report unbiased pass@k, mean@n and bootstrap intervals.

    Example:

        clipctl eval-passk builtin:tiny --dataset gsm8k --n 8 --k 1,8 --limit 20
    """
    from clipctl.config import EvalConfig, check_section
    from clipctl.eval.driver import evaluate

    cfg = EvalConfig(
        datasets=(dataset,), n=n, k=tuple(_parse_ks(k)), temperature=temperature, top_p=top_p,
        max_new_tokens=max_new_tokens, limit=limit, batch_prompts=batch_prompts, grader_processes=grader_processes,
        problem_col=problem_col, answer_col=answer_col, id_col=id_col, grader=grader, template=template,
    )
    check_section("eval", cfg)  # before the progress bar starts; the message names config keys (eval.n is --n)
    with render.EvalBar(quiet) as bar:
        results = evaluate(
            target, dataset, cfg, seed=seed, engine=engine, checkpoints=checkpoints, out=out, dtype=dtype,
            lock_wait=lock_wait, progress=bar.on_progress, log=bar.log,
        )
    console.print(render.passk_table(results, target, n, temperature))


# ---------------------------------------------------------------- analyze-clip-stats and plot


@command(name="analyze-clip-stats")
def analyze_clip_stats(
    runs: Runs,
    group_by: GroupBy = None,
    fmt: Annotated[TableFormat, typer.Option("--format", "-f", help="Output format.")] = "table",
    out: Annotated[Optional[Path], out_option("Write here instead of stdout (required for parquet).")] = None,
    per_run: Annotated[bool, typer.Option("--per-run", help="Results per run instead of per group.")] = False,
    regression: Annotated[bool, typer.Option(
        "--regression", help="Only the attribution regression on the unclipped change (intercept, slope, clustered SEs).",
    )] = False,
    paired: Annotated[bool, typer.Option(
        "--paired", help="Paired effects of each setting against --baseline, seed by seed.",
    )] = False,
    baseline: Annotated[Optional[str], typer.Option(
        "--baseline", help="Baseline of --paired as KEY=VALUE,... over group keys (default algo.eps_low=0.2,algo.eps_high=0.2).",
    )] = None,
    metrics: Annotated[Optional[str], typer.Option(
        "--metrics", "-m", help="Comma-separated per-run columns to keep (default: all; the table shows a summary set).",
    )] = None,
    debug: Debug = False,
):
    """Entropy change, clip fractions, the theory-vs-measurement statistics and the clip attribution per group.

    The table view also shows each group's attribution regression; --paired
    compares settings seed by seed.

    Example:

        clipctl analyze-clip-stats 'runs/*' --paired --baseline algo.eps_low=0.2,algo.eps_high=0.2
    """
    from clipctl import analysis

    if fmt == "parquet" and out is None:
        raise analysis.AnalysisError("--format parquet writes a binary file: add --out FILE.parquet")
    paired = paired or baseline is not None
    if per_run + regression + paired > 1:
        raise analysis.AnalysisError("--per-run, --regression and --paired each choose the table; pass one of them")
    chosen = analysis.parse_keys(metrics)
    if chosen and (regression or paired):
        raise analysis.AnalysisError("--metrics picks per-run or per-group columns; leave it out with --regression or --paired")
    report = analysis.clip_report(runs, group_by=group_by, note=note)
    per_run_df, per_group_df = report.per_run, report.per_group
    counts = f"{len(per_run_df)} run(s) in {len(per_group_df)} group(s)"
    regression_title = f"{counts}: {analysis.REGRESSION_TITLE}"
    if paired:
        frame = report.paired(baseline)
        items = lambda width: render.paired_tables(frame, f"{counts}: {analysis.PAIRED_TITLE}")  # noqa: E731
    elif regression:
        frame = report.regression()
        items = lambda width: render.regression_tables(frame, regression_title)  # noqa: E731
    else:
        frame = analysis.summary_frame(per_run_df, per_group_df, per_run_rows=per_run, metrics=chosen)
        shown = chosen or [m for m in analysis.TABLE_METRICS if m in per_run_df]
        title = f"{len(per_run_df)} run(s)" + ("" if per_run else f" in {len(per_group_df)} group(s); mean±sd across runs")
        below = [] if per_run or chosen or fmt != "table" else render.regression_tables(report.regression(), regression_title)
        items = lambda width: [  # noqa: E731
            *render.analysis_tables(frame, per_run=per_run, metrics=shown, title=title, width=width), *below]
    if fmt == "table":
        if out is None:
            render.print_all(console, items(console.width))
            return
        analysis.write_text(out, render.as_text(items(200), width=200))
    elif out is None:
        sys.stdout.write(analysis.to_text(frame, fmt))
        return
    else:
        analysis.write_table(frame, out, fmt)
    note(f"wrote {out}")


@command()
def plot(
    runs: Runs,
    out: Annotated[Path, out_option("Figure file: .png, .svg or .pdf.")],
    kind: Annotated[PlotKind, typer.Option("--kind", "-k", help="What to plot.")] = "dashboard",
    normalize: Annotated[bool, typer.Option("--normalize", help="Entropy divided by each run's initial entropy (paper Fig. 4).")] = False,
    group_by: GroupBy = None,
    smooth: Annotated[int, typer.Option("--smooth", help="Trailing rolling mean over N steps, per run, before averaging.")] = 1,
    x: Annotated[XAxis, typer.Option("--x", help="x axis: tokens is cumulative tokens trained on.")] = "step",
    band: Annotated[Band, typer.Option("--band", help="Band across runs of a group: min-max or ±1 sd.")] = "minmax",
    baseline: Annotated[Optional[str], typer.Option(
        "--baseline", help="--kind paired: baseline setting as KEY=VALUE,... (default algo.eps_low=0.2,algo.eps_high=0.2).",
    )] = None,
    debug: Debug = False,
):
    """Plot runs grouped by every config key that differs (seeds aside): mean line across seeds with a band.

    Example:

        clipctl plot 'runs/*' --kind entropy --normalize --out entropy.png
    """
    from clipctl import plotting

    path = plotting.plot_to_file(
        runs, kind, out, group_by=group_by, normalize=normalize, smooth=smooth, x=x, band=band, baseline=baseline, note=note
    )
    say(f"wrote {path}")


# ---------------------------------------------------------------- simulate check, simulate dynamics


@command(simulate_app, "check")
def simulate_check(
    actions: Actions = 20,
    eta: Annotated[float, typer.Option("--eta", help="Step size.")] = 1e-3,
    trials: Annotated[int, typer.Option("--trials", help="Random policy pairs.")] = 20,
    seed: Annotated[int, seed_option("Seed of the random policies and advantages.")] = 0,
    eps_low: Annotated[float, typer.Option("--eps-low", help="Clip-low eps.")] = 0.2,
    eps_high: Annotated[float, typer.Option("--eps-high", help="Clip-high eps (finite).")] = 0.2,
    debug: Debug = False,
):
    """Compare one exact PG/NPG step on the clipped objective with Theorems 1 and 2.

    Example:

        clipctl simulate check --actions 20 --eta 1e-3 --trials 20
    """
    from clipctl import simulate as sim

    results = sim.check_theorems(actions=actions, eta=eta, trials=trials, seed=seed, eps_low=eps_low, eps_high=eps_high)
    console.print(render.check_table(results, eta))
    for thm in ("thm1", "thm2"):
        say(render.check_summary(results, thm))


DYNAMICS_SHOWN = (
    "avg_clip_low_frac", "avg_clip_high_frac", "thm2_vs_attr_sign_agree", "thm2_vs_attr_pearson",
    "thm2_vs_raw_sign_agree", "clip_low_attributed_dH_avg", "clip_high_attributed_dH_avg", "entropy_change",
)


@command(simulate_app, "dynamics")
def simulate_dynamics(
    out: Annotated[Path, out_option("Folder for the run directories.")],
    actions: Actions = 50,
    steps: Annotated[int, typer.Option("--steps", help="Steps per run.")] = 150,
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds per clip setting.")] = 4,
    samples: Annotated[int, typer.Option("--samples", help="Actions sampled per step.")] = 64,
    group_size: Annotated[int, typer.Option("--group-size", help="Samples per GRPO group.")] = 8,
    minibatches: Annotated[int, typer.Option("--minibatches", help="Optimizer steps per epoch.")] = 4,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over each step's samples.")] = 1,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate (SGD on logits by default).")] = 4.0,
    optimizer: Annotated[Optimizer, typer.Option("--optimizer", help="Optimizer of the logits.")] = "sgd",
    grid: Annotated[str, typer.Option("--grid", help="eps_low/eps_high settings, comma-separated.")] = "0.2/0.2,0.2/inf,1.0/0.2,0.1/inf",
    reward: Annotated[SimReward, typer.Option("--reward", help="bernoulli: p=0.5; gaussian: N(0, 1).")] = "bernoulli",
    init_scale: Annotated[float, typer.Option("--init-scale", help="Initial logits ~ N(0, s^2).")] = 1.0,
    seed: Annotated[int, seed_option("Seed of the first run; the runs use seed..seed+seeds-1.")] = 0,
    debug: Debug = False,
):
    """GRPO-like runs on a tabular policy, written as run directories, then their statistics per clip setting.

    Example:

        clipctl simulate dynamics --grid 0.2/0.2,0.2/inf,1.0/0.2 --out sim-runs
    """
    from clipctl import analysis
    from clipctl import simulate as sim

    base = sim.DynamicsConfig(
        seed=seed, actions=actions, steps=steps, samples=samples, group_size=group_size, minibatches=minibatches,
        epochs=epochs, lr=lr, optimizer=optimizer, reward=reward, init_scale=init_scale,
    )
    paths = sim.run_dynamics(out, grid=sim.parse_grid(grid), seeds=seeds, base=base)
    say(f"wrote {len(paths)} run directories under {out}")
    _, per_group_df = analysis.analyze_runs([str(p) for p in paths])
    render.print_all(console, render.analysis_tables(
        per_group_df, per_run=False, metrics=DYNAMICS_SHOWN, title="per clip setting, mean±sd across seeds", width=console.width
    ))


# ---------------------------------------------------------------- sweep


class _DefaultRun(_Group):
    """``clipctl sweep FILE ...`` means ``clipctl sweep run FILE ...``; ``clipctl sweep status FILE`` is the other command."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


sweep_app = typer.Typer(
    cls=_DefaultRun, no_args_is_help=True,
    help="""Grids of training runs from a sweep file, here or on Slurm (docs/sweeps.md, docs/cluster.md).

    Example:

        clipctl sweep cpu-random-reward --jobs 2
    """,
)
app.add_typer(sweep_app, name="sweep")
Launcher = names("clipctl.slurm", "LAUNCHERS")
SweepFile = Annotated[str, typer.Argument(help="Sweep file (.toml) or the name of a shipped one (presets/sweeps/).")]
SweepOut = Annotated[Path, out_option("Folder that holds sweep folders: runs go to OUT/SWEEP/RUN/.")]


@command(sweep_app, "run", interrupted="Interrupted; trainers stopped. Run the same command again to resume.")
def sweep(
    spec: SweepFile,
    out: SweepOut = Path("runs"),
    launcher: Annotated[Launcher, typer.Option(
        "--launcher", help="local: processes on this machine; slurm: one job array (sbatch), see docs/cluster.md.",
    )] = "local",
    slurm: Annotated[List[str], typer.Option(
        "--slurm", help="A [slurm] key for this submission, e.g. --slurm partition=gpu --slurm time=04:00:00 (repeatable).",
    )] = [],
    jobs: Annotated[Optional[int], typer.Option(
        "--jobs", "-j",
        help="Runs at once (default: 1 on CPU, one per GPU set with --gpus; on Slurm the array's %N cap). "
        "Without OMP_NUM_THREADS each local run gets cores/jobs threads.",
    )] = None,
    gpus: Annotated[Optional[str], typer.Option("--gpus", help="GPU ids to share out, e.g. 0,1,2,3 (CUDA_VISIBLE_DEVICES per run).")] = None,
    gpus_per_run: Annotated[Optional[int], typer.Option(
        "--gpus-per-run", help="GPUs per run [default: 1]; local parallel runs get disjoint sets. On Slurm: gpus_per_run.",
    )] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run failed runs again (resuming them).")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Check everything and print the plan; run nothing (with --launcher slurm: write the sbatch script).",
    )] = False,
    print_commands: Annotated[bool, typer.Option(
        "--print-commands", help="Print one shell line per run (for xargs); run nothing.",
    )] = False,
    debug: Debug = False,
):
    """Run a grid of training runs from a sweep file; resumable, skips finished runs (docs/sweeps.md).

    Example:

        clipctl sweep run cpu-random-reward --jobs 2 --dry-run   (or: clipctl sweep cpu-random-reward ...)
    """
    from clipctl import sweep as sweeps
    from clipctl.errors import ConfigError

    if print_commands:
        for line in sweeps.print_commands(spec, out):
            typer.echo(line)
        return
    if launcher == "slurm":
        if gpus is not None:
            raise ConfigError("--gpus is for --launcher local; on Slurm give --slurm gpus_per_run=N (Slurm picks the GPUs)")
        flags = [*slurm, *([f"gpus_per_run={gpus_per_run}"] if gpus_per_run is not None else [])]
        manifest = sweeps.submit_slurm(spec, out=out, flags=flags, jobs=jobs, retry_failed=retry_failed, dry_run=dry_run, log=say)
        if dry_run:
            script = manifest.attrs["script"]
            say(f"sbatch script: {script} (not submitted)" if script else "nothing to submit: every run is done, queued or failed")
        console.print(render.status_table(manifest, f"sweep {manifest.attrs['sweep_dir']} ({len(manifest)} runs)"))
        return
    if slurm:
        raise ConfigError("--slurm needs --launcher slurm")
    launch = dict(out=out, jobs=jobs, gpus=gpus, gpus_per_run=1 if gpus_per_run is None else gpus_per_run,
                  retry_failed=retry_failed)
    if dry_run:
        plan = sweeps.run_sweep(spec, dry_run=True, **launch)
        say(f"sweep folder: {plan.attrs['sweep_dir']}")
        console.print(render.plan_table(plan))
        return
    manifest = sweeps.run_sweep(spec, log=say, **launch)
    sweep_dir = Path(manifest.attrs["sweep_dir"])
    summary = sweeps.summarize(manifest, sweep_dir)
    console.print(render.sweep_table(summary, f"sweep {sweep_dir} ({len(manifest)} runs)"))
    if summary.attrs.get("note"):
        say(summary.attrs["note"])
    failed = manifest.loc[manifest["status"] == "failed", "run"].tolist()
    if failed:
        raise sweeps.SweepError(
            f"{len(failed)} of {len(manifest)} runs failed (e.g. {failed[0]}); see {sweep_dir}/logs/<run>.log, "
            "fix the cause, then rerun with --retry-failed"
        )


@command(sweep_app, "status")
def sweep_status(spec: SweepFile, out: SweepOut = Path("runs"), debug: Debug = False):
    """Each run of a sweep: pending, running, failed (with the end of its log) or done; here or on Slurm.

    Example:

        clipctl sweep status cpu-random-reward --out runs
    """
    from clipctl import sweep as sweeps

    status = sweeps.sweep_status(spec, out)
    console.print(render.status_table(status, f"sweep {status.attrs['sweep_dir']} ({len(status)} runs)"))
    for name, lines in status.attrs["tails"].items():
        say(f"--- {name} failed; last lines of {status.attrs['sweep_dir']}/logs/{name}.log:")
        for line in lines:
            say(f"    {line}")


# ---------------------------------------------------------------- reproduce


reproduce_app = typer.Typer(
    cls=_DefaultRun, no_args_is_help=True,
    help="""Each claim of the paper as one command: its runs, a verdict by a stated rule, a report (docs/reproduction.md).

    Example:

        clipctl reproduce fig3 --scale tiny --jobs 2
    """,
)
app.add_typer(reproduce_app, name="reproduce")


@command(reproduce_app, "list")
def reproduce_list(debug: Debug = False):
    """The paper's claims: figure or theorem, the quoted claim, the runs and the statistic that decide it, the scales.

    Example:

        clipctl reproduce list
    """
    from clipctl.reproduce import CLAIMS

    for claim in CLAIMS.values():
        typer.echo(f"{claim.id} ({claim.source}); scales: {', '.join(claim.scales)}")
        typer.echo(f"  claim:     \"{claim.quote}\"")
        typer.echo(f"  runs:      {claim.needs}")
        typer.echo(f"  statistic: {claim.statistic}")
        for name, sc in claim.scales.items():
            typer.echo(f"  --scale {name}: default --seeds {sc.seeds} --steps {sc.steps}; {sc.cost}")


@command(reproduce_app, "run", interrupted="Interrupted; trainers stopped. Run the same command again to resume.")
def reproduce_run(
    claim: Annotated[str, typer.Argument(help="A claim id (clipctl reproduce list), e.g. fig3.")],
    scale: Annotated[str, typer.Option("--scale", help="tiny | smollm2 | gpu | paper (the scales a claim has: reproduce list).")] = "tiny",
    seeds: Annotated[Optional[int], typer.Option("--seeds", help="Seeds per setting [default: the scale's].")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Training steps per LM run [default: the scale's].")] = None,
    out: Annotated[Optional[Path], out_option("Folder of the runs and the report [default: runs/reproduce/CLAIM-SCALE].")] = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Runs at once, as in clipctl sweep [default: 2 at tiny and smollm2, else 1].")] = None,
    gpus: Annotated[Optional[str], typer.Option("--gpus", help="GPU ids to share out, as in clipctl sweep.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check everything and list the runs; run nothing.")] = False,
    debug: Debug = False,
):
    """Run (or reuse) the runs a claim needs, decide it, write DIR/report.md, DIR/claims.json and DIR/figures/.

    Example:

        clipctl reproduce run fig3 --scale tiny --jobs 2   (or: clipctl reproduce fig3 ...)
    """
    from clipctl import reproduce as repro

    if dry_run:
        plan = repro.plan_table(claim, scale, seeds=seeds, steps=steps, out=out)
        console.print(render.frame_table(plan, f"plan in {plan.attrs['out']}: {len(plan)} runs (dry run, nothing started)"))
        return
    result = repro.reproduce(claim, scale, seeds=seeds, steps=steps, out=out, jobs=jobs, gpus=gpus, log=say)
    for e in result["estimates"]:
        say(f"{e['id']}: {e['verdict']} (estimate {render.cell(e['estimate'])}, 95% CI "
            f"[{render.cell(e['ci_low'])}, {render.cell(e['ci_high'])}], n {e['n']})")
    say(f"{result['claim']} at scale {result['scale']}: {result['verdict']}; report: {result['report']}")


def main() -> None:
    # The deepspeed launcher puts --local_rank=N before the command name; the
    # rank comes from the environment (LOCAL_RANK), so drop it.
    sys.argv = [a for a in sys.argv if not a.startswith("--local_rank=")]
    app()


if __name__ == "__main__":
    main()
