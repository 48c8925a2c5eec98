"""Clip events (SPEC 6) and the Theorem 1/2 statistics (SPEC 7).

``clip_stat_sums`` turns one update minibatch into additive sums and counts;
sums from several minibatches (or ranks) are combined by adding them, and
``finalize_clip_stats`` turns any such total into the logged fractions and
conditional means. Adding sums before dividing is what "combined by token
counts" means: a conditional mean is weighted by the size of its region.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import torch

from clipctl.algo.losses import log_ratio

# Additive quantities produced per minibatch; all float64 scalars.
SUM_KEYS = (
    "n_tokens",         # valid tokens
    "n_below",          # ratio_below: r < 1 - eps_low        (region X)
    "n_above",          # ratio_above: r > 1 + eps_high       (region Y)
    "n_clip_low",       # ratio_below and A < 0
    "n_clip_high",      # ratio_above and A > 0
    "n_dual_clip",      # A < 0 and r > c
    "q_sum",            # sum over all tokens of Q_t = pi(y_t) (log pi(y_t) + H_t)
    "q_sum_below",      # the same over X
    "q_sum_above",      # the same over Y
    "gap_sum_below",    # sum over X of (-log pi(y_t) - H_t)
    "gap_sum_above",    # sum over Y of (-log pi(y_t) - H_t)
)

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


def clip_event_masks(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float,
    eps_high: float,
    dual_clip_c: Optional[float] = None,
) -> dict[str, torch.Tensor]:
    """Boolean ``[N, T]`` masks of the SPEC 6 events on valid tokens.

    Keys: ``ratio_below``, ``ratio_above``, ``clip_low``, ``clip_high``, ``dual_clip``.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand_as(logp)
    valid = mask.bool()
    ratio = torch.exp(log_ratio(logp.detach(), old_logp))
    below = valid & (ratio < 1.0 - eps_low)
    above = valid & (ratio > 1.0 + eps_high)
    if dual_clip_c is None:
        dual = torch.zeros_like(valid)
    else:
        dual = valid & (advantages < 0) & (ratio > dual_clip_c)
    return {
        "ratio_below": below,
        "ratio_above": above,
        "clip_low": below & (advantages < 0),
        "clip_high": above & (advantages > 0),
        "dual_clip": dual,
    }


@torch.no_grad()
def clip_stat_sums(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    entropy: torch.Tensor,
    *,
    eps_low: float,
    eps_high: float,
    dual_clip_c: Optional[float] = None,
) -> dict[str, torch.Tensor]:
    """Additive sums (``SUM_KEYS``) for one minibatch, under the current policy.

    Args:
        logp: ``[N, T]`` log pi_theta(y_t) (the policy being updated).
        old_logp: ``[N, T]`` log pi_old(y_t).
        advantages: ``[N]`` or ``[N, T]``.
        mask: ``[N, T]`` valid tokens.
        entropy: ``[N, T]`` H_t under pi_theta.
    """
    ev = clip_event_masks(
        logp, old_logp, advantages, mask, eps_low=eps_low, eps_high=eps_high, dual_clip_c=dual_clip_c
    )
    logp = logp.detach().double()
    entropy = entropy.double()
    valid = mask.bool()
    q = torch.exp(logp) * (logp + entropy)
    gap = -logp - entropy

    def total(x: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        return torch.where(where, x, torch.zeros_like(x)).sum()

    def count(where: torch.Tensor) -> torch.Tensor:
        return where.sum().double()

    return {
        "n_tokens": count(valid),
        "n_below": count(ev["ratio_below"]),
        "n_above": count(ev["ratio_above"]),
        "n_clip_low": count(ev["clip_low"]),
        "n_clip_high": count(ev["clip_high"]),
        "n_dual_clip": count(ev["dual_clip"]),
        "q_sum": total(q, valid),
        "q_sum_below": total(q, ev["ratio_below"]),
        "q_sum_above": total(q, ev["ratio_above"]),
        "gap_sum_below": total(gap, ev["ratio_below"]),
        "gap_sum_above": total(gap, ev["ratio_above"]),
    }


def add_sums(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Element-wise sum of two ``clip_stat_sums`` results."""
    return {k: a[k] + b[k] for k in SUM_KEYS}


def _div(num: float, den: float) -> float:
    # An empty region has no conditional mean: NaN, never 0 (SPEC 7).
    return num / den if den > 0 else math.nan


def finalize_clip_stats(sums: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """Fractions and Theorem 1/2 brackets (``STAT_KEYS``) from additive sums.

    - ``thm1_low = mean_all(Q) - mean_X(Q)``, ``thm1_high = mean_all(Q) - mean_Y(Q)``
    - ``thm2_low = mean_X(-log pi - H)``, ``thm2_high = mean_Y(-log pi - H)``
    - ``thmK_drift = ratio_below_frac * thmK_low - ratio_above_frac * thmK_high``,
      with an empty region's term counted as 0 (its probability is 0) and NaN
      only when there are no valid tokens at all.
    """
    s = {k: float(sums[k]) for k in SUM_KEYS}
    n = s["n_tokens"]
    p_below = _div(s["n_below"], n)
    p_above = _div(s["n_above"], n)
    q_all = _div(s["q_sum"], n)
    out = {
        "clip_low_frac": _div(s["n_clip_low"], n),
        "clip_high_frac": _div(s["n_clip_high"], n),
        "dual_clip_frac": _div(s["n_dual_clip"], n),
        "ratio_below_frac": p_below,
        "ratio_above_frac": p_above,
        "thm1_low": q_all - _div(s["q_sum_below"], s["n_below"]),
        "thm1_high": q_all - _div(s["q_sum_above"], s["n_above"]),
        "thm2_low": _div(s["gap_sum_below"], s["n_below"]),
        "thm2_high": _div(s["gap_sum_above"], s["n_above"]),
    }
    for thm in ("thm1", "thm2"):
        low = p_below * out[f"{thm}_low"] if s["n_below"] > 0 else 0.0
        high = p_above * out[f"{thm}_high"] if s["n_above"] > 0 else 0.0
        out[f"{thm}_drift"] = (low - high) if n > 0 else math.nan
    return out


# SPEC 7b columns of the steps table (NaN on steps that are not probed).
PROBE_KEYS = (
    "entropy_post_noclip",
    "entropy_post_lowonly",
    "entropy_post_highonly",
    "clip_attributed_dH",
    "clip_low_attributed_dH",
    "clip_high_attributed_dH",
)


def probe_replays(eps_low: float, eps_high: float) -> dict[str, tuple[float, float]]:
    """The three counterfactual replays of SPEC 7b as ``label -> (eps_low, eps_high)``.

    ``noclip``: no clipping at all; ``lowonly``: the run's clip-low alone;
    ``highonly``: the run's clip-high alone. Dual clip is off in all three.
    """
    return {
        "noclip": (1.0, math.inf),
        "lowonly": (eps_low, math.inf),
        "highonly": (1.0, eps_high),
    }


def attributed_entropy_changes(entropy_post: float, post: Mapping[str, float]) -> dict[str, float]:
    """SPEC 7b columns from the real ``entropy_post`` and the replays' Eq. 4 entropies."""
    return {
        "entropy_post_noclip": post["noclip"],
        "entropy_post_lowonly": post["lowonly"],
        "entropy_post_highonly": post["highonly"],
        "clip_attributed_dH": entropy_post - post["noclip"],
        "clip_low_attributed_dH": post["lowonly"] - post["noclip"],
        "clip_high_attributed_dH": post["highonly"] - post["noclip"],
    }
