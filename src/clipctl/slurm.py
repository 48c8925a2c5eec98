"""Slurm for sweeps: the ``[slurm]`` table, the job-array script, and the two scheduler calls (sbatch, squeue).

``sweep.submit_slurm`` decides what to submit; this module only knows Slurm.
The script of one submission is a job array whose task ``i`` runs run ``i``
of the sweep (its position in ``sweep.json``), so indices never change
between submissions. How the script departs from a plain array of the
printed commands:

1. Each task decides new or resumed from the run folder itself (``run.json``
   present: ``train --resume``), the local launcher's rule; a requeued task
   therefore resumes from its checkpoint.
2. The batch shell gets the walltime warning (``--signal=B:USR1@S``), passes
   it to the trainer, which checkpoints and exits ``REQUEUE_EXIT``; the task
   then requeues itself (``scontrol requeue``). A preemption or
   ``scontrol requeue`` sends SIGTERM to every process of the job, which the
   trainer answers the same way, and Slurm requeues it (``--requeue``).
3. The trainer's output goes to ``logs/<run>.log`` (as with the local
   launcher), each attempt after a ``# time job ...`` line and followed by a
   ``# time exit CODE`` line, which is how ``sweep status`` tells a failed run
   from one that was killed (no exit line) without Slurm's accounting.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import subprocess
import tomllib
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from clipctl.config import Bounds, coerce
from clipctl.errors import REQUEUE_EXIT, ClipctlError, ConfigError

LAUNCHERS = ("local", "slurm")  # clipctl sweep --launcher
# Slurm's time formats: minutes, m:s, h:m:s, d-h, d-h:m, d-h:m:s.
TIME_RE = re.compile(r"^\d+(-\d+)?(:\d+){0,2}$")


def _f(default, help: str, bounds: Optional[Bounds] = None):
    return field(default=default, metadata={"help": help, "bounds": bounds})


@dataclass(frozen=True)
class SlurmOptions:
    """Resources of every run of a sweep on Slurm: the ``[slurm]`` table, then ``--slurm KEY=VALUE`` flags."""

    partition: Optional[str] = _f(None, "Partition (#SBATCH --partition); none: the cluster's default.")
    account: Optional[str] = _f(None, "Account to charge (--account).")
    qos: Optional[str] = _f(None, "Quality of service (--qos).")
    time: Optional[str] = _f(None, "Walltime of one attempt of a run, e.g. 04:00:00 or 1-12:00:00 (--time).")
    gpus_per_run: int = _f(0, "GPUs of each run (--gres=gpu:N); 0 on CPU.", Bounds(lo=0))
    cpus_per_run: int = _f(1, "CPU cores of each run (--cpus-per-task); also its OMP_NUM_THREADS.", Bounds(lo=1))
    mem: Optional[str] = _f(None, "Memory of each run, e.g. 64G (--mem).")
    constraint: Optional[str] = _f(None, "Node features, e.g. a100 (--constraint).")
    max_running: Optional[int] = _f(None, "Runs of the array at once (--array=...%N); --jobs sets it too.", Bounds(lo=1))
    signal_seconds: int = _f(
        300, "Seconds before the walltime when the run is told to checkpoint and requeue (--signal=B:USR1@S); "
        "0: no warning.", Bounds(lo=0),
    )
    python: Optional[str] = _f(None, "The Python on the compute nodes (default: the one running clipctl).")
    sbatch: tuple[str, ...] = _f((), "More #SBATCH options, each one string, e.g. [\"--exclusive\"].")
    setup: tuple[str, ...] = _f((), "Shell lines run before the trainer, e.g. [\"module load cuda\"].")


SLURM_KEYS = tuple(f.name for f in dataclasses.fields(SlurmOptions))
_TYPES = typing.get_type_hints(SlurmOptions)


def _value(key: str, value: Any, where: str) -> Any:
    if key not in SLURM_KEYS:
        raise ConfigError(f"{where}: unknown key {key}; valid: {', '.join(SLURM_KEYS)}")
    name = f"{where} {key}"
    if _TYPES[key] == tuple[str, ...]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise ConfigError(f"{name} must be a list of strings, got {value!r}")
        typed: Any = tuple(items)
    else:
        typed = coerce(_TYPES[key], value, name)
    for text in typed if isinstance(typed, tuple) else [typed]:
        if isinstance(text, str) and ("\n" in text or "\r" in text):
            raise ConfigError(f"{name} must be on one line, got {text!r}; give several lines as a list")
    bounds = dataclasses.fields(SlurmOptions)[SLURM_KEYS.index(key)].metadata["bounds"]
    if bounds is not None and typed is not None and not bounds.holds(typed):
        raise ConfigError(f"{name} = {typed} must be {bounds.describe()}")
    if key == "time" and typed is not None and not TIME_RE.match(typed):
        raise ConfigError(f"{name} = {typed!r} is not a Slurm time; write MINUTES, HH:MM:SS or DAYS-HH:MM:SS")
    return typed


def slurm_options(table: Any, flags: typing.Sequence[str] = (), where: str = "[slurm]") -> SlurmOptions:
    """The table's options (every key known, every value typed and bounded), then each ``KEY=VALUE`` flag."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table of key = value, got {table!r}")
    values = {key: _value(key, value, where) for key, value in table.items()}
    for text in flags:
        key, eq, raw = text.partition("=")
        if not eq:
            raise ConfigError(f"--slurm {text!r} must be KEY=VALUE, e.g. --slurm partition=gpu; keys: {', '.join(SLURM_KEYS)}")
        try:  # a TOML literal (a number, a list), else the text itself
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        values[key.strip()] = _value(key.strip(), value, "--slurm")
    return SlurmOptions(**values)


# ---------------------------------------------------------------- the scheduler


def check_slurm() -> None:
    """``sbatch`` and ``squeue`` on PATH, or one line that says what to do."""
    missing = [tool for tool in ("sbatch", "squeue") if shutil.which(tool) is None]
    if missing:
        raise ConfigError(
            f"--launcher slurm needs {' and '.join(missing)} on PATH (not found); run it on a Slurm login node, "
            "or use --launcher local, or --dry-run to only write the sbatch script"
        )


def submit(script: str) -> str:
    """``sbatch --parsable SCRIPT``: the job id of the array."""
    proc = subprocess.run(["sbatch", "--parsable", script], capture_output=True, text=True)
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise ClipctlError(f"sbatch refused {script}: {why}; fix the [slurm] table or --slurm flags and run again")
    return proc.stdout.strip().split(";")[0]


def queued(job_ids: typing.Iterable[str]) -> dict[tuple[str, int], str]:
    """Array tasks of these jobs that Slurm still holds: ``(job, index) -> state`` (PENDING, RUNNING, ...).

    Ended tasks are absent (this needs no accounting database). A requeued task
    keeps its job and index.
    """
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    proc = subprocess.run(
        ["squeue", "--noheader", "--array", "--jobs", ",".join(ids), "--format", "%F %K %T"],
        capture_output=True, text=True,
    )
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
        why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise ClipctlError(f"squeue failed ({why}); check that Slurm answers (squeue) and run this again")
    states = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            states[(parts[0], int(parts[1]))] = parts[2]
    return states


# ---------------------------------------------------------------- the script

ACTIVE = {"PENDING": "pending", "CONFIGURING": "running", "RUNNING": "running", "COMPLETING": "running",
          "REQUEUED": "pending", "REQUEUE_HOLD": "pending", "REQUEUE_FED": "pending", "RESIZING": "running",
          "SUSPENDED": "running", "STOPPED": "running", "SIGNALING": "running", "STAGE_OUT": "running"}


def script_text(
    opts: SlurmOptions, *, sweep: str, sweep_dir: str, runs: list[tuple[int, str, list[str]]], python: str,
) -> str:
    """The sbatch script: one array task per ``(index, run name, new-run argv)``."""
    indices = ",".join(str(i) for i, _, _ in runs)
    cap = f"%{opts.max_running}" if opts.max_running else ""
    lines = [
        "#!/bin/bash",
        f"# clipctl sweep {sweep}: {len(runs)} run(s) as one job array (written by clipctl sweep --launcher slurm).",
        "# Task i is run i of sweep.json: new, or resumed when its folder has run.json. Its output goes to",
        "# logs/<run>.log. On the walltime warning (SIGUSR1) the run checkpoints, exits 75 and the task requeues.",
        f"#SBATCH --job-name=clipctl-{sweep}",
        f"#SBATCH --array={indices}{cap}",
        f"#SBATCH --output={sweep_dir}/logs/slurm-%A_%a.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        f"#SBATCH --cpus-per-task={opts.cpus_per_run}",
        "#SBATCH --requeue",
    ]
    if opts.signal_seconds:
        lines.append(f"#SBATCH --signal=B:USR1@{opts.signal_seconds}")
    for key, flag in (("partition", "partition"), ("account", "account"), ("qos", "qos"), ("time", "time"),
                      ("mem", "mem"), ("constraint", "constraint")):
        value = getattr(opts, key)
        if value is not None:
            lines.append(f"#SBATCH --{flag}={value}")
    if opts.gpus_per_run:
        lines.append(f"#SBATCH --gres=gpu:{opts.gpus_per_run}")
    lines += [f"#SBATCH {extra}" for extra in opts.sbatch]
    lines += ["", "set -u", *opts.setup]
    lines += [
        'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"',
        f"sweep={shlex.quote(sweep_dir)}",
        'case "$SLURM_ARRAY_TASK_ID" in',
        *(f"  {i}) run={shlex.quote(name)}; new=({shlex.join(argv)}) ;;" for i, name, argv in runs),
        '  *) echo "array task $SLURM_ARRAY_TASK_ID is not a run of this script" >&2; exit 2 ;;',
        "esac",
        'if [ -f "$sweep/$run/run.json" ]; then',
        f'  cmd=({shlex.quote(python)} -m clipctl train --resume "$sweep/$run" -q)',
        "else",
        '  cmd=("${new[@]}")',
        "fi",
        'log="$sweep/logs/$run.log"',
        'mkdir -p "$sweep/logs"',
        'echo "# $(date +%Y-%m-%dT%H:%M:%S) job ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} on $(hostname): ${cmd[*]}" >> "$log"',
        "usr1=",
        "pid=",
        "# Passed on to the trainer, which checkpoints after its current step (a repeat changes nothing).",
        """trap 'usr1=1; [ -n "$pid" ] && kill -USR1 "$pid" 2>/dev/null' USR1""",
        """trap '[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null' TERM""",
        '"${cmd[@]}" >> "$log" 2>&1 < /dev/null &',
        "pid=$!",
        '# wait returns early when a trap runs: wait again until the trainer has exited.',
        'wait "$pid"; code=$?',
        'while kill -0 "$pid" 2>/dev/null; do wait "$pid"; code=$?; done',
        'echo "# $(date +%Y-%m-%dT%H:%M:%S) exit $code" >> "$log"',
        f'if [ "$code" -eq {REQUEUE_EXIT} ] && [ -n "$usr1" ]; then scontrol requeue "$SLURM_JOB_ID"; fi',
        'exit "$code"',
    ]
    return "\n".join(lines) + "\n"


EXIT_RE = re.compile(r"^# \S+ exit (-?\d+)$")


def last_exit(log_text: str) -> Optional[int]:
    """The exit code the script wrote after the last attempt, or None when that attempt has no exit line
    (running, or killed outright with its batch shell)."""
    for line in reversed(log_text.splitlines()):
        if line.startswith("# "):
            m = EXIT_RE.match(line)
            return int(m.group(1)) if m else None
    return None
