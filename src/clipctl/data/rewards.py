"""Reward registry and graders: one scalar per response (docs/definitions.md section 2).

Kinds, looked up by ``reward.kind`` in ``REWARDS``:

1. ``gsm8k``: 1.0 if the last number in the response equals the gold number
   numerically, else 0.0. Verifiable.
2. ``math_verify``: 1.0 if ``math_verify.verify(parse(\\boxed{gold}),
   parse(response))``, else 0.0; a parse failure or timeout scores 0.0.
   Verifiable.
3. ``random_bernoulli``: ``r ~ Bernoulli(p)``, independent of the text.
4. ``random_gaussian``: ``r ~ N(0, 1)``, independent of the text.

Random rewards draw from ``numpy.random.default_rng([seed, step, prompt_index,
sample_index])``, one generator per response, so a resumed run (or the same
response scored twice) gets the same reward whatever the batch layout.

Usage::

    batch = RewardBatch(responses=["... #### 18"], golds=["18"], seed=0, step=3,
                        prompt_indices=[0], sample_indices=[0])
    compute_rewards("gsm8k", batch)  # -> [1.0]

Graders are the verifiable rewards seen one response at a time, for
evaluation: ``GRADERS`` maps a grader name to ``(response, gold) -> float``;
``grade_many`` grades a batch inline or in worker processes (math_verify's
timeouts use signals, which work in the main thread of each worker process);
``extract_prediction`` shows the answer a grader reads (the last number, or
the last ``\\boxed{}`` content).
"""

from __future__ import annotations

import math
import re
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Callable, Optional, Sequence

import numpy as np

from clipctl.errors import ConfigError, DataError

# A number (docs/definitions.md section 2): optional sign, digits with optional thousands
# commas, optional decimal part, optionally preceded by "$" ("-$5" and "$-5").
# A "-" counts as a sign only when it is not glued to a word or a number, so
# "10-3" ends in 3 and "COVID-19" in 19, not in -3 / -19. Digits inside words
# still count ("3rd" -> 3, "x2" -> 2): the reward reads the last number
# wherever it appears. A comma group must be exactly three digits not followed
# by another digit, so "1,2345" reads as 1 and 2345, not 1,234 and 5. A
# trailing "." (end of sentence) is never part of the number.
_NUMBER = re.compile(
    r"""
    (?: (?P<sign>(?<![\w-])-)\$? | \$(?P<sign2>-)? )?
    (?P<int>\d{1,3}(?:,\d{3})+(?!\d) | \d+)
    (?P<frac>\.\d+)?
    """,
    re.VERBOSE,
)


def _normalise(match: re.Match[str]) -> str:
    """``"-$1,234.50"`` -> ``"-1234.50"``: drop ``$`` and commas, keep the sign."""
    sign = "-" if (match.group("sign") or match.group("sign2")) else ""
    return sign + match.group("int").replace(",", "") + (match.group("frac") or "")


def extract_last_number(text: str) -> str | None:
    """The last number in ``text``, normalised, or None (docs/definitions.md section 2).

    Numbers have an optional sign, digits with optional thousands commas and an
    optional decimal part; ``$``, ``,`` and a trailing ``.`` are stripped.

    >>> extract_last_number("She pays $1,234.50. Then -3.")
    '-3'
    >>> extract_last_number("no digits") is None
    True
    """
    last = None
    for last in _NUMBER.finditer(text):
        pass
    return None if last is None else _normalise(last)


def gsm8k_gold(answer: str) -> str:
    """The gold number of a GSM8K answer, normalised (docs/definitions.md section 2).

    A full GSM8K answer ends with ``#### N``: the gold is the text after the
    last ``####``. Otherwise ``answer`` itself is the gold. Either way the text
    (stripped) must be one number, e.g. ``"2,125"`` -> ``"2125"``.

    Raises:
        ValueError: the text is not a single number.
    """
    text = answer.rsplit("####", 1)[1] if "####" in answer else answer
    text = text.strip()
    # A trailing "." is stripped like in responses ("18." -> "18").
    match = _NUMBER.fullmatch(text[:-1] if text.endswith(".") else text)
    if match is None:
        where = "after '####'" if "####" in answer else "as a bare gold answer"
        raise ValueError(
            f"gsm8k gold {text!r} {where} is not a number (e.g. '18', '-2.5', '1,600')"
        )
    return _normalise(match)


def gsm8k_reward(response: str, gold: str) -> float:
    """1.0 if the last number in ``response`` equals the gold number, else 0.0.

    docs/definitions.md section 2, kind ``gsm8k``. ``gold`` is a full GSM8K answer (with
    ``#### N``) or a bare number. The comparison is exact and numeric via
    ``decimal.Decimal``: ``18``, ``18.0`` and ``18.00`` are equal.

    Raises:
        ValueError: ``gold`` holds no number (see ``gsm8k_gold``).
    """
    gold_number = Decimal(gsm8k_gold(gold))
    predicted = extract_last_number(response)
    if predicted is None:
        return 0.0
    return 1.0 if Decimal(predicted) == gold_number else 0.0


def math_verify_reward(response: str, gold: str) -> float:
    """1.0 if math_verify judges ``response`` equal to ``gold``, else 0.0.

    docs/definitions.md section 2, kind ``math_verify``: ``verify(parse(gold), parse(response))``
    with the gold wrapped in ``\\boxed{}`` (unless it already holds ``\\boxed``)
    so that it parses as one answer. Any exception or timeout scores 0.0.
    """
    # math_verify enforces its timeouts with signal.alarm, which only works in
    # the main thread; elsewhere it raises, so we run without its timeout.
    in_main = threading.current_thread() is threading.main_thread()
    parse_timeout = 5 if in_main else None
    verify_timeout = 5 if in_main else None
    # Imported here: math_verify pulls in sympy and a LaTeX parser (about a
    # second), which runs that only use gsm8k or random rewards never need.
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    gold_wrapped = gold if "\\boxed" in gold else "\\boxed{" + gold + "}"
    try:
        parsed_gold = parse(gold_wrapped, parsing_timeout=parse_timeout)
        parsed_response = parse(response, parsing_timeout=parse_timeout)
        ok = verify(parsed_gold, parsed_response, timeout_seconds=verify_timeout)
    except (Exception, TimeoutException):
        # TimeoutException derives from BaseException, so it needs naming.
        return 0.0
    return 1.0 if ok else 0.0


@dataclass(frozen=True)
class RewardBatch:
    """The responses to score, aligned index by index.

    Attributes:
        responses: ``[N]`` response texts.
        golds: ``[N]`` gold answers (None where the dataset has none; only the
            random kinds accept None).
        seed: the run seed (non-negative).
        step: the training step (non-negative).
        prompt_indices: ``[N]`` index of each response's prompt in the dataset.
        sample_indices: ``[N]`` index of each response within its group.
        p: Bernoulli probability for ``random_bernoulli``.
    """

    responses: list[str]
    golds: list[str | None]
    seed: int
    step: int
    prompt_indices: list[int]
    sample_indices: list[int]
    p: float = 0.5

    def __post_init__(self) -> None:
        n = len(self.responses)
        lengths = {
            "golds": len(self.golds),
            "prompt_indices": len(self.prompt_indices),
            "sample_indices": len(self.sample_indices),
        }
        bad = {name: size for name, size in lengths.items() if size != n}
        if bad:
            raise ValueError(f"RewardBatch: {bad} must each have len(responses) = {n}")


def _golds(kind: str, batch: RewardBatch) -> list[str]:
    """The golds of a verifiable kind; a missing one is a data problem."""
    for i, gold in enumerate(batch.golds):
        if gold is None:
            raise DataError(
                f"reward.kind {kind!r} needs a gold answer for every response, but response {i} "
                f"(prompt {batch.prompt_indices[i]}) has none; use a dataset with an answer column "
                "or a random reward kind"
            )
    return batch.golds  # type: ignore[return-value]


def _gsm8k(batch: RewardBatch) -> list[float]:
    golds = _golds("gsm8k", batch)
    try:
        return [gsm8k_reward(r, g) for r, g in zip(batch.responses, golds)]
    except ValueError as e:
        raise DataError(f"reward.kind 'gsm8k': {e}") from e


def _math_verify(batch: RewardBatch) -> list[float]:
    golds = _golds("math_verify", batch)
    return [math_verify_reward(r, g) for r, g in zip(batch.responses, golds)]


def _rngs(batch: RewardBatch):
    """One generator per response, keyed by (seed, step, prompt, sample)."""
    for prompt_index, sample_index in zip(batch.prompt_indices, batch.sample_indices):
        yield np.random.default_rng([batch.seed, batch.step, prompt_index, sample_index])


def _random_bernoulli(batch: RewardBatch) -> list[float]:
    if not 0.0 <= batch.p <= 1.0:
        raise ConfigError(f"reward.p must be in [0, 1] for random_bernoulli, got {batch.p}")
    return [1.0 if rng.random() < batch.p else 0.0 for rng in _rngs(batch)]


def _random_gaussian(batch: RewardBatch) -> list[float]:
    return [float(rng.standard_normal()) for rng in _rngs(batch)]


@dataclass(frozen=True)
class RewardSpec:
    """A reward kind: ``fn`` scores a batch; ``verifiable`` says it reads the gold."""

    fn: Callable[[RewardBatch], list[float]]
    verifiable: bool


REWARDS: dict[str, RewardSpec] = {
    "gsm8k": RewardSpec(_gsm8k, verifiable=True),
    "math_verify": RewardSpec(_math_verify, verifiable=True),
    "random_bernoulli": RewardSpec(_random_bernoulli, verifiable=False),
    "random_gaussian": RewardSpec(_random_gaussian, verifiable=False),
}


def _spec(kind: str) -> RewardSpec:
    if kind not in REWARDS:
        raise ConfigError(f"unknown reward.kind {kind!r}; valid: {', '.join(REWARDS)}")
    return REWARDS[kind]


def compute_rewards(kind: str, batch: RewardBatch) -> list[float]:
    """``[N]`` rewards of ``batch`` under reward ``kind`` (docs/definitions.md section 2).

    Raises:
        ConfigError: unknown ``kind``, or ``p`` outside [0, 1].
        DataError: a verifiable kind met a missing or unreadable gold.
    """
    return _spec(kind).fn(batch)


def is_verifiable(kind: str) -> bool:
    """True if ``kind`` scores against a gold answer (docs/definitions.md section 2)."""
    return _spec(kind).verifiable


# ---------------------------------------------------------------------------
# Graders
# ---------------------------------------------------------------------------

# Module-level functions so worker processes can unpickle them by name.
GRADERS: dict[str, Callable[[str, str], float]] = {
    "gsm8k": gsm8k_reward,
    "math_verify": math_verify_reward,
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

    ``gsm8k``: the last number (``extract_last_number``);
    ``math_verify``: the content of the last ``\\boxed{...}`` with balanced
    braces. ``None`` when there is none.
    """
    _grader_fn(grader)
    if grader == "gsm8k":
        return extract_last_number(response)
    return _last_boxed(response)
