"""Pure evaluation core (docs/definitions.md section 9): pass@k, mean@n, bootstrap, benchmarks, graders."""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from fractions import Fraction
from importlib import resources

import numpy as np
import pytest

from clipctl.errors import DataError
from clipctl.evaluation import (
    BENCHMARKS,
    GRADERS,
    Problem,
    bootstrap_ci,
    extract_prediction,
    grade_many,
    load_benchmark,
    mean_at_n,
    pass_at_k,
    pass_at_k_array,
)
from clipctl.rewards import gsm8k_gold

# ---------------------------------------------------------------------------
# pass@k
# ---------------------------------------------------------------------------


def _exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """The textbook estimator 1 - C(n-c, k) / C(n, k), in exact arithmetic."""
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


GRID = [(n, c, k) for n in range(1, 13) for c in range(0, n + 1) for k in range(1, n + 1)]
GRID += [(n, c, k) for n in (50, 100, 256) for c in (0, 1, 7, n // 2, n - 3, n) for k in (1, 2, 8, 32, n)]


def test_pass_at_k_matches_combinatorial_form():
    seen = {"c=0": 0, "c=n": 0, "n-c<k": 0}
    for n, c, k in GRID:
        exact = _exact_pass_at_k(n, c, k)
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12, rel=1e-12), (n, c, k)
        seen["c=0"] += c == 0
        seen["c=n"] += c == n
        seen["n-c<k"] += n - c < k
    assert all(count > 0 for count in seen.values()), seen


def test_pass_at_k_hand_computed():
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5; product form: i=4 only,
    # 1 - (1 - 2/4) = 0.5.
    assert pass_at_k(4, 1, 2) == 0.5
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7; product form:
    # 1 - (1 - 2/4)(1 - 2/5) = 1 - 0.5 * 0.6 = 0.7.
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-15)
    # n=8, c=3, k=1: pass@1 = c/n = 3/8 = 0.375.
    assert pass_at_k(8, 3, 1) == pytest.approx(0.375, abs=1e-15)
    # No correct sample: 0. All correct: 1.
    assert pass_at_k(6, 0, 3) == 0.0
    assert pass_at_k(6, 6, 3) == 1.0
    # n - c = 1 < k = 2: every pair holds a correct sample.
    assert pass_at_k(3, 2, 2) == 1.0


@pytest.mark.parametrize(
    "n, c, k, match",
    [(4, 1, 5, r"k \(5\) must be <= n \(4\)"), (4, 1, 0, r"k \(0\) must be >= 1"),
     (4, -1, 2, r"c \(-1\) must satisfy"), (4, 5, 2, r"c \(5\) must satisfy")],
)
def test_pass_at_k_errors(n, c, k, match):
    with pytest.raises(ValueError, match=match):
        pass_at_k(n, c, k)


@pytest.mark.parametrize("seed", range(5))
def test_pass_at_k_array_equals_scalar_loop(seed):
    rng = np.random.default_rng(seed)
    n = rng.integers(8, 65, size=40)
    c = rng.integers(0, n + 1)
    for k in (1, 2, 4, 8):
        expected = np.array([pass_at_k(int(ni), int(ci), k) for ni, ci in zip(n, c)])
        np.testing.assert_allclose(pass_at_k_array(n, c, k), expected, rtol=1e-12, atol=1e-15)
    # One int n for every problem.
    c16 = rng.integers(0, 17, size=30)
    expected = np.array([pass_at_k(16, int(ci), 4) for ci in c16])
    np.testing.assert_allclose(pass_at_k_array(16, c16, 4), expected, rtol=1e-12, atol=1e-15)


def test_pass_at_k_array_grid_and_edges():
    n = np.array([x[0] for x in GRID if x[2] == 2])
    c = np.array([x[1] for x in GRID if x[2] == 2])
    exact = np.array([float(_exact_pass_at_k(ni, ci, 2)) for ni, ci in zip(n, c)])
    np.testing.assert_allclose(pass_at_k_array(n, c, 2), exact, rtol=1e-12, atol=1e-12)
    assert pass_at_k_array(4, np.array([], dtype=int), 2).shape == (0,)
    # pass@1 is mean@n.
    np.testing.assert_allclose(pass_at_k_array(8, np.arange(9), 1), mean_at_n(8, np.arange(9)))


def test_pass_at_k_array_errors():
    with pytest.raises(ValueError, match=r"k \(5\) must be <= n for every problem: problem 1 has n=4"):
        pass_at_k_array(np.array([8, 4]), np.array([1, 1]), 5)
    with pytest.raises(ValueError, match=r"problem 0 has c=9, n=8"):
        pass_at_k_array(8, np.array([9, 1]), 2)
    with pytest.raises(ValueError, match=r"c=-1"):
        pass_at_k_array(8, np.array([1, -1]), 2)
    with pytest.raises(ValueError, match=r"k \(0\) must be >= 1"):
        pass_at_k_array(8, np.array([1]), 0)
    with pytest.raises(ValueError, match=r"n must be one int or match c's shape"):
        pass_at_k_array(np.array([8, 8, 8]), np.array([1, 1]), 2)


def test_mean_at_n():
    assert mean_at_n(8, 3) == 0.375
    np.testing.assert_array_equal(mean_at_n(np.array([4, 8]), np.array([1, 8])), [0.25, 1.0])
    np.testing.assert_array_equal(mean_at_n(4, np.array([0, 2])), [0.0, 0.5])
    with pytest.raises(ValueError):
        mean_at_n(4, 5)
    with pytest.raises(ValueError):
        mean_at_n(0, 0)


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    values = np.random.default_rng(3).random(200)
    low, high = bootstrap_ci(values, seed=7)
    assert low < values.mean() < high
    assert bootstrap_ci(values, seed=7) == (low, high)
    assert bootstrap_ci(values, seed=8) != (low, high)
    # A wider coverage gives a wider interval (same resamples).
    low90, high90 = bootstrap_ci(values, seed=7, alpha=0.1)
    assert low <= low90 <= high90 <= high
    # Constant scores: no spread.
    assert bootstrap_ci(np.full(10, 0.25)) == (0.25, 0.25)
    with pytest.raises(ValueError):
        bootstrap_ci(np.array([]))
    with pytest.raises(ValueError):
        bootstrap_ci(values, alpha=1.5)


# ---------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------

EXPECTED_ROWS = {"gsm8k": 1319, "math500": 500, "aime2024": 30, "aime2025": 30, "amc23": 40}


def test_registry_names_and_templates():
    assert set(BENCHMARKS) == set(EXPECTED_ROWS)
    for bench in BENCHMARKS.values():
        assert bench.grader in GRADERS
        prompt = bench.template.format(problem="What is 1+1?")
        assert prompt.startswith("What is 1+1?\n")
    assert BENCHMARKS["math500"].template.format(problem="P") == (
        "P\nPlease reason step by step, and put your final answer within \\boxed{}."
    )
    assert BENCHMARKS["gsm8k"].template.format(problem="P") == (
        "P\nLet's think step by step and output the final answer after \"####\"."
    )


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_packaged_benchmarks_load(name):
    problems = load_benchmark(name)
    assert len(problems) == EXPECTED_ROWS[name]
    assert len({p.id for p in problems}) == len(problems)
    assert all(p.problem and p.answer for p in problems)
    assert all(isinstance(p, Problem) for p in problems)


def test_gsm8k_gold_is_text_after_marker_and_ids_are_row_numbers():
    problems = load_benchmark("gsm8k", limit=3)
    assert [p.id for p in problems] == ["0", "1", "2"]
    assert problems[0].answer == "18"  # Janet's ducks
    assert all("####" not in p.answer for p in load_benchmark("gsm8k"))


def test_ids_of_math_benchmarks():
    assert load_benchmark("math500", limit=1)[0].id == "test/precalculus/807.json"
    assert load_benchmark("aime2024", limit=1)[0].id == "2024-I-1"
    assert load_benchmark("amc23", limit=1)[0].id == "2023-12A-1"


def test_limit():
    assert len(load_benchmark("aime2025", limit=5)) == 5
    assert len(load_benchmark("aime2025", limit=1000)) == 30
    with pytest.raises(DataError, match="limit"):
        load_benchmark("aime2025", limit=0)


def test_unknown_name_lists_valid_names():
    with pytest.raises(DataError) as info:
        load_benchmark("mathh500")
    msg = str(info.value)
    assert "unknown dataset 'mathh500'" in msg
    assert "gsm8k, math500, aime2024, aime2025, amc23" in msg
    assert ".jsonl or .parquet path also works" in msg
    assert "\n" not in msg


def test_missing_local_file(tmp_path):
    with pytest.raises(DataError, match="dataset file not found"):
        load_benchmark(str(tmp_path / "nope.jsonl"))


def test_missing_column_lists_available_columns(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "gold": "2"}) + "\n")
    with pytest.raises(DataError) as info:
        load_benchmark(str(path))
    msg = str(info.value)
    assert "column 'problem' not found" in msg
    assert "available columns: question, gold" in msg
    assert "--problem-col" in msg
    assert "\n" not in msg
    with pytest.raises(DataError, match=r"column 'answer' not found.*--answer-col"):
        load_benchmark(str(path), problem_col="question")
    problems = load_benchmark(str(path), problem_col="question", answer_col="gold")
    assert problems == [Problem(id="0", problem="1+1?", answer="2")]


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match="has no rows"):
        load_benchmark(str(path))


def test_local_jsonl_and_parquet(tmp_path):
    rows = [{"id": "a", "problem": "p1", "answer": 3}, {"id": "b", "problem": "p2", "answer": "x"}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    expected = [Problem("a", "p1", "3"), Problem("b", "p2", "x")]
    assert load_benchmark(str(path)) == expected
    pd = pytest.importorskip("pandas")
    pq = tmp_path / "d.parquet"
    pd.DataFrame({"id": ["a", "b"], "problem": ["p1", "p2"], "answer": ["3", "x"]}).to_parquet(pq)
    assert load_benchmark(str(pq), limit=1) == expected[:1]
    with pytest.raises(DataError, match=r"column 'uid' not found.*--id-col"):
        load_benchmark(str(path), id_col="uid")


# ---------------------------------------------------------------------------
# Graders: every gold answer of every packaged benchmark grades correct
# ---------------------------------------------------------------------------

_INT = re.compile(r"-?\d+")

# Gold answers that the benchmark's grader cannot verify against themselves.
# Checked over all 1,919 packaged golds (math_verify 0.9.0): none. Add
# (benchmark, id) pairs here with a reason if a data or grader update breaks one.
UNVERIFIABLE_GOLDS: set[tuple[str, str]] = set()


def _boxed(gold: str) -> str:
    return f"The answer is \\boxed{{{gold}}}."


def _different(name: str, gold: str) -> str:
    """An answer that must grade wrong: gold+1 for integers, else a far-off integer."""
    if name == "gsm8k":  # GSM8K golds may carry thousands commas ("2,125")
        return str(Decimal(gsm8k_gold(gold)) + 1)
    return str(int(gold) + 1) if _INT.fullmatch(gold) else "-987654"


def _check(name: str, problems: list[Problem], processes: int) -> None:
    grader = BENCHMARKS[name].grader
    golds = [p.answer for p in problems]
    right = grade_many(grader, [_boxed(g) for g in golds], golds, processes=processes)
    wrong = grade_many(grader, [_boxed(_different(name, g)) for g in golds], golds, processes=processes)
    failed = [
        (p.id, p.answer)
        for p, r in zip(problems, right)
        if r != 1.0 and (name, p.id) not in UNVERIFIABLE_GOLDS
    ]
    accepted = [(p.id, p.answer) for p, w in zip(problems, wrong) if w != 0.0]
    assert failed == [], f"{name}: gold answers that do not grade correct: {failed}"
    assert accepted == [], f"{name}: wrong answers that grade correct: {accepted}"


@pytest.mark.parametrize("name", ["gsm8k", "aime2024", "aime2025", "amc23"])
def test_all_golds_grade_correct_and_off_by_one_wrong(name):
    problems = load_benchmark(name)
    if name != "gsm8k":
        assert all(_INT.fullmatch(p.answer) for p in problems)  # AIME/AMC golds are integers
    _check(name, problems, processes=0)


def test_gsm8k_hash_format_and_full_gold():
    problems = load_benchmark("gsm8k")
    golds = [p.answer for p in problems]
    right = grade_many("gsm8k", [f"So she has ... #### {g}" for g in golds], golds)
    wrong = grade_many("gsm8k", [f"So she has ... #### {_different('gsm8k', g)}" for g in golds], golds)
    assert right == [1.0] * len(golds)
    assert wrong == [0.0] * len(golds)
    # The full GSM8K solution (with its "#### N" line) works as gold too.
    first = resources.files("clipctl").joinpath("resources/gsm8k/test.jsonl").read_text().splitlines()[0]
    full_answer = json.loads(first)["answer"]
    assert full_answer.endswith("#### 18")
    assert GRADERS["gsm8k"]("The answer is 18.", full_answer) == 1.0


def test_math500_subset_golds_grade_correct():
    problems = load_benchmark("math500")
    _check("math500", problems[::10], processes=0)  # 50 problems across subjects


def test_math500_all_golds_grade_correct():
    _check("math500", load_benchmark("math500"), processes=2)


def test_grade_many_processes_match_inline():
    golds = ["\\frac{1}{2}", "3", "\\sqrt{2}", "(1,2)", "7"]
    responses = ["\\boxed{0.5}", "\\boxed{4}", "\\boxed{\\sqrt 2}", "\\boxed{(1, 2)}", "no answer"]
    inline = grade_many("math_verify", responses, golds)
    assert inline == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert grade_many("math_verify", responses, golds, processes=2) == inline
    assert grade_many("math_verify", [], []) == []


def test_grade_many_errors():
    with pytest.raises(ValueError, match="unknown grader 'exact'; valid: gsm8k, math_verify"):
        grade_many("exact", ["1"], ["1"])
    with pytest.raises(ValueError, match="same length"):
        grade_many("gsm8k", ["1", "2"], ["1"])


def test_extract_prediction():
    assert extract_prediction("gsm8k", "3 apples and $1,234.50.") == "1234.50"
    assert extract_prediction("gsm8k", "no number") is None
    assert extract_prediction("math_verify", "\\boxed{1} then \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert extract_prediction("math_verify", "\\boxed{a{b}c} and \\boxed{x") == "a{b}c"
    assert extract_prediction("math_verify", "\\boxed {7}") == "7"
    assert extract_prediction("math_verify", "the answer is 7") is None
    with pytest.raises(ValueError, match="unknown grader"):
        extract_prediction("exact", "1")
