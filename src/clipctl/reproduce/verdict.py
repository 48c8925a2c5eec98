"""The verdict rule and the power computation of ``clipctl reproduce`` (docs/reproduction.md).

Pure Python (no numpy, pandas or torch). A claim's deciding statistic comes
with a 95 % interval; the paper's direction is +1 (the statistic should be
> 0) or -1 (< 0).

1. ``verdict``: ``supported`` when the interval excludes 0 on the paper's
   side, ``contradicted`` when it excludes 0 on the other side,
   ``inconclusive`` otherwise (also when the interval is not finite).
2. ``seeds_for_power``: the number of seeds (pairs, or clusters) at which a
   two-sided one-sample (paired) t test at level ``alpha`` has power ``power``
   against the observed mean and standard deviation, from the noncentral
   approximation ``n = ((t_{1-alpha/2, n-1} + t_{power, n-1}) sd / |mean|)^2``:
   the smallest integer n that satisfies it.
3. ``overall``: the verdict of a claim from those of its sub-statements:
   ``contradicted`` if any is contradicted, ``supported`` if all are
   supported, ``inconclusive`` otherwise.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

from clipctl.effects import t_quantile

VERDICTS = ("supported", "contradicted", "inconclusive")
ALPHA = 0.05
POWER = 0.8
MAX_SEEDS = 1_000_000  # beyond this the answer is "not reachable by adding seeds"


def verdict(ci_low: float, ci_high: float, direction: int) -> str:
    """``supported`` / ``contradicted`` / ``inconclusive`` for a 95 % interval and the paper's sign (+1 or -1)."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction!r}")
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return "inconclusive"
    if ci_low > 0:
        return "supported" if direction > 0 else "contradicted"
    if ci_high < 0:
        return "supported" if direction < 0 else "contradicted"
    return "inconclusive"


def normal_quantile(p: float) -> float:
    """The ``p`` quantile of N(0, 1) (``0.5 < p < 1``), by bisection on ``erf`` to 1e-12."""
    if not 0.5 < p < 1.0:
        raise ValueError(f"normal_quantile needs 0.5 < p < 1, got {p}")
    lo, hi = 0.0, 10.0
    while hi - lo > 1e-12:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if 0.5 * (1.0 + math.erf(mid / math.sqrt(2.0))) < p else (lo, mid)
    return 0.5 * (lo + hi)


def _needed(ratio: float, n: int, alpha: float, power: float) -> float:
    """``((t_{1-alpha/2, n-1} + t_{power, n-1}) ratio)^2``: the seeds the approximation asks for, given ``n``."""
    return ((t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * ratio) ** 2


def seeds_for_power(mean: float, sd: float, *, alpha: float = ALPHA, power: float = POWER) -> Optional[int]:
    """Seeds (pairs) a two-sided paired t test at ``alpha`` needs for ``power`` if the truth were ``mean``, ``sd``.

    The noncentral approximation ``n = ((t_{1-alpha/2, n-1} + t_{power, n-1}) sd / |mean|)^2``
    (the normal version ``((z_{1-alpha/2} + z_power) sd / |mean|)^2`` with t
    quantiles at ``n - 1`` degrees of freedom) solved for the smallest integer
    ``n >= 2`` with ``needed(n) <= n``. ``needed`` falls as ``n`` grows, so
    that ``n`` is the fixed point of iterating the formula from the normal
    value, found here by bisection. ``None`` when ``mean`` is 0, an input is
    not finite, ``sd`` is not positive or the answer exceeds ``MAX_SEEDS``.
    """
    if not (math.isfinite(mean) and math.isfinite(sd)) or mean == 0 or sd <= 0:
        return None
    ratio = sd / abs(mean)
    if _needed(ratio, MAX_SEEDS, alpha, power) > MAX_SEEDS:
        return None
    lo, hi = 1, 2  # needed(lo) > lo (or lo = 1), needed(hi) <= hi
    while _needed(ratio, hi, alpha, power) > hi:
        lo, hi = hi, min(2 * hi, MAX_SEEDS)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _needed(ratio, mid, alpha, power) <= mid else (mid, hi)
    return hi


def overall(verdicts: Iterable[str]) -> str:
    """One claim's verdict from its sub-statements' (``contradicted`` > all ``supported`` > ``inconclusive``)."""
    vs = list(verdicts)
    if not vs:
        return "inconclusive"
    if "contradicted" in vs:
        return "contradicted"
    return "supported" if all(v == "supported" for v in vs) else "inconclusive"


def estimate(
    sub: str, statement: str, direction: int, method: str, *, n: int, mean: float, se: float, df: Optional[float],
    extra: Optional[dict] = None,
) -> dict:
    """One sub-statement's decided estimate: the interval ``mean +- t_{0.975, df} se``, its verdict and
    the seeds the observed effect would need for 80 % power (``sd = se sqrt(n)``; ``n``: seeds, pairs or clusters)."""
    ok = df is not None and df >= 1 and math.isfinite(se) and math.isfinite(mean)
    half = t_quantile(0.975, df) * se if ok else math.nan
    lo, hi = mean - half, mean + half
    sd = se * math.sqrt(n) if ok else math.nan
    return {
        "id": sub, "statement": statement, "direction": "> 0" if direction > 0 else "< 0", "method": method,
        "n": int(n), "df": df, "estimate": mean, "se": se, "ci_low": lo, "ci_high": hi,
        "verdict": verdict(lo, hi, direction), "seeds_for_80pct_power": seeds_for_power(mean, sd),
        # Every seed gave the same value (a share over few steps can): the interval has width 0.
        "zero_spread": bool(ok and se == 0),
        **(extra or {}),
    }
