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

**Bonus controller**: ``coef = clamp(coef0 + coef_scale * u, 0, coef_max)``.

**Anti-windup by freezing**: the output saturates at ``u_hi`` (eps_low at its
floor, or the coefficient at its maximum) and below ``u_lo`` (eps_high at its
floor, or clip-low fully relaxed with the high side off; the coefficient at
0). When the output with the integral held, ``kp * e + ki * I``, is already
beyond a limit and the error pushes further, the integral does not move
(``I`` stays), so it cannot wind up; the moment the error changes sign it
integrates again from where it stood.

Why the gains are dimensionless: the error is relative to the target and the
bounds move on a log scale, so the same ``kp``, ``ki`` work at any entropy
level and starting bounds. A non-finite entropy holds the previous output
(the trainer stops such a step anyway).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

CONTROLLERS = ("clip", "bonus")


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


@dataclass
class ControlState:
    integral: float = 0.0
    filtered: float = math.nan  # NaN before the first step


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
    return -s.coef0 / s.coef_scale, (s.coef_max - s.coef0) / s.coef_scale


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
        return min(max(s.coef0 + s.coef_scale * u, 0.0), s.coef_max)
    raise ValueError(f"unknown controller {s.kind!r}; valid: {', '.join(CONTROLLERS)}")


def control_step(entropy: float, state: ControlState, s: ControlSettings, step: int = 1):
    """One controller step: ``(output, new_state)`` from the measured entropy of step ``step``.

    Filter, relative error against ``target_at(s, step)``, PI with the
    integral frozen while the output is saturated in the error's direction
    (module docstring). ``state`` is not modified.
    """
    if not math.isfinite(entropy):  # hold the last output
        return control_output(s.ki * state.integral, s), ControlState(state.integral, state.filtered)
    filtered = entropy if math.isnan(state.filtered) else s.ema * entropy + (1 - s.ema) * state.filtered
    target = target_at(s, step)
    e = (target - filtered) / target
    held = s.kp * e + s.ki * state.integral  # the output with the integral held
    u_lo, u_hi = output_range(s)
    frozen = (held > u_hi and e > 0) or (held < u_lo and e < 0)  # saturated, and the error pushes further
    integral = state.integral if frozen else state.integral + e
    return control_output(s.kp * e + s.ki * integral, s), ControlState(integral, filtered)
