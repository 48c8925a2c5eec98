"""Entropy control: a PI controller that turns a target entropy into clip bounds or a bonus coefficient.

The paper's finding makes the clip bounds an entropy knob: clip-low (ratio
floor ``1 - eps_low`` on negative-advantage tokens) raises entropy, clip-high
(cap ``1 + eps_high`` on positive-advantage tokens) lowers it, and a smaller
bound clips more tokens, so it pushes harder. The clip controller closes the
loop on both, split-range; the bonus controller does the same with the usual
entropy bonus (``loss - coef * entropy``), as a baseline.

Per step ``k``, with the measured Eq. 4 entropy ``H_k`` (before the step's
updates) and the step's target ``T_k`` (``target_at``: a number, or a
schedule of pieces):

    F_k = ema * H_k + (1 - ema) * F_{k-1}    filtered entropy (F_1 = H_1; ema = 1: no filter)
    e   = (T_k - F_k) / T_k                  relative error (positive: too little entropy)
    I  <- I + e                              unless frozen (below)
    u   = kp * e + ki * I                    PI output

**Split range** (clip controller): one output ``u`` drives the two bounds in
turn, ``eps_low0``/``eps_high0`` being the configured ``algo.eps_low`` /
``algo.eps_high``:

    u >= 0:          eps_low  = max(eps_low0 * exp(-u), eps_low_min),  eps_high = eps_high0
    -L <= u < 0:     eps_low  = eps_low0 * exp(-u)  (relaxes up to eps_low_max), eps_high = eps_high0
    u < -L:          eps_low  = eps_low_max,
                     eps_high = max(S * exp(-(-u - L)), eps_high_min)

with ``L = log(eps_low_max / eps_low0)`` (0 when ``eps_low_max = eps_low0``:
above target the controller first returns clip-low, then tightens
clip-high) and ``S = eps_high0``, or ``eps_high_max`` when ``eps_high0`` is
``inf``: the finite stand-in where an infinite cap starts its log scale (at
the default 2.0 a ratio above 3 is capped, which the tiny model's ratios
almost never reach, so the jump from ``inf`` to ``S`` changes little).
``eps_high_min = None`` turns the high side off: the one-sided controller of
issue 13 (eps_high never moves).

**Bonus controller**: ``coef = clamp(coef0 + coef_scale * u, coef_min, coef_max)``.
With the default ``coef_min = 0`` it is one-sided (TRL's adaptive entropy
coefficient): above target it can only switch the bonus off. A negative
``coef_min`` makes it two-sided: above target the coefficient goes below 0,
an entropy penalty (``loss + |coef| * entropy``).

**Anti-windup by freezing**: the output saturates at ``u_hi`` (eps_low at its
floor, or the coefficient at its maximum) and below ``u_lo`` (eps_high at its
floor, or clip-low fully relaxed with the high side off; the coefficient at
``coef_min``). When the output with the integral held, ``kp * e + ki * I``, is already
beyond a limit and the error pushes further, the integral does not move
(``I`` stays), so it cannot wind up; the moment the error changes sign it
integrates again from where it stood.

**Model step** (clip controller, ``model = "thm2"``): the previous step's
logged Theorem 2 terms predict how a change of the bounds moves entropy, and
the controller picks the point ``v`` of the split-range path (the same
``eps_low``, ``eps_high`` as a PI output ``u = v``) whose predicted change
closes ``frac`` of the error; the PI terms are added for what the model
misses (``u = v + kp * e + ki * I``, so small gains are the intent). From
the previous step (``Observation``): the bounds it used, ``p`` and ``q``
(``ratio_below_frac_offpolicy``, ``ratio_above_frac_offpolicy``: the pi_k
mass of ``r < 1 - eps_low`` and ``r > 1 + eps_high``), the brackets
``b_low``, ``b_high`` (``thm2_low``, ``thm2_high``) and its measured change
``dH`` (``entropy_post - entropy``):

    p(el) = p * ((1 - el) / (1 - el_prev)) ** lam_low      lam_low  = log(2p) / log(1 - el_prev)
    q(eh) = q * ((1 + eh) / (1 + eh_prev)) ** -lam_high    lam_high = -log(2q) / log(1 + eh_prev)
    D(el, eh) = gain * (p(el) * b_low - q(eh) * b_high)    the clip-driven change (Theorem 2, first order)
    drift = dH - D(el_prev, eh_prev)                        what the step did besides the clip terms
    solve D(split_range(v)) = frac * (T - F) - drift        (bisection; saturates at the path's ends)

so that the next entropy, about ``F + drift + D``, closes ``frac`` of the gap.

The share model is a Laplace (double-exponential) log-ratio with scale
``1 / lam`` and half the mass on each side, fitted per side to the one share
observed (a side with no tokens in its region, or at an infinite or
switched-off bound, borrows the other side's ``lam``). ``gain`` is the
theorem's unknown positive factor (``mu nu eta d(s)``), in nats of entropy
per nat of bracket. The model needs ``D`` to rise with ``v``, that is
brackets ``>= 0`` (conditions (8)): a negative bracket counts as 0 (that side
is left out of ``D``, which keeps it monotone); with no positive bracket, or
no observation yet, it holds its last ``v`` (0 at the start).

Why the gains are dimensionless: the error is relative to the target and the
bounds move on a log scale, so the same ``kp``, ``ki`` work at any entropy
level and starting bounds. A non-finite entropy holds the previous output
(the trainer stops such a step anyway).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

CONTROLLERS = ("clip", "bonus")
MODELS = ("none", "thm2")


@dataclass(frozen=True)
class ControlSettings:
    target: float  # T before the schedule's first piece, nats (Eq. 4)
    kind: str  # clip | bonus
    kp: float
    ki: float
    eps_low0: float  # clip: the output at u = 0
    eps_low_min: float
    eps_low_max: float
    coef0: float  # bonus: the output at u = 0
    coef_scale: float
    coef_max: float
    eps_high0: float = math.inf  # clip: eps_high at u >= -L
    eps_high_min: Optional[float] = None  # clip: eps_high's floor; None = the high side is off
    eps_high_max: float = 2.0  # clip: where an infinite eps_high0 starts its log scale
    ema: float = 1.0  # weight of the newest entropy in the filter (1 = none)
    schedule: tuple[tuple[int, float], ...] = ()  # (from_step, target) pieces after the first (config.parse_schedule)
    coef_min: float = 0.0  # bonus: the smallest coefficient; < 0 allows an entropy penalty (two-sided)
    model: str = "none"  # clip: "thm2" adds the model step (module docstring)
    model_frac: float = 0.5  # share of the error the model step closes in one step
    model_gain: float = 1.0  # nats of entropy change per nat of Theorem 2 bracket


@dataclass(frozen=True)
class Observation:
    """What the model step reads from the previous step's logged row."""

    eps_low: float  # the bounds that step used
    eps_high: float
    p: float  # ratio_below_frac_offpolicy
    q: float  # ratio_above_frac_offpolicy
    b_low: float  # thm2_low
    b_high: float  # thm2_high
    dH: float  # entropy_post - entropy


@dataclass
class ControlState:
    integral: float = 0.0
    filtered: float = math.nan  # NaN before the first step
    model_u: float = 0.0  # the model step's last output v (held when the model cannot say)
    observed: Optional[Observation] = None  # the previous step, for the model step


def target_at(s: ControlSettings, step: int) -> float:
    """The target of step ``step`` (1-based): the last schedule piece that has started, else ``s.target``."""
    t = s.target
    for start, value in s.schedule:
        if step >= start:
            t = value
    return t


def _high_start(s: ControlSettings) -> float:
    return s.eps_high0 if math.isfinite(s.eps_high0) else s.eps_high_max


def output_range(s: ControlSettings) -> tuple[float, float]:
    """``(u_lo, u_hi)``: the PI outputs beyond which the control value saturates."""
    if s.kind == "clip":
        relax = math.log(s.eps_low_max / s.eps_low0)
        tighten = math.log(_high_start(s) / s.eps_high_min) if s.eps_high_min is not None else 0.0
        return -relax - tighten, math.log(s.eps_low0 / s.eps_low_min)
    if s.coef_scale <= 0:
        return -math.inf, math.inf
    return (s.coef_min - s.coef0) / s.coef_scale, (s.coef_max - s.coef0) / s.coef_scale


def split_range(u: float, s: ControlSettings) -> tuple[float, float]:
    """``(eps_low, eps_high)`` of the clip controller for PI output ``u`` (module docstring)."""
    if u >= 0:
        return max(s.eps_low0 * math.exp(-u), s.eps_low_min), s.eps_high0
    relax = math.log(s.eps_low_max / s.eps_low0)
    if -u <= relax or s.eps_high_min is None:
        return min(s.eps_low0 * math.exp(-u), s.eps_low_max), s.eps_high0
    return s.eps_low_max, max(_high_start(s) * math.exp(u + relax), s.eps_high_min)


def control_output(u: float, s: ControlSettings):
    """``(eps_low, eps_high)`` (clip) or the bonus coefficient (bonus) for PI output ``u``."""
    if s.kind == "clip":
        return split_range(u, s)
    if s.kind == "bonus":
        return min(max(s.coef0 + s.coef_scale * u, s.coef_min), s.coef_max)
    raise ValueError(f"unknown controller {s.kind!r}; valid: {', '.join(CONTROLLERS)}")


def _finite_pos(x: float) -> bool:
    return math.isfinite(x) and x > 0


def tail_exponents(obs: Observation) -> Optional[tuple[float, float]]:
    """``(lam_low, lam_high)`` of the Laplace share model fitted to ``obs`` (module docstring); None if neither side fits."""
    lam_low = lam_high = math.nan
    if 0 < obs.p < 0.5 and 0 < obs.eps_low < 1:
        lam_low = math.log(2 * obs.p) / math.log(1 - obs.eps_low)
    if 0 < obs.q < 0.5 and _finite_pos(obs.eps_high):
        lam_high = -math.log(2 * obs.q) / math.log(1 + obs.eps_high)
    if not (math.isfinite(lam_low) or math.isfinite(lam_high)):
        return None
    return (lam_low if math.isfinite(lam_low) else lam_high, lam_high if math.isfinite(lam_high) else lam_low)


def region_shares(eps_low: float, eps_high: float, obs: Observation, lam: tuple[float, float]) -> tuple[float, float]:
    """``(p, q)`` predicted at bounds ``eps_low``, ``eps_high`` from the observed shares (Laplace tails)."""

    def side(share, used, new, sign, lam_side):  # share of mass beyond the bound 1 + sign * eps
        if sign < 0 and new >= 1 or sign > 0 and math.isinf(new):
            return 0.0  # the bound is off: no region
        if share > 0 and (used < 1 if sign < 0 else math.isfinite(used)):
            return share * ((1 + sign * new) / (1 + sign * used)) ** (-sign * lam_side)
        return 0.5 * (1 + sign * new) ** (-sign * lam_side)  # no share observed there: the fitted tail alone

    return side(obs.p, obs.eps_low, eps_low, -1, lam[0]), side(obs.q, obs.eps_high, eps_high, +1, lam[1])


def predicted_change(eps_low: float, eps_high: float, obs: Observation, lam, gain: float) -> float:
    """Theorem 2's first-order clip-driven entropy change at the given bounds: ``gain * (p b_low - q b_high)``."""
    p, q = region_shares(eps_low, eps_high, obs, lam)
    low = p * max(obs.b_low, 0.0) if math.isfinite(obs.b_low) else 0.0  # a negative bracket: side left out
    high = q * max(obs.b_high, 0.0) if math.isfinite(obs.b_high) else 0.0
    return gain * (low - high)


def model_output(s: ControlSettings, obs: Optional[Observation], target: float, filtered: float) -> Optional[float]:
    """The model step's ``v``: the split-range point whose predicted change closes ``frac`` of the error; None
    when the model cannot say (no observation, no fitted tail, no positive bracket, a non-finite input)."""
    if obs is None or not (math.isfinite(obs.dH) and math.isfinite(filtered)):
        return None
    if not any(math.isfinite(b) and b > 0 for b in (obs.b_low, obs.b_high)):
        return None  # D would not move with v: conditions (8) fail on both sides for this step
    lam = tail_exponents(obs)
    if lam is None:
        return None
    drift = obs.dH - predicted_change(obs.eps_low, obs.eps_high, obs, lam, s.model_gain)
    want = s.model_frac * (target - filtered) - drift

    def D(v):
        return predicted_change(*split_range(v, s), obs, lam, s.model_gain)

    lo, hi = output_range(s)
    if D(lo) >= want:
        return lo
    if D(hi) <= want:
        return hi
    for _ in range(100):  # D is non-decreasing in v: bisection
        mid = 0.5 * (lo + hi)
        if D(mid) < want:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def observe(state: ControlState, obs: Observation) -> ControlState:
    """The state after a step whose logged row gave ``obs`` (the model step reads it next step)."""
    return dataclasses.replace(state, observed=obs)


def control_step(entropy: float, state: ControlState, s: ControlSettings, step: int = 1):
    """One controller step: ``(output, new_state)`` from the measured entropy of step ``step``.

    Filter, relative error against ``target_at(s, step)``, PI with the
    integral frozen while the output is saturated in the error's direction
    (module docstring); with ``s.model = "thm2"`` the output is the model
    step's ``v`` plus the PI terms. ``state`` is not modified.
    """
    v0 = state.model_u if s.model == "thm2" else 0.0
    if not math.isfinite(entropy):  # hold the last output
        return control_output(v0 + s.ki * state.integral, s), state
    filtered = entropy if math.isnan(state.filtered) else s.ema * entropy + (1 - s.ema) * state.filtered
    target = target_at(s, step)
    v = 0.0
    if s.model == "thm2":
        v = model_output(s, state.observed, target, filtered)
        v = v0 if v is None else v
    e = (target - filtered) / target
    held = v + s.kp * e + s.ki * state.integral  # the output with the integral held
    u_lo, u_hi = output_range(s)
    frozen = (held > u_hi and e > 0) or (held < u_lo and e < 0)  # saturated, and the error pushes further
    integral = state.integral if frozen else state.integral + e
    return control_output(v + s.kp * e + s.ki * integral, s), ControlState(integral, filtered, v, state.observed)
