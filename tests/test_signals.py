"""Stop signals (trainer/signals.py): SIGUSR1, SIGTERM and Ctrl-C stop after the step with a checkpoint; resume is exact.

The in-process tests send the signal to this process from the step callback,
so it arrives while step 2 is being finished, as a scheduler's would. The
slow tests signal a real ``clipctl train`` process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipctl.config import load_config
from clipctl.errors import REQUEUE_EXIT, RunStopped
from clipctl.runlog import latest_checkpoint, read_run
from clipctl.trainer import TIMING_COLUMNS, train
from clipctl.trainer.signals import StopRequest


def math_columns(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in TIMING_COLUMNS if c in df]).reset_index(drop=True)


def assert_same_steps(got: pd.DataFrame, want: pd.DataFrame) -> None:
    a, b = math_columns(got), math_columns(want)
    assert list(a["step"]) == list(b["step"])
    assert list(a.columns) == list(b.columns)
    np.testing.assert_array_equal(a.to_numpy(float), b.to_numpy(float))


# save_every above train.steps: the only checkpoints are the one the signal writes and the final one.
def overrides(fast: list[str]) -> list[str]:
    return [*fast, "train.steps=4", "train.save_every=10", "train.keep_last=3"]


@pytest.fixture(scope="module")
def uninterrupted(quick_model_dir, tmp_path_factory) -> pd.DataFrame:
    from conftest import FAST_OVERRIDES

    cfg = load_config("tiny-cpu", overrides([f"model.path={quick_model_dir}", *FAST_OVERRIDES]))
    return read_run(train(cfg, out=tmp_path_factory.mktemp("full"), name="full").run_dir).steps


def signal_at_step(step: int, *signums: int):
    def on_step(metrics: dict) -> None:
        if metrics["step"] == step:
            for signum in signums:
                # To this thread, not the process: os.kill may land on a torch worker thread, and two
                # SIGINTs that arrive before the main thread runs its handler count as one.
                signal.pthread_kill(threading.get_ident(), signum)

    return on_step


@pytest.mark.parametrize("signums", [
    (signal.SIGUSR1,), (signal.SIGTERM,), (signal.SIGINT,),
    (signal.SIGTERM, signal.SIGTERM, signal.SIGUSR1),  # a scheduler and a batch shell both signal: still one clean stop
    (signal.SIGTERM, signal.SIGINT),  # a Ctrl-C after a SIGTERM is not a second Ctrl-C
], ids=["usr1", "term", "int", "repeated", "term-then-int"])
def test_stop_signal_checkpoints_the_step_and_resume_is_exact(tmp_path, fast_overrides, uninterrupted, signums):
    cfg = load_config("tiny-cpu", overrides(fast_overrides))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)}
    with pytest.raises(RunStopped) as stopped:
        train(cfg, out=tmp_path, name="cut", on_step=signal_at_step(2, *signums))
    run_dir = tmp_path / "cut"
    name = signal.Signals(signums[0]).name
    assert str(stopped.value) == (
        f"{name}: stopped after step 2 with checkpoint {run_dir}/checkpoints/step-2; "
        f"resume with clipctl train --resume {run_dir}"
    )
    assert stopped.value.exit_code == REQUEUE_EXIT == 75
    assert latest_checkpoint(run_dir)[0] == 2
    assert list(read_run(run_dir).steps["step"]) == [1, 2]
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # restored
    resumed = train(resume=run_dir)
    assert resumed.first_step == 3
    assert_same_steps(read_run(run_dir).steps, uninterrupted)


def test_second_ctrl_c_stops_at_once_without_a_checkpoint(tmp_path, fast_overrides):
    cfg = load_config("tiny-cpu", overrides(fast_overrides))
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs in the background (nohup, &)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out=tmp_path, name="cut", on_step=signal_at_step(2, signal.SIGINT, signal.SIGINT))
    assert latest_checkpoint(tmp_path / "cut") is None
    assert signal.getsignal(signal.SIGINT) is before  # the handler in place before train is back


def test_a_signal_at_the_last_step_finishes_the_run(tmp_path, fast_overrides):
    cfg = load_config("tiny-cpu", overrides(fast_overrides))
    result = train(cfg, out=tmp_path, name="end", on_step=signal_at_step(4, signal.SIGTERM))
    assert result.last_step == 4 and latest_checkpoint(result.run_dir)[0] == 4


def test_stop_request_counts_ctrl_c_and_keeps_the_first_signal():
    stop = StopRequest()
    stop._handle(signal.SIGTERM, None)
    stop._handle(signal.SIGUSR1, None)
    assert stop.name == "SIGTERM"
    stop._handle(signal.SIGINT, None)  # the first Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)


# ---------------------------------------------------------------- a real clipctl train process (slow)


def _start_train(tmp_path: Path, fast: list[str], *extra: str) -> subprocess.Popen:
    sets = [a for o in overrides(fast) for a in ("--set", o)]
    cmd = [sys.executable, "-m", "clipctl", "train", "--preset", "tiny-cpu", *sets, "--out", str(tmp_path),
           "--name", "cli", "-q", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_step(run_dir: Path, proc: subprocess.Popen, step: int, timeout: float = 240) -> None:
    from clipctl.runlog import logged_steps

    deadline = time.monotonic() + timeout
    while not (run_dir.is_dir() and step in logged_steps(run_dir)):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "timed out waiting for a step"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1], ids=["ctrl-c", "term", "usr1"])
def test_cli_train_stops_with_status_75_and_resumes_exactly(tmp_path, fast_overrides, uninterrupted, signum):
    proc = _start_train(tmp_path, fast_overrides)
    run_dir = tmp_path / "cli"
    _wait_for_step(run_dir, proc, 1)
    proc.send_signal(signum)
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 75, output
    step = latest_checkpoint(run_dir)[0]
    assert 1 <= step < 4
    assert f"stopped after step {step} with checkpoint" in output and "Error" not in output
    assert output.strip().splitlines()[-1].startswith(signal.Signals(signum).name)
    resumed = subprocess.run(
        [sys.executable, "-m", "clipctl", "train", "--resume", str(run_dir), "-q"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_same_steps(read_run(run_dir).steps, uninterrupted)


def test_a_stopped_run_resumes_into_the_same_wandb_run_and_tensorboard_folder(tmp_path, fast_overrides, monkeypatch):
    """Stopped by SIGTERM after step 2 and resumed: one W&B run id, every step once in W&B and TensorBoard."""
    import glob

    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    from test_trackers import tensorboard_scalars, wandb_history

    monkeypatch.setenv("WANDB_MODE", "offline")  # never a server
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config("tiny-cpu", [*overrides(fast_overrides), "log.trackers=tensorboard,wandb"])
    with pytest.raises(RunStopped):
        train(cfg, out=tmp_path, name="tracked", on_step=signal_at_step(2, signal.SIGTERM))
    run_dir = tmp_path / "tracked"
    run_id = (run_dir / "wandb" / "clipctl-run-id").read_text().strip()
    train(resume=run_dir)
    files = sorted(glob.glob(str(run_dir / "wandb" / "offline-run-*" / "*.wandb")))
    assert len(files) == 2 and all(f.endswith(f"run-{run_id}.wandb") for f in files)  # two attempts, one W&B run
    logged = [int(row["step"]) for f in files for row in wandb_history(f)]
    assert logged == [1, 2, 3, 4]  # no step twice
    assert sorted(tensorboard_scalars(run_dir / "tensorboard")["entropy"]) == [1, 2, 3, 4]
