"""pass@k, mean@n and bootstrap intervals (docs/definitions.md section 9): hand-computed cases and loops."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from clipctl.eval.passk import bootstrap_ci, mean_at_n, pass_at_k, pass_at_k_array

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


def test_passk_imports_no_torch():
    """The estimators load without torch (and without any clipctl module but errors)."""
    probe = (
        "import sys, clipctl.eval.passk; assert 'torch' not in sys.modules; "
        "extra = {m for m in sys.modules if m.startswith('clipctl.')} - {'clipctl.errors', 'clipctl.eval', "
        "'clipctl.eval.passk'}; assert not extra, extra"
    )
    subprocess.run([sys.executable, "-c", probe], env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120, check=True)
