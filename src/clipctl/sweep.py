"""Sweeps: a TOML grid of training runs, each run as a subprocess, resumable.

A sweep file names a base preset, fixed overrides (``[set]``), axes
(``[grid]``, and/or explicit ``cases``) and ``seeds``. ``expand`` turns it into
runs; ``run_sweep`` runs each as ``python -m clipctl train ...`` in
``<out>/<sweep>/<run>/`` and keeps ``<out>/<sweep>/manifest.parquet`` current.
The format and the commands are described in ``docs/sweeps.md``.

How this departs from a plain loop over ``train()``:

1. Everything is checked before anything runs: every run's config is built
   with ``load_config``, so a bad value in the last grid point fails at once.
2. The run directories are the truth, the manifest a cache of them: a run is
   done when its steps table has ``train.steps`` rows and its last checkpoint
   is that step. Every call rebuilds the statuses from disk, so a sweep killed
   any way (even SIGKILL, leaving ``running`` rows) resumes by running the same
   command again.
3. Runs are subprocesses, not calls: a crash, OOM or CUDA error fails one run,
   and the printed command of a run is exactly what the sweep launches.
4. A lock on ``<sweep>/.lock`` (``rundir.RunLock``) is held by the sweep and
   inherited by its training processes, so a second sweep cannot write the same runs, not even
   while trainers orphaned by a killed sweep still run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pandas as pd

from clipctl.config import (
    MAX_SEED,
    PRESET_DIR,
    SECTIONS,
    Config,
    coerce,
    load_config,
    named_toml,
    parse_override,
    preset_path,
    toml_names,
)
from clipctl.errors import REQUEUE_EXIT, ClipctlError, ConfigError, RunDirError
from clipctl import slurm
from clipctl.rundir import RunLock, check_output_dir, ensure_output_dir, lock_held
from clipctl.runlog import atomic_write_bytes, atomic_write_json, latest_checkpoint, logged_steps, read_meta, write_parquet_atomic

SWEEP_DIR = PRESET_DIR / "sweeps"
TOP_KEYS = ("name", "description", "preset", "set", "grid", "cases", "seeds", "name_template", "slurm")
# Names become folder names and appear in shell lines: keep them to a safe set.
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._=,+-]*$")
UNSAFE_RE = re.compile(r"[^A-Za-z0-9._=,+-]+")
MAX_NAME = 200
POLL_SECONDS = 0.2
STOP_GRACE_SECONDS = 15.0


class SweepError(ClipctlError):
    """A sweep cannot start (its folder is busy) or some of its runs failed."""


@dataclass(frozen=True)
class SweepSpec:
    """A sweep file, checked: every key exists and every value has the field's type."""

    path: Path
    name: str
    preset: str  # a preset name, or an absolute path to a .toml file
    fixed: dict[str, Any]  # config key -> value, for every run
    grid: dict[str, list]  # config key -> values (the product is taken)
    cases: list[dict[str, Any]]  # explicit points, each setting the same keys
    seeds: Optional[list[int]]  # train.seed values; None = the preset's seed
    name_template: Optional[str] = None
    description: str = ""
    slurm: dict = field(default_factory=dict)  # the [slurm] table, checked (slurm.slurm_options)


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its folder name, its ``--set`` overrides, its varied values."""

    name: str
    overrides: tuple[str, ...]  # fixed overrides first, then the varied ones
    values: dict[str, Any] = field(default_factory=dict)  # varied key -> typed value


# ---------------------------------------------------------------- reading a sweep file


def available_sweeps() -> list[str]:
    return toml_names(SWEEP_DIR)


def sweep_path(spec: str | os.PathLike) -> Path:
    """A sweep file path, or the name of a shipped one (``presets/sweeps/NAME.toml``)."""
    return named_toml(
        spec,
        SWEEP_DIR,
        missing_file="sweep file {spec} not found; pass an existing .toml file or a shipped sweep name",
        unknown="unknown sweep '{spec}'; pass a .toml file or a shipped sweep: {valid}",
    )


def _field_type(key: str):
    section, name = key.split(".")
    return typing.get_type_hints(SECTIONS[section])[name]


def _check_value(key: str, value: Any, where: str) -> Any:
    """Check ``key`` exists and ``value`` fits its field; return the typed value."""
    try:
        parse_override(f"{key}=")
        if isinstance(value, (dict, dt.date, dt.time, dt.datetime)):
            raise ConfigError(f"{key} must be a number, string, boolean or list, got {value!r}")
        return coerce(_field_type(key), value, key)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _flatten(table: Any, where: str) -> dict[str, Any]:
    """``{"train.steps": 30}`` and ``{"train": {"steps": 30}}`` both give ``{"train.steps": 30}``."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table of section.key = value, got {table!r}")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key in TOP_KEYS:  # TOML puts keys after a [table] header into that table
            raise ConfigError(f"{where}: {key} is a top-level key; move it above the first [table] header")
        items = [(f"{key}.{k}", v) for k, v in value.items()] if isinstance(value, dict) else [(key, value)]
        for full, v in items:
            if isinstance(v, dict):
                raise ConfigError(f"{where}: {full} is a table; keys are section.key (e.g. algo.eps_low)")
            if full in out:
                raise ConfigError(f"{where} sets {full} twice; keep one")
            out[full] = v
    return out


def to_text(value: Any) -> str:
    """A value as ``--set`` text: ``inf`` for infinity, ``a,b`` for a list, ``none`` for None."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (list, tuple)):
        return ",".join(to_text(v) for v in value)
    return str(value)


def _resolve_preset(preset: Any, sweep_file: Path) -> str:
    """A preset name stays a name; a path (relative to the sweep file, else to the cwd) becomes absolute."""
    if not isinstance(preset, str) or not preset:
        raise ConfigError(f"{sweep_file}: preset must be a preset name or a .toml path, got {preset!r}")
    if preset.endswith(".toml") or "/" in preset:
        beside = sweep_file.parent / preset
        if beside.is_file():
            return str(beside.resolve())
        return str(preset_path(preset).resolve())
    preset_path(preset)  # unknown names fail here, listing the valid ones
    return preset


def load_sweep(spec: str | os.PathLike) -> SweepSpec:
    """Read and check a sweep file (structure, keys, value types); see ``docs/sweeps.md``."""
    path = sweep_path(spec)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"sweep file {path} is not valid TOML: {e}") from None
    unknown = [k for k in raw if k not in TOP_KEYS]
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(TOP_KEYS)}")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > MAX_NAME:
        raise ConfigError(f"{path}: name {name!r} must be letters, digits and . _ - (it names the sweep folder)")
    if "preset" not in raw:
        raise ConfigError(f"{path}: no preset; add e.g. preset = \"tiny-cpu\" (a name or a .toml path)")
    preset = _resolve_preset(raw["preset"], path)

    fixed = _flatten(raw.get("set", {}), f"{path} [set]")
    for key, value in fixed.items():
        _check_value(key, value, f"{path} [set]")

    grid = _flatten(raw.get("grid", {}), f"{path} [grid]")
    for key, values in grid.items():
        where = f"{path} [grid] {key}"
        if not isinstance(values, list):
            raise ConfigError(f"{where} must be a list of values, e.g. [0.1, 0.2]; put single values in [set]")
        if not values:
            raise ConfigError(f"{where} is an empty list; give at least one value or remove the axis")
        typed = [_check_value(key, v, where) for v in values]
        for i, v in enumerate(typed):
            if v in typed[:i]:
                raise ConfigError(f"{where} lists {to_text(v)} twice; remove the duplicate")

    cases_raw = raw.get("cases", [])
    if not isinstance(cases_raw, list) or not all(isinstance(c, dict) for c in cases_raw):
        raise ConfigError(f"{path}: cases must be a list of tables, e.g. cases = [{{\"algo.eps_low\" = 0.2}}]")
    cases = [_flatten(c, f"{path} cases[{i}]") for i, c in enumerate(cases_raw)]
    typed_cases: list[dict] = []
    for i, case in enumerate(cases):
        if not case:
            raise ConfigError(f"{path} cases[{i}] is empty; set at least one key or remove it")
        if set(case) != set(cases[0]):
            raise ConfigError(
                f"{path} cases[{i}] sets {', '.join(case)} but cases[0] sets {', '.join(cases[0])}; "
                "every case must set the same keys"
            )
        typed = {key: _check_value(key, value, f"{path} cases[{i}]") for key, value in case.items()}
        if typed in typed_cases:
            raise ConfigError(f"{path} cases[{i}] repeats cases[{typed_cases.index(typed)}]; remove the duplicate")
        typed_cases.append(typed)

    seeds = raw.get("seeds")
    if seeds is not None:
        if not isinstance(seeds, list) or not seeds:
            raise ConfigError(f"{path}: seeds must be a non-empty list of integers, e.g. seeds = [0, 1, 2]")
        for s in seeds:
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED:
                raise ConfigError(f"{path}: seeds must be integers >= 0 and <= 2**63 - 1, got {s!r}")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"{path}: seeds {seeds} repeat a seed; list each once")

    owners: dict[str, str] = {}
    for where, keys in (("[set]", fixed), ("[grid]", grid), ("cases", cases[0] if cases else {})):
        for key in keys:
            if key in owners:
                raise ConfigError(f"{path}: {key} is in both {owners[key]} and {where}; give it in one place")
            owners[key] = where
    if seeds is not None and "train.seed" in owners:
        raise ConfigError(f"{path}: train.seed is in {owners['train.seed']} and seeds is given; use seeds only")

    template = raw.get("name_template")
    if template is not None and (not isinstance(template, str) or not template.strip()):
        raise ConfigError(f"{path}: name_template must be a non-empty string, e.g. \"lo{{eps_low}}-hi{{eps_high}}-s{{seed}}\"")
    description = raw.get("description", "")
    slurm_table = raw.get("slurm", {})
    slurm.slurm_options(slurm_table, where=f"{path} [slurm]")  # checked whichever launcher runs the sweep
    return SweepSpec(path, name, preset, fixed, grid, cases, seeds, template, str(description), slurm_table)


# ---------------------------------------------------------------- expansion and naming


def varied_keys(spec: SweepSpec) -> list[str]:
    keys = list(spec.cases[0]) if spec.cases else []
    keys += list(spec.grid)
    if spec.seeds is not None:
        keys.append("train.seed")
    return keys


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """``algo.eps_low`` -> ``eps_low``; the full key where two keys share a short name."""
    shorts = [k.split(".", 1)[1] for k in keys]
    return {k: s if shorts.count(s) == 1 else k for k, s in zip(keys, shorts)}


def _run_name(spec: SweepSpec, values: dict[str, Any], index: int) -> str:
    shorts = short_names(list(values))
    if spec.name_template is None:
        raw = ",".join(f"{shorts[k]}={to_text(v)}" for k, v in values.items()) or "run"
    else:
        fields: dict[str, Any] = {"index": index, "sweep": spec.name}
        sections: dict[str, dict] = {}
        for key, value in values.items():
            fields[shorts[key]] = value
            section, name = key.split(".")
            sections.setdefault(section, {})[name] = value
        fields.update({s: types.SimpleNamespace(**v) for s, v in sections.items()})
        try:
            raw = spec.name_template.format_map(fields)
        except (KeyError, AttributeError, IndexError, ValueError) as e:
            valid = ", ".join(["index", "sweep", *(shorts[k] for k in values), *values])
            raise ConfigError(
                f"{spec.path}: name_template {spec.name_template!r} cannot be filled ({type(e).__name__}: {e}); "
                f"valid fields: {valid}"
            ) from None
    name = UNSAFE_RE.sub("_", raw.strip())
    if not NAME_RE.match(name) or len(name) > MAX_NAME:
        raise ConfigError(
            f"{spec.path}: run name {name!r} is not a usable folder name (at most {MAX_NAME} characters, "
            "not starting with '.' or '-'); change name_template"
        )
    return name


def expand(spec: SweepSpec) -> list[RunSpec]:
    """The runs of a sweep: seeds x cases x grid (first axis slowest), named and checked for clashes.

    Seeds are the outer loop so that a sweep stopped half-way has whole seeds of
    every setting rather than every seed of half the settings.
    """
    fixed = tuple(f"{k}={to_text(v)}" for k, v in spec.fixed.items())
    runs: list[RunSpec] = []
    by_name: dict[str, RunSpec] = {}
    for seed in spec.seeds if spec.seeds is not None else [None]:
        for case in spec.cases or [{}]:
            for combo in itertools.product(*spec.grid.values()):
                values = {**case, **dict(zip(spec.grid, combo))}
                if seed is not None:
                    values["train.seed"] = seed
                typed = {k: coerce(_field_type(k), v, k) for k, v in values.items()}
                overrides = fixed + tuple(f"{k}={to_text(v)}" for k, v in typed.items())
                run = RunSpec(_run_name(spec, typed, len(runs)), overrides, typed)
                if run.name in by_name:
                    raise ConfigError(
                        f"{spec.path}: two runs get the name {run.name!r} ({', '.join(by_name[run.name].overrides[len(fixed):])} "
                        f"and {', '.join(overrides[len(fixed):])}); put every varied key in name_template"
                    )
                by_name[run.name] = run
                runs.append(run)
    return runs


def check_runs(spec: SweepSpec, runs: Sequence[RunSpec]) -> dict[str, Config]:
    """Build every run's config (defaults <- preset <- overrides, validated) before anything runs."""
    configs = {}
    for run in runs:
        try:
            configs[run.name] = load_config(spec.preset, list(run.overrides))
        except ConfigError as e:
            raise ConfigError(f"{spec.path}: run {run.name}: {e}") from None
    return configs


# ---------------------------------------------------------------- commands


def train_command(spec: SweepSpec, run: RunSpec, sweep_dir: Path, *, resume: bool = False) -> list[str]:
    """The argv that runs (or resumes) ``run``; absolute paths, so it works from any folder."""
    base = [sys.executable, "-m", "clipctl", "train"]
    if resume:
        return base + ["--resume", str(sweep_dir / run.name), "-q"]
    sets = [arg for o in run.overrides for arg in ("--set", o)]
    return base + ["--preset", spec.preset, *sets, "--out", str(sweep_dir), "--name", run.name, "-q"]


def _sweep_dir(spec: SweepSpec, out: Path) -> Path:
    return (Path(out) / spec.name).absolute()


# ---------------------------------------------------------------- state on disk


@dataclass
class Prepared:
    """A checked sweep: its spec, runs, their configs and its folder (nothing written yet)."""

    spec: SweepSpec
    runs: list[RunSpec]
    configs: dict[str, Config]
    sweep_dir: Path

    def resolved(self) -> dict:
        """What must match for a later call to continue this sweep (stored as sweep.json)."""
        return {
            "name": self.spec.name,
            "preset": self.spec.preset,
            "runs": [{"name": r.name, "overrides": list(r.overrides)} for r in self.runs],
        }


def prepare(spec_path: str | os.PathLike, out: Path = Path("runs")) -> Prepared:
    """Load, expand and check a sweep, and check it fits its folder; writes nothing."""
    spec = load_sweep(spec_path)
    runs = expand(spec)
    prepared = Prepared(spec, runs, check_runs(spec, runs), _sweep_dir(spec, out))
    _check_sweep_dir(prepared)
    return prepared


def _check_sweep_dir(p: Prepared) -> None:
    sd, new = p.sweep_dir, p.resolved()
    stored_path = sd / "sweep.json"
    if stored_path.is_file():
        try:
            stored = json.loads(stored_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RunDirError(f"cannot read {stored_path}: {e}; delete {sd} to start the sweep over") from None
        diff = _spec_diff(stored, new)
        if diff:
            raise ConfigError(
                f"sweep '{p.spec.name}' already exists in {sd} with a different spec ({diff}); "
                f"give this one another name (name = ...), pass another --out, or delete {sd} to start over"
            )
    elif sd.is_dir():
        # Runs made by hand from --print-commands are adopted (their overrides are
        # checked below); anything else in the folder is someone else's.
        ours = {r.name for r in p.runs} | {".lock", "logs", "manifest.parquet", "sweep.toml", "slurm"}
        foreign = sorted(f.name for f in sd.iterdir() if f.name not in ours)
        if foreign:
            raise ConfigError(
                f"{sd} exists but is not a sweep folder (no sweep.json; holds {foreign[0]}); "
                "pick another sweep name or --out"
            )
    for run in p.runs:
        run_dir = sd / run.name
        if (run_dir / "run.json").is_file():
            made_with = read_meta(run_dir).get("overrides")
            if made_with != list(run.overrides):
                raise RunDirError(
                    f"{run_dir} was made with --set {' '.join(made_with or [])}, not this sweep's "
                    f"{' '.join(run.overrides)}; delete {run_dir} to run it again"
                )


def _spec_diff(stored: dict, new: dict) -> str:
    if stored.get("preset") != new["preset"]:
        return f"preset {stored.get('preset')} there, {new['preset']} here"
    old_runs = {r["name"]: r["overrides"] for r in stored.get("runs", [])}
    new_runs = {r["name"]: r["overrides"] for r in new["runs"]}
    added = [n for n in new_runs if n not in old_runs]
    removed = [n for n in old_runs if n not in new_runs]
    if added or removed:
        parts = ([f"{len(added)} new run(s) e.g. {added[0]}"] if added else []) + (
            [f"{len(removed)} run(s) gone e.g. {removed[0]}"] if removed else []
        )
        return ", ".join(parts)
    changed = [n for n in new_runs if new_runs[n] != old_runs[n]]
    if changed:
        return f"run {changed[0]} has other overrides"
    return ""


@dataclass
class DiskState:
    has_meta: bool
    last_step: int
    checkpoint: int  # step of the latest complete checkpoint, 0 if none
    done: bool


def disk_state(run_dir: Path, total_steps: int) -> DiskState:
    """Where a run stands, from its folder: the steps table's parts and the checkpoints.

    Files are listed, not read (``runlog.logged_steps``): each is written
    atomically, so its name says which rows exist, and this stays fast for long runs.
    """
    logged = logged_steps(run_dir)
    ckpt = latest_checkpoint(run_dir)
    ckpt_step = ckpt[0] if ckpt else 0
    has_meta = (Path(run_dir) / "run.json").is_file()
    # The final checkpoint too: a run killed between logging its last step and
    # saving its model is not finished (there would be no model to evaluate).
    done = has_meta and logged == list(range(1, total_steps + 1)) and ckpt_step == total_steps
    return DiskState(has_meta, logged[-1] if logged else 0, ckpt_step, done)


def _config_value(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    value = getattr(getattr(cfg, section), name)
    return list(value) if isinstance(value, tuple) else value


def _read_manifest(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    try:
        df = pd.read_parquet(path)
    except Exception as e:
        raise RunDirError(f"cannot read {path}: {e}; delete it (it is rebuilt from the run folders)") from None
    return {row["run"]: row for row in df.to_dict("records")}


def reconcile(p: Prepared, *, retry_failed: bool = False) -> tuple[dict[str, dict], dict[str, str]]:
    """Manifest rows and planned actions, from the run folders and the last manifest.

    ``running`` rows of a killed sweep become ``pending``; a ``failed`` row stays
    failed (and is skipped) unless ``retry_failed``.
    """
    previous = _read_manifest(p.sweep_dir / "manifest.parquet")
    keys = varied_keys(p.spec)
    rows, actions = {}, {}
    for run in p.runs:
        cfg = p.configs[run.name]
        total = cfg.train.steps
        state = disk_state(p.sweep_dir / run.name, total)
        prev = previous.get(run.name, {})
        row = {"run": run.name, **{k: _config_value(cfg, k) for k in keys}}
        exit_code = prev.get("exit_code")
        exit_code = None if exit_code is None or pd.isna(exit_code) else int(exit_code)
        if state.done:
            status, action = "done", "skip (done)"
        elif prev.get("status") == "failed" and not retry_failed:
            status, action = "failed", "skip (failed; use --retry-failed)"
        else:
            status, exit_code = "pending", None
            action = f"resume from step {state.checkpoint + 1}" if state.has_meta else "new"
        # Finished runs keep the command that last ran them; pending ones show the next one.
        command = prev.get("command") if status != "pending" else None
        if not command:
            command = shlex.join(train_command(p.spec, run, p.sweep_dir, resume=status == "pending" and state.has_meta))
        row.update(
            status=status,
            exit_code=exit_code,
            attempts=int(prev.get("attempts") or 0),
            wall_seconds=float(prev.get("wall_seconds") or 0.0),
            last_step=state.last_step,
            steps=total,
            command=command,
        )
        rows[run.name] = row
        actions[run.name] = action
    return rows, actions


def manifest_frame(rows: dict[str, dict]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows.values()))
    if not df.empty:
        df["exit_code"] = df["exit_code"].astype("Int64")
    return df


# ---------------------------------------------------------------- running


def _gpu_slots(gpus: Optional[str | Sequence], gpus_per_run: int, jobs: Optional[int]) -> tuple[int, Optional[list[str]]]:
    """(jobs, one CUDA_VISIBLE_DEVICES value per parallel slot, or None on CPU)."""
    if gpus_per_run < 1:
        raise ConfigError(f"--gpus-per-run {gpus_per_run} must be >= 1")
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs {jobs} must be >= 1")
    if gpus is None:
        if gpus_per_run != 1:
            raise ConfigError(f"--gpus-per-run {gpus_per_run} needs --gpus (e.g. --gpus 0,1,2,3)")
        return jobs or 1, None
    ids = [str(g).strip() for g in (gpus.split(",") if isinstance(gpus, str) else gpus)]
    if not ids or not all(ids):
        raise ConfigError(f"--gpus {gpus!r} must be a comma-separated list of GPU ids, e.g. 0,1,2,3")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"--gpus {','.join(ids)} lists a GPU twice; list each once")
    n_slots = len(ids) // gpus_per_run
    if n_slots == 0:
        raise ConfigError(f"--gpus-per-run {gpus_per_run} is more than the {len(ids)} GPU(s) in --gpus {','.join(ids)}")
    jobs = jobs or n_slots
    if jobs > n_slots:
        raise ConfigError(
            f"--jobs {jobs} needs {jobs * gpus_per_run} GPUs at --gpus-per-run {gpus_per_run}, but --gpus lists "
            f"{len(ids)}; lower --jobs or list more GPUs"
        )
    return jobs, [",".join(ids[i * gpus_per_run:(i + 1) * gpus_per_run]) for i in range(jobs)]


def _launch(cmd: list[str], log_path: Path, env: dict, pass_fds: tuple[int, ...]) -> subprocess.Popen:
    """Start one training process, appending its output to ``log_path`` (tests replace this)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log_file:
        log_file.write(f"# {dt.datetime.now().isoformat(timespec='seconds')} {shlex.join(cmd)}\n")
        log_file.flush()
        # Same process group as the sweep: Ctrl-C or a signal to the group
        # reaches the trainers too, and nothing outlives a killed group.
        return subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, pass_fds=pass_fds
        )


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_sweep(
    spec_path: str | os.PathLike,
    *,
    out: Path = Path("runs"),
    jobs: Optional[int] = None,
    gpus: Optional[str | Sequence] = None,
    gpus_per_run: int = 1,
    retry_failed: bool = False,
    dry_run: bool = False,
    log: Optional[Callable[[str], None]] = None,
) -> pd.DataFrame:
    """Run every unfinished run of a sweep; return the manifest (with an ``action`` column on a dry run).

    ``jobs`` runs at once: default 1 on CPU, one per GPU set with ``gpus``, which
    are shared out ``gpus_per_run`` at a time through ``CUDA_VISIBLE_DEVICES``.
    SIGINT/SIGTERM stop the trainers, mark them ``pending`` and re-raise
    ``KeyboardInterrupt``; calling again resumes.
    """
    log = log or (lambda msg: None)
    jobs, slots = _gpu_slots(gpus, gpus_per_run, jobs)
    prepared = prepare(spec_path, out)
    if dry_run:
        check_output_dir(out, "--out")
        rows, actions = reconcile(prepared, retry_failed=retry_failed)
        df = manifest_frame(rows)
        df.insert(1, "action", [actions[r] for r in df["run"]])
        df.attrs["sweep_dir"] = str(prepared.sweep_dir)
        return df
    sd = prepared.sweep_dir
    ensure_output_dir(sd, "--out")  # a file, a read-only place or /proc fails here, before any run starts
    # The lock's descriptor is inherited by the trainers (_launch's pass_fds), so trainers
    # orphaned by a killed sweep still hold it.
    with RunLock(sd, "sweep", elsewhere="pass another --out") as lock:
        _claim(prepared)
        _refuse_if_on_slurm(prepared)
        rows, _ = reconcile(prepared, retry_failed=retry_failed)
        manifest = _schedule(prepared, rows, jobs, slots, lock.fd, log)
    manifest.attrs["sweep_dir"] = str(sd)
    return manifest


def _claim(p: Prepared) -> None:
    """Under the sweep lock: check the folder again (another sweep may have claimed it), then claim it."""
    _check_sweep_dir(p)
    if not (p.sweep_dir / "sweep.json").is_file():
        atomic_write_bytes(p.sweep_dir / "sweep.toml", p.spec.path.read_bytes())
        atomic_write_json(p.sweep_dir / "sweep.json", {**p.resolved(), "source": str(p.spec.path.resolve())})


def _schedule(p: Prepared, rows: dict[str, dict], jobs: int, slots: Optional[list[str]], lock_fd: int, log) -> pd.DataFrame:
    sd = p.sweep_dir
    manifest_path = sd / "manifest.parquet"
    written: list[pd.DataFrame] = [_read_manifest_frame(manifest_path)]

    def save() -> None:
        df = manifest_frame(rows)
        if written[0] is None or not df.equals(written[0]):
            write_parquet_atomic(df, manifest_path)
            written[0] = df

    env = dict(os.environ)
    if slots is None and jobs > 1 and "OMP_NUM_THREADS" not in env:
        # Each torch process would use every core; N of them oversubscribe the CPU badly.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    todo = [r for r in p.runs if rows[r.name]["status"] == "pending"]
    free: list[Optional[str]] = list(slots) if slots is not None else [None] * jobs
    running: dict[str, tuple[subprocess.Popen, Optional[str], float]] = {}
    n_total, n_done = len(p.runs), sum(r["status"] == "done" for r in rows.values())
    log(f"sweep {p.spec.name}: {n_total} runs, {n_done} done, {len(todo)} to run, in {sd}")

    def finish(name: str, proc: subprocess.Popen, started: float, interrupted: bool = False) -> None:
        run_dir, row = sd / name, rows[name]
        state = disk_state(run_dir, row["steps"])
        row["wall_seconds"] = round(row["wall_seconds"] + time.monotonic() - started, 2)
        row["last_step"] = state.last_step
        if state.done and (proc.returncode == 0 or interrupted):
            row.update(status="done", exit_code=proc.returncode)
        elif interrupted or proc.returncode == REQUEUE_EXIT:  # stopped by a signal, checkpointed: resumable
            row.update(status="pending", exit_code=None)
        else:
            row.update(status="failed", exit_code=proc.returncode)

    in_main = threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None
    try:
        save()
        while todo or running:
            while todo and free:
                run = todo.pop(0)
                slot = free.pop(0)
                resume = (sd / run.name / "run.json").is_file()
                cmd = train_command(p.spec, run, sd, resume=resume)
                child_env = env if slot is None else {**env, "CUDA_VISIBLE_DEVICES": slot}
                proc = _launch(cmd, sd / "logs" / f"{run.name}.log", child_env, (lock_fd,))
                running[run.name] = (proc, slot, time.monotonic())
                row = rows[run.name]
                row.update(status="running", exit_code=None, attempts=row["attempts"] + 1, command=shlex.join(cmd))
                save()
                gpu = f" on GPU {slot}" if slot is not None else ""
                log(f"{'resume' if resume else 'start'} {run.name}{gpu}")
            time.sleep(POLL_SECONDS)
            for name, (proc, slot, started) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                free.append(slot)
                finish(name, proc, started)
                save()
                row = rows[name]
                n_done += row["status"] == "done"
                if row["status"] == "done":
                    log(f"done {name} ({row['wall_seconds']:.0f} s) [{n_done}/{n_total} done]")
                else:
                    log(f"FAILED {name} (exit {row['exit_code']}, step {row['last_step']}/{row['steps']}); log: {sd / 'logs' / (name + '.log')}")
    except KeyboardInterrupt:
        _stop(running)
        for name, (proc, _, started) in running.items():
            finish(name, proc, started, interrupted=True)
        save()
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, old_handler)
    return manifest_frame(rows)


def _read_manifest_frame(path: Path) -> Optional[pd.DataFrame]:
    try:
        return pd.read_parquet(path) if path.is_file() else None
    except Exception:
        return None


def _stop(running: dict[str, tuple[subprocess.Popen, Optional[str], float]]) -> None:
    """SIGTERM every trainer, then SIGKILL what is left after a grace period; reap all."""
    for proc, _, _ in running.values():
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for proc, _, _ in running.values():
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- on Slurm

JOBS_FILE = "slurm/jobs.json"  # every submission: its array job id, script and {index: run}


def _submissions(sd: Path) -> list[dict]:
    path = sd / JOBS_FILE
    if not path.is_file():
        return []
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"cannot read {path}: {e}; restore it, or delete it once no job of this sweep is queued") from None


def _last_tasks(submissions: list[dict]) -> dict[str, tuple[str, int]]:
    """Each run's latest array task, ``run -> (job id, index)``."""
    tasks = {}
    for sub in submissions:
        for index, name in sub["runs"].items():
            tasks[name] = (str(sub["job"]), int(index))
    return tasks


def _log_text(sd: Path, name: str) -> str:
    try:
        return (sd / "logs" / f"{name}.log").read_text(errors="replace")
    except OSError:
        return ""


def slurm_rows(p: Prepared, *, retry_failed: bool = False, scheduler: bool = True) -> dict[str, dict]:
    """Manifest rows of a sweep on Slurm, from the run folders, the logs and ``squeue``.

    A run is ``done`` (its folder says so), ``running``/``pending`` (its last
    array task is still in the queue), ``failed`` (its last attempt wrote a
    non-zero exit other than ``REQUEUE_EXIT``; pending again with
    ``retry_failed``) or ``pending`` (never submitted, stopped for a requeue,
    or killed with its batch shell: it resumes). ``scheduler=False`` (a dry
    run without Slurm) treats no task as queued.
    """
    sd = p.sweep_dir
    tasks = _last_tasks(_submissions(sd))
    states = slurm.queued(job for job, _ in tasks.values()) if scheduler and tasks else {}
    keys = varied_keys(p.spec)
    rows = {}
    for run in p.runs:
        cfg = p.configs[run.name]
        state = disk_state(sd / run.name, cfg.train.steps)
        task = tasks.get(run.name)
        queue_state = states.get(task) if task else None
        code = slurm.last_exit(_log_text(sd, run.name))
        if state.done:
            status = "done"
        elif queue_state is not None:
            status = slurm.ACTIVE.get(queue_state, "running")
        elif code not in (None, 0, REQUEUE_EXIT) and not retry_failed:
            status = "failed"
        else:
            status = "pending"
        resume = status == "pending" and state.has_meta
        rows[run.name] = {
            "run": run.name, **{k: _config_value(cfg, k) for k in keys},
            "status": status, "exit_code": code if status in ("done", "failed") else None,
            "attempts": sum(line.startswith("# ") and " job " in line for line in _log_text(sd, run.name).splitlines()),
            "wall_seconds": math.nan, "last_step": state.last_step, "steps": cfg.train.steps,  # not measured on Slurm
            "command": shlex.join(train_command(p.spec, run, sd, resume=resume)),
            "job": f"{task[0]}_{task[1]}" if task else None,
            "queue": queue_state,
        }
    return rows


def submit_slurm(
    spec_path: str | os.PathLike,
    *,
    out: Path = Path("runs"),
    flags: Sequence[str] = (),
    jobs: Optional[int] = None,
    retry_failed: bool = False,
    dry_run: bool = False,
    log: Optional[Callable[[str], None]] = None,
) -> pd.DataFrame:
    """Submit every run that is neither done, queued nor failed as one Slurm job array; return the manifest.

    Resources come from the ``[slurm]`` table, then ``flags`` (``KEY=VALUE``),
    then ``jobs`` (the array's ``%`` cap). ``dry_run`` writes the script
    (``manifest.attrs["script"]``) and submits nothing; it needs no Slurm.
    Submitting again is idempotent: finished runs are skipped, queued ones
    left alone, unfinished ones resumed.
    """
    log = log or (lambda msg: None)
    prepared = prepare(spec_path, out)
    opts = slurm.slurm_options(prepared.spec.slurm, flags, where=f"{prepared.spec.path} [slurm]")
    if jobs is not None:
        if jobs < 1:
            raise ConfigError(f"--jobs {jobs} must be >= 1 (the runs of the array at once)")
        opts = dataclasses.replace(opts, max_running=jobs)
    if not dry_run:
        slurm.check_slurm()
    sd = prepared.sweep_dir
    ensure_output_dir(sd, "--out")
    with RunLock(sd, "sweep --launcher slurm", elsewhere="pass another --out"):
        if not dry_run:
            _claim(prepared)
        rows = slurm_rows(prepared, retry_failed=retry_failed, scheduler=not dry_run or shutil.which("squeue") is not None)
        submissions = _submissions(sd)
        todo = [(i, run) for i, run in enumerate(prepared.runs)
                if rows[run.name]["status"] == "pending" and rows[run.name]["queue"] is None]
        script = sd / "slurm" / f"submit-{len(submissions) + 1}.sbatch"
        python = opts.python or sys.executable
        if todo:
            argv = [(i, run.name, [python, *train_command(prepared.spec, run, sd)[1:]]) for i, run in todo]
            text = slurm.script_text(opts, sweep=prepared.spec.name, sweep_dir=str(sd), runs=argv, python=python)
            atomic_write_bytes(script, text.encode())
        n_done = sum(r["status"] == "done" for r in rows.values())
        log(f"sweep {prepared.spec.name}: {len(rows)} runs, {n_done} done, "
            f"{sum(r['queue'] is not None for r in rows.values())} queued, "
            f"{len(todo)} to submit, in {sd}")
        if not dry_run and todo:
            (sd / "logs").mkdir(exist_ok=True)  # Slurm opens --output there before the script runs
            job = slurm.submit(str(script))
            submissions.append({
                "job": job, "script": str(script), "time": dt.datetime.now().isoformat(timespec="seconds"),
                "runs": {str(i): run.name for i, run in todo},
            })
            atomic_write_json(sd / JOBS_FILE, submissions)
            for i, run in todo:
                rows[run.name]["job"] = f"{job}_{i}"
            log(f"submitted job array {job} ({len(todo)} runs): {script}")
        manifest = manifest_frame(rows)
        if not dry_run:
            write_parquet_atomic(manifest, sd / "manifest.parquet")
    manifest.attrs.update(sweep_dir=str(sd), script=str(script) if todo else None, submitted=len(todo))
    return manifest


def _refuse_if_on_slurm(p: Prepared) -> None:
    """The local launcher must not start runs whose array tasks Slurm may start too."""
    tasks = _last_tasks(_submissions(p.sweep_dir))
    if not tasks or shutil.which("squeue") is None:
        return
    states = slurm.queued(job for job, _ in tasks.values())
    queued = [name for name, task in tasks.items() if task in states]
    if queued:
        raise SweepError(
            f"{len(queued)} run(s) of {p.sweep_dir} are queued on Slurm (e.g. {queued[0]}, job {'_'.join(map(str, tasks[queued[0]]))}); "
            "wait for them or scancel them before running the sweep with --launcher local"
        )


STATUS_TAIL = 5  # log lines shown for each failed run


def sweep_status(spec_path: str | os.PathLike, out: Path = Path("runs")) -> pd.DataFrame:
    """Each run's status now: from the run folders, the manifest and, for a sweep on Slurm, the queue.

    ``attrs["tails"]`` holds the last log lines of each failed run. A local
    sweep's ``running`` rows count only while its sweep process holds the lock.
    """
    prepared = prepare(spec_path, out)
    sd = prepared.sweep_dir
    if not (sd / "sweep.json").is_file():
        raise SweepError(f"sweep '{prepared.spec.name}' has not been started in {sd.parent}; start it with clipctl sweep {spec_path}")
    if (sd / JOBS_FILE).is_file():
        slurm.check_slurm()
        rows = slurm_rows(prepared)
    else:
        rows, _ = reconcile(prepared)
        previous = _read_manifest(sd / "manifest.parquet")
        live = lock_held(sd)
        for name, row in rows.items():
            was = previous.get(name, {}).get("status")
            if was == "running" and live and row["status"] != "done":
                row["status"] = "running"
    df = manifest_frame(rows)
    df.attrs["sweep_dir"] = str(sd)
    df.attrs["tails"] = {
        name: _log_text(sd, name).splitlines()[-STATUS_TAIL:] for name in df.loc[df["status"] == "failed", "run"]
    }
    return df


# ---------------------------------------------------------------- reporting


def print_commands(spec_path: str | os.PathLike, out: Path = Path("runs")) -> list[str]:
    """One shell line per run that creates it from scratch (absolute paths; for xargs or SLURM)."""
    p = prepare(spec_path, out)
    return [shlex.join(train_command(p.spec, run, p.sweep_dir)) for run in p.runs]


SUMMARY_METRICS = ("entropy_change", "avg_clip_low_frac", "avg_clip_high_frac")


def summarize(manifest: pd.DataFrame, sweep_dir: Path) -> pd.DataFrame:
    """One row per run: status, cost, progress, and for finished runs the entropy change
    and mean clip fractions of ``clipctl.analysis.analyze_runs`` (docs/analysis.md)."""
    base = manifest[["run", "status", "exit_code", "wall_seconds", "last_step", "steps"]].copy()
    done = manifest.loc[manifest["status"] == "done", "run"].tolist()
    if not done:
        return base
    from clipctl.analysis import analyze_runs

    try:
        per_run, _ = analyze_runs([Path(sweep_dir) / name for name in done])
    except ClipctlError as e:
        # The sweep itself finished; a summary that cannot be built must not fail it.
        base.attrs["note"] = f"no analysis summary: {e}"
        return base
    metrics = [c for c in SUMMARY_METRICS if c in per_run.columns]
    return base.merge(per_run[["run", *metrics]], on="run", how="left")
