"""Refactors preserve behaviour: a seeded probed training run and a tabular dynamics run equal recorded tables.

The fixtures in ``tests/fixtures/behaviour/`` were written by this file's
``record`` (``python tests/test_behaviour.py``) before the "one owner per
concept" restructure; timing columns are left out. A change that moves a
number on purpose re-records them and says why in its commit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from clipctl.cli import app
from clipctl.runlog import read_run
from clipctl.trainer import TIMING_COLUMNS

FIXTURES = Path(__file__).parent / "fixtures" / "behaviour"
TABLES = ("steps", "updates", "tokens")
# tiny-cpu with the fast test overrides (conftest.FAST_OVERRIDES), 5 steps, probe and token rows every step.
TRAIN_OVERRIDES = [
    "train.steps=5",
    "train.rollout_batch_prompts=4",
    "train.minibatch_prompts=2",
    "train.micro_batch_size=4",
    "rollout.n=4",
    "rollout.max_new_tokens=12",
    "optim.lr=3e-3",
    "log.samples_every=0",
    "log.clip_probe_every=1",
    "log.token_sample_rate=0.05",
    "train.seed=3",
]
SIMULATE_CMD = ["simulate", "dynamics"]
SIMULATE_ARGS = [
    "--actions", "12", "--steps", "6", "--seeds", "1", "--samples", "32", "--group-size", "8",
    "--minibatches", "2", "--grid", "0.2/0.2,0.1/inf", "--seed", "5",
]
# Columns whose value is wall-clock time, not math.
UNTIMED = set(TIMING_COLUMNS) | {"seconds"}


def _train(model_dir: Path, out: Path) -> Path:
    sets = [a for o in [f"model.path={model_dir}", *TRAIN_OVERRIDES] for a in ("--set", o)]
    result = CliRunner().invoke(app, ["train", "--preset", "tiny-cpu", *sets, "--out", str(out), "--name", "b", "-q"])
    assert result.exit_code == 0, result.output
    return out / "b"


def _simulate(out: Path) -> list[Path]:
    result = CliRunner().invoke(app, [*SIMULATE_CMD, *SIMULATE_ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return sorted(p for p in out.iterdir() if p.is_dir())


def _tables(run_dir: Path) -> dict[str, pd.DataFrame]:
    run = read_run(run_dir)
    out = {}
    for name in TABLES:
        df = getattr(run, name)
        if df is None or df.empty:
            continue
        df = df[[c for c in df.columns if c not in UNTIMED]]
        out[name] = df.reset_index(drop=True)
    return out


def _all_tables(model_dir: Path, tmp: Path) -> dict[str, pd.DataFrame]:
    tables = {f"train-{k}": v for k, v in _tables(_train(model_dir, tmp / "train")).items()}
    for run_dir in _simulate(tmp / "sim"):
        tables.update({f"sim-{run_dir.name}-{k}": v for k, v in _tables(run_dir).items()})
    return tables


def _assert_equal(name: str, got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert sorted(got.columns) == sorted(want.columns), (
        f"{name}: columns differ: new {sorted(set(got.columns) - set(want.columns))}, "
        f"gone {sorted(set(want.columns) - set(got.columns))}"
    )
    got = got[list(want.columns)]
    assert len(got) == len(want), name
    for col in want.columns:
        a, b = got[col].to_numpy(), want[col].to_numpy()
        if np.issubdtype(b.dtype, np.floating):
            np.testing.assert_allclose(a.astype(float), b, rtol=1e-6, atol=1e-7, equal_nan=True, err_msg=f"{name}.{col}")
        else:
            assert list(a) == list(b), f"{name}.{col}"


def test_refactor_preserved_behaviour(quick_model_dir, tmp_path):
    files = sorted(FIXTURES.glob("*.parquet"))
    assert files, "no recorded fixtures"
    got = _all_tables(quick_model_dir, tmp_path)
    assert sorted(got) == sorted(p.stem for p in files)
    for path in files:
        _assert_equal(path.stem, got[path.stem], pd.read_parquet(path))


def record() -> None:  # pragma: no cover - run by hand
    import tempfile

    import torch

    from clipctl.models import TinySpec, build_tiny

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # The same model as conftest.quick_model_dir.
        spec = TinySpec(vocab_size=512, intermediate_size=256, pretrain_steps=30, batch_size=8, seq_len=64)
        model_dir = build_tiny(spec, tmp / "models" / "quick")
        FIXTURES.mkdir(parents=True, exist_ok=True)
        for name, df in _all_tables(model_dir, tmp).items():
            df.to_parquet(FIXTURES / f"{name}.parquet", index=False)
            print(name, df.shape)


if __name__ == "__main__":
    sys.exit(record())
