"""Live mirrors of the steps table: TensorBoard and Weights & Biases (``log.trackers``).

The Parquet run log stays the source of truth: the writer (the only process,
or rank 0) writes a step's parts first, then hands the very row the steps
table got to every tracker. A tracker that fails is switched off for the rest
of the run with one log line; it never stops training nor touches the Parquet
log. Each tracker keeps its files inside the run directory:

- ``tensorboard``: ``<run>/tensorboard/`` event files (``torch.utils.tensorboard``,
  or ``tensorboardX`` when that is what is installed); one scalar per numeric
  column, x = ``step``. A resumed run reopens the same folder and purges the
  events of the steps it recomputes (``purge_step``).
- ``wandb``: ``<run>/wandb/`` (``WANDB_MODE=offline`` writes only there; sync
  later with ``wandb sync``). The run id is kept in ``<run>/wandb/clipctl-run-id``
  so a resumed run continues the same W&B run (``resume="allow"``); every
  column is plotted against the ``step`` column (``define_metric``), so steps
  recomputed after a resume are logged again rather than dropped.

Both are optional extras: ``pip install 'clipctl[tensorboard]'``,
``pip install 'clipctl[wandb]'``.
"""

from __future__ import annotations

import importlib.util
import numbers
import os
import secrets
from pathlib import Path
from typing import Callable, Optional

from clipctl.errors import ConfigError

TRACKERS = ("tensorboard", "wandb")
RUN_ID_FILE = "clipctl-run-id"

Log = Callable[[str], None]


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_available(names) -> None:
    """One ``ConfigError`` line per missing package, before anything is written."""
    for name in names:
        if name == "tensorboard" and not (_has("tensorboard") or _has("tensorboardX")):
            raise ConfigError(
                "log.trackers includes tensorboard, but neither tensorboard nor tensorboardX is installed; "
                "pip install 'clipctl[tensorboard]'"
            )
        if name == "wandb" and not _has("wandb"):
            raise ConfigError("log.trackers includes wandb, but wandb is not installed; pip install 'clipctl[wandb]'")


def scalars(row: dict) -> dict[str, float]:
    """The numeric columns of a steps row (``step`` itself is the x axis), as floats."""
    out = {}
    for key, value in row.items():
        if key == "step" or isinstance(value, (bool, str)) or value is None:
            continue
        if isinstance(value, numbers.Real):
            out[key] = float(value)
    return out


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, run_dir: Path, first_step: int, cfg_dict: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package; tensorboardX is standalone
            from tensorboardX import SummaryWriter
        # A resume: events of steps >= first_step (logged before a kill, recomputed now) are dropped.
        folder = Path(run_dir) / "tensorboard"
        resumed = folder.is_dir() and any(folder.iterdir())
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=first_step if resumed else None)
        if not resumed:
            import json

            self.writer.add_text("config", "```\n" + json.dumps(cfg_dict, indent=2, default=str) + "\n```", 0)

    def log(self, row: dict) -> None:
        step = int(row["step"])
        for key, value in scalars(row).items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    name = "wandb"

    def __init__(self, run_dir: Path, first_step: int, cfg_dict: dict):
        import wandb

        run_dir = Path(run_dir).resolve()
        folder = run_dir / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / RUN_ID_FILE
        if id_file.is_file() and id_file.read_text().strip():
            run_id = id_file.read_text().strip()
        else:
            from clipctl.runlog import atomic_write_bytes

            run_id = secrets.token_hex(6)  # W&B run ids: letters and digits
            atomic_write_bytes(id_file, (run_id + "\n").encode())
        self.wandb = wandb
        self.run = wandb.init(
            dir=str(run_dir),
            project=os.environ.get("WANDB_PROJECT", "clipctl"),
            name=run_dir.name,
            id=run_id,
            resume="allow",
            config=cfg_dict,
            reinit="create_new",
            # console off: W&B must not wrap clipctl's stdout; quiet: one line, not a banner
            settings=wandb.Settings(console="off", quiet=True),
        )
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log(self, row: dict) -> None:
        self.run.log({"step": int(row["step"]), **scalars(row)})

    def close(self) -> None:
        self.run.finish()


_MAKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}


class Trackers:
    """The configured trackers of one run; every call is guarded (a failure switches that tracker off)."""

    def __init__(self, names, run_dir: Path, first_step: int, cfg_dict: dict, log: Optional[Log] = None):
        self.log_msg = log or (lambda msg: None)
        self.active = []
        check_available(names)
        for name in names:
            try:
                self.active.append(_MAKERS[name](run_dir, first_step, cfg_dict))
            except Exception as e:  # a tracker must never stop training; the Parquet log has everything
                self._warn(name, "start", e)

    def _warn(self, name: str, what: str, e: BaseException) -> None:
        why = (str(e).splitlines() or [type(e).__name__])[0]
        self.log_msg(f"warning: tracker {name} failed to {what} ({type(e).__name__}: {why}); "
                     "it is off for the rest of this run, the Parquet log is complete")

    def log(self, row: dict) -> None:
        for tracker in list(self.active):
            try:
                tracker.log(row)
            except Exception as e:
                self.active.remove(tracker)
                self._warn(tracker.name, "log a step", e)
                try:
                    tracker.close()
                except Exception:
                    pass

    def close(self) -> None:
        for tracker in self.active:
            try:
                tracker.close()
            except Exception as e:
                self._warn(tracker.name, "close", e)
        self.active = []
