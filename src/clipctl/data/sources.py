"""Readers: rows of shipped resources, local files and HF datasets.

One reader per format, shared by training and evaluation, so a file that one
command reads the other reads too, with the same error messages:

- shipped: ``clipctl/resources/<name>/<split>.jsonl`` (``read_shipped``);
- local: ``.jsonl`` or ``.json`` (both JSON lines) or ``.parquet``
  (``LOCAL_SUFFIXES``, ``read_local``);
- HF: a dataset id, only where the hub is reachable (``read_hf``).

Which shipped datasets exist, and their splits, is ``registry.DATASETS``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Optional

from clipctl.errors import DataError

# The local file formats every command accepts; ".json" is read as JSON lines.
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
LOCAL_KINDS = "a .jsonl/.json (JSON lines) or .parquet file"


def resource_path(*parts: str) -> Path:
    """Path of a file shipped in ``clipctl/resources``."""
    return Path(str(resources.files("clipctl").joinpath("resources", *parts)))


def has_local_suffix(path: Path) -> bool:
    return path.suffix.lower() in LOCAL_SUFFIXES


def read_jsonl(path: Path, source: Optional[str] = None) -> list[dict]:
    """Rows of a JSON-lines file (blank lines skipped); ``source`` names it in errors."""
    source = source or str(path)
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{source}:{line_no} is not valid JSON ({e.msg}); fix or remove that line") from None
            if not isinstance(row, dict):
                raise DataError(f"{source}:{line_no} is not a JSON object; each line must be one {{...}} row")
            rows.append(row)
    return rows


def read_parquet(path: Path) -> list[dict]:
    import pandas as pd  # local: only Parquet datasets need pandas

    try:
        return pd.read_parquet(path).to_dict("records")
    except Exception as e:  # pyarrow raises several types for unreadable files
        raise DataError(
            f"cannot read Parquet file {path} ({type(e).__name__}); check that it is a valid .parquet file"
        ) from None


def read_local(path: Path) -> list[dict]:
    """Rows of a local ``LOCAL_SUFFIXES`` file: Parquet, else JSON lines."""
    return read_parquet(path) if path.suffix.lower() == ".parquet" else read_jsonl(path)


def read_shipped(name: str, split: str) -> list[dict]:
    """Rows of ``clipctl/resources/<name>/<split>.jsonl`` (training sets and benchmarks)."""
    path = resource_path(name, f"{split}.jsonl")
    source = f"packaged dataset {name!r} (clipctl/resources/{name}/{split}.jsonl)"
    if not path.is_file():
        raise DataError(f"{source} is missing; reinstall clipctl or pass {LOCAL_KINDS}")
    return read_jsonl(path, source)


def read_hf(name: str, split: str) -> list[dict]:
    """Rows of an HF dataset id; any failure (offline, unknown id) is one ``DataError``."""
    try:
        import datasets

        return list(datasets.load_dataset(name, split=split))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"cannot load dataset '{name}' ({first}); use 'gsm8k', {LOCAL_KINDS}, or a reachable HF id"
        ) from None
