"""``clipctl eval-passk``: the real command on tiny models, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from clipctl.cli import app
from clipctl.eval.driver import SAMPLE_COLUMNS, SUMMARY_COLUMNS
from clipctl.models import TinySpec, cache_dir
from clipctl.rollout.hf import HFEngine

TINY_CACHED = (cache_dir() / TinySpec().key() / "tokenizer.json").is_file()
needs_tiny = (lambda test: test) if TINY_CACHED else pytest.mark.slow
TABLE_HEADERS = ("step", "dataset", "k", "pass@k", "mean@n", "95% CI (pass@k)")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
runner = CliRunner()


def _fake_run(root: Path, steps=(1, 2)) -> Path:
    """A run directory whose checkpoint folders exist (enough to list them, not to load them)."""
    run = root / "r"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"name": "r"}))
    for step in steps:
        (run / "checkpoints" / f"step-{step}").mkdir(parents=True)
        (run / "checkpoints" / f"step-{step}" / "trainer_state.pt").write_bytes(b"")
    return run


def _assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code != 0, result.output
    assert result.output.startswith("Error:"), result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    text = " ".join(result.output.split())  # rich may wrap a long line
    for needle in needles:
        assert needle in text, (needle, result.output)


def test_eval_passk_is_listed_in_help():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "eval-passk" in result.output
    result = runner.invoke(app, ["eval-passk", "--help"])
    assert result.exit_code == 0
    for flag in ("--dataset", "--n", "--k", "--temperature", "--top-p", "--max-new-tokens", "--seed", "--limit",
                 "--engine", "--checkpoints", "--out", "--problem-col", "--answer-col", "--id-col"):
        assert flag in result.output


@needs_tiny
def test_eval_passk_on_a_model_folder(tmp_path, tiny_model, monkeypatch):
    args = ["eval-passk", str(tiny_model), "--dataset", "gsm8k", "--limit", "3", "--n", "2", "--k", "1,2",
            "--max-new-tokens", "4", "--out", str(tmp_path / "ev")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for header in TABLE_HEADERS:
        assert header in result.output
    assert "eval directory:" in result.output
    step_dir = tmp_path / "ev" / "gsm8k" / "step-0"
    assert list(pd.read_parquet(step_dir / "samples.parquet").columns) == list(SAMPLE_COLUMNS)
    summary = pd.read_parquet(tmp_path / "ev" / "summary.parquet")
    assert list(summary.columns[: len(SUMMARY_COLUMNS)]) == list(SUMMARY_COLUMNS) and len(summary) == 2

    def boom(*a, **k):
        raise AssertionError("no generation expected")

    monkeypatch.setattr(HFEngine, "generate", boom)
    again = runner.invoke(app, args + ["-q"])
    assert again.exit_code == 0, again.output
    assert "no generation" in again.output


@pytest.mark.parametrize(
    "case, needles",
    [
        ("unknown dataset", ["unknown dataset 'nope'", "gsm8k, math500"]),
        ("k > n", ["eval.k=[1, 8] must lie in [1, eval.n=4]; lower eval.k or raise eval.n"]),
        ("negative limit", ["eval.limit=-1 must be >= 0 (0 = all)"]),
        ("big seed", [f"seed={2**63} must be in [0, 2**63 - 1]; pick a smaller seed, e.g. 0"]),
        ("bad k list", ["--k '1,x'"]),
        ("missing column", ["column 'question' not found", "--problem-col"]),
        ("empty dataset", ["has no rows"]),
        ("unreadable model path", ["cannot load tokenizer from"]),
        ("missing model folder", ["model folder", "does not exist"]),
        ("run dir without checkpoints", ["has no checkpoints"]),
        ("unknown checkpoint", ["checkpoint 'step-9' not found", "available: step-1, step-2"]),
        ("checkpoints on a model", ["needs a run directory"]),
    ],
)
def test_bad_input_is_one_error_line(case, needles, tmp_path):
    data = tmp_path / "toy.jsonl"
    data.write_text(json.dumps({"id": 1, "problem": "1+1", "answer": "2"}) + "\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    (tmp_path / "no-model").mkdir()
    no_ckpt = tmp_path / "no-ckpt"
    no_ckpt.mkdir()
    (no_ckpt / "run.json").write_text("{}")
    run = _fake_run(tmp_path)
    args = {
        "unknown dataset": ["builtin:tiny", "--dataset", "nope"],
        "k > n": ["builtin:tiny", "--dataset", "gsm8k", "--n", "4", "--k", "1,8"],
        "negative limit": ["builtin:tiny", "--dataset", "gsm8k", "--limit", "-1"],
        "big seed": ["builtin:tiny", "--dataset", "gsm8k", "--seed", str(2**63)],
        "bad k list": ["builtin:tiny", "--dataset", "gsm8k", "--k", "1,x"],
        "missing column": ["builtin:tiny", "--dataset", str(data), "--problem-col", "question"],
        "empty dataset": ["builtin:tiny", "--dataset", str(empty)],
        "unreadable model path": [str(tmp_path / "no-model"), "--dataset", str(data), "--out", str(tmp_path / "o")],
        "missing model folder": [str(tmp_path / "nowhere"), "--dataset", "gsm8k"],
        "run dir without checkpoints": [str(no_ckpt), "--dataset", "gsm8k"],
        "unknown checkpoint": [str(run), "--dataset", "gsm8k", "--checkpoints", "step-9"],
        "checkpoints on a model": ["builtin:tiny", "--dataset", "gsm8k", "--checkpoints", "step-1"],
    }[case]
    result = runner.invoke(app, ["eval-passk", *args])
    _assert_one_line_error(result, *needles)


# ---------------------------------------------------------------------------
# Slow: the built-in model and a real training run
# ---------------------------------------------------------------------------


def _clipctl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clipctl", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_builtin_tiny_on_gsm8k(tmp_path):
    proc = _clipctl("eval-passk", "builtin:tiny", "--dataset", "gsm8k", "--limit", "5", "--n", "4", "--k", "1,2,4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for header in TABLE_HEADERS:
        assert header in proc.stdout
    root = tmp_path / "runs" / "eval" / "builtin-tiny"
    samples = pd.read_parquet(root / "gsm8k" / "step-0" / "samples.parquet")
    assert list(samples.columns) == list(SAMPLE_COLUMNS) and len(samples) == 5 * 4
    for path in (root / "summary.parquet", root / "gsm8k" / "step-0" / "summary.parquet"):
        summary = pd.read_parquet(path)
        assert list(summary.columns[: len(SUMMARY_COLUMNS)]) == list(SUMMARY_COLUMNS)
        assert summary["k"].tolist() == [1, 2, 4] and (summary["n_problems"] == 5).all()
        assert (summary["pass_at_k"].diff().dropna() >= 0).all()  # pass@k grows with k


@pytest.mark.slow
def test_run_directory_with_two_checkpoints(tmp_path, monkeypatch):
    proc = _clipctl("train", "--set", "train.steps=2", "--set", "train.save_every=1", "--set", "train.keep_last=5",
                    "--out", str(tmp_path), "--name", "r", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "r"
    args = ["eval-passk", str(run), "--dataset", "gsm8k", "--limit", "3", "--n", "2", "--k", "1,2", "--max-new-tokens", "64"]
    proc = _clipctl(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = pd.read_parquet(run / "eval" / "summary.parquet")
    assert sorted(zip(summary["step"], summary["k"])) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for step in (1, 2):
        assert len(pd.read_parquet(run / "eval" / "gsm8k" / f"step-{step}" / "samples.parquet")) == 3 * 2

    # The second call loads no model and generates nothing; the summary is unchanged.
    def boom(*a, **k):
        raise AssertionError("no generation expected")

    monkeypatch.setattr(HFEngine, "generate", boom)
    monkeypatch.setattr("clipctl.models.load_model", boom)
    result = runner.invoke(app, args[:1] + args[1:] + ["-q"])
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(pd.read_parquet(run / "eval" / "summary.parquet"), summary)
