"""The Parquet run directory: write parts atomically, read them back with pandas.

Layout of ``runs/<name>/``::

    run.json                 resolved config, preset, seed, versions, git revision, command line
    steps/step-000001.parquet    one row per training step
    updates/step-000001.parquet  one row per (step, epoch, minibatch)
    samples/step-000005.parquet  prompt/response/reward rows, every log.samples_every steps
    tokens/step-000001.parquet   sampled per-token rows (log.token_sample_rate > 0)
    checkpoints/step-N/          model + tokenizer (HF format), trainer_state.pt

Every part is written to a hidden temp file in the same folder and renamed into
place, so a reader (or a SIGKILL) never sees half a file. A table is the
concatenation of its parts, sorted by step; a resumed run first deletes the
parts of steps after its checkpoint, so every step appears once.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from clipctl.errors import RunDirError

TABLES = ("steps", "updates", "samples", "tokens")
PART_RE = re.compile(r"^step-(\d+)\.parquet$")
CKPT_RE = re.compile(r"^step-(\d+)$")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def write_parquet_atomic(df: pd.DataFrame, path: Path) -> None:
    """Write ``df`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def part_path(run_dir: Path, table: str, step: int) -> Path:
    return Path(run_dir) / table / f"step-{step:06d}.parquet"


def write_part(run_dir: Path, table: str, step: int, rows: list[dict] | pd.DataFrame) -> None:
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    write_parquet_atomic(df, part_path(run_dir, table, step))


def _parts(run_dir: Path, table: str) -> list[tuple[int, Path]]:
    folder = Path(run_dir) / table
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := PART_RE.match(p.name))]
    return sorted(found)


def drop_parts_after(run_dir: Path, step: int) -> None:
    """Delete every part of a step later than ``step`` (before resuming from it)."""
    for table in TABLES:
        for part_step, path in _parts(run_dir, table):
            if part_step > step:
                path.unlink(missing_ok=True)


def read_table(run_dir: Path, table: str) -> pd.DataFrame:
    parts = _parts(run_dir, table)
    if not parts:
        return pd.DataFrame()
    frames = []
    for _, path in parts:
        try:
            frames.append(pd.read_parquet(path))
        except Exception as e:
            # Deleting the part would lose that step for good (the checkpoint is past it):
            # resume rebuilds it from an earlier checkpoint (trainer/run.py, prepare_resume).
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RunDirError(
                f"cannot read {path}: {why}; keep the file and run clipctl train --resume {Path(run_dir)} to rebuild it"
            ) from None
    df = pd.concat(frames, ignore_index=True)
    return df


def damaged_parts(run_dir: Path, upto: int) -> list[tuple[int, Path, str]]:
    """``(step, path, why)`` of the parts of steps ``<= upto`` that cannot be read back, by step.

    Every step up to a checkpoint has a steps part (it is written before the
    checkpoint), so a missing one counts too (``why`` = "missing").
    """
    import pyarrow.parquet as pq

    damaged = []
    for table in TABLES:
        for step, path in _parts(run_dir, table):
            if step > upto:
                continue
            try:
                pq.read_table(path)
            except Exception as e:  # truncated, overwritten, unreadable: all the same here
                damaged.append((step, path, f"unreadable ({(str(e).splitlines() or [type(e).__name__])[0]})"))
    logged = {step for step, _ in _parts(run_dir, "steps")}
    damaged += [(s, part_path(run_dir, "steps", s), "missing") for s in range(1, upto + 1) if s not in logged]
    return sorted(damaged, key=lambda d: (d[0], str(d[1])))


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (``checkpoints/step-N``), oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if (m := CKPT_RE.match(p.name)) and (p / "trainer_state.pt").is_file()
    ]
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Optional[tuple[int, Path]]:
    found = checkpoints(run_dir)
    return found[-1] if found else None


@dataclass
class Run:
    """A run directory read back: ``run.json`` plus one DataFrame per table."""

    path: Path
    meta: dict
    steps: pd.DataFrame
    updates: pd.DataFrame
    samples: pd.DataFrame
    tokens: pd.DataFrame
    checkpoints: list[int] = field(default_factory=list)

    @property
    def config(self) -> dict:
        return self.meta.get("config", {})

    @property
    def name(self) -> str:
        return self.path.name


def read_meta(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    meta_path = run_dir / "run.json"
    if not run_dir.is_dir():
        raise RunDirError(f"run directory '{run_dir}' does not exist; pass a folder made by clipctl train")
    if not meta_path.is_file():
        raise RunDirError(f"'{run_dir}' has no run.json, so it is not a clipctl run directory")
    try:
        return json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"cannot read {meta_path}: {e}") from None


def read_run(path: str | os.PathLike) -> Run:
    """Read a run directory into DataFrames (empty ones for tables never written)."""
    run_dir = Path(path)
    meta = read_meta(run_dir)
    tables = {t: read_table(run_dir, t) for t in TABLES}
    for t in ("steps", "updates"):
        if not tables[t].empty:
            keys = ["step"] + (["epoch", "minibatch"] if t == "updates" else [])
            tables[t] = tables[t].sort_values(keys, kind="stable").reset_index(drop=True)
    return Run(run_dir, meta, checkpoints=[s for s, _ in checkpoints(run_dir)], **tables)
