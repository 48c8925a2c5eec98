"""Hand-made run logs for tests: parts with only the columns a test needs (the trainer's writer checks every column)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from clipctl.runlog import part_path, write_parquet_atomic


def write_part(run_dir: Path, table: str, step: int, rows: list[dict] | pd.DataFrame) -> None:
    """``rows`` as ``table``'s part ``step``, written atomically, unchecked."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    write_parquet_atomic(df, part_path(run_dir, table, step))
