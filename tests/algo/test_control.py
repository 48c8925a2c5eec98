"""algo.control: the split-range PI entropy controller (hand-computed values, a naive loop, freeze anti-windup, schedules)."""

from __future__ import annotations

import math
import random

import pytest

from clipctl.algo import ControlSettings, control_output, control_step
from clipctl.algo.control import ControlState, output_range, split_range, target_at
from clipctl.config import parse_schedule


def settings(kind="clip", **kw) -> ControlSettings:
    base = dict(target=2.0, kind=kind, kp=2.0, ki=0.5, eps_low0=0.2, eps_low_min=0.02, eps_low_max=1.0,
                coef0=0.0, coef_scale=0.01, coef_max=0.1, eps_high0=0.2, eps_high_min=0.05, ema=1.0)
    return ControlSettings(**{**base, **kw})


def test_clip_step_by_hand():
    # H = 1.5, H* = 2: e = 0.25; I = 0 + 0.25; u = 2 * 0.25 + 0.5 * 0.25 = 0.625 > 0: clip-low strengthens.
    (low, high), st = control_step(1.5, ControlState(), settings())
    assert st.integral == 0.25 and st.filtered == 1.5
    assert low == pytest.approx(0.2 * math.exp(-0.625)) and high == 0.2
    # Too much entropy: e = -0.5, I = -0.5, u = -1.25. L = log(1 / 0.2) = 1.609 > 1.25: eps_low relaxes, eps_high stays.
    (low, high), st = control_step(3.0, ControlState(), settings())
    assert st.integral == -0.5 and low == pytest.approx(0.2 * math.exp(1.25)) and high == 0.2


def test_split_range_by_hand():
    s = settings(eps_low_max=0.4)  # L = log(0.4 / 0.2) = log 2
    assert split_range(0.0, s) == (0.2, 0.2)
    assert split_range(math.log(2), s) == pytest.approx((0.1, 0.2))  # below target: eps_low halves
    assert split_range(10.0, s) == (0.02, 0.2)  # at its floor
    assert split_range(-math.log(2), s) == pytest.approx((0.4, 0.2))  # clip-low fully returned, eps_high untouched
    # Beyond L: eps_high = 0.2 * exp(-(1.5 log 2 - log 2)) = 0.2 / sqrt(2)
    low, high = split_range(-1.5 * math.log(2), s)
    assert low == 0.4 and high == pytest.approx(0.2 / math.sqrt(2))
    assert split_range(-50.0, s) == (0.4, 0.05)  # eps_high at its floor
    # eps_low_max = eps_low0: above target clip-high moves at once.
    assert split_range(-math.log(2), settings(eps_low_max=0.2))[1] == pytest.approx(0.1)
    # An infinite eps_high starts its log scale at eps_high_max (2): u = -L - log(2 / 0.5) gives 0.5.
    inf = settings(eps_low_max=0.2, eps_high0=math.inf, eps_high_max=2.0)
    assert split_range(-1e-9, inf)[1] == pytest.approx(2.0) and split_range(0.0, inf)[1] == math.inf
    assert split_range(-math.log(4), inf)[1] == pytest.approx(0.5)
    # The high side off (the one-sided controller): eps_high never moves.
    assert split_range(-50.0, settings(eps_high_min=None)) == (1.0, 0.2)


def test_output_range_matches_the_saturation_points():
    s = settings(eps_low_max=0.4)
    lo, hi = output_range(s)
    assert hi == pytest.approx(math.log(0.2 / 0.02))
    assert lo == pytest.approx(-math.log(2) - math.log(0.2 / 0.05))
    assert split_range(hi, s)[0] == pytest.approx(0.02) and split_range(lo, s)[1] == pytest.approx(0.05)
    assert output_range(settings(eps_high_min=None))[0] == pytest.approx(-math.log(1 / 0.2))


def test_bonus_step_by_hand():
    # e = 0.25, u = 0.625: coef = 0 + 0.01 * 0.625
    out, st = control_step(1.5, ControlState(), settings("bonus"))
    assert out == pytest.approx(0.00625) and st.integral == 0.25
    # Too much entropy: u = -1.25 < u_lo = 0 and the error pushes further down: the integral freezes at 0.
    out, st = control_step(3.0, ControlState(), settings("bonus"))
    assert out == 0.0 and st.integral == 0.0


def test_signed_bonus_by_hand():
    s = settings("bonus", coef_scale=0.05, coef_min=-0.02)
    # Too much entropy: e = -0.5, I = -0.5, u = -1.25: coef = 0.05 * -1.25 = -0.0625, clamped at coef_min -0.02.
    # u_lo = (-0.02 - 0) / 0.05 = -0.4: the held output -1.0 is beyond it and the error pushes down, so I freezes.
    assert output_range(s) == pytest.approx((-0.4, 2.0))
    out, st = control_step(3.0, ControlState(), s)
    assert out == -0.02 and st.integral == 0.0
    # A small excess: e = -0.05, I = -0.05, u = -0.1 - 0.025 = -0.125: coef = -0.00625, an entropy penalty.
    out, st = control_step(2.1, ControlState(), s)
    assert out == pytest.approx(-0.00625) and st.integral == pytest.approx(-0.05)
    # coef_min = 0 (the default) is the one-sided controller: the same step gives 0.
    assert control_step(2.1, ControlState(), settings("bonus", coef_scale=0.05))[0] == 0.0


def test_freeze_anti_windup():
    s = settings()
    st = ControlState()
    integrals = []
    for _ in range(50):  # far too little entropy: pinned at eps_low_min
        (low, _), st = control_step(0.1, st, s)
        integrals.append(st.integral)
    assert low == s.eps_low_min
    # e = 0.95: step 1 integrates (held output 1.9 < u_hi = log 10 = 2.303), I = 0.95 and u = 2.375
    # saturates; from step 2 the held output 2.375 is beyond u_hi, so I freezes at 0.95.
    assert integrals[0] == pytest.approx(0.95) and integrals[-1] == integrals[1] == pytest.approx(0.95)
    # The error turns: the integral moves again at once (e = -0.25 -> I = 0.7) and eps_low leaves its floor.
    (low, _), st2 = control_step(2.5, st, s)
    assert st2.integral == pytest.approx(0.7) and low > s.eps_low_min


def test_filter_by_hand():
    s = settings(ema=0.25)
    _, st = control_step(2.0, ControlState(), s)
    assert st.filtered == 2.0  # the first measurement initialises the filter
    out, st = control_step(1.0, st, s)
    # F = 0.25 * 1 + 0.75 * 2 = 1.75, e = 0.125, I = 0.125, u = 0.25 + 0.0625
    assert st.filtered == 1.75 and st.integral == 0.125
    assert out[0] == pytest.approx(0.2 * math.exp(-0.3125))


def test_schedule():
    assert parse_schedule("3.5@16") == ((16, 3.5),)
    assert parse_schedule(" 3.0@11, 2.0@21 ") == ((11, 3.0), (21, 2.0))
    assert parse_schedule(None) == ()
    for bad, match in (("3.5", "TARGET@STEP"), ("x@3", "TARGET@STEP"), ("-1@3", "positive"),
                       ("3@1", "at least 2"), ("3@5,2@5", "increase")):
        with pytest.raises(ValueError, match=match):
            parse_schedule(bad)
    s = settings(schedule=parse_schedule("3.0@11,2.5@21"))
    assert [target_at(s, k) for k in (1, 10, 11, 20, 21, 99)] == [2.0, 2.0, 3.0, 3.0, 2.5, 2.5]
    # The error is taken against the step's target: on target at step 11 with H = 3.
    out, st = control_step(3.0, ControlState(), s, step=11)
    assert st.integral == 0.0 and out == (0.2, 0.2)


def test_nonfinite_entropy_holds_the_output():
    s = settings()
    out, st = control_step(math.nan, ControlState(0.3, 2.0), s)
    assert (st.integral, st.filtered) == (0.3, 2.0) and out == control_output(0.5 * 0.3, s)


@pytest.mark.parametrize(
    "kind,kw", [("clip", {}), ("clip", {"eps_high0": math.inf, "eps_low_max": 0.3, "ema": 0.4}), ("bonus", {}),
                ("bonus", {"coef_min": -0.02, "coef0": 0.01, "ema": 0.6})],
)
def test_matches_a_naive_loop(kind, kw):
    rng = random.Random(7)
    s = settings(kind, schedule=((50, 3.0), (120, 1.0)), **kw)
    entropies = [rng.uniform(0.3, 4.0) for _ in range(200)]
    st, outs = ControlState(), []
    for k, h in enumerate(entropies, start=1):
        out, st = control_step(h, st, s, step=k)
        outs.append(out)

    # Naive: the law written out with explicit segment tests.
    def value(u):
        if kind == "bonus":
            return min(max(s.coef0 + s.coef_scale * u, s.coef_min), s.coef_max)
        if u >= 0:
            return (max(s.eps_low0 * math.exp(-u), s.eps_low_min), s.eps_high0)
        low = s.eps_low0 * math.exp(-u)
        if low <= s.eps_low_max:
            return (low, s.eps_high0)
        spent = math.log(s.eps_low_max / s.eps_low0)
        start = s.eps_high0 if s.eps_high0 != math.inf else s.eps_high_max
        return (s.eps_low_max, max(start * math.exp(-(-u - spent)), s.eps_high_min))

    if kind == "bonus":
        u_lo, u_hi = (s.coef_min - s.coef0) / s.coef_scale, (s.coef_max - s.coef0) / s.coef_scale
    else:
        start = s.eps_high0 if s.eps_high0 != math.inf else s.eps_high_max
        u_hi = math.log(s.eps_low0 / s.eps_low_min)
        u_lo = -math.log(s.eps_low_max / s.eps_low0) - math.log(start / s.eps_high_min)
    I, F, naive = 0.0, None, []
    for k, h in enumerate(entropies, start=1):
        F = h if F is None else s.ema * h + (1 - s.ema) * F
        T = 2.0 if k < 50 else (3.0 if k < 120 else 1.0)
        e = (T - F) / T
        held = s.kp * e + s.ki * I
        frozen = (held > u_hi and e > 0) or (held < u_lo and e < 0)
        if not frozen:
            I = I + e
        naive.append(value(s.kp * e + s.ki * I))
    flat = [x for o in outs for x in (o if isinstance(o, tuple) else (o,))]
    want = [x for o in naive for x in (o if isinstance(o, tuple) else (o,))]
    assert flat == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_unknown_controller_names_the_valid_ones():
    with pytest.raises(ValueError, match="clip, bonus"):
        control_output(0.0, settings("pid"))


# ---------------------------------------------------------------- the model step (algo.controller_model = thm2)

from clipctl.algo.control import Observation, model_output, observe, predicted_change, region_shares, tail_exponents  # noqa: E402


def obs(**kw) -> Observation:
    base = dict(eps_low=0.2, eps_high=0.2, p=0.02, q=0.01, b_low=0.5, b_high=0.4, dH=-0.05)
    return Observation(**{**base, **kw})


def test_laplace_tails_by_hand():
    o = obs()
    lam_low, lam_high = tail_exponents(o)
    # p = 1/2 (1 - 0.2)^lam: lam = log 0.04 / log 0.8; q = 1/2 (1.2)^-lam: lam = -log 0.02 / log 1.2
    assert lam_low == pytest.approx(math.log(0.04) / math.log(0.8)) == pytest.approx(14.4251, abs=1e-4)
    assert lam_high == pytest.approx(-math.log(0.02) / math.log(1.2)) == pytest.approx(21.4567, abs=1e-4)
    lam = (lam_low, lam_high)
    assert region_shares(0.2, 0.2, o, lam) == pytest.approx((0.02, 0.01))  # the observed shares come back
    p, q = region_shares(0.1, 0.1, o, lam)
    assert p == pytest.approx(0.02 * (0.9 / 0.8) ** lam_low) and q == pytest.approx(0.01 * (1.1 / 1.2) ** -lam_high)
    assert region_shares(1.0, math.inf, o, lam) == (0.0, 0.0)  # bounds off: no regions
    # One side empty borrows the other's exponent; at an infinite eps_high the high side has no region.
    assert tail_exponents(obs(q=0.0)) == pytest.approx((lam_low, lam_low))
    assert tail_exponents(obs(eps_high=math.inf, q=0.0))[1] == pytest.approx(lam_low)
    assert tail_exponents(obs(p=0.0, q=0.0)) is None
    # D = gain (p b_low - q b_high) = 2 (0.02 * 0.5 - 0.01 * 0.4) = 0.012
    assert predicted_change(0.2, 0.2, o, lam, 2.0) == pytest.approx(0.012)


def test_model_step_by_hand():
    # T = F = 3: no error. The last step fell by 0.05 with D = 0.006 from its clips, so drift = -0.056, and the
    # model asks D = 0 * 0.5 + 0.056. Below target's side (v >= 0) moves eps_low only, q stays 0.01:
    # p(el) 0.5 = 0.056 + 0.004 -> p = 0.12 -> (1 - el)/0.8 = (0.12/0.02)^(1/lam_low) -> el = 0.0942.
    s = settings(eps_low_max=0.2, kp=0.0, ki=0.0, model="thm2", model_frac=0.5, model_gain=1.0, target=3.0)
    lam_low = math.log(0.04) / math.log(0.8)
    want_el = 1 - 0.8 * 6 ** (1 / lam_low)
    assert want_el == pytest.approx(0.0942, abs=1e-4)
    v = model_output(s, obs(), 3.0, 3.0)
    assert v == pytest.approx(math.log(0.2 / want_el), rel=1e-9)
    (low, high), st = control_step(3.0, ControlState(observed=obs()), s)
    assert low == pytest.approx(want_el, rel=1e-9) and high == 0.2 and st.model_u == pytest.approx(v)
    # Too much entropy (F = 4, T = 3): frac * (T - F) = -0.5 is beyond what the bounds can do: eps_high at its floor.
    (low, high), _ = control_step(4.0, ControlState(observed=obs(dH=0.0)), s)
    assert (low, high) == (0.2, 0.05)
    # The PI terms add to v: kp = 1 with e = (3 - 2.97) / 3 = 0.01 moves u by 0.01.
    pi = settings(eps_low_max=0.2, kp=1.0, ki=0.0, model="thm2", target=3.0)
    v2 = model_output(pi, obs(), 3.0, 2.97)
    (low, _), _ = control_step(2.97, ControlState(observed=obs()), pi)
    assert low == pytest.approx(0.2 * math.exp(-(v2 + 0.01)), rel=1e-9)


def test_model_step_holds_when_it_cannot_say():
    s = settings(eps_low_max=0.2, kp=0.0, ki=0.0, model="thm2", target=3.0)
    held = ControlState(model_u=0.3)
    no_positive = (obs(b_low=-0.1, b_high=-0.2), obs(b_low=math.nan, b_high=0.0), obs(b_low=math.nan, b_high=math.nan))
    for o in (None, *no_positive, obs(p=0.0, q=0.0), obs(dH=math.nan)):
        assert model_output(s, o, 3.0, 3.0) is None
        (low, _), st = control_step(3.0, ControlState(model_u=0.3, observed=o), s)
        assert low == pytest.approx(0.2 * math.exp(-0.3)) and st.model_u == 0.3
    assert control_step(3.0, held, settings(eps_low_max=0.2, kp=0.0, ki=0.0, target=3.0))[0] == (0.2, 0.2)  # model off
    assert observe(ControlState(0.1, 2.0, 0.3), obs()).observed == obs()
    # A negative bracket drops its side: the same v as with that bracket at 0.
    assert model_output(s, obs(b_low=-0.1), 3.5, 3.0) == model_output(s, obs(b_low=0.0), 3.5, 3.0) is not None


def test_model_step_matches_a_grid_search():
    # Naive: evaluate D on a fine grid of the split-range path and take the first point that reaches the ask.
    rng = random.Random(3)
    s = settings(eps_low_max=0.4, eps_high0=math.inf, kp=0.0, ki=0.0, model="thm2", model_frac=0.7, model_gain=3.0)
    lo, hi = output_range(s)
    grid = [lo + (hi - lo) * i / 200000 for i in range(200001)]
    for _ in range(20):
        o = obs(eps_low=rng.uniform(0.05, 0.35), eps_high=rng.choice([math.inf, rng.uniform(0.1, 1.5)]),
                p=rng.uniform(0.001, 0.1), q=rng.uniform(0.0, 0.1), b_low=rng.uniform(0, 1.5),
                b_high=rng.uniform(0, 1.5), dH=rng.uniform(-0.1, 0.1))
        o = Observation(**{**o.__dict__, "q": 0.0 if math.isinf(o.eps_high) else o.q})
        target, filtered = 2.0, rng.uniform(1.5, 2.5)
        lam = tail_exponents(o)
        drift = o.dH - s.model_gain * (
            o.p * o.b_low - (o.q * o.b_high if math.isfinite(o.eps_high) else 0.0))
        want = s.model_frac * (target - filtered) - drift
        naive = next((v for v in grid if predicted_change(*split_range(v, s), o, lam, s.model_gain) >= want), hi)
        assert model_output(s, o, target, filtered) == pytest.approx(naive, abs=(hi - lo) / 100000)
