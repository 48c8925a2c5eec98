"""Datasets -> training prompts and gold answers; prompt templates.

Sources: the datasets shipped in ``clipctl/resources`` (``SHIPPED``; the
evaluation benchmarks read theirs through ``read_shipped`` too), local
``.jsonl`` / ``.json`` (JSON lines) / ``.parquet`` files, and HF dataset ids
(only where the hub is reachable). One reader per format, one template
function (``fill_template``) and one chat-template wrapper (``format_prompt``)
for training and evaluation.
The prompts of step ``s`` are a pure function of (seed, s): an epoch-wise
permutation of the dataset, so a resumed run needs no stored cursor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np

from clipctl.errors import DataError

# Every dataset shipped in clipctl/resources, with its splits: training sets and
# the evaluation benchmarks (clipctl.evaluation.BENCHMARKS) alike.
SHIPPED = {
    "gsm8k": ("train", "test"),
    "dapo_math_17k": ("train",),
    "math500": ("test",),
    "aime2024": ("test",),
    "aime2025": ("test",),
    "amc23": ("test",),
}
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def resource_path(*parts: str) -> Path:
    """Path of a file shipped in ``clipctl/resources``."""
    return Path(str(resources.files("clipctl").joinpath("resources", *parts)))


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
    """Rows of a local ``.jsonl``/``.json`` (JSON lines) or ``.parquet`` file."""
    return read_parquet(path) if path.suffix.lower() == ".parquet" else read_jsonl(path)


def read_shipped(name: str, split: str) -> list[dict]:
    """Rows of ``clipctl/resources/<name>/<split>.jsonl`` (training sets and benchmarks)."""
    path = resource_path(name, f"{split}.jsonl")
    source = f"packaged dataset {name!r} (clipctl/resources/{name}/{split}.jsonl)"
    if not path.is_file():
        raise DataError(f"{source} is missing; reinstall clipctl or pass a local .jsonl/.parquet path")
    return read_jsonl(path, source)


def read_table(name: str, split: str = "train") -> list[dict]:
    """Rows of a shipped dataset, a local file or an HF dataset id."""
    if name in SHIPPED:
        if split not in SHIPPED[name]:
            raise DataError(f"dataset '{name}' has no split '{split}'; valid: {', '.join(SHIPPED[name])}")
        return read_shipped(name, split)
    path = Path(name).expanduser()
    if path.suffix.lower() in LOCAL_SUFFIXES or path.exists():
        if not path.is_file():
            raise DataError(f"dataset file '{name}' not found; pass an existing .jsonl/.parquet file or 'gsm8k'")
        return read_local(path)
    try:
        import datasets

        return list(datasets.load_dataset(name, split=split))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"cannot load dataset '{name}' ({first}); use 'gsm8k', a local .jsonl/.parquet file, or a reachable HF id"
        ) from None


@dataclass(frozen=True)
class Example:
    index: int              # row number in the source table
    prompt: str             # the text fed to the model (template and chat template applied)
    prompt_ids: tuple[int, ...]
    gold: Optional[str]     # raw gold answer (None when the table has no answer column)


def fill_template(template: str, problem: str) -> str:
    """The prompt text of one problem.

    Two spellings, one per caller: training presets write ``{prompt}``, which
    is replaced literally (``data.prompt_template``); evaluation templates
    write ``{problem}``, a ``str.format`` field (so a literal brace is
    doubled: ``\\boxed{{}}``; ``clipctl eval-passk --template``).
    """
    if "{prompt}" in template:
        return template.replace("{prompt}", problem)
    return template.format(problem=problem)


def format_prompt(problem: str, template: str, tokenizer, chat_template: str) -> str:
    """Template, then the tokenizer's chat template (``auto``: when it has one; ``true``; ``false``)."""
    text = fill_template(template, problem)
    use_chat = chat_template == "true" or (chat_template == "auto" and getattr(tokenizer, "chat_template", None))
    if use_chat:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return text


def load_examples(data_cfg, tokenizer, *, need_gold: bool) -> list[Example]:
    """Rows -> ``Example``s; prompts over ``max_prompt_tokens`` tokens are dropped."""
    rows = read_table(data_cfg.name, data_cfg.split)
    if not rows:
        raise DataError(f"dataset '{data_cfg.name}' is empty; point data.name at a file with rows")
    columns = list(rows[0].keys())
    wanted = [("prompt_col", data_cfg.prompt_col)] + ([("answer_col", data_cfg.answer_col)] if need_gold else [])
    for key, col in wanted:
        if col not in rows[0]:
            raise DataError(
                f"dataset '{data_cfg.name}' has no column '{col}' (columns: {', '.join(columns)}); "
                f"set data.{key} to one of them"
            )
    texts = [
        format_prompt(str(r[data_cfg.prompt_col]), data_cfg.prompt_template, tokenizer, data_cfg.chat_template)
        for r in rows
    ]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    examples = []
    for i, (row, text, row_ids) in enumerate(zip(rows, texts, ids)):
        if len(row_ids) > data_cfg.max_prompt_tokens:
            continue
        gold = row.get(data_cfg.answer_col)
        examples.append(Example(i, text, tuple(row_ids), None if gold is None else str(gold)))
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
