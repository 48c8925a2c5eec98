"""algo.control: the PI entropy controller (hand-computed values, a naive loop, bounds, anti-windup)."""

from __future__ import annotations

import math
import random

import pytest

from clipctl.algo import ControlSettings, control_output, control_step


def settings(kind="clip", **kw) -> ControlSettings:
    base = dict(target=2.0, kind=kind, kp=2.0, ki=0.5, eps_low0=0.2, eps_low_min=0.02, eps_low_max=1.0,
                coef0=0.0, coef_scale=0.01, coef_max=0.1)
    return ControlSettings(**{**base, **kw})


def test_clip_step_by_hand():
    # H = 1.5, H* = 2: e = 0.25; I = 0 + 0.25; u = 2 * 0.25 + 0.5 * 0.25 = 0.625
    out, integral = control_step(1.5, 0.0, settings())
    assert integral == 0.25
    assert out == pytest.approx(0.2 * math.exp(-0.625))
    # Too much entropy: e = -0.5, I = -0.5, u = -1.25: eps_low grows.
    out, integral = control_step(3.0, 0.0, settings())
    assert integral == -0.5 and out == pytest.approx(0.2 * math.exp(1.25))


def test_bonus_step_by_hand():
    # e = 0.25, u = 0.625: coef = 0 + 0.01 * 0.625
    out, integral = control_step(1.5, 0.0, settings("bonus"))
    assert out == pytest.approx(0.00625) and integral == 0.25
    # Too much entropy: the coefficient stays at its lower bound 0 and the integral does not wind down.
    out, integral = control_step(3.0, 0.0, settings("bonus"))
    assert out == 0.0 and integral == 0.0
    # Far too little: the integral stops where the coefficient reaches its cap,
    # u_hi = 0.1 / 0.01 = 10 and e = 0.9: I = (10 - 2 * 0.9) / 0.5 = 16.4.
    out, integral = control_step(0.2, 16.0, settings("bonus"))
    assert out == pytest.approx(0.1) and integral == pytest.approx(16.4)


def test_direction_and_bounds():
    s = settings()
    below, _ = control_step(1.0, 0.0, s)  # too little entropy: stronger clip-low (smaller eps_low)
    above, _ = control_step(3.0, 0.0, s)
    assert below < s.eps_low0 < above
    for h in (0.0, 0.5, 1.9, 2.0, 2.1, 4.0, 100.0):
        integral = 0.0
        for _ in range(50):
            out, integral = control_step(h, integral, s)
            assert s.eps_low_min <= out <= s.eps_low_max
    assert control_step(2.0, 0.0, s) == (0.2, 0.0)  # on target: the configured eps_low


def test_anti_windup_leaves_a_bound_when_the_error_turns():
    s = settings()
    integral = 0.0
    for _ in range(100):  # far too little entropy: pinned at eps_low_min
        out, integral = control_step(0.1, integral, s)
    assert out == s.eps_low_min
    # The integral stopped where the output reached the bound, so one step of
    # the opposite error already moves eps_low off it.
    out, _ = control_step(2.5, integral, s)
    assert out > s.eps_low_min


def test_nonfinite_entropy_holds_the_output():
    s = settings()
    out, integral = control_step(math.nan, 0.3, s)
    assert integral == 0.3 and out == control_output(0.5 * 0.3, s)


@pytest.mark.parametrize("kind", ["clip", "bonus"])
def test_matches_a_naive_loop(kind):
    rng = random.Random(7)
    s = settings(kind)
    entropies = [rng.uniform(0.5, 3.5) for _ in range(200)]
    integral, outs = 0.0, []
    for h in entropies:
        out, integral = control_step(h, integral, s)
        outs.append(out)
    # Naive: the same law written out, clamping the integral by search.
    lo, hi = (s.eps_low_min, s.eps_low_max) if kind == "clip" else (0.0, s.coef_max)

    def value(u):
        return s.eps_low0 * math.exp(-u) if kind == "clip" else s.coef0 + s.coef_scale * u

    def inside(u):
        return lo - 1e-12 <= value(u) <= hi + 1e-12

    I, naive = 0.0, []
    for h in entropies:
        e = (s.target - h) / s.target
        trial = I + e
        if not inside(s.kp * e + s.ki * trial):
            # Bisect for the integral in [I, trial] where the output meets its bound.
            a, b = I, trial
            if inside(s.kp * e + s.ki * a):
                for _ in range(200):
                    mid = (a + b) / 2
                    a, b = (mid, b) if inside(s.kp * e + s.ki * mid) else (a, mid)
                trial = a
            else:
                trial = I
        I = trial
        naive.append(min(max(value(s.kp * e + s.ki * I), lo), hi))
    assert outs == pytest.approx(naive, rel=1e-9, abs=1e-12)


def test_unknown_controller_names_the_valid_ones():
    with pytest.raises(ValueError, match="clip, bonus"):
        control_output(0.0, settings("pid"))
