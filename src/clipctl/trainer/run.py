"""The run driver: create or resume a run directory and loop over steps."""

from __future__ import annotations

import datetime as dt
import json
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from clipctl.config import Config, config_from_dict, config_to_dict
from clipctl.errors import ConfigError, RunDirError
from clipctl.runlog import atomic_write_json, drop_parts_after, latest_checkpoint, read_meta, read_table
from clipctl.trainer.checkpoint import load_trainer_state, save_checkpoint, set_rng_states
from clipctl.trainer.loop import Trainer, write_step


@dataclass
class TrainResult:
    run_dir: Path
    first_step: int
    last_step: int
    last_metrics: Optional[dict]


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


def new_run_dir(out: Path, name: Optional[str], preset: str) -> Path:
    if name is None:
        name = f"{Path(preset).stem}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(out) / name
    if (run_dir / "run.json").exists():
        raise RunDirError(f"run directory {run_dir} already exists; continue it with --resume {run_dir} or pick another --name")
    return run_dir


def resume_config(run_dir: Path, overrides: list[str]) -> tuple[Config, dict]:
    """The stored config of ``run_dir``; only ``train.steps`` may be changed (to extend a run)."""
    meta = read_meta(run_dir)
    raw = meta.get("config")
    if not isinstance(raw, dict):
        raise RunDirError(f"{run_dir}/run.json has no config; it was not written by clipctl train")
    raw = {section: dict(values) for section, values in raw.items()}
    for text in overrides:
        if not text.startswith("train.steps="):
            raise ConfigError(f"--set {text} cannot change a resumed run; only train.steps=N may be given with --resume")
        raw["train"]["steps"] = text.split("=", 1)[1]
    return config_from_dict(raw, source=f"{run_dir}/run.json"), meta


def evaluate_during_training(trainer: Trainer, run_dir: Path, step: int, log) -> None:
    """pass@k of the in-memory policy as step ``step`` of the run (same files as eval-passk)."""
    from clipctl.eval_driver import evaluate_checkpoint

    e = trainer.cfg.eval
    for dataset in e.datasets:
        evaluate_checkpoint(
            trainer.model, trainer.tokenizer, run_dir, step, dataset,
            n=e.n, ks=e.k, temperature=e.temperature, max_new_tokens=e.max_new_tokens,
            seed=trainer.cfg.train.seed, limit=e.limit or None, engine=trainer.engine, log=log,
        )


def train(
    cfg: Optional[Config] = None,
    *,
    out: Path = Path("runs"),
    name: Optional[str] = None,
    preset: str = "tiny-cpu",
    resume: Optional[Path] = None,
    overrides: tuple[str, ...] = (),
    command_line: Optional[list[str]] = None,
    log: Optional[Callable[[str], None]] = None,
    on_start: Optional[Callable[[Path, int, int], None]] = None,
    on_step: Optional[Callable[[dict], None]] = None,
    stop_after: Optional[int] = None,
) -> TrainResult:
    """Train a new run (``cfg``) or continue one (``resume``); returns where it stopped.

    ``stop_after`` ends the loop after that step (used by tests to simulate an
    interrupted run); the run stays resumable.
    """
    log = log or (lambda msg: None)
    if resume is not None:
        run_dir = Path(resume)
        cfg, meta = resume_config(run_dir, list(overrides))
        meta["config"] = config_to_dict(cfg)
        meta.setdefault("resumed", []).append(
            {"time": dt.datetime.now().isoformat(timespec="seconds"), "command": command_line or sys.argv}
        )
        ckpt = latest_checkpoint(run_dir)
        start = ckpt[0] + 1 if ckpt else 1
        # Steps after the checkpoint were (maybe partly) logged by the killed
        # process; they are recomputed, so their parts go first.
        drop_parts_after(run_dir, start - 1)
        trainer = Trainer(cfg, init_path=str(ckpt[1]) if ckpt else None, log=log)
        if ckpt:
            state = load_trainer_state(ckpt[1])
            trainer.optimizer.load_state_dict(state["optimizer"])
            trainer.scheduler.load_state_dict(state["scheduler"])
            set_rng_states(state["rng"])
            log(f"resuming {run_dir} from checkpoint step {ckpt[0]}")
        else:
            log(f"resuming {run_dir}: no checkpoint yet, starting from step 1")
        atomic_write_json(run_dir / "run.json", meta)
    else:
        if cfg is None:
            raise ValueError("train() needs a config or a run to resume")
        run_dir = new_run_dir(out, name, preset)
        trainer = Trainer(cfg, log=log)
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
        }
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "run.json", meta)
        start = 1

    total = cfg.train.steps
    if on_start:
        on_start(run_dir, start, total)
    if start == 1 and cfg.eval.every:
        evaluate_during_training(trainer, run_dir, 0, log)
    last = None
    step = start - 1
    for step in range(start, total + 1):
        out_step = trainer.run_step(step)
        write_step(run_dir, out_step)
        last = out_step.metrics
        if step % cfg.train.save_every == 0 or step == total:
            save_checkpoint(
                run_dir, step, trainer.model, trainer.tokenizer, trainer.optimizer, trainer.scheduler, cfg.train.keep_last
            )
        if cfg.eval.every and (step % cfg.eval.every == 0 or step == total):
            evaluate_during_training(trainer, run_dir, step, log)
        if on_step:
            on_step(last)
        if stop_after is not None and step >= stop_after:
            break
    if last is None:
        steps = read_table(run_dir, "steps")
        last = steps.iloc[-1].to_dict() if not steps.empty else None
    return TrainResult(run_dir, start, step, last)
