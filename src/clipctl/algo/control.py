"""Entropy control: a PI controller that turns a target entropy into a clip bound or a bonus coefficient.

The paper's finding makes the clip bounds an entropy knob: clip-low (ratio
floor ``1 - eps_low`` on negative-advantage tokens) raises entropy, and a
smaller ``eps_low`` clips more tokens, so it raises entropy harder. The clip
controller closes the loop on that knob; the bonus controller does the same
with the usual entropy bonus (``loss - coef * entropy``), as a baseline.

Per step, with the measured Eq. 4 entropy ``H`` (before the step's updates)
and the target ``H*``:

    e = (H* - H) / H*                     relative error (positive: too little entropy)
    u = kp * e + ki * I,   I <- I + e     PI output and integral
    clip:   eps_low = clamp(eps_low0 * exp(-u), eps_low_min, eps_low_max)
    bonus:  coef    = clamp(coef0 + coef_scale * u, 0, coef_max)

Why this is safe:

1. Relative error and a log-scale output make the gains dimensionless: the
   same ``kp``, ``ki`` work for any entropy level and any starting ``eps_low``.
   At the defaults (kp 2, ki 0.5) a 10 % entropy deficit shrinks ``eps_low``
   by a factor ``exp(-0.25)`` = 0.78 at once and by another ~5 % per step
   while it lasts: slow against the per-step entropy change (< 1 % per step in
   every run we measured), so the loop does not oscillate.
2. The output is bounded: ``eps_low`` stays in ``[eps_low_min, eps_low_max]``
   (``eps_low_max = 1`` turns clip-low off, the weakest setting), the
   coefficient in ``[0, coef_max]``.
3. Anti-windup: the integral follows the error only until the output reaches
   its bound, so the controller leaves a bound as soon as the error changes
   sign.
4. A non-finite entropy holds the previous output (the trainer stops such a
   step anyway).

The controller acts on one side only: with ``eps_high`` fixed (or ``inf``)
it can push entropy up hard (small ``eps_low``) but pushes it down only by
relaxing clip-low towards off; an entropy that rises above the target with
clip-low already off is beyond its reach (clip-high, if on, is the only
force down).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CONTROLLERS = ("clip", "bonus")


@dataclass(frozen=True)
class ControlSettings:
    target: float  # H*, nats (Eq. 4)
    kind: str  # clip | bonus
    kp: float
    ki: float
    eps_low0: float  # clip: the output at u = 0
    eps_low_min: float
    eps_low_max: float
    coef0: float  # bonus: the output at u = 0
    coef_scale: float
    coef_max: float


def control_output(u: float, s: ControlSettings) -> float:
    """``eps_low`` (clip) or the bonus coefficient (bonus) for PI output ``u``."""
    if s.kind == "clip":
        return min(max(s.eps_low0 * math.exp(-u), s.eps_low_min), s.eps_low_max)
    if s.kind == "bonus":
        return min(max(s.coef0 + s.coef_scale * u, 0.0), s.coef_max)
    raise ValueError(f"unknown controller {s.kind!r}; valid: {', '.join(CONTROLLERS)}")


def output_range(s: ControlSettings) -> tuple[float, float]:
    """The PI outputs ``u`` whose control value lies inside its bounds: ``(u_lo, u_hi)``."""
    if s.kind == "clip":  # eps_low = eps_low0 * exp(-u) falls as u grows
        return math.log(s.eps_low0 / s.eps_low_max), math.log(s.eps_low0 / s.eps_low_min)
    if s.coef_scale <= 0:
        return -math.inf, math.inf
    return -s.coef0 / s.coef_scale, (s.coef_max - s.coef0) / s.coef_scale


def control_step(entropy: float, integral: float, s: ControlSettings) -> tuple[float, float]:
    """One PI step: ``(output, new_integral)`` from the measured entropy (see the module docstring).

    Anti-windup by clamping: the integral moves with the error only until the
    output reaches its bound (it stops exactly there), never further.
    """
    e = (s.target - entropy) / s.target
    if not math.isfinite(e):
        return control_output(s.ki * integral, s), integral
    new = integral + e
    if s.ki > 0:
        u_lo, u_hi = output_range(s)
        i_lo, i_hi = (u_lo - s.kp * e) / s.ki, (u_hi - s.kp * e) / s.ki
        if e > 0 and new > i_hi:
            new = max(integral, i_hi)
        elif e < 0 and new < i_lo:
            new = min(integral, i_lo)
    return control_output(s.kp * e + s.ki * new, s), new
