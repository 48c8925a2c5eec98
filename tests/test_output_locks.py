"""Every writer of a folder holds its lock; concurrent writers never lose rows or overwrite each other.

- Two real ``eval-passk`` processes into one ``--out`` (a model target) with different ``--k``: the
  second waits for the first, and the summary keeps both k sets. A barrier inside the processes makes
  the overlap certain: without the lock both read the summary before either writes it.
- ``eval-passk``, ``simulate dynamics`` and ``sweep`` refuse a folder another writer holds.
- ``simulate dynamics`` never writes into a training run; small bad inputs of the same probe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import clipctl
from clipctl.cli import app
from clipctl.rundir import RunLock
from clipctl.runlog import atomic_write_json
from runlogs import write_part
from test_bad_inputs import CONFIG, assert_one_error_line, snapshot

runner = CliRunner()
SIM = ["simulate", "dynamics", "--steps", "2", "--seeds", "1", "--grid", "0.2/0.2", "--actions", "4",
       "--samples", "8", "--group-size", "4", "--minibatches", "1"]

# Runs ``clipctl`` with one change: the write of ROOT/summary.parquet waits until the other process
# has reached that write too (so both have read the summary) or is waiting for the lock.
LAUNCH = r"""
import os, runpy, sys, time
from pathlib import Path

import clipctl.eval.driver as driver

barrier, root = Path(os.environ["BARRIER"]), Path(os.environ["ROOT"])


def arrive():
    (barrier / str(os.getpid())).touch()


def write(df, path, _real=driver.write_parquet_atomic):
    if Path(path) == root / "summary.parquet":
        arrive()
        deadline = time.monotonic() + 120
        while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    return _real(df, path)


def evaluate(*args, log=None, _real=driver.evaluate, **kwargs):
    def said(msg):
        if msg.startswith("waiting up to"):
            arrive()
        if log is not None:
            log(msg)
    return _real(*args, log=said, **kwargs)


driver.write_parquet_atomic, driver.evaluate = write, evaluate
sys.argv = ["clipctl", *sys.argv[1:]]
runpy.run_module("clipctl", run_name="__main__")
"""


def _eval_args(model: Path, out: Path, k: str) -> list[str]:
    return ["eval-passk", str(model), "--dataset", "gsm8k", "--limit", "2", "--n", "2", "--k", k,
            "--max-new-tokens", "4", "--batch-prompts", "2", "--out", str(out), "-q"]


def test_two_concurrent_evaluations_keep_every_row(tmp_path, tiny_model):
    out, barrier = tmp_path / "ev", tmp_path / "barrier"
    barrier.mkdir()
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "BARRIER": str(barrier), "ROOT": str(out),
        "PYTHONPATH": str(Path(clipctl.__file__).parents[1]),
    }
    procs = [
        subprocess.Popen([sys.executable, "-c", LAUNCH, *_eval_args(tiny_model, out, k)], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for k in ("1", "2")
    ]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    for code, stdout, stderr in results:
        assert code == 0, stdout + stderr
    assert sum("waiting up to" in stderr for _, _, stderr in results) == 1, results
    summary = pd.read_parquet(out / "summary.parquet")
    assert sorted(summary["k"]) == [1, 2] and set(summary["n"]) == {2}
    assert not (out / ".lock").exists()


def test_eval_into_a_held_output_is_refused_and_waits_only_for_an_evaluation(tmp_path, tiny_model):
    out = tmp_path / "ev"
    out.mkdir()
    before = snapshot(tmp_path)
    args = _eval_args(tiny_model, out, "1")
    with RunLock(out, "eval-passk"):
        refused = runner.invoke(app, [*args, "--lock-wait", "0"])
        assert_one_error_line(refused, f"run directory {out} is in use by another clipctl process")
        waited = runner.invoke(app, [*args, "--lock-wait", "0.5"])
        last = waited.output.strip().splitlines()[-1]  # after the (wrapped) waiting line
        assert waited.exit_code == 1 and waited.output.startswith("waiting up to 0.5 s"), waited.output
        assert waited.output.count("Error: ") == 1 and last.startswith("Error: ") and "(waited" in last
    with RunLock(out, "train"):  # a training run holds its folder for hours: no waiting behind it
        result = runner.invoke(app, args)
        assert_one_error_line(result, "clipctl train")
    assert snapshot(tmp_path) == before


def _training_run(run_dir: Path, **meta) -> None:
    atomic_write_json(run_dir / "run.json", {"name": run_dir.name, "config": CONFIG, **meta})
    write_part(run_dir, "steps", 1, [{"step": 1, "entropy": 1.0}])


@pytest.mark.parametrize("meta, ckpt, fragment", [
    ({"preset": "tiny-cpu"}, False, "its run.json says preset 'tiny-cpu'"),
    ({}, False, "its run.json says preset None"),
    ({"preset": "simulate"}, True, "has checkpoints/"),
])
def test_simulate_never_writes_into_a_training_run(tmp_path, meta, ckpt, fragment):
    _training_run(tmp_path / "runs" / "el0.2-eh0.2-s0", **meta)
    if ckpt:
        (tmp_path / "runs" / "el0.2-eh0.2-s0" / "checkpoints" / "step-1").mkdir(parents=True)
    before = snapshot(tmp_path)
    result = runner.invoke(app, [*SIM, "--grid", "0.1/inf,0.2/0.2", "--out", str(tmp_path / "runs")])
    assert_one_error_line(result, fragment)
    assert "is not a simulated run" in result.output
    assert snapshot(tmp_path) == before  # not even the other grid point's folder


def test_simulate_reruns_into_its_own_runs_and_refuses_a_held_one(tmp_path):
    out = tmp_path / "sim"
    first = runner.invoke(app, [*SIM, "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert "wrote 1 run directories" in first.output
    run_dir = out / "el0.2-eh0.2-s0"
    assert json.loads((run_dir / "run.json").read_text())["preset"] == "simulate"
    assert not (run_dir / ".lock").exists()
    again = runner.invoke(app, [*SIM, "--out", str(out)])
    assert again.exit_code == 0, again.output
    before = snapshot(tmp_path)
    with RunLock(run_dir, "train"):
        held = runner.invoke(app, [*SIM, "--out", str(out)])
    assert_one_error_line(held, f"run directory {run_dir} is in use by another clipctl process")
    assert snapshot(tmp_path) == before


def test_a_repeated_grid_point_is_refused(tmp_path):
    result = runner.invoke(app, [*SIM, "--grid", "0.2/0.2,0.2/0.2", "--out", str(tmp_path / "sim")])
    assert_one_error_line(result, "grid has 0.2/0.2 more than once (runs named el0.2-eh0.2-s0)")
    assert not (tmp_path / "sim").exists()


@pytest.mark.parametrize("command", ["analyze-clip-stats", "plot"])
def test_a_repeated_group_by_key_counts_once(tmp_path, command):
    for name, eps in (("a", 0.2), ("b", 0.3)):
        run = tmp_path / "runs" / name
        atomic_write_json(run / "run.json", {"name": name, "config": {**CONFIG, "algo": {**CONFIG["algo"], "eps_low": eps}}})
        for s in (1, 2):
            write_part(run, "steps", s, [{"step": s, "entropy": 2.0 - s / 10, "clip_low_frac": 0.1, "clip_high_frac": 0.0}])
    keys = "algo.eps_low,algo.eps_low"
    args = {
        "analyze-clip-stats": ["analyze-clip-stats", f"{tmp_path}/runs/*", "-g", keys, "-f", "csv"],
        "plot": ["plot", f"{tmp_path}/runs/*", "--kind", "entropy", "-g", keys, "--out", str(tmp_path / "p.png")],
    }[command]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pandas warns about a duplicated grouping column
        result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.output
    if command == "analyze-clip-stats":
        header = result.output.splitlines()[0].split(",")
        assert header.count("algo.eps_low") == 1


def test_interrupt_names_the_run_directory(tmp_path, monkeypatch):
    import clipctl.trainer as trainer

    def interrupted(cfg, *, out, name, on_start, **kwargs):
        on_start(Path(out) / name, 1, 3)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", interrupted)
    result = runner.invoke(app, ["train", "-q", "--out", str(tmp_path), "--name", "r1"])
    assert result.exit_code == 130
    assert f"Interrupted; resume with clipctl train --resume {tmp_path / 'r1'}" in result.output
    assert "RUN_DIR" not in result.output


def test_sweep_holds_its_folder_with_the_run_lock(tmp_path, monkeypatch):
    import clipctl.sweep as sw

    notes = []

    def launch(cmd, log_path, env, pass_fds):  # what the trainers would see: the sweep's lock, held
        notes.append((Path(log_path).parents[1] / ".lock").read_text())
        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])

    monkeypatch.setattr(sw, "_launch", launch)
    (tmp_path / "g.toml").write_text('name = "g"\npreset = "tiny-cpu"\n[set]\n"train.steps" = 1\n[grid]\n"algo.eps_high" = [0.2]\n')
    sw.run_sweep(tmp_path / "g.toml", out=tmp_path / "runs")
    assert notes and "clipctl sweep" in notes[0]
    assert not (tmp_path / "runs" / "g" / ".lock").exists()
