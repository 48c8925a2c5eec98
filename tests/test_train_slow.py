"""End-to-end runs of the real entry point on builtin:tiny (built on first use)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clipctl.runlog import read_run
from clipctl.trainer import TIMING_COLUMNS

pytestmark = pytest.mark.slow


def clipctl(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "clipctl", *args], env=env, **kw)


def run_ok(*args: str) -> None:
    proc = clipctl(*args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out


def test_builtin_tiny_five_steps(tmp_path):
    """The issue's acceptance command, on the real default preset."""
    run_ok("train", "--preset", "tiny-cpu", "--set", "train.steps=5", "--out", str(tmp_path), "--name", "t", "-q")
    run = read_run(tmp_path / "t")
    steps = run.steps
    assert len(steps) == 5
    vocab = 1024
    assert np.isfinite(steps["entropy"]).all() and (steps["entropy"] < math.log(vocab)).all()
    # Pre-training made the model peaked: well below uniform.
    assert steps["entropy"].iloc[0] < 0.7 * math.log(vocab)
    for col in ("clip_low_frac", "clip_high_frac", "ratio_below_frac", "ratio_above_frac"):
        assert steps[col].between(0, 1).all(), col
    assert (steps["ratio_below_frac"] + steps["ratio_above_frac"]).gt(0).any()
    probed = steps.dropna(subset=["clip_attributed_dH"])
    assert list(probed["step"]) == [2, 4]


def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    common = ["--preset", "tiny-cpu", "--set", "train.steps=6", "--set", "train.save_every=2",
              "--set", "log.clip_probe_every=0", "--out", str(tmp_path), "-q"]
    run_ok("train", *common, "--name", "full")

    proc = clipctl("train", *common, "--name", "killed", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 600
    # Kill just after the step-2 checkpoint appears, while step 3 is under way.
    while time.time() < deadline and not (ckpt / "step-2" / "trainer_state.pt").exists():
        time.sleep(0.05)
    time.sleep(0.7)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(read_run(tmp_path / "killed").steps) < 6  # readable mid-run

    run_ok("train", "--resume", str(tmp_path / "killed"), "-q")
    a = read_run(tmp_path / "full").steps
    b = read_run(tmp_path / "killed").steps
    assert list(b["step"]) == [1, 2, 3, 4, 5, 6]
    cols = [c for c in a.columns if c not in TIMING_COLUMNS]
    np.testing.assert_allclose(
        a[cols].to_numpy(float), b[cols].to_numpy(float), rtol=0, atol=1e-6, equal_nan=True
    )
    updates = read_run(tmp_path / "killed").updates
    assert not updates.duplicated(["step", "epoch", "minibatch"]).any()


def test_python_dash_m_and_help():
    proc = clipctl("--help", stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "train" in out
