"""analysis.target_tracking: tracking error, overshoot and settling against a (scheduled) target."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clipctl.analysis import target_segments, target_tracking


def test_constant_target_by_hand():
    # Target 2.0 over 6 steps, entropy approaching from above and dipping below once.
    h = np.array([3.0, 2.5, 2.1, 1.9, 1.95, 2.05])
    got = target_tracking(h, np.full(6, 2.0))
    # Last half: steps 3, 4, 5 -> |H - T| = 0.1, 0.05, 0.05 -> mean 0.2 / 3; relative: / 2.
    assert got["track_err"] == pytest.approx(0.2 / 3)
    assert got["track_err_rel"] == pytest.approx(0.1 / 3)
    # From above, the overshoot is the largest T - H: 2.0 - 1.9 = 0.1, i.e. 5 %.
    assert got["overshoot_rel"] == pytest.approx(0.05)
    # Outside the 10 % band (|H - 2| > 0.2): steps 0 and 1 only, so it settled after 2 steps.
    assert got["settling_steps"] == 2


def test_schedule_by_hand():
    # Hold 1.0 for 4 steps, then 2.0 for 4 steps; the second piece approached from below, overshooting.
    h = np.array([1.5, 1.2, 1.05, 1.0, 1.1, 1.8, 2.3, 2.1])
    t = np.array([1.0] * 4 + [2.0] * 4)
    assert target_segments(t) == [(0, 4), (4, 8)]
    got = target_tracking(h, t)
    # Late halves: steps 2, 3 (|.| 0.05, 0) and 6, 7 (0.3, 0.1).
    assert got["track_err"] == pytest.approx((0.05 + 0 + 0.3 + 0.1) / 4)
    assert got["track_err_rel"] == pytest.approx((0.05 + 0 + 0.15 + 0.05) / 4)
    # Piece 1 from above never went below 1.0: 0; piece 2 from below: (2.3 - 2) / 2 = 0.15.
    assert got["overshoot_rel"] == pytest.approx(0.15)
    # Piece 1: outside at steps 0, 1 -> settles after 2; piece 2: step 6 (0.15 > 0.1) -> after 3.
    assert got["settling_steps"] == 3


def test_unsettled_and_no_target():
    h = np.array([3.0, 2.0, 1.0])
    assert math.isnan(target_tracking(h, np.full(3, 2.0))["settling_steps"])  # last step 50 % off
    assert all(math.isnan(v) for v in target_tracking(h, np.full(3, np.nan)).values())


def test_matches_a_naive_loop():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 30))
        t = np.repeat(rng.uniform(1, 4, size=3), [n // 3, n // 3, n - 2 * (n // 3)])
        h = t * (1 + rng.normal(0, 0.15, size=n))
        got = target_tracking(h, t)
        err, rel, over, settle = [], [], 0.0, []
        start = 0
        for i in range(1, n + 1):
            if i == n or t[i] != t[start]:
                m, goal = i - start, t[start]
                for j in range(start + m // 2, i):
                    err.append(abs(h[j] - goal))
                    rel.append(abs(h[j] - goal) / goal)
                for j in range(start, i):
                    ex = (h[j] - goal) if h[start] < goal else (goal - h[j])
                    over = max(over, ex / goal)
                s = 0
                for j in range(start, i):
                    if abs(h[j] - goal) / goal > 0.1:
                        s = j - start + 1
                settle.append(math.nan if s == m else s)
                start = i
        assert got["track_err"] == pytest.approx(sum(err) / len(err))
        assert got["track_err_rel"] == pytest.approx(sum(rel) / len(rel))
        assert got["overshoot_rel"] == pytest.approx(over)
        want = math.nan if any(math.isnan(x) for x in settle) else max(settle)
        assert (math.isnan(got["settling_steps"]) and math.isnan(want)) or got["settling_steps"] == want
