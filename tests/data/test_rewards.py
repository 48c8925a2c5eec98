"""Rewards and graders (docs/definitions.md sections 2 and 9): number extraction, gsm8k on the
packaged test set, math_verify hand cases, seeded random rewards, the registry, every packaged
benchmark gold grading correct, grade_many, the \\boxed{} parser."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from importlib.resources import files

import numpy as np
import pytest

from clipctl.data.registry import BENCHMARKS, Problem, load_benchmark
from clipctl.data.rewards import (
    GRADERS,
    REWARDS,
    RewardBatch,
    compute_rewards,
    extract_last_number,
    extract_prediction,
    grade_many,
    gsm8k_gold,
    gsm8k_reward,
    is_verifiable,
    math_verify_reward,
)
from clipctl.errors import ConfigError, DataError


def _gsm8k_test_rows() -> list[dict]:
    text = files("clipctl.resources").joinpath("gsm8k", "test.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _batch(responses, golds=None, seed=0, step=0, prompt_indices=None, sample_indices=None, p=0.5):
    n = len(responses)
    return RewardBatch(
        responses=list(responses),
        golds=list(golds) if golds is not None else [None] * n,
        seed=seed,
        step=step,
        prompt_indices=list(prompt_indices) if prompt_indices is not None else list(range(n)),
        sample_indices=list(sample_indices) if sample_indices is not None else [0] * n,
        p=p,
    )


# --- extract_last_number -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 18", "18"),
        ("The answer is 18.", "18"),  # trailing dot stripped
        ("It costs $1,234.50.", "1234.50"),  # $, commas, decimals
        ("1,450,000 people", "1450000"),
        ("First 3, then 5, finally 7.", "7"),
        ("The change is -3.", "-3"),  # negative
        ("x = -$5", "-5"),
        ("$-5", "-5"),
        ("0.25 of it", "0.25"),
        ("10-3", "3"),  # a minus glued to a number is not a sign
        ("COVID-19", "19"),  # nor one glued to a word
        ("-3,-5", "-5"),
        ("1,2345", "2345"),  # not a thousands group: two numbers
        ("12,34", "34"),
        ("the 3rd try", "3"),  # digits inside words still count
        ("abc123def", "123"),
        ("no number here", None),
        ("", None),
        ("a. b, c$", None),
    ],
)
def test_extract_last_number(text, expected):
    assert extract_last_number(text) == expected


def test_gsm8k_gold_forms():
    assert gsm8k_gold("step one\n#### 2,125") == "2125"
    assert gsm8k_gold("a #### 1 #### 42") == "42"  # text after the last ####
    assert gsm8k_gold(" 18 ") == "18"
    assert gsm8k_gold("-7.5") == "-7.5"
    with pytest.raises(ValueError, match="not a number"):
        gsm8k_gold("reasoning #### none")
    with pytest.raises(ValueError, match="not a number"):
        gsm8k_gold("\\frac{1}{2}")


# --- gsm8k_reward --------------------------------------------------------------


def test_gsm8k_reward_numeric_equality():
    for response in ["18", "18.0", "18.00", "The answer is 18.", "$18", "#### 18"]:
        for gold in ["18", "18.0", "18.00", "so... #### 18"]:
            assert gsm8k_reward(response, gold) == 1.0, (response, gold)
    assert gsm8k_reward("18.01", "18") == 0.0
    assert gsm8k_reward("The answer is 1,600.", "#### 1,600") == 1.0
    assert gsm8k_reward("The answer is 1600", "1,600") == 1.0
    assert gsm8k_reward("-3", "3") == 0.0
    assert gsm8k_reward("I don't know", "18") == 0.0
    assert gsm8k_reward("18 apples, 20 pears", "18") == 0.0  # the last number counts


def test_gsm8k_reward_on_every_packaged_test_answer():
    rows = _gsm8k_test_rows()
    assert len(rows) == 1319
    for row in rows:
        answer = row["answer"]
        gold = gsm8k_gold(answer)
        wrong = str(int(gold) + 1)  # every GSM8K test gold is an integer
        assert gsm8k_reward(answer, answer) == 1.0, answer
        assert gsm8k_reward(f"The answer is {gold}.", answer) == 1.0, answer
        assert gsm8k_reward(f"The answer is {gold}.", gold) == 1.0, answer
        assert gsm8k_reward(f"The answer is {wrong}.", answer) == 0.0, answer
        assert gsm8k_reward(f"The answer is {wrong}.", gold) == 0.0, answer


def test_gsm8k_packaged_files_present():
    gsm = files("clipctl.resources").joinpath("gsm8k")
    for name in ["train.jsonl", "test.jsonl", "LICENSE", "NOTICE.md"]:
        assert gsm.joinpath(name).is_file(), name
    assert "MIT License" in gsm.joinpath("LICENSE").read_text(encoding="utf-8")


# --- math_verify_reward ------------------------------------------------------


def test_math_verify_reward_hand_cases():
    response = "The answer is \\boxed{\\frac{1}{2}}"
    assert math_verify_reward(response, "1/2") == 1.0
    assert math_verify_reward(response, "\\frac{1}{2}") == 1.0
    assert math_verify_reward(response, "\\boxed{0.5}") == 1.0  # already boxed: not re-wrapped
    assert math_verify_reward("The answer is \\boxed{\\frac{1}{3}}", "1/2") == 0.0
    assert math_verify_reward("asdf }}{{\\frac{", "1/2") == 0.0
    assert math_verify_reward("", "1/2") == 0.0


def test_math_verify_reward_in_worker_thread():
    # signal.alarm timeouts raise outside the main thread; the reward must not.
    with ThreadPoolExecutor(max_workers=1) as pool:
        right = pool.submit(math_verify_reward, "\\boxed{\\frac{1}{2}}", "1/2").result()
        wrong = pool.submit(math_verify_reward, "\\boxed{3}", "1/2").result()
    assert (right, wrong) == (1.0, 0.0)


# --- random rewards ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random_bernoulli", "random_gaussian"])
def test_random_rewards_reproducible_per_key(kind):
    prompts, samples = [0, 0, 1, 1, 7], [0, 1, 0, 1, 3]
    key = dict(seed=3, step=9, prompt_indices=prompts, sample_indices=samples)
    first = compute_rewards(kind, _batch(["a"] * 5, **key))
    again = compute_rewards(kind, _batch(["b"] * 5, **key))
    assert first == again  # same key, any text
    # A reward depends only on its own key, not on the batch around it.
    alone = compute_rewards(kind, _batch(["a"], seed=3, step=9, prompt_indices=[7], sample_indices=[3]))
    assert alone == first[-1:]
    # The documented key: default_rng([seed, step, prompt, sample]).
    rng = np.random.default_rng([3, 9, 7, 3])
    if kind == "random_bernoulli":
        expected = 1.0 if rng.random() < 0.5 else 0.0
    else:
        expected = float(rng.standard_normal())
    assert first[-1] == expected


def test_random_gaussian_differs_across_keys():
    base = dict(seed=1, step=2, prompt_indices=[5], sample_indices=[6])
    ref = compute_rewards("random_gaussian", _batch(["x"], **base))
    for change in [dict(seed=2), dict(step=3), dict(prompt_indices=[4]), dict(sample_indices=[7])]:
        other = compute_rewards("random_gaussian", _batch(["x"], **{**base, **change}))
        assert other != ref, change


def test_random_gaussian_moments():
    n = 4000
    r = np.array(compute_rewards("random_gaussian", _batch(["x"] * n, prompt_indices=range(n))))
    assert abs(r.mean()) < 0.1  # 6 standard errors (1 / sqrt(4000) = 0.016)
    assert abs(r.std() - 1.0) < 0.07


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_random_bernoulli_mean_close_to_p(p):
    n = 4000
    batch = _batch(["x"] * n, step=11, prompt_indices=range(n), p=p)
    r = np.array(compute_rewards("random_bernoulli", batch))
    assert set(r.tolist()) <= {0.0, 1.0}
    tol = 5 * np.sqrt(p * (1 - p) / n)
    assert abs(r.mean() - p) < tol
    # Different keys give different draws: not all equal.
    assert 0 < r.sum() < n


def test_random_bernoulli_bad_p():
    with pytest.raises(ConfigError, match=r"reward.p must be in \[0, 1\].*1.5"):
        compute_rewards("random_bernoulli", _batch(["x"], p=1.5))


# --- registry --------------------------------------------------------------------


def test_registry_kinds_and_verifiable():
    assert list(REWARDS) == ["gsm8k", "math_verify", "random_bernoulli", "random_gaussian"]
    assert is_verifiable("gsm8k") and is_verifiable("math_verify")
    assert not is_verifiable("random_bernoulli") and not is_verifiable("random_gaussian")


def test_unknown_kind_names_kind_and_valid_ones():
    with pytest.raises(ConfigError) as err:
        compute_rewards("foo", _batch(["x"]))
    assert str(err.value) == (
        "unknown reward.kind 'foo'; valid: gsm8k, math_verify, random_bernoulli, random_gaussian"
    )
    with pytest.raises(ConfigError, match="unknown reward.kind 'bar'"):
        is_verifiable("bar")


def test_compute_rewards_gsm8k_batch():
    batch = _batch(["so 18.", "it is 17", "#### 1,600"], golds=["#### 18", "18", "1600"])
    assert compute_rewards("gsm8k", batch) == [1.0, 0.0, 1.0]


def test_compute_rewards_math_verify_batch():
    batch = _batch(["\\boxed{2}", "\\boxed{3}"], golds=["2", "2"])
    assert compute_rewards("math_verify", batch) == [1.0, 0.0]


@pytest.mark.parametrize("kind", ["gsm8k", "math_verify"])
def test_verifiable_kind_without_gold_is_data_error(kind):
    with pytest.raises(DataError, match=f"reward.kind '{kind}' needs a gold answer.*response 1"):
        compute_rewards(kind, _batch(["1", "2"], golds=["1", None]))


def test_gsm8k_unreadable_gold_is_data_error():
    with pytest.raises(DataError, match="reward.kind 'gsm8k'.*not a number"):
        compute_rewards("gsm8k", _batch(["1"], golds=["#### n/a"]))


def test_random_kinds_accept_missing_golds():
    assert len(compute_rewards("random_gaussian", _batch(["x", "y"]))) == 2


def test_batch_length_mismatch():
    with pytest.raises(ValueError, match="golds"):
        RewardBatch(
            responses=["a", "b"], golds=["1"], seed=0, step=0, prompt_indices=[0, 1], sample_indices=[0, 0]
        )


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
    first = files("clipctl").joinpath("resources/gsm8k/test.jsonl").read_text().splitlines()[0]
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
