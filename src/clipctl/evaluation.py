"""Evaluation: pass@k, mean@n, bootstrap intervals, benchmarks and graders (docs/definitions.md section 9).

This module holds the pure parts of evaluation; it loads no model.

1. ``pass_at_k`` is the unbiased estimator of Chen et al. 2021,
   ``1 - C(n-c, k) / C(n, k)``, computed in the stable product form
   ``1 - prod_{i=n-c+1..n} (1 - k/i)`` (no huge binomials); it is 1 when
   ``n - c < k`` and ``k > n`` is an error. ``mean_at_n`` is ``c / n``.
2. Dataset scores average over problems; ``bootstrap_ci`` resamples problems
   (not samples) to give a percentile interval of that average.
3. ``BENCHMARKS`` names the packaged test sets (``clipctl/resources``) with their
   columns, grader and prompt template; ``load_benchmark`` reads one of them,
   or a local ``.jsonl``/``.parquet`` file, into ``Problem`` rows.
4. ``GRADERS`` maps a grader name to a reward function (docs/definitions.md section 2)
   ``(response, gold) -> float``; ``grade_many`` grades a batch inline or in
   worker processes (math_verify's timeouts use signals, which work in the main
   thread of each worker process).

Example::

    problems = load_benchmark("math500", limit=50)
    scores = grade_many("math_verify", responses, [p.answer for p in problems], processes=4)
    pass_at_k_array(8, correct_counts, 1).mean()
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from clipctl import data, rewards
from clipctl.errors import DataError

# ---------------------------------------------------------------------------
# pass@k and mean@n (docs/definitions.md section 9)
# ---------------------------------------------------------------------------


def _check_counts_scalar(n: int, c: int, k: int) -> None:
    if k < 1:
        raise ValueError(f"k ({k}) must be >= 1")
    if k > n:
        raise ValueError(f"k ({k}) must be <= n ({n}): pass@k needs at least k samples per problem")
    if c < 0 or c > n:
        raise ValueError(f"c ({c}) must satisfy 0 <= c <= n ({n}): c counts the correct samples")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem (docs/definitions.md section 9; Chen et al. 2021, eq. 1).

    ``pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1..n} (1 - k/i)``;
    the product form avoids huge binomials. It is 1.0 when ``n - c < k``
    (every k-subset holds a correct sample).

    Args:
        n: samples drawn for the problem, ``n >= k``.
        c: correct samples, ``0 <= c <= n``.
        k: budget, ``1 <= k <= n``.

    Raises:
        ValueError: if ``k < 1``, ``k > n``, ``c < 0`` or ``c > n``.
    """
    n, c, k = int(n), int(c), int(k)
    _check_counts_scalar(n, c, k)
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k_array(n: Union[np.ndarray, int], c: np.ndarray, k: int) -> np.ndarray:
    """Unbiased pass@k per problem, vectorised (docs/definitions.md section 9).

    Same formula and semantics as ``pass_at_k``. Each row multiplies the factors
    ``1 - k/i`` for ``i`` in ``(n-c, n]`` and 1 elsewhere, over a ``[P, W]`` grid
    where ``W`` spans the needed range of ``i``.

    Args:
        n: ``[P]`` integer samples per problem, or one int for all problems.
        c: ``[P]`` integer correct samples per problem.
        k: budget, ``1 <= k <= min(n)``.

    Returns:
        ``[P]`` float64 pass@k per problem.

    Raises:
        ValueError: if ``k < 1``, any ``k > n``, ``c < 0`` or ``c > n``.
    """
    k = int(k)
    c_arr = np.asarray(c)
    n_arr = np.asarray(n)
    if c_arr.ndim != 1:
        raise ValueError(f"c must be 1-D [P] (one count per problem), got shape {c_arr.shape}")
    if n_arr.ndim != 0 and n_arr.shape != c_arr.shape:
        raise ValueError(f"n must be one int or match c's shape {c_arr.shape}, got shape {n_arr.shape}")
    n_arr = np.broadcast_to(n_arr, c_arr.shape)
    for name, arr in (("n", n_arr), ("c", c_arr)):
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.asarray(arr, dtype=np.float64) == np.round(arr)):
                raise ValueError(f"{name} must hold integer counts, got dtype {arr.dtype}")
    n_arr = n_arr.astype(np.int64)
    c_arr = c_arr.astype(np.int64)
    if k < 1:
        raise ValueError(f"k ({k}) must be >= 1")
    if c_arr.size == 0:
        return np.zeros(0, dtype=np.float64)
    bad = np.flatnonzero(n_arr < k)
    if bad.size:
        j = int(bad[0])
        raise ValueError(
            f"k ({k}) must be <= n for every problem: problem {j} has n={int(n_arr[j])}"
        )
    bad = np.flatnonzero((c_arr < 0) | (c_arr > n_arr))
    if bad.size:
        j = int(bad[0])
        raise ValueError(
            f"c must satisfy 0 <= c <= n: problem {j} has c={int(c_arr[j])}, n={int(n_arr[j])}"
        )

    out = np.ones(c_arr.shape, dtype=np.float64)  # n - c < k -> 1.0
    rows = np.flatnonzero(n_arr - c_arr >= k)
    if rows.size:
        lo = n_arr[rows] - c_arr[rows] + 1  # first i of the product
        hi = n_arr[rows]  # last i
        i = np.arange(int(lo.min()), int(hi.max()) + 1, dtype=np.float64)
        inside = (i[None, :] >= lo[:, None]) & (i[None, :] <= hi[:, None])
        # i >= n - c + 1 > k inside the mask, so every factor lies in (0, 1).
        factors = np.where(inside, 1.0 - k / i[None, :], 1.0)
        out[rows] = 1.0 - np.prod(factors, axis=1)
    return out


def mean_at_n(n: Union[np.ndarray, int], c: Union[np.ndarray, int]) -> Union[np.ndarray, float]:
    """mean@n = ``c / n``, the average single-sample accuracy (docs/definitions.md section 9).

    Args:
        n: samples per problem (``[P]`` or one int), ``n >= 1``.
        c: correct samples per problem (``[P]`` or one int), ``0 <= c <= n``.

    Returns:
        ``[P]`` float64 array, or a float when both inputs are scalars.
    """
    n_arr = np.asarray(n, dtype=np.float64)
    c_arr = np.asarray(c, dtype=np.float64)
    if np.any(n_arr < 1):
        raise ValueError(f"n must be >= 1 for every problem, got min n={n_arr.min():g}")
    if np.any((c_arr < 0) | (c_arr > n_arr)):
        raise ValueError("c must satisfy 0 <= c <= n for every problem")
    out = c_arr / n_arr
    return float(out) if out.ndim == 0 else out


def bootstrap_ci(
    values: np.ndarray, *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over problems (docs/definitions.md section 9).

    Problems are resampled with replacement ``n_boot`` times; the interval is
    the ``alpha/2`` and ``1 - alpha/2`` quantiles of the resampled means. The
    same ``seed`` gives the same interval.

    Args:
        values: ``[P]`` per-problem scores (e.g. pass@k or mean@n per problem).
        n_boot: bootstrap resamples, ``>= 1``.
        alpha: ``1 - `` coverage, in ``(0, 1)``.
        seed: seed of the resampling generator.

    Returns:
        ``(low, high)`` floats.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array [P], got shape {v.shape}")
    if n_boot < 1:
        raise ValueError(f"n_boot ({n_boot}) must be >= 1")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha ({alpha}) must lie in (0, 1)")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_boot, v.size))
    means = v[idx].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


# ---------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------

GSM8K_TEMPLATE = "{problem}\nLet's think step by step and output the final answer after \"####\"."
# The doubled braces are str.format escapes: the prompt ends in a literal "\boxed{}".
MATH_TEMPLATE = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
GSM8K_MARKER = "####"


@dataclass(frozen=True)
class Benchmark:
    """A packaged test set: where it lives, which columns to read, how to grade.

    ``resource``/``split`` locate it (``clipctl/resources/<resource>/<split>.jsonl``); ``id_col``
    ``None`` means the 0-based row number is the id; ``gold_marker``, when set,
    means the gold answer is the text after the marker's last occurrence
    (GSM8K's ``#### N`` line). ``template`` is a ``str.format`` string with a
    ``{problem}`` field.
    """

    name: str
    resource: str
    split: str
    problem_col: str
    answer_col: str
    id_col: Optional[str]
    grader: str
    template: str
    gold_marker: Optional[str] = None


BENCHMARKS: dict[str, Benchmark] = {
    "gsm8k": Benchmark(
        "gsm8k", "gsm8k", "test", "question", "answer", None, "gsm8k", GSM8K_TEMPLATE,
        gold_marker=GSM8K_MARKER,
    ),
    "math500": Benchmark(
        "math500", "math500", "test", "problem", "answer", "unique_id", "math_verify",
        MATH_TEMPLATE,
    ),
    "aime2024": Benchmark(
        "aime2024", "aime2024", "test", "problem", "answer", "id", "math_verify", MATH_TEMPLATE
    ),
    "aime2025": Benchmark(
        "aime2025", "aime2025", "test", "problem", "answer", "id", "math_verify", MATH_TEMPLATE
    ),
    "amc23": Benchmark(
        "amc23", "amc23", "test", "problem", "answer", "id", "math_verify", MATH_TEMPLATE
    ),
}

LOCAL_SUFFIXES = (".jsonl", ".parquet")


@dataclass(frozen=True)
class Problem:
    """One evaluation problem: a stable id, the problem text and the gold answer."""

    id: str
    problem: str
    answer: str


def _rows_of(name_or_path: str) -> tuple[list[dict], Optional[Benchmark], str]:
    """Raw rows, the registry entry (or None for a local file) and a display name."""
    bench = BENCHMARKS.get(name_or_path)
    if bench is not None:
        return data.read_shipped(bench.resource, bench.split), bench, f"packaged dataset {bench.name!r}"

    path = Path(name_or_path)
    if path.suffix.lower() not in LOCAL_SUFFIXES:
        if path.exists():
            raise DataError(
                f"unsupported dataset file {str(path)!r}; use a .jsonl or .parquet file"
            )
        raise DataError(
            f"unknown dataset {name_or_path!r}; valid names: {', '.join(BENCHMARKS)}; "
            "a local .jsonl or .parquet path also works"
        )
    if not path.is_file():
        raise DataError(f"dataset file not found: {str(path)!r}; check the path")
    return data.read_local(path), None, str(path)


def _as_text(value: object) -> str:
    return value if isinstance(value, str) else str(value)


def load_benchmark(
    name_or_path: str,
    *,
    problem_col: Optional[str] = None,
    answer_col: Optional[str] = None,
    id_col: Optional[str] = None,
    limit: Optional[int] = None,
) -> list[Problem]:
    """Problems of a registered benchmark or of a local ``.jsonl``/``.parquet`` file (docs/definitions.md section 9).

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
        DataError: unknown name, missing file, missing column, empty dataset,
            or ``limit < 1``.
    """
    if limit is not None and limit < 1:
        raise DataError(f"limit ({limit}) must be >= 1; leave it unset to use every problem")
    rows, bench, source = _rows_of(str(name_or_path))
    if not rows:
        raise DataError(f"{source} has no rows; give a dataset with at least one problem")

    p_col = problem_col or (bench.problem_col if bench else "problem")
    a_col = answer_col or (bench.answer_col if bench else "answer")
    if id_col is not None:
        i_col: Optional[str] = id_col
    elif bench is not None:
        i_col = bench.id_col
    else:
        i_col = "id" if "id" in rows[0] else None
    marker = bench.gold_marker if bench is not None and answer_col is None else None

    available = ", ".join(rows[0])
    for col, flag in ((p_col, "--problem-col"), (a_col, "--answer-col"), (i_col, "--id-col")):
        if col is None:
            continue
        for rowno, row in enumerate(rows):
            if col not in row:
                where = "" if rowno == 0 else f" (row {rowno})"
                raise DataError(
                    f"column {col!r} not found in {source}{where}; available columns: {available}; "
                    f"choose another with {flag}"
                )

    if limit is not None:
        rows = rows[:limit]
    problems = []
    for rowno, row in enumerate(rows):
        answer = _as_text(row[a_col])
        if marker is not None and marker in answer:
            answer = answer.rsplit(marker, 1)[1].strip()
        pid = _as_text(row[i_col]) if i_col is not None else str(rowno)
        problems.append(Problem(id=pid, problem=_as_text(row[p_col]), answer=answer))
    return problems


# ---------------------------------------------------------------------------
# Graders
# ---------------------------------------------------------------------------

# Module-level functions so worker processes can unpickle them by name.
GRADERS: dict[str, Callable[[str, str], float]] = {
    "gsm8k": rewards.gsm8k_reward,
    "math_verify": rewards.math_verify_reward,
}


def _grader_fn(grader: str) -> Callable[[str, str], float]:
    if grader not in GRADERS:
        raise ValueError(f"unknown grader {grader!r}; valid: {', '.join(GRADERS)}")
    return GRADERS[grader]


def _grade_chunk(grader: str, pairs: list[tuple[str, str]]) -> list[float]:
    fn = _grader_fn(grader)
    return [float(fn(response, gold)) for response, gold in pairs]


def grade_many(
    grader: str, responses: Sequence[str], golds: Sequence[str], *, processes: int = 0
) -> list[float]:
    """Grade ``responses[i]`` against ``golds[i]`` with a ``GRADERS`` entry (docs/definitions.md sections 2 and 9).

    Args:
        grader: ``"gsm8k"`` or ``"math_verify"``.
        responses, golds: equal-length sequences of strings.
        processes: ``0`` grades inline; ``> 0`` uses that many worker processes
            (math_verify's signal-based timeouts run in each worker's main thread).

    Returns:
        one float per response (1.0 correct, 0.0 wrong), in input order.
    """
    _grader_fn(grader)
    if len(responses) != len(golds):
        raise ValueError(
            f"responses ({len(responses)}) and golds ({len(golds)}) must have the same length"
        )
    if processes < 0:
        raise ValueError(f"processes ({processes}) must be >= 0; 0 grades inline")
    pairs = list(zip(responses, golds))
    if processes == 0 or len(pairs) <= 1:
        return _grade_chunk(grader, pairs)
    # A few chunks per worker: enough to balance slow sympy cases, few enough
    # that pickling overhead stays small.
    n_chunks = min(len(pairs), processes * 4)
    size = math.ceil(len(pairs) / n_chunks)
    chunks = [pairs[i : i + size] for i in range(0, len(pairs), size)]
    with ProcessPoolExecutor(max_workers=processes) as pool:
        results = pool.map(_grade_chunk, [grader] * len(chunks), chunks)
        return [score for chunk in results for score in chunk]


def _last_boxed(response: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` (balanced braces), or None."""
    key = "\\boxed"
    start = response.rfind(key)
    while start != -1:
        j = start + len(key)
        while j < len(response) and response[j] == " ":
            j += 1
        if j < len(response) and response[j] == "{":
            depth = 0
            for end in range(j, len(response)):
                ch = response[end]
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                    if depth == 0:
                        return response[j + 1 : end]
            # Unbalanced (truncated) box: look at an earlier one.
        start = response.rfind(key, 0, start)
    return None


def extract_prediction(grader: str, response: str) -> Optional[str]:
    """The answer a grader reads from ``response``, for reports (docs/definitions.md sections 2 and 9).

    ``gsm8k``: the last number (``rewards.extract_last_number``);
    ``math_verify``: the content of the last ``\\boxed{...}`` with balanced
    braces. ``None`` when there is none.
    """
    _grader_fn(grader)
    if grader == "gsm8k":
        return rewards.extract_last_number(response)
    return _last_boxed(response)
