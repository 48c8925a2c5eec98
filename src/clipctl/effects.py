"""Statistics of clip effects: the additive split of the probe, clustered regression, paired differences.

Pure numpy (no pandas, torch or config); ``clipctl.analysis`` applies them to
run logs (docs/analysis.md, "Attribution regression" and "Paired setting
effects"). Quantities are those of docs/definitions.md section 8.

1. ``attribution_split``: the four probe replays -> the total clip effect, its
   exactly additive (Shapley) split into clip-low and clip-high, the one-sided
   effects and their interaction.
2. ``ols_clustered``: least squares ``y = a + b x`` with cluster-robust (CR1)
   standard errors, for an attribution regressed on the unclipped step's change.
3. ``paired_summary``: mean, standard error, t-based 95 % interval and sign
   counts of per-pair differences.
"""

from __future__ import annotations

import math

import numpy as np

# A coefficient is read as resolved when it is at least this many standard errors from 0.
RESOLVED_SE = 2.0


def attribution_split(replay, noclip, lowonly, highonly) -> dict[str, np.ndarray]:
    """Entropy changes attributed to clipping, from the Eq. 4 entropies after the four replays.

    With ``R, N, L, H`` the entropies after replaying a step with the run's
    clips, none, clip-low only and clip-high only (docs/definitions.md section 8):

    - ``clip_attributed_dH = R - N`` (total);
    - ``clip_low_attributed_dH = 1/2 [(L - N) + (R - H)]`` and
      ``clip_high_attributed_dH = 1/2 [(H - N) + (R - L)]``: the Shapley values
      of the two-player game "which clips are on", so low + high = total;
    - ``clip_low_alone_dH = L - N``, ``clip_high_alone_dH = H - N``: each clip
      with the other off;
    - ``clip_interaction_dH = total - low_alone - high_alone = R - L - H + N``.

    Inputs broadcast (floats or arrays of one shape); NaN (a step not probed)
    stays NaN. Returns float arrays keyed by column name.
    """
    r, n, lo, hi = (np.asarray(v, dtype=float) for v in (replay, noclip, lowonly, highonly))
    total = r - n
    low_alone, high_alone = lo - n, hi - n
    return {
        "clip_attributed_dH": total,
        "clip_low_attributed_dH": 0.5 * (low_alone + (r - hi)),
        "clip_high_attributed_dH": 0.5 * (high_alone + (r - lo)),
        "clip_low_alone_dH": low_alone,
        "clip_high_alone_dH": high_alone,
        "clip_interaction_dH": total - low_alone - high_alone,
    }


def _cr1(design: np.ndarray, y: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """``(beta, V, G)``: least squares of ``y`` (N) on ``design`` (N x K) and its CR1 covariance (K x K).

    ``V = c B [sum_g s_g s_g'] B``, ``B = (X'X)^-1``, ``s_g = X_g' u_g`` (the
    cluster's score), ``c = G / (G - 1) * (N - 1) / (N - K)``; ``V`` is NaN
    with fewer than 2 clusters or ``N <= K``.
    """
    n, k = design.shape
    _, ids = np.unique(labels.astype(str), return_inverse=True)
    g = int(ids.max()) + 1
    bread = np.linalg.inv(design.T @ design)
    beta = bread @ design.T @ y
    if g < 2 or n <= k:
        return beta, np.full((k, k), math.nan), g
    scores = np.zeros((g, k))
    np.add.at(scores, ids, design * (y - design @ beta)[:, None])
    return beta, (g / (g - 1)) * ((n - 1) / (n - k)) * bread @ (scores.T @ scores) @ bread, g


def _finite_rows(*columns) -> list[np.ndarray]:
    arrays = [np.asarray(c, dtype=float) for c in columns[:-1]]
    ok = np.logical_and.reduce([np.isfinite(a) for a in arrays])
    return [a[ok] for a in arrays] + [np.asarray(columns[-1], dtype=object)[ok]]


def ols_clustered(x, y, clusters) -> dict:
    """``y = intercept + slope x`` by least squares, standard errors clustered (CR1).

    Shapes: ``x``, ``y``, ``clusters`` are length-``N`` sequences (clusters: any
    hashable labels). Rows where ``x`` or ``y`` is not finite are dropped.
    With ``X = [1, x]`` (N x 2), ``beta = (X'X)^-1 X'y``, residuals ``u``, and
    ``G`` clusters::

        V = c (X'X)^-1 [sum_g (X_g' u_g)(X_g' u_g)'] (X'X)^-1,
        c = G / (G - 1) * (N - 1) / (N - 2)

    (Liang & Zeger's sandwich with Stata's small-sample factor; Cameron &
    Miller 2015, "A Practitioner's Guide to Cluster-Robust Inference", eq. 11).
    Inference uses ``G - 1`` degrees of freedom: ``*_ci_low/high`` is the
    t-based 95 % interval. Returns ``n``, ``n_clusters``, ``intercept``,
    ``slope``, their ``_se`` and ``_ci_low``/``_ci_high``; coefficients are NaN
    with fewer than 2 rows or a constant ``x``, standard errors also with
    fewer than 2 clusters or 3 rows.
    """
    xs, ys, labels = _finite_rows(x, y, clusters)
    n = len(xs)
    out = {"n": n, "n_clusters": len(set(labels.astype(str)))}
    out.update({f"{c}{s}": math.nan for c in ("intercept", "slope") for s in ("", "_se", "_ci_low", "_ci_high")})
    if n < 2 or np.ptp(xs) == 0:
        return out
    beta, cov, g = _cr1(np.column_stack([np.ones(n), xs]), ys, labels)
    half = t_quantile(0.975, g - 1) if g > 1 else math.nan
    for i, name in enumerate(("intercept", "slope")):
        se = math.sqrt(max(float(cov[i, i]), 0.0)) if math.isfinite(cov[i, i]) else math.nan
        out[name], out[f"{name}_se"] = float(beta[i]), se
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = out[name] - half * se, out[name] + half * se
    return out


def mean_clustered(y, clusters) -> tuple[float, float]:
    """Mean of the finite ``y`` and its CR1 standard error (the intercept-only case of ``ols_clustered``):
    ``SE^2 = G / (G - 1) * sum_g (sum_{i in g} (y_i - mean))^2 / N^2``; NaN with fewer than 2 clusters or rows."""
    ys, labels = _finite_rows(y, clusters)
    if not len(ys):
        return math.nan, math.nan
    beta, cov, _ = _cr1(np.ones((len(ys), 1)), ys, labels)
    return float(beta[0]), math.sqrt(max(float(cov[0, 0]), 0.0)) if math.isfinite(cov[0, 0]) else math.nan


def paired_summary(diffs) -> dict:
    """Mean, SE (sd / sqrt(n)), t-based 95 % interval and sign counts of per-pair differences.

    ``diffs``: length-``n`` array of (setting - baseline) per pair; non-finite
    entries are dropped. The interval is ``mean +- t_{0.975, n-1} SE``; SE and
    interval are NaN with fewer than 2 pairs. Returns ``n_pairs``, ``mean``,
    ``se``, ``ci_low``, ``ci_high``, ``n_pos``, ``n_neg`` (pairs with a
    difference > 0 and < 0).
    """
    d = np.asarray(diffs, dtype=float)
    d = d[np.isfinite(d)]
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    se = float(d.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
    half = t_quantile(0.975, n - 1) * se if n > 1 else math.nan
    return {
        "n_pairs": n, "mean": mean, "se": se, "ci_low": mean - half, "ci_high": mean + half,
        "n_pos": int((d > 0).sum()), "n_neg": int((d < 0).sum()),
    }


def reading(estimate: float, se: float, df: float, positive: str = "raises", negative: str = "lowers") -> str:
    """``positive``/``negative`` when ``estimate`` is resolved from 0, else ``"unresolved"``.

    Resolved: at least ``RESOLVED_SE`` standard errors from 0 and outside the
    t-based 95 % interval with ``df`` degrees of freedom (the stricter of the
    two: with few clusters or pairs, ``t_{0.975, df}`` exceeds 2). A NaN SE or
    ``df < 1`` is unresolved.
    """
    if not (math.isfinite(estimate) and math.isfinite(se)) or not df >= 1 or estimate == 0:
        return "unresolved"
    if abs(estimate) < max(RESOLVED_SE, t_quantile(0.975, df)) * se:
        return "unresolved"
    return positive if estimate > 0 else negative


# ---------------------------------------------------------------- Student's t without SciPy


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (``0.5 < p < 1``), by bisection on ``t_cdf`` to 1e-12."""
    if not (0.5 < p < 1.0) or not df >= 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)
