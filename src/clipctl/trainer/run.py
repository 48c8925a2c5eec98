"""The run driver: build the trainer from its parts, create or resume a run directory, loop over steps.

``parallel`` (a ``launch.Launch``) is the only thing that differs between one
process and several: ``build_trainer`` picks the comm and the update engine
from it (torch AdamW, or DeepSpeed), ranks other than 0 get a writer and a log
that do nothing, and rank-0-only work runs through its comm.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from clipctl.config import Config, config_from_dict, config_to_dict
from clipctl.errors import ConfigError, NonFiniteError, RunDirError
from clipctl.models import load_tokenizer, resolve_device, resolve_model_path
from clipctl.rundir import RunLock, check_name, disk_full_error, ensure_output_dir, forget_unstarted, is_disk_full
from clipctl.runlog import (
    CKPT_RE,
    NullWriter,
    RunWriter,
    checkpoints,
    damaged_parts,
    latest_checkpoint,
    logged_steps,
    read_meta,
    read_table,
)
from clipctl.trainer.checkpoint import (
    MANIFEST,
    RESUMABLE_KEYS,
    checkpoint_config,
    config_drift,
    discard_partial,
    valid_checkpoints,
)
from clipctl.trackers import Trackers, check_available as check_trackers
from clipctl.trainer.deepspeed import DeepSpeedEngine, check_launch
from clipctl.trainer.engine import TorchEngine
from clipctl.trainer.launch import Launch
from clipctl.trainer.loop import Trainer
from clipctl.trainer.signals import RunStopped, StopRequest


@dataclass
class TrainResult:
    run_dir: Path
    first_step: int
    last_step: int
    last_metrics: Optional[dict]


def _quiet(msg: str) -> None:
    return None


def build_trainer(
    cfg: Config, parallel: Optional[Launch] = None, *, init_path: Optional[str] = None, log=None
) -> Trainer:
    """The trainer of ``cfg`` on the processes of ``parallel`` (default: one), from ``init_path`` if given.

    Its parts: the comm laid out for the config's minibatches, and the update
    engine, ``TorchEngine`` in one plain process or ``DeepSpeedEngine`` under
    ``--deepspeed`` (whose config checks run first, before any model loads).
    """
    parallel = parallel or Launch()
    log = log or _quiet
    comm = parallel.comm.for_minibatches(cfg.train.minibatch_prompts)
    spec = parallel.deepspeed
    ds_config = check_launch(cfg, comm.world_size, spec) if spec is not None else None
    torch.manual_seed(cfg.train.seed)
    path = init_path or resolve_model_path(cfg.model.path, log)
    tokenizer = load_tokenizer(path)  # before the model: a folder without one fails fast
    # Under DeepSpeed with GPUs the launcher has made this rank's GPU current.
    device = resolve_device(cfg.model.device)
    if spec is None:
        engine = TorchEngine(cfg, path, device, log)
    else:
        engine = DeepSpeedEngine(cfg, path, device, comm, spec, ds_config, log)
    return Trainer(cfg, comm, engine, tokenizer=tokenizer, model_path=path, log=log)


def _versions() -> dict:
    import torch
    import transformers

    from clipctl import __version__

    return {
        "clipctl": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def _git_revision() -> Optional[str]:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def new_run_dir(out: Path, name: Optional[str], preset: str, held: Optional[contextlib.ExitStack] = None) -> Path:
    """Check ``out`` and ``name``, create ``out/name`` and, given ``held``, lock it there (released when it closes).

    The "already exists" check runs under the lock, so of two trainers started
    with one name the second is refused whichever gets further first; a start
    that fails before ``run.json`` is written leaves no folder behind.
    """
    if name is None:
        name = f"{Path(preset).stem}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    check_name(name)
    run_dir = Path(out) / name
    if held is not None:
        created = ensure_output_dir(out, "--out") + ensure_output_dir(run_dir, "--out/--name")
        held.callback(forget_unstarted, run_dir, created)  # runs after the lock is released
        held.enter_context(RunLock(run_dir, "train"))
    if (run_dir / "run.json").exists():
        raise RunDirError(f"run directory {run_dir} already exists; continue it with --resume {run_dir} or pick another --name")
    return run_dir


def lock_run_dir(run_dir: Path, held: contextlib.ExitStack, what: str) -> None:
    held.enter_context(RunLock(run_dir, what))


def _describe_damage(damaged: list[tuple[int, Path, str]]) -> str:
    step, path, why = damaged[0]
    more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
    return f"{path} is {why}{more}"


def _skipped_line(skipped: list[tuple[int, str]]) -> str:
    return "; ".join(f"skipped checkpoint step-{step}: {why}" for step, why in skipped)


def _check_config(run_dir: Path, cfg: Config, ckpt: tuple[int, Path], log) -> None:
    """Refuse a run.json whose config is not the one checkpoint ``ckpt`` was trained with (train.steps aside)."""
    recorded = checkpoint_config(ckpt[1])
    if recorded is None:
        log(f"warning: checkpoint step-{ckpt[0]} has no {MANIFEST} (written by an older clipctl); "
            "resuming from it without checking its files or config")
        return
    drift = config_drift(config_to_dict(cfg), recorded)
    if drift:
        raise RunDirError(
            f"run.json of {run_dir} no longer matches checkpoint step-{ckpt[0]}: {'; '.join(drift)}; "
            f"put the checkpoint's values back (a resume may change only {', '.join(RESUMABLE_KEYS)}) "
            "or start a new run with --set"
        )


def prepare_resume(run_dir: Path, cfg: Config, log) -> Optional[tuple[int, Path]]:
    """The checkpoint to resume from, after checking it and the parts it vouches for (rank 0, under the run lock).

    Leftover temp folders of killed saves go. Checkpoints whose files do not
    match their manifest are skipped (one log line says which and why); the
    newest valid one must have been trained with ``cfg``, else nothing is
    changed and the error names the differing keys. A part of a step up to
    the checkpoint that cannot be read (or a missing steps part) is rebuilt:
    the run goes back to the newest valid checkpoint before the first damaged
    step. Checkpoints after the one resumed from go (the resumed run re-makes
    them). Without a usable checkpoint nothing is changed and the error says
    how to rebuild (docs/run-directory.md, "Damaged parts on resume").
    """
    folder = Path(run_dir) / "checkpoints"
    discard_partial(run_dir)
    found, skipped = valid_checkpoints(run_dir)
    rebuild = f"To rebuild every step from the start: rm -r {folder} && clipctl train --resume {run_dir}"
    if not found and skipped:
        raise RunDirError(f"no checkpoint of {run_dir} can be resumed ({_skipped_line(skipped)}); nothing was changed. {rebuild}")
    if not found:
        return None
    _check_config(run_dir, cfg, found[-1], log)
    damaged = damaged_parts(run_dir, found[-1][0])
    if damaged:
        first = damaged[0][0]
        earlier = [c for c in found if c[0] < first]
        if not earlier:
            kept = ", ".join(f"step-{s}" for s, _ in found)
            raise RunDirError(
                f"{_describe_damage(damaged)} and no checkpoint before step {first} is left to rebuild it from "
                f"(kept: {kept}); nothing was changed. {rebuild}"
            )
        chosen = earlier[-1]
    else:
        chosen = found[-1]
    later = sorted(
        (int(m.group(1)), p) for p in folder.iterdir() if (m := CKPT_RE.match(p.name)) and int(m.group(1)) > chosen[0]
    )
    said = ([_describe_damage(damaged)] if damaged else []) + ([_skipped_line(skipped)] if skipped else [])
    if later:
        said.append(f"rebuilding steps {chosen[0] + 1}-{later[-1][0]} from checkpoint step {chosen[0]}")
    if said:
        log("; ".join(said))
    for _, path in later:
        shutil.rmtree(path)
    return chosen


def check_resume_flags(run_dir: Path, meta: dict, preset: Optional[str], name: Optional[str], out: Optional[Path]) -> None:
    """``--preset``, ``--name`` and ``--out`` given with ``--resume`` must name the run's own (a resume reads them from it)."""
    theirs = {"--preset": meta.get("preset"), "--name": run_dir.name, "--out": str(run_dir.resolve().parent)}
    given = {"--preset": preset, "--name": name, "--out": str(Path(out).resolve()) if out is not None else None}
    wrong = [f"{flag} {given[flag]} (the run's is {theirs[flag]})" for flag in given
             if given[flag] is not None and given[flag] != theirs[flag]]
    if wrong:
        raise ConfigError(
            f"--resume {run_dir} continues the run with its own preset, name and folder; drop {', '.join(wrong)}"
        )


def steps_done(run_dir: Path) -> int:
    """The last step with a steps part or a checkpoint folder (0 for none)."""
    return max([0, *logged_steps(run_dir), *(s for s, _ in checkpoints(run_dir))])


def resume_config(run_dir: Path, overrides: list[str]) -> tuple[Config, dict, dict]:
    """The stored config of ``run_dir`` and what ``overrides`` change in it (``{key: [old, new]}``).

    Only ``train.steps`` may be given, and not below the steps already done:
    a resume extends a run, it never shortens what was trained.
    """
    meta = read_meta(run_dir)
    raw = meta.get("config")
    if not isinstance(raw, dict):
        raise RunDirError(f"{run_dir}/run.json has no config; it was not written by clipctl train")
    raw = {section: dict(values) for section, values in raw.items()}
    stored = config_from_dict(raw, source=f"{run_dir}/run.json")
    for text in overrides:
        if not text.startswith("train.steps="):
            raise ConfigError(f"--set {text} cannot change a resumed run; only train.steps=N may be given with --resume")
        raw["train"]["steps"] = text.split("=", 1)[1]
    cfg = config_from_dict(raw, source=f"{run_dir}/run.json")
    done = steps_done(run_dir)
    if cfg.train.steps < done:
        raise ConfigError(
            f"--set train.steps={cfg.train.steps} is below the {done} steps {run_dir} has done; "
            f"a resume can only extend a run (train.steps >= {done})"
        )
    changes = {"train.steps": [stored.train.steps, cfg.train.steps]} if cfg.train.steps != stored.train.steps else {}
    return cfg, meta, changes


def evaluate_during_training(trainer: Trainer, run_dir: Path, step: int, log) -> None:
    """pass@k of the in-memory policy as step ``step`` of the run (same files as eval-passk)."""
    from clipctl.eval.driver import evaluate_checkpoint

    for dataset in trainer.cfg.eval.datasets:
        evaluate_checkpoint(
            trainer.model, trainer.tokenizer, run_dir, step, dataset, trainer.cfg.eval, seed=trainer.cfg.train.seed,
            engine=trainer.rollout_engine, log=log,
        )


def train(cfg: Optional[Config] = None, **kwargs) -> TrainResult:
    """Train a new run (``cfg``) or continue one (``resume``); see ``_train`` for the arguments.

    The run directory is locked (``rundir.RunLock``) from before the first
    write until this returns; a full disk becomes one ``RunDirError``.
    SIGUSR1, SIGTERM and a first Ctrl-C stop it after the current step with a
    checkpoint (``RunStopped``; ``signals.py``).
    """
    comm = (kwargs.get("parallel") or Launch()).comm
    where: dict = {}
    with contextlib.ExitStack() as held, StopRequest() as stop:
        try:
            return _train(cfg, held=held, where=where, stop=stop, **kwargs)
        except Exception as e:
            run_dir = where.get("run_dir")
            if run_dir is not None and comm.is_main:  # what a failed save left behind (the lock is still held)
                discard_partial(run_dir)
            if isinstance(e, NonFiniteError) and run_dir is not None:
                ckpt = latest_checkpoint(run_dir)
                raise e.at(run_dir, ckpt[0] if ckpt else None) from None
            if not is_disk_full(e):
                raise
            ckpt = latest_checkpoint(run_dir) if run_dir is not None else None
            raise disk_full_error(e, run_dir, ckpt[0] if ckpt else None) from e


def _stop_with_checkpoint(trainer: Trainer, writer, run_dir: Path, step: int, stop: StopRequest, saved: bool) -> None:
    """Write step ``step``'s checkpoint (unless it was just saved) and raise ``RunStopped``."""
    if not saved:
        trainer.save_checkpoint(run_dir, step, trainer.cfg.train.keep_last)
        writer.compact(run_dir, step, final=False)
    why = stop.name or "a signal to another process of the run"
    raise RunStopped(
        f"{why}: stopped after step {step} with checkpoint {run_dir}/checkpoints/step-{step}; "
        f"resume with clipctl train --resume {run_dir}"
    )


def _train(
    cfg: Optional[Config] = None,
    *,
    held: contextlib.ExitStack,
    where: dict,
    stop: Optional[StopRequest] = None,
    out: Optional[Path] = None,
    name: Optional[str] = None,
    preset: Optional[str] = None,
    resume: Optional[Path] = None,
    overrides: tuple[str, ...] = (),
    command_line: Optional[list[str]] = None,
    log: Optional[Callable[[str], None]] = None,
    on_start: Optional[Callable[[Path, int, int], None]] = None,
    on_step: Optional[Callable[[dict], None]] = None,
    stop_after: Optional[int] = None,
    parallel: Optional[Launch] = None,
) -> TrainResult:
    """Train a new run (``cfg``) or continue one (``resume``); returns where it stopped.

    ``stop_after`` ends the loop after that step (used by tests to simulate an
    interrupted run); the run stays resumable. ``parallel`` comes from
    ``launch.setup`` (default: one process).
    """
    par = parallel or Launch()
    comm = par.comm
    if not comm.is_main:  # the other ranks compute the same step and report nothing
        log, on_start, on_step = None, None, None
    log = log or _quiet
    writer = RunWriter() if comm.is_main else NullWriter()
    if resume is not None:
        run_dir = Path(resume)
        meta = read_meta(run_dir)  # a missing or foreign folder fails here, before a lock file is made in it
        comm.on_main(lock_run_dir, run_dir, held, "train --resume")
        where["run_dir"] = run_dir
        check_resume_flags(run_dir, meta, preset, name, out)
        cfg, meta, changes = resume_config(run_dir, list(overrides))
        check_trackers(cfg.log.trackers)
        par.check_resume(meta, run_dir)
        ckpt = comm.on_main(prepare_resume, run_dir, cfg, log)
        meta["config"] = config_to_dict(cfg)
        meta.setdefault("resumed", []).append({
            "time": dt.datetime.now().isoformat(timespec="seconds"), "command": command_line or sys.argv,
            "changes": changes, "from_checkpoint": ckpt[0] if ckpt else None,
        })
        start = ckpt[0] + 1 if ckpt else 1
        # Steps after the checkpoint were (maybe partly) logged by the killed
        # process; they are recomputed, so their parts go first.
        writer.drop_after(run_dir, start - 1)
        trainer = build_trainer(cfg, par, init_path=str(ckpt[1]) if ckpt else None, log=log)
        if ckpt:
            trainer.load_checkpoint(ckpt[1])
            log(f"resuming {run_dir} from checkpoint step {ckpt[0]}")
        else:
            log(f"resuming {run_dir}: no checkpoint yet, starting from step 1")
        writer.meta(run_dir, meta)
    else:
        if cfg is None:
            raise ValueError("train() needs a config or a run to resume")
        check_trackers(cfg.log.trackers)  # a missing extra fails before the run folder is made
        preset = preset or "tiny-cpu"
        run_dir = comm.on_main(new_run_dir, out or Path("runs"), name, preset, held)
        where["run_dir"] = run_dir
        trainer = build_trainer(cfg, par, log=log)
        meta = {
            "name": run_dir.name,
            "preset": preset,
            "overrides": list(overrides),
            "seed": cfg.train.seed,
            "config": config_to_dict(cfg),
            "model_path_resolved": trainer.model_path,
            "n_examples": len(trainer.examples),
            "versions": _versions(),
            "git_revision": _git_revision(),
            "command": command_line or sys.argv,
            "start_time": dt.datetime.now().isoformat(timespec="seconds"),
            **par.describe(),
        }
        writer.meta(run_dir, meta)
        start = 1

    if cfg.log.trackers and comm.is_main:  # live mirrors of the steps table, opened by the writing process only
        writer.mirror_to(Trackers(cfg.log.trackers, run_dir, start, config_to_dict(cfg), log))
    held.callback(writer.close)
    total = cfg.train.steps
    if on_start:
        on_start(run_dir, start, total)
    # Evaluation runs on rank 0 alone (the others wait); zero3 rejects eval.every.
    if start == 1 and cfg.eval.every:
        comm.on_main(evaluate_during_training, trainer, run_dir, 0, log)
    last = None
    step = start - 1
    for step in range(start, total + 1):
        out_step = trainer.run_step(step)
        writer.step(run_dir, out_step)
        last = out_step.metrics
        if step % cfg.train.save_every == 0 or step == total:
            trainer.save_checkpoint(run_dir, step, cfg.train.keep_last)
            writer.compact(run_dir, step, final=step == total)  # committed parts -> one segment per table
        if cfg.eval.every and (step % cfg.eval.every == 0 or step == total):
            comm.on_main(evaluate_during_training, trainer, run_dir, step, log)
        if on_step:
            on_step(last)
        if stop_after is not None and step >= stop_after:
            break
        # Every rank takes part in the sum, so all stop after the same step.
        if step < total and comm.sum(int(stop is not None and stop.signum is not None)):
            _stop_with_checkpoint(trainer, writer, run_dir, step, stop, saved=step % cfg.train.save_every == 0)
    comm.barrier()  # rank 0's last writes are done before any rank returns
    if last is None:
        steps = read_table(run_dir, "steps")
        last = steps.iloc[-1].to_dict() if not steps.empty else None
    return TrainResult(run_dir, start, step, last)
