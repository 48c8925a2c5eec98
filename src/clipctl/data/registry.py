"""The dataset registry, and the two loaders built on it: training examples and evaluation problems.

1. ``DATASETS`` lists every dataset shipped in ``clipctl/resources``: its
   splits, its problem / answer / id columns, how to read the gold from the
   answer column, its default prompt template and its grader. Training
   (``data.name``, ``data.split``) and ``clipctl eval-passk`` read the same
   entries; ``BENCHMARKS`` are the entries with an evaluation split.
2. ``read_table`` dispatches a name to a reader (``sources``): a registered
   name, a local file (``sources.LOCAL_SUFFIXES``), else an HF dataset id.
3. ``load_examples`` turns rows into training ``Example``s; the prompts of
   step ``s`` are a pure function of (seed, s) (``step_prompt_indices``), so
   a resumed run needs no stored cursor.
4. ``load_benchmark`` turns a benchmark, or a local file, into evaluation
   ``Problem``s (docs/definitions.md section 9).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from clipctl.data.prompts import format_prompt
from clipctl.data.sources import (
    LOCAL_KINDS, Column, Rows, check_rows, has_local_suffix, read_hf, read_local, read_shipped,
)
from clipctl.errors import DataError

GSM8K_TEMPLATE = "{prompt}\nLet's think step by step and output the final answer after \"####\"."
MATH_TEMPLATE = "{prompt}\nPlease reason step by step, and put your final answer within \\boxed{}."
GSM8K_MARKER = "####"
# What a local file gets unless told otherwise: MATH-style answers in \boxed{}.
LOCAL_GRADER = "math_verify"
LOCAL_TEMPLATE = MATH_TEMPLATE


@dataclass(frozen=True)
class Dataset:
    """A shipped dataset: where its rows live, which columns to read, how to prompt and grade.

    ``splits`` are the files ``clipctl/resources/<name>/<split>.jsonl``;
    ``eval_split`` is the one ``eval-passk`` reads (``None``: not a benchmark).
    ``id_col`` ``None`` means the 0-based row number is the id; ``gold_marker``,
    when set, means the gold answer is the text after the marker's last
    occurrence (GSM8K's ``#### N`` line). ``grader`` names a ``rewards.GRADERS``
    entry; ``template`` is a ``prompts`` template.
    """

    name: str
    splits: tuple[str, ...]
    problem_col: str
    answer_col: str
    id_col: Optional[str]
    grader: str
    template: str
    gold_marker: Optional[str] = None
    eval_split: Optional[str] = None

    def gold(self, answer: str) -> str:
        """The gold answer of an answer-column value (the text after ``gold_marker``, if any)."""
        if self.gold_marker is not None and self.gold_marker in answer:
            return answer.rsplit(self.gold_marker, 1)[1].strip()
        return answer


def _math(name: str, id_col: Optional[str], splits=("test",), eval_split: Optional[str] = "test") -> Dataset:
    return Dataset(name, splits, "problem", "answer", id_col, "math_verify", MATH_TEMPLATE, eval_split=eval_split)


DATASETS: dict[str, Dataset] = {
    "gsm8k": Dataset(
        "gsm8k", ("train", "test"), "question", "answer", None, "gsm8k", GSM8K_TEMPLATE,
        gold_marker=GSM8K_MARKER, eval_split="test",
    ),
    "dapo_math_17k": _math("dapo_math_17k", "id", splits=("train",), eval_split=None),
    "math500": _math("math500", "unique_id"),
    "aime2024": _math("aime2024", "id"),
    "aime2025": _math("aime2025", "id"),
    "amc23": _math("amc23", "id"),
}
BENCHMARKS: dict[str, Dataset] = {name: d for name, d in DATASETS.items() if d.eval_split is not None}


def read_table(name: str, split: str = "train") -> Rows:
    """Rows of a registered dataset, a local file or an HF dataset id."""
    if name in DATASETS:
        splits = DATASETS[name].splits
        if split not in splits:
            raise DataError(f"dataset '{name}' has no split '{split}'; valid: {', '.join(splits)}")
        return read_shipped(name, split)
    path = Path(name).expanduser()
    if has_local_suffix(path) or path.exists():
        if not path.is_file():
            raise DataError(f"dataset file '{name}' not found; pass an existing {LOCAL_KINDS} or 'gsm8k'")
        return read_local(path)
    return read_hf(name, split)


# ---------------------------------------------------------------------------
# Training examples
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    index: int              # row number in the source table
    prompt: str             # the text fed to the model (template and chat template applied)
    prompt_ids: tuple[int, ...]
    gold: Optional[str]     # raw gold answer (None when the table has no answer column)


def load_examples(data_cfg, tokenizer, *, need_gold: bool) -> list[Example]:
    """Rows -> ``Example``s; prompts over ``max_prompt_tokens`` tokens are dropped."""
    rows = read_table(data_cfg.name, data_cfg.split)
    if not rows:
        raise DataError(f"dataset '{data_cfg.name}' is empty; point data.name at a file with rows")
    # The answer is read only where rewards need it; random rewards train on a file without one.
    texts_of = check_rows(rows, [
        Column(data_cfg.prompt_col, "problem", "set data.prompt_col to one of them", numbers=False),
        Column(data_cfg.answer_col, "answer", "set data.answer_col to one of them", required=need_gold),
    ])
    texts = [
        format_prompt(prompt, data_cfg.prompt_template, tokenizer, data_cfg.chat_template) for prompt, _ in texts_of
    ]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    examples = []
    for i, ((_, gold), text, row_ids) in enumerate(zip(texts_of, texts, ids)):
        if len(row_ids) > data_cfg.max_prompt_tokens:
            continue
        examples.append(Example(i, text, tuple(row_ids), gold))
    if not examples:
        raise DataError(
            f"every prompt of '{data_cfg.name}' is longer than data.max_prompt_tokens={data_cfg.max_prompt_tokens}; raise it"
        )
    return examples


def step_prompt_indices(n_examples: int, prompts_per_step: int, step: int, seed: int) -> list[int]:
    """Indices (into the example list) of the prompts of 1-based ``step``.

    Position ``k`` in the stream of prompts is item ``k mod D`` of the
    permutation of epoch ``k // D``, seeded by (seed, epoch).
    """
    out = []
    cache: dict[int, np.ndarray] = {}
    for k in range((step - 1) * prompts_per_step, step * prompts_per_step):
        epoch = k // n_examples
        if epoch not in cache:
            cache[epoch] = np.random.default_rng([seed, epoch]).permutation(n_examples)
        out.append(int(cache[epoch][k % n_examples]))
    return out


# ---------------------------------------------------------------------------
# Evaluation problems
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One evaluation problem: a stable id, the problem text and the gold answer."""

    id: str
    problem: str
    answer: str


def _rows_of(name_or_path: str) -> tuple[Rows, Optional[Dataset]]:
    """Raw rows and the registry entry (or None for a local file)."""
    bench = BENCHMARKS.get(name_or_path)
    if bench is not None:
        return read_shipped(bench.name, bench.eval_split), bench

    path = Path(name_or_path)
    if not has_local_suffix(path):
        if path.exists():
            raise DataError(f"unsupported dataset file {str(path)!r}; use {LOCAL_KINDS}")
        raise DataError(
            f"unknown dataset {name_or_path!r}; valid names: {', '.join(BENCHMARKS)}; "
            "a local .jsonl, .json or .parquet path also works"
        )
    if not path.is_file():
        raise DataError(f"dataset file not found: {str(path)!r}; check the path")
    return read_local(path), None


def load_benchmark(
    name_or_path: str,
    *,
    problem_col: Optional[str] = None,
    answer_col: Optional[str] = None,
    id_col: Optional[str] = None,
    limit: Optional[int] = None,
) -> list[Problem]:
    """Problems of a benchmark or of a local ``.jsonl``/``.json``/``.parquet`` file (docs/definitions.md section 9).

    Args:
        name_or_path: a ``BENCHMARKS`` name (read from the packaged data) or a
            local file path.
        problem_col, answer_col: columns to read; default to the benchmark's
            columns, or ``problem``/``answer`` for a local file.
        id_col: id column; defaults to the benchmark's (GSM8K: the 0-based row
            number), or ``id`` for a local file, falling back to the row number
            when a local file has no ``id`` column and none was asked for.
        limit: keep only the first ``limit`` problems.

    Raises:
        DataError: unknown name, missing file, empty dataset, ``limit < 1``,
            or a row that ``sources.check_rows`` refuses (bad encoding, a
            missing, null, empty or wrongly typed value).
    """
    if limit is not None and limit < 1:
        raise DataError(f"limit ({limit}) must be >= 1; leave it unset to use every problem")
    rows, bench = _rows_of(str(name_or_path))
    if not rows:
        raise DataError(f"{rows.source} has no rows; give a dataset with at least one problem")

    p_col = problem_col or (bench.problem_col if bench else "problem")
    a_col = answer_col or (bench.answer_col if bench else "answer")
    if id_col is not None:
        i_col: Optional[str] = id_col
    elif bench is not None:
        i_col = bench.id_col
    else:
        i_col = "id" if "id" in rows[0] else None
    # The gold rule belongs to the registered answer column, not to one the caller chose.
    gold = bench.gold if bench is not None and answer_col is None else (lambda answer: answer)

    columns = [
        Column(p_col, "problem", "choose another with --problem-col", numbers=False),
        Column(a_col, "answer", "choose another with --answer-col"),
    ] + ([Column(i_col, "id", "choose another with --id-col", nonempty=False)] if i_col is not None else [])
    # Every row is checked, also those past ``limit``: a broken file fails the same whatever the limit.
    texts = check_rows(rows, columns)
    if limit is not None:
        texts = texts[:limit]
    return [
        Problem(id=row[2] if i_col is not None else str(rowno), problem=row[0], answer=gold(row[1]))
        for rowno, row in enumerate(texts)
    ]
