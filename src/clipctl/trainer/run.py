"""The run driver: create or resume a run directory and loop over steps.

``parallel`` (``trainer/distributed.py``) is the only thing that differs
between one process and several: it builds the trainer, gives ranks other
than 0 a writer and a log that do nothing, and runs rank-0-only work.
"""

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
from clipctl.runlog import latest_checkpoint, read_meta, read_table
from clipctl.trainer.distributed import SingleProcess
from clipctl.trainer.loop import Trainer


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
    parallel: Optional[SingleProcess] = None,
) -> TrainResult:
    """Train a new run (``cfg``) or continue one (``resume``); returns where it stopped.

    ``stop_after`` ends the loop after that step (used by tests to simulate an
    interrupted run); the run stays resumable. ``parallel`` comes from
    ``distributed.setup`` (default: one process).
    """
    par = parallel or SingleProcess()
    log = par.logger(log or (lambda msg: None))
    on_start, on_step = par.main_only(on_start), par.main_only(on_step)
    writer = par.writer()
    if resume is not None:
        run_dir = Path(resume)
        cfg, meta = resume_config(run_dir, list(overrides))
        par.check_resume(meta, run_dir)
        meta["config"] = config_to_dict(cfg)
        meta.setdefault("resumed", []).append(
            {"time": dt.datetime.now().isoformat(timespec="seconds"), "command": command_line or sys.argv}
        )
        ckpt = latest_checkpoint(run_dir)
        start = ckpt[0] + 1 if ckpt else 1
        # Steps after the checkpoint were (maybe partly) logged by the killed
        # process; they are recomputed, so their parts go first.
        writer.drop_after(run_dir, start - 1)
        trainer = par.make_trainer(cfg, init_path=str(ckpt[1]) if ckpt else None, log=log)
        if ckpt:
            trainer.load_checkpoint(ckpt[1])
            log(f"resuming {run_dir} from checkpoint step {ckpt[0]}")
        else:
            log(f"resuming {run_dir}: no checkpoint yet, starting from step 1")
        writer.meta(run_dir, meta)
    else:
        if cfg is None:
            raise ValueError("train() needs a config or a run to resume")
        run_dir = par.on_main(new_run_dir, out, name, preset)
        trainer = par.make_trainer(cfg, log=log)
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

    total = cfg.train.steps
    if on_start:
        on_start(run_dir, start, total)
    # Evaluation runs on rank 0 alone (the others wait); zero3 rejects eval.every.
    if start == 1 and cfg.eval.every:
        par.on_main(evaluate_during_training, trainer, run_dir, 0, log)
    last = None
    step = start - 1
    for step in range(start, total + 1):
        out_step = trainer.run_step(step)
        writer.step(run_dir, out_step)
        last = out_step.metrics
        if step % cfg.train.save_every == 0 or step == total:
            trainer.save_checkpoint(run_dir, step, cfg.train.keep_last)
        if cfg.eval.every and (step % cfg.eval.every == 0 or step == total):
            par.on_main(evaluate_during_training, trainer, run_dir, step, log)
        if on_step:
            on_step(last)
        if stop_after is not None and step >= stop_after:
            break
    par.barrier()  # rank 0's last writes are done before any rank returns
    if last is None:
        steps = read_table(run_dir, "steps")
        last = steps.iloc[-1].to_dict() if not steps.empty else None
    return TrainResult(run_dir, start, step, last)
