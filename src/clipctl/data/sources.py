"""Readers: rows of shipped resources, local files and HF datasets.

One reader per format, shared by training and evaluation, so a file that one
command reads the other reads too, with the same error messages:

- shipped: ``clipctl/resources/<name>/<split>.jsonl`` (``read_shipped``);
- local: ``.jsonl`` or ``.json`` (both JSON lines) or ``.parquet``
  (``LOCAL_SUFFIXES``, ``read_local``);
- HF: a dataset id, only where the hub is reachable (``read_hf``).

Every reader returns ``Rows``: a list of dicts that also knows its source and
where each row sits in it (JSON lines: the 1-based line number; Parquet and
HF: the 0-based row number). ``check_rows`` is the one place the rows of any
reader are checked column by column, for training and evaluation alike.

Which shipped datasets exist, and their splits, is ``registry.DATASETS``.
"""

from __future__ import annotations

import codecs
import io
import json
import math
import numbers
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from clipctl.errors import DataError

# The local file formats every command accepts; ".json" is read as JSON lines.
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
LOCAL_KINDS = "a .jsonl/.json (JSON lines) or .parquet file"


def resource_path(*parts: str) -> Path:
    """Path of a file shipped in ``clipctl/resources``."""
    return Path(str(resources.files("clipctl").joinpath("resources", *parts)))


def has_local_suffix(path: Path) -> bool:
    return path.suffix.lower() in LOCAL_SUFFIXES


class Rows(list):
    """Rows of one dataset (a plain ``list`` of dicts, so it compares equal to one) and where each came from.

    ``source`` names the dataset in messages; ``lines`` holds each row's 1-based
    line number in a JSON-lines file, ``None`` where rows are counted from 0
    (Parquet, HF).
    """

    def __init__(self, rows: list, source: str, lines: Optional[list[int]] = None):
        super().__init__(rows)
        self.source, self.lines = source, lines

    def where(self, i: int) -> str:
        """Where row ``i`` is, as a user finds it in the file."""
        if self.lines is not None:
            return f"{self.source}:{self.lines[i]}"
        return f"{self.source} row {i} (0-based)"


_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what text-mode files count as a line break


def _decode(data: bytes, source: str) -> str:
    """UTF-8 text of a file; a byte that is not UTF-8 is one ``DataError`` with its line and byte offset."""
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0  # Notepad's "UTF-8" writes one
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        line_no = len(_LINE_BREAK.findall(data[bom : bom + e.start].decode("utf-8"))) + 1
        raise DataError(
            f"{source}:{line_no} is not UTF-8 (byte 0x{data[bom + e.start]:02x} at byte offset {bom + e.start}); "
            "re-save the file as UTF-8"
        ) from None


def read_jsonl(path: Path, source: Optional[str] = None) -> Rows:
    """Rows of a JSON-lines file (blank lines skipped); ``source`` names it in errors."""
    source = source or str(path)
    rows, lines = [], []
    # Decoded whole, not line by line, so a bad byte is reported with its place
    # instead of surfacing as a UnicodeDecodeError in the middle of iteration.
    text = io.StringIO(_decode(Path(path).read_bytes(), source), newline=None)
    for line_no, line in enumerate(text, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{source}:{line_no} is not valid JSON ({e.msg}); fix or remove that line") from None
        if not isinstance(row, dict):
            raise DataError(f"{source}:{line_no} is not a JSON object; each line must be one {{...}} row")
        rows.append(row)
        lines.append(line_no)
    return Rows(rows, source, lines)


def read_parquet(path: Path) -> Rows:
    import pandas as pd  # local: only Parquet datasets need pandas

    try:
        return Rows(pd.read_parquet(path).to_dict("records"), str(path))
    except Exception as e:  # pyarrow raises several types for unreadable files
        raise DataError(
            f"cannot read Parquet file {path} ({type(e).__name__}); check that it is a valid .parquet file"
        ) from None


def read_local(path: Path) -> Rows:
    """Rows of a local ``LOCAL_SUFFIXES`` file: Parquet, else JSON lines."""
    return read_parquet(path) if path.suffix.lower() == ".parquet" else read_jsonl(path)


def read_shipped(name: str, split: str) -> Rows:
    """Rows of ``clipctl/resources/<name>/<split>.jsonl`` (training sets and benchmarks)."""
    path = resource_path(name, f"{split}.jsonl")
    source = f"packaged dataset {name!r} (clipctl/resources/{name}/{split}.jsonl)"
    if not path.is_file():
        raise DataError(f"{source} is missing; reinstall clipctl or pass {LOCAL_KINDS}")
    return read_jsonl(path, source)


def read_hf(name: str, split: str) -> Rows:
    """Rows of an HF dataset id; any failure (offline, unknown id) is one ``DataError``."""
    try:
        import datasets

        rows = list(datasets.load_dataset(name, split=split))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"cannot load dataset '{name}' ({first}); use 'gsm8k', {LOCAL_KINDS}, or a reachable HF id"
        ) from None
    return Rows(rows, f"dataset '{name}' split '{split}'")


# ---------------------------------------------------------------------------
# Row checks
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A column a loader reads from every row, and how a user picks another.

    ``what`` names its role in messages ("problem", "answer", "id");
    ``choose`` is the fix for a wrong column ("set data.prompt_col to one of
    them", "choose another with --problem-col"). ``required`` ``False``: a row
    without it, or with null there, reads as ``None``. ``numbers``: whether a
    number is read as its text (answers and ids; a problem that is a number
    means the wrong column was picked). ``nonempty``: an empty or blank string
    is refused (a blank problem or gold answer cannot be graded sensibly).
    """

    name: str
    what: str
    choose: str
    required: bool = True
    numbers: bool = True
    nonempty: bool = True


def _is_null(value: object) -> bool:
    # Parquet gives a missing value as None, or NaN in number and object columns.
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return True
    return isinstance(value, float) and math.isnan(value)


def _kind(value: object) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "boolean"
    if isinstance(value, numbers.Real):
        return "number"
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, (bytes, bytearray)):
        return "byte string"
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):  # Parquet lists arrive as numpy arrays
        return "list"
    return type(value).__name__


def check_rows(rows: Rows, columns: Sequence[Column]) -> list[tuple[Optional[str], ...]]:
    """The text of ``columns`` in every row, or one ``DataError`` naming the row, the column and the fix.

    Every loader's rows pass through here, training's and evaluation's, so a
    row that one command refuses the other refuses with the same words. A
    value is accepted as text when it is a string, or a number where
    ``Column.numbers`` allows it (read as ``str(value)``); null (``None``,
    NaN), booleans, lists, dicts and bytes are refused.
    """
    out = []
    for i, row in enumerate(rows):
        texts: list[Optional[str]] = []
        for col in columns:
            where = rows.where(i)
            if col.name not in row:
                if not col.required:
                    texts.append(None)
                    continue
                raise DataError(
                    f"column {col.name!r} not found: {where} has no column {col.name!r} "
                    f"(columns: {', '.join(map(str, row))}); {col.choose}"
                )
            value = row[col.name]
            if _is_null(value):
                if not col.required:
                    texts.append(None)
                    continue
                raise DataError(
                    f"{where}: the {col.what} (column {col.name!r}) is null; fill it in or remove that row, "
                    f"or {col.choose}"
                )
            kind = "text" if isinstance(value, str) else _kind(value)
            if kind != "text" and not (kind == "number" and col.numbers):
                allowed = "a string or a number" if col.numbers else "a string"
                raise DataError(
                    f"{where}: the {col.what} (column {col.name!r}) is a {kind}, not {allowed}; "
                    f"write it as text, or {col.choose}"
                )
            text = value if isinstance(value, str) else str(value)
            if col.nonempty and col.required and not text.strip():
                raise DataError(
                    f"{where}: the {col.what} (column {col.name!r}) is empty; fill it in or remove that row, "
                    f"or {col.choose}"
                )
            texts.append(text)
        out.append(tuple(texts))
    return out
