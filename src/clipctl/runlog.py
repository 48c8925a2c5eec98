"""The Parquet run directory: write parts atomically, merge them, read them back with pandas.

Layout of ``runs/<name>/``::

    run.json                 resolved config, preset, seed, versions, git revision, command line
    steps/step-000001.parquet    one row per training step (a part: one step)
    updates/step-000001.parquet  one row per (step, epoch, minibatch)
    samples/step-000005.parquet  prompt/response/reward rows, every log.samples_every steps
    tokens/step-000001.parquet   sampled per-token rows (log.token_sample_rate > 0)
    <table>/steps-000001-000050.parquet  a segment: the merged parts of steps 1-50
    checkpoints/step-N/          model + tokenizer (HF format), trainer_state.pt
    tensorboard/, wandb/         live mirrors of the steps table (log.trackers; not read back)

Every file is written to a hidden temp file in the same folder, fsynced and
renamed into place, so a reader (or a SIGKILL) never sees half a file. A table
is the concatenation of its files, sorted by step; a resumed run first deletes
the rows of steps after its checkpoint, so every step appears once.

Compaction (``compact``, after every checkpoint and at the end of a run) merges
a table's committed files into one segment named by the steps it covers:
write ``.steps-A-B.parquet.*.tmp``, fsync, rename to ``steps-A-B.parquet``,
then delete the merged files. A file whose step range lies inside another
file's range is superseded: readers skip it (its rows are in the bigger file)
and the next compaction or resume deletes it. So at every kill point a reader
sees each row exactly once: before the rename the old files, after it the
segment. Segments grow like a binary counter (a new segment absorbs older ones
no longer than itself), so a run has O(log steps) files per table while it
trains, and the end of a run merges each table into one file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from clipctl import schema
from clipctl.errors import RunDirError

TABLES = ("steps", "updates", "samples", "tokens")
PART_RE = re.compile(r"^step-(\d+)\.parquet$")  # one step's part
SEGMENT_RE = re.compile(r"^steps-(\d+)-(\d+)\.parquet$")  # merged parts of steps A..B (inclusive)
CKPT_RE = re.compile(r"^step-(\d+)$")
TEMP_RE = re.compile(r"^\..*\.tmp$")


def _crash_point(what: str) -> None:
    """Called between the writes, renames and deletes of compaction and truncation (tests make it raise)."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


def write_parquet_atomic(df: pd.DataFrame, path: Path, *, before_rename: Optional[Callable[[], None]] = None) -> None:
    """Write ``df`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    write_atomic(path, lambda tmp: df.to_parquet(tmp, index=False), before_rename=before_rename)


def write_atomic(path: Path, write: Callable[[str], None], *, before_rename: Optional[Callable[[], None]] = None) -> None:
    """``write(tmp)`` into a temp file next to ``path``, fsync it, then ``os.replace`` it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def part_path(run_dir: Path, table: str, step: int) -> Path:
    return Path(run_dir) / table / f"step-{step:06d}.parquet"


def segment_path(run_dir: Path, table: str, lo: int, hi: int) -> Path:
    return Path(run_dir) / table / f"steps-{lo:06d}-{hi:06d}.parquet"


@dataclass(frozen=True)
class TableFile:
    """One file of a table: a part (``lo == hi``, ``step-N``) or a segment (``steps-lo-hi``)."""

    lo: int
    hi: int
    path: Path
    segment: bool

    @property
    def span(self) -> int:
        return self.hi - self.lo + 1


def _all_files(run_dir: Path, table: str) -> list[TableFile]:
    folder = Path(run_dir) / table
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        if m := PART_RE.match(p.name):
            found.append(TableFile(int(m.group(1)), int(m.group(1)), p, False))
        elif m := SEGMENT_RE.match(p.name):
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo <= hi:
                found.append(TableFile(lo, hi, p, True))
    # Bigger ranges first at one start, segments before parts: the first of a nest is the one kept.
    return sorted(found, key=lambda f: (f.lo, -f.hi, not f.segment, f.path.name))


def _split_visible(files: list[TableFile]) -> tuple[list[TableFile], list[TableFile]]:
    """``(visible, superseded)``: a file inside an earlier-listed file's range is superseded."""
    visible, superseded = [], []
    for f in files:
        if visible and f.lo <= visible[-1].hi:
            if f.hi <= visible[-1].hi:
                superseded.append(f)
                continue
            # Never made by this module (segments only ever cover whole files); refuse to guess.
            raise RunDirError(
                f"{f.path} overlaps {visible[-1].path} (steps {f.lo}-{f.hi} vs {visible[-1].lo}-{visible[-1].hi}); "
                "move one of them out of the run directory"
            )
        visible.append(f)
    return visible, superseded


def table_files(run_dir: Path, table: str) -> list[TableFile]:
    """The files a reader uses for ``table``, by step (superseded ones left out)."""
    return _split_visible(_all_files(run_dir, table))[0]


def logged_steps(run_dir: Path) -> list[int]:
    """Steps that have a row in the steps table, from the file names alone (fast; nothing is read).

    A steps segment always holds every step of its range (``compact`` merges
    only gap-free runs of steps files).
    """
    return [s for f in table_files(run_dir, "steps") for s in range(f.lo, f.hi + 1)]


def _tidy(run_dir: Path, table: str) -> list[TableFile]:
    """Delete superseded files and stale temp files of ``table``; returns the visible files."""
    folder = Path(run_dir) / table
    visible, superseded = _split_visible(_all_files(run_dir, table))
    for f in superseded:
        _crash_point(f"tidy {f.path.name}")
        f.path.unlink(missing_ok=True)
    if folder.is_dir():
        for p in folder.iterdir():
            if TEMP_RE.match(p.name):
                p.unlink(missing_ok=True)
    return visible


def _read_arrow(path: Path, columns: Optional[Sequence[str]] = None):
    """One file as a pyarrow Table (``columns``: those of them the file has).

    ``ParquetFile`` skips the dataset layer of ``pq.read_table``, and one thread
    is faster for files this small; over a sweep of 1,000 runs that halves the
    time to read them (``bench/runlog_compaction.py``).
    """
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as f:
        if columns is not None:
            have = set(f.schema_arrow.names)
            columns = [c for c in columns if c in have]
        return f.read(columns=columns, use_threads=False)


def _read_rows(path: Path) -> pd.DataFrame:
    """One file as ``pd.read_parquet`` gives it (same frame), at about half its CPU cost."""
    return _read_arrow(path).to_pandas(use_threads=False)


def drop_parts_after(run_dir: Path, step: int) -> None:
    """Delete every row of a step later than ``step`` (before resuming from it).

    Files of later steps are deleted; a segment that straddles ``step`` is
    rewritten as ``steps-lo-step`` (renamed in; it is superseded until the old
    segment is deleted, so a kill in between loses nothing and a rerun finishes).
    """
    for table in TABLES:
        for f in _tidy(run_dir, table):
            if f.lo > step:
                _crash_point(f"drop {f.path.name}")
                f.path.unlink(missing_ok=True)
            elif f.hi > step:
                df = _read_rows(f.path)
                kept = df[df["step"] <= step].reset_index(drop=True)
                write_parquet_atomic(
                    kept, segment_path(run_dir, table, f.lo, step),
                    before_rename=lambda: _crash_point(f"truncate {f.path.name}: before rename"),
                )
                _crash_point(f"truncate {f.path.name}: renamed")
                f.path.unlink()
        _fsync_dir(Path(run_dir) / table)


def _merge_plan(visible: list[TableFile], final: bool) -> list[TableFile]:
    """The trailing files to merge: every one at the end; else new parts plus segments no longer than them."""
    if final:
        return visible if len(visible) >= 2 else []
    plan: list[TableFile] = []
    while visible and not visible[-1].segment:
        plan.insert(0, visible.pop())
    span = sum(f.span for f in plan)
    while plan and visible and visible[-1].span <= span:
        span += visible[-1].span
        plan.insert(0, visible.pop())
    return plan if len(plan) >= 2 else []


def compact_table(run_dir: Path, table: str, upto: int, final: bool = False) -> Optional[Path]:
    """Merge ``table``'s files of steps ``<= upto`` (see the module doc); returns the new segment, if any.

    Nothing is merged over a gap in the steps table or when a file cannot be
    read: those stay as they are, for resume to verify and rebuild.
    """
    visible = [f for f in _tidy(run_dir, table) if f.hi <= upto]
    plan = _merge_plan(visible, final)
    if not plan:
        return None
    if table == "steps" and any(b.lo != a.hi + 1 for a, b in zip(plan, plan[1:])):
        return None
    try:
        frames = [_read_rows(f.path) for f in plan]
    except FileNotFoundError:
        raise
    except Exception:  # a damaged file: leave it to resume's check (trainer/run.py, prepare_resume)
        return None
    merged = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    target = segment_path(run_dir, table, plan[0].lo, plan[-1].hi)
    write_parquet_atomic(merged, target, before_rename=lambda: _crash_point(f"compact {table}: before rename"))
    _fsync_dir(target.parent)
    for f in plan:
        _crash_point(f"compact {table}: delete {f.path.name}")
        if f.path != target:
            f.path.unlink(missing_ok=True)
    _fsync_dir(target.parent)
    return target


def compact(run_dir: Path, upto: int, final: bool = False) -> None:
    """Merge every table's committed files (steps ``<= upto``, the checkpoint just saved)."""
    for table in TABLES:
        compact_table(run_dir, table, upto, final)


def _read_files(run_dir: Path, table: str, columns: Optional[Sequence[str]] = None) -> list:
    """Every visible file of ``table`` as a pyarrow Table, in step order (re-listed if the writer merges meanwhile)."""
    for attempt in range(20):
        try:
            return [_read_one(run_dir, f.path, columns) for f in table_files(run_dir, table)]
        except FileNotFoundError:
            continue  # merged (or truncated) by the writer while we read: list again
    raise RunDirError(f"cannot read {Path(run_dir) / table}: its files keep changing; run this again")


def read_table(run_dir: Path, table: str) -> pd.DataFrame:
    frames = [t.to_pandas(use_threads=False) for t in _read_files(run_dir, table)]
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def read_columns(run_dir: Path, table: str, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """The named numeric columns of ``table`` as float arrays, rows sorted by ``step``.

    Only the columns asked for are read, and no DataFrame is built: what
    ``analyze-clip-stats`` needs from each of a sweep's runs. A column no file
    has is left out; one that only some files have is NaN in the others.
    """
    parts = [(t, set(t.column_names)) for t in _read_files(run_dir, table, columns)]
    present = [c for c in columns if any(c in names for _, names in parts)]
    out = {}
    for c in present:
        arrays = [
            t.column(c).to_numpy(zero_copy_only=False).astype(float) if c in names
            else np.full(t.num_rows, np.nan)
            for t, names in parts
        ]
        out[c] = np.concatenate(arrays) if len(arrays) != 1 else arrays[0]
    if "step" in out and len(out["step"]) > 1 and (np.diff(out["step"]) < 0).any():
        order = np.argsort(out["step"], kind="stable")
        out = {c: v[order] for c, v in out.items()}
    return out


def _read_one(run_dir: Path, path: Path, columns: Optional[Sequence[str]] = None):
    try:
        return _read_arrow(path, columns)
    except FileNotFoundError:
        raise
    except Exception as e:
        if not path.exists():
            raise FileNotFoundError(path) from None
        # Deleting the file would lose those steps for good (the checkpoint is past them):
        # resume rebuilds them from an earlier checkpoint (trainer/run.py, prepare_resume).
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RunDirError(
            f"cannot read {path}: {why}; keep the file and run clipctl train --resume {Path(run_dir)} to rebuild it"
        ) from None


def damaged_parts(run_dir: Path, upto: int) -> list[tuple[int, Path, str]]:
    """``(step, path, why)`` of the files holding steps ``<= upto`` that cannot be read back, by step.

    A damaged segment counts from its first step. Every step up to a
    checkpoint has a steps row (it is written before the checkpoint), so a
    step no steps file covers counts too (``why`` = "missing").
    """
    import pyarrow.parquet as pq

    damaged = []
    for table in TABLES:
        for f in table_files(run_dir, table):
            if f.lo > upto:
                continue
            try:
                pq.read_table(f.path)
            except Exception as e:  # truncated, overwritten, unreadable: all the same here
                damaged.append((f.lo, f.path, f"unreadable ({(str(e).splitlines() or [type(e).__name__])[0]})"))
    logged = set(logged_steps(run_dir))
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


class Run:
    """A run directory read back: ``run.json``, its checkpoints, and one DataFrame per table.

    Each table is read on first use (analysis of a sweep reads only ``steps``,
    never the samples' text), then kept; ``steps`` and ``updates`` come sorted
    by their keys.
    """

    def __init__(self, path: Path, meta: dict, checkpoints: list[int]):
        self.path, self.meta, self.checkpoints = Path(path), meta, checkpoints
        self._tables: dict[str, pd.DataFrame] = {}

    def table(self, name: str) -> pd.DataFrame:
        if name not in self._tables:
            df = read_table(self.path, name)
            if name in SORT_KEYS and not df.empty:
                df = df.sort_values(list(SORT_KEYS[name]), kind="stable").reset_index(drop=True)
            self._tables[name] = df
        return self._tables[name]

    steps = property(lambda self: self.table("steps"))
    updates = property(lambda self: self.table("updates"))
    samples = property(lambda self: self.table("samples"))
    tokens = property(lambda self: self.table("tokens"))

    @property
    def config(self) -> dict:
        return self.meta.get("config", {})

    @property
    def name(self) -> str:
        return self.path.name


SORT_KEYS = {"steps": ("step",), "updates": ("step", "epoch", "minibatch")}


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
    """A run directory: ``run.json`` and the tables' file lists checked now (an overlap is an
    error here), each table read on first use (empty for tables never written)."""
    run_dir = Path(path)
    meta = read_meta(run_dir)
    for table in TABLES:
        table_files(run_dir, table)
    return Run(run_dir, meta, checkpoints=[s for s, _ in checkpoints(run_dir)])


# ---------------------------------------------------------------- the run's writer


def write_checked_part(run_dir: Path, table: str, step: int, rows: Sequence[dict], extra: tuple[str, ...] = ()) -> None:
    """Write ``rows`` as ``table``'s part ``step`` with the documented Arrow schema (``schema.arrow_table``):
    a missing, undocumented or mistyped column raises ``schema.RowError`` and nothing is written."""
    import pyarrow.parquet as pq

    data = schema.arrow_table(table, rows, extra)
    write_atomic(part_path(run_dir, table, step), lambda tmp: pq.write_table(data, tmp))


def write_step(run_dir: Path, out, extra: tuple[str, ...] = ()) -> None:
    """Write a step's parts (``out``: ``metrics`` dict, ``updates``/``samples``/``tokens`` row lists);
    the steps part last, so a step row implies its other parts."""
    step = out.metrics["step"]
    for table, rows in (("updates", out.updates), ("samples", out.samples), ("tokens", out.tokens)):
        if rows:
            write_checked_part(run_dir, table, step, rows, _extra_of(table, extra))
    write_checked_part(run_dir, "steps", step, [out.metrics], extra)


def _extra_of(table: str, extra: tuple[str, ...]) -> tuple[str, ...]:
    # Extra tables (the simulator's exact columns) extend the steps and updates rows only.
    return extra if table in ("steps", "updates") else ()


class RunWriter:
    """Writes the run directory (the only process, or rank 0): run.json, step parts,
    compaction, and the live mirrors of ``log.trackers``.

    Every step part is written with the schema's Arrow types (``write_checked_part``);
    ``extra`` names tables whose columns the steps and updates rows also carry
    (the simulator's "simulated").
    """

    trackers = None

    def __init__(self, extra: tuple[str, ...] = ()):
        self.extra = extra

    def meta(self, run_dir: Path, meta: dict) -> None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(run_dir) / "run.json", meta)

    def step(self, run_dir: Path, out) -> None:
        write_step(run_dir, out, self.extra)  # the Parquet log first: a tracker failing never loses a row
        if self.trackers is not None:
            self.trackers.log(out.metrics)

    def part(self, run_dir: Path, table: str, step: int, rows: Sequence[dict]) -> None:
        """One checked part of ``table`` (the simulator writes a whole run as one part per table)."""
        write_checked_part(run_dir, table, step, rows, _extra_of(table, self.extra))

    def drop_after(self, run_dir: Path, step: int) -> None:
        drop_parts_after(run_dir, step)

    def compact(self, run_dir: Path, step: int, final: bool = False) -> None:
        """After checkpoint ``step``: merge the tables' committed parts."""
        compact(run_dir, step, final)

    def mirror_to(self, trackers) -> None:
        """Mirror every step row to ``trackers`` (``clipctl.trackers.Trackers``); ``close`` ends them."""
        self.trackers = trackers

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None


class NullWriter(RunWriter):
    """What processes other than rank 0 get: every write is a no-op."""

    def meta(self, run_dir: Path, meta: dict) -> None:
        pass

    def step(self, run_dir: Path, out) -> None:
        pass

    def drop_after(self, run_dir: Path, step: int) -> None:
        pass

    def compact(self, run_dir: Path, step: int, final: bool = False) -> None:
        pass
