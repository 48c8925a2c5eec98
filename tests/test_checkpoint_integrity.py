"""Damaged checkpoints, config drift and refused flags on resume: one Error: line or an exact resume."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from clipctl.cli import app
from clipctl.config import load_config
from clipctl.runlog import read_run
from clipctl.trainer import train
from clipctl.trainer.checkpoint import valid_checkpoints
from test_bad_inputs import assert_one_error_line, snapshot

runner = CliRunner()
MATH = ["step", "entropy", "reward_mean", "clip_low_frac", "clip_high_frac", "approx_kl"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, quick_model_dir):
    """An uninterrupted 4-step run, a checkpoint every step, three kept."""
    from conftest import FAST_OVERRIDES

    cfg = load_config("tiny-cpu", [f"model.path={quick_model_dir}", *FAST_OVERRIDES, "train.steps=4",
                                   "train.save_every=1", "train.keep_last=3"])
    return train(cfg, out=tmp_path_factory.mktemp("ref"), name="ref").run_dir


def _copy(reference, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(reference, run)
    return run


def _math(run):
    steps = read_run(run).steps
    return steps[[c for c in MATH if c in steps]].to_numpy(float)


@pytest.mark.parametrize("damage", ["truncate", "empty", "flip"])
@pytest.mark.parametrize("file", ["trainer_state.pt", "model.safetensors", "tokenizer.json"])
def test_damaged_last_checkpoint_resumes_from_the_previous_one(reference, tmp_path, damage, file):
    run = _copy(reference, tmp_path)
    path = run / "checkpoints" / "step-4" / file
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "flip": data[:-1] + bytes([data[-1] ^ 1])}[damage])
    logs = []
    result = train(resume=run, log=logs.append)
    assert result.first_step == 4
    assert any(m.startswith(f"skipped checkpoint step-4: {file} ") and "rebuilding steps 4-4 from checkpoint step 3" in m
               for m in logs), logs
    np.testing.assert_allclose(_math(run), _math(reference), rtol=0, atol=1e-6, equal_nan=True)
    assert [s for s, _ in valid_checkpoints(run)[0]] == [2, 3, 4]


def test_all_checkpoints_bad_is_one_error_and_changes_nothing(reference, tmp_path):
    run = _copy(reference, tmp_path)
    for step in (2, 3, 4):
        (run / "checkpoints" / f"step-{step}" / "model.safetensors").write_bytes(b"")
    before = snapshot(run)
    result = runner.invoke(app, ["train", "--resume", str(run), "-q"])
    assert_one_error_line(result, f"no checkpoint of {run} can be resumed (skipped checkpoint step-2: model.safetensors is 0 bytes")
    assert {k: v for k, v in snapshot(run).items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}


def test_config_drift_in_run_json_is_refused(reference, tmp_path):
    run = _copy(reference, tmp_path)
    meta = json.loads((run / "run.json").read_text())
    meta["config"]["algo"]["eps_low"] = 0.1
    (run / "run.json").write_text(json.dumps(meta))
    before = snapshot(run)
    result = runner.invoke(app, ["train", "--resume", str(run), "-q", "--set", "train.steps=5"])
    assert_one_error_line(result, f"run.json of {run} no longer matches checkpoint step-4: algo.eps_low 0.2 -> 0.1;")
    assert {k: v for k, v in snapshot(run).items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}


@pytest.mark.parametrize("args, fragment", [
    (["--set", "train.steps=1"], "--set train.steps=1 is below the 4 steps"),
    (["--preset", "tiny-gpu"], "drop --preset tiny-gpu (the run's is tiny-cpu)"),
    (["--name", "other"], "drop --name other (the run's is copy)"),
    (["--out", "/tmp"], "drop --out /tmp"),
])
def test_resume_refuses_what_it_cannot_honour(reference, tmp_path, args, fragment):
    run = _copy(reference, tmp_path)
    before = snapshot(run)
    result = runner.invoke(app, ["train", "--resume", str(run), "-q", *args])
    assert_one_error_line(result, fragment)
    assert {k: v for k, v in snapshot(run).items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}


def test_interrupted_checkpoint_write_leaves_no_temp_folder(reference, tmp_path, monkeypatch):
    from clipctl.trainer import checkpoint

    run = _copy(reference, tmp_path)

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "write_manifest", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(resume=run, overrides=("train.steps=5",))
    assert not list((run / "checkpoints").glob(".step-*"))


def test_resume_history_and_agreeing_flags(reference, tmp_path):
    run = _copy(reference, tmp_path)
    result = runner.invoke(app, ["train", "--resume", str(run), "-q", "--name", "copy", "--out", str(tmp_path),
                                 "--set", "train.steps=5"])
    assert result.exit_code == 0, result.output
    history = json.loads((run / "run.json").read_text())["resumed"]
    assert history[-1]["changes"] == {"train.steps": [4, 5]} and history[-1]["from_checkpoint"] == 4
    assert list(read_run(run).steps["step"]) == [1, 2, 3, 4, 5]
