"""Column names of the logged tables and the step-level clip statistics, without torch.

The names here are what the trainer and the simulator write and what
``clipctl.analysis`` reads; ``clipctl.algo`` re-exports them, so
``from clipctl.algo import SUM_KEYS`` keeps working. Importing this module
loads neither torch nor any other part of clipctl, so analysis of finished
runs starts fast. Definitions: docs/definitions.md sections 6-8, columns:
docs/metrics.md.
"""

from __future__ import annotations

import math
from typing import Mapping

# Additive quantities produced per update minibatch (``clipctl.algo.clip_stat_sums``);
# all float64 scalars. Counts are of sampled tokens (pi_old measure); ``*wsum*`` are
# ratio-weighted (pi_k measure).
SUM_KEYS = (
    "n_tokens",         # valid tokens
    "n_below",          # ratio_below: r < 1 - eps_low        (region X)
    "n_above",          # ratio_above: r > 1 + eps_high       (region Y)
    "n_clip_low",       # ratio_below and A < 0
    "n_clip_high",      # ratio_above and A > 0
    "n_dual_clip",      # A < 0 and r > c
    "w_sum",            # sum over valid tokens of r_t
    "w_sum_below",      # sum over X of r_t
    "w_sum_above",      # sum over Y of r_t
    "qdev_wsum_below",  # sum over X of r_t (E[Q|s_t] - Q_t), Q_t = pi(y_t) (log pi(y_t) + H_t)
    "qdev_wsum_above",  # sum over Y of r_t (E[Q|s_t] - Q_t)
    "gap_wsum_below",   # sum over X of r_t (-log pi(y_t) - H_t)
    "gap_wsum_above",   # sum over Y of r_t (-log pi(y_t) - H_t)
)

# Clip fractions and Theorem 1/2 brackets, in the steps and updates tables.
STAT_KEYS = (
    "clip_low_frac",
    "clip_high_frac",
    "dual_clip_frac",
    "ratio_below_frac",
    "ratio_above_frac",
    "thm1_low",
    "thm1_high",
    "thm2_low",
    "thm2_high",
    "thm1_drift",
    "thm2_drift",
)

# Clip-probe columns of the steps table (docs/definitions.md section 8; NaN on
# steps that are not probed).
PROBE_KEYS = (
    "entropy_post_replay",
    "entropy_post_noclip",
    "entropy_post_lowonly",
    "entropy_post_highonly",
    "clip_attributed_dH",
    "clip_low_attributed_dH",
    "clip_high_attributed_dH",
    "probe_noise",
)


def _div(num: float, den: float) -> float:
    # An empty region has no conditional mean: NaN, never 0 (docs/definitions.md section 7).
    return num / den if den > 0 else math.nan


def finalize_clip_stats(sums: Mapping[str, float]) -> dict[str, float]:
    """Fractions and Theorem 1/2 brackets (``STAT_KEYS``) from additive sums (``SUM_KEYS``).

    ``sums`` may hold floats or scalar tensors. With ``W``, ``W_X``, ``W_Y`` the
    ratio-weight sums (all tokens, X, Y):

    - ``clip_*_frac = n_clip_* / n_tokens``: plain shares of sampled tokens
      (the share of the loss's tokens whose gradient a clip zeroed);
    - ``ratio_below_frac = W_X / W`` and ``ratio_above_frac = W_Y / W``:
      estimates of ``p = P_k(X)`` and ``q = P_k(Y)``;
    - ``thm1_low = sum_X r (E[Q|s] - Q) / W_X`` (estimates ``E[Q] - E[Q|X]``),
      ``thm1_high`` the same over Y;
    - ``thm2_low = sum_X r (-log pi - H) / W_X`` (estimates ``E[-log pi|X] - H``),
      ``thm2_high`` the same over Y;
    - ``thmK_drift = ratio_below_frac * thmK_low - ratio_above_frac * thmK_high``,
      with an empty region's term counted as 0 (its probability is 0) and NaN
      only when there are no valid tokens at all.
    """
    s = {k: float(sums[k]) for k in SUM_KEYS}
    n, w = s["n_tokens"], s["w_sum"]
    p_below = _div(s["w_sum_below"], w) if n > 0 else math.nan
    p_above = _div(s["w_sum_above"], w) if n > 0 else math.nan
    out = {
        "clip_low_frac": _div(s["n_clip_low"], n),
        "clip_high_frac": _div(s["n_clip_high"], n),
        "dual_clip_frac": _div(s["n_dual_clip"], n),
        "ratio_below_frac": p_below,
        "ratio_above_frac": p_above,
        "thm1_low": _div(s["qdev_wsum_below"], s["w_sum_below"]) if s["n_below"] > 0 else math.nan,
        "thm1_high": _div(s["qdev_wsum_above"], s["w_sum_above"]) if s["n_above"] > 0 else math.nan,
        "thm2_low": _div(s["gap_wsum_below"], s["w_sum_below"]) if s["n_below"] > 0 else math.nan,
        "thm2_high": _div(s["gap_wsum_above"], s["w_sum_above"]) if s["n_above"] > 0 else math.nan,
    }
    for thm in ("thm1", "thm2"):
        low = p_below * out[f"{thm}_low"] if s["n_below"] > 0 else 0.0
        high = p_above * out[f"{thm}_high"] if s["n_above"] > 0 else 0.0
        out[f"{thm}_drift"] = (low - high) if n > 0 else math.nan
    return out
