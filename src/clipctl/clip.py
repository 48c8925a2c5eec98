"""The clip settings of one update: the one place that says which bounds are valid (no torch).

``ClipSpec(eps_low, eps_high, dual_clip_c, cov)`` is checked once, when it is made;
the config (``algo.*``), the simulator and the policy losses all take one, so
the rule below is written here only (docs/definitions.md section 4):

- ``eps_low`` in ``(0, 1]``: the ratio floor ``1 - eps_low`` for ``A < 0``; 1 disables clip-low;
- ``eps_high`` in ``(0, inf]``: the ratio cap ``1 + eps_high`` for ``A > 0``; ``inf`` disables clip-high;
- ``dual_clip_c`` ``> 1`` or ``None``: the loss of an ``A < 0`` token is at most ``-c A``.

Every policy loss reads its two sides from ``eps_low`` / ``eps_high`` (what
the numbers bound differs by family: a token ratio, a sequence ratio, an IS
weight, a probability difference, a binary KL; docs/losses.md), with the same
switch: ``eps_low = 1`` turns the low side off, ``eps_high = inf`` the high
side. ``dual_clip_c`` is the family's extra bound on a large ratio (vanilla's
dual clip, DPPO's IS-weight cap). ``cov`` is the covariance selection of
Clip-Cov / KL-Cov (``CovSpec``). ``ClipSpec.sides(low, high)`` is the same
mechanism with only the named sides on: what the clip probe replays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

from clipctl.errors import ConfigError


def cov_problem(ratio: float, lb: float, ub: float, coef: float, prefix: str = "") -> Optional[str]:
    """The first broken rule of a covariance selection as one message, or None."""
    if not 0.0 < ratio <= 1.0:
        return f"{prefix}ratio={ratio} must be in (0, 1]: the share of a call's tokens the selection may touch"
    if not lb < ub:  # also rejects NaN
        return f"{prefix}lb={lb} must be below {prefix}ub={ub}; the selection keeps tokens with lb < cov < ub"
    if not (coef >= 0.0 and math.isfinite(coef)):
        return f"{prefix}coef={coef} must be a finite number >= 0"
    return None


@dataclass(frozen=True)
class CovSpec:
    """The covariance selection of Clip-Cov and KL-Cov (Cui et al. 2025, arXiv 2505.22617), valid by construction.

    ``ratio``: share of a loss call's valid tokens selected (at least one);
    ``lb``, ``ub``: Clip-Cov keeps only tokens with ``lb < cov < ub``
    (``-inf`` / ``inf`` for KL-Cov, which takes the top ``ratio`` share);
    ``coef``: KL-Cov's penalty ``coef * |log r|`` on the selected tokens
    (unused by Clip-Cov). ``low`` / ``high``: whether selected tokens with
    ``A < 0`` / ``A > 0`` are treated (both in a real run; the probe turns one off).
    """

    ratio: float = 2e-4
    lb: float = -math.inf
    ub: float = math.inf
    coef: float = 1.0
    low: bool = True
    high: bool = True

    def __post_init__(self):
        problem = cov_problem(self.ratio, self.lb, self.ub, self.coef)
        if problem:
            raise ConfigError(problem)


def clip_problem(eps_low: float, eps_high: float, dual_clip_c: Optional[float] = None, prefix: str = "") -> Optional[str]:
    """The first broken rule as one message (keys spelled ``prefix + name``), or None."""
    if not 0.0 < eps_low <= 1.0:  # also rejects NaN
        return f"{prefix}eps_low={eps_low} must be in (0, 1]; use 1 to disable clip-low"
    if not eps_high > 0.0:  # also rejects NaN and -inf; +inf is > 0
        return f"{prefix}eps_high={eps_high} must be in (0, inf]; use inf to disable clip-high"
    if dual_clip_c is not None and not dual_clip_c > 1.0:
        return f"{prefix}dual_clip_c={dual_clip_c} must be > 1; use none to disable dual clip"
    return None


@dataclass(frozen=True)
class ClipSpec:
    """Clip-low, clip-high and dual-clip bounds of an update, valid by construction."""

    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip_c: Optional[float] = None
    cov: Optional[CovSpec] = None

    def __post_init__(self):
        problem = clip_problem(self.eps_low, self.eps_high, self.dual_clip_c)
        if problem:
            raise ConfigError(problem)

    @property
    def low_on(self) -> bool:
        return self.eps_low < 1.0

    @property
    def high_on(self) -> bool:
        return not math.isinf(self.eps_high)

    def without_dual(self) -> "ClipSpec":
        return ClipSpec(self.eps_low, self.eps_high, None, self.cov)

    def sides(self, low: bool, high: bool) -> "ClipSpec":
        """This mechanism with only the named sides on (the clip probe's replays, docs/definitions.md section 8).

        An off side gets its disabling bound (``eps_low = 1``, ``eps_high = inf``);
        the extra bound ``dual_clip_c`` is off whenever a side is; a covariance
        selection keeps its selection rule and treats only the tokens of the sides left on.
        """
        if low and high:
            return self
        cov = None if self.cov is None else replace(self.cov, low=self.cov.low and low, high=self.cov.high and high)
        return ClipSpec(self.eps_low if low else 1.0, self.eps_high if high else math.inf, None, cov)
