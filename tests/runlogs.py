"""Hand-made run logs for tests: parts with only the columns a test needs (the trainer's writer checks every column)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from clipctl.runlog import part_path, write_parquet_atomic


def write_part(run_dir: Path, table: str, step: int, rows: list[dict] | pd.DataFrame) -> None:
    """``rows`` as ``table``'s part ``step``, written atomically, unchecked."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    write_parquet_atomic(df, part_path(run_dir, table, step))


def fake_run_folder(run_dir: Path, overrides: list[str], last: int) -> None:
    """What the sweep reads of a run the trainer left at step ``last``: run.json, empty steps parts, a checkpoint."""
    (run_dir / "steps").mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({"overrides": overrides}))
    for step in range(1, last + 1):
        (run_dir / "steps" / f"step-{step:06d}.parquet").write_bytes(b"")
    ckpt = run_dir / "checkpoints" / f"step-{last}"
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "trainer_state.pt").write_bytes(b"")
