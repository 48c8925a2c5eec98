"""Datasets, prompts and rewards: the only code in clipctl that reads a dataset.

- ``sources``: readers (shipped resources, local ``.jsonl``/``.json``/``.parquet``, HF ids);
- ``registry``: the shipped datasets (splits, columns, gold, template, grader),
  training ``Example``s and evaluation ``Problem``s;
- ``prompts``: the one template dialect (``{prompt}``; ``{problem}`` is an alias);
- ``rewards``: the reward registry and the graders built on the same functions.
"""

from clipctl.data.prompts import fill_template, format_prompt, normalize_template
from clipctl.data.registry import (
    BENCHMARKS,
    DATASETS,
    GSM8K_TEMPLATE,
    LOCAL_GRADER,
    LOCAL_TEMPLATE,
    MATH_TEMPLATE,
    Dataset,
    Example,
    Problem,
    load_benchmark,
    load_examples,
    read_table,
    step_prompt_indices,
)
from clipctl.data.rewards import (
    GRADERS,
    REWARDS,
    RewardBatch,
    compute_rewards,
    extract_prediction,
    grade_many,
    gsm8k_gold,
    is_verifiable,
)
from clipctl.data.sources import LOCAL_SUFFIXES, read_jsonl, read_local, resource_path

__all__ = [
    "BENCHMARKS", "DATASETS", "GRADERS", "GSM8K_TEMPLATE", "LOCAL_GRADER", "LOCAL_SUFFIXES", "LOCAL_TEMPLATE",
    "MATH_TEMPLATE", "REWARDS", "Dataset", "Example", "Problem", "RewardBatch", "compute_rewards",
    "extract_prediction", "fill_template", "format_prompt", "grade_many", "gsm8k_gold", "is_verifiable",
    "load_benchmark", "load_examples", "normalize_template", "read_jsonl", "read_local", "read_table",
    "resource_path", "step_prompt_indices",
]
