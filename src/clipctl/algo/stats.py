"""Clip events (SPEC 6) and the Theorem 1/2 statistics (SPEC 7).

``clip_stat_sums`` turns one update minibatch into additive sums and counts;
sums from several minibatches (or ranks) are combined by adding them, and
``finalize_clip_stats`` turns any such total into the logged fractions and
conditional means. Adding sums before dividing is what "combined by token
counts" means: a conditional mean is weighted by the size of its region.

The theorems take probabilities and expectations under the policy being
updated, ``pi_k``, while the tokens were sampled from ``pi_old``. Each sampled
token is therefore weighted by its ratio ``r_t = pi_k(y_t) / pi_old(y_t)``
(self-normalised importance sampling): with ``W = sum_t r_t`` over valid
tokens and ``W_X = sum_{t in X} r_t``,

- ``P_k(X) ~ W_X / W`` and ``E_k[f | X] ~ sum_{t in X} r_t f_t / W_X``.

Thm 1 is centred per state with the exact ``E_k[Q | s_t] = sum_a pi(a)^2
(log pi(a) + H_t)`` (``expected_q``), from the same pass over the vocabulary
as ``H_t`` (``token_entropy(..., with_expected_q=True)`` or
``fused_logprobs_entropy(..., with_expected_q=True)``). Thm 2 needs no extra
input: ``E_k[-log pi | s_t] = H_t``.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import torch

from clipctl.algo.losses import log_ratio

# Additive quantities produced per minibatch; all float64 scalars.
# Counts are of sampled tokens (pi_old measure); ``*wsum*`` are ratio-weighted (pi_k measure).
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


def pooled_expected_q(
    logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, entropy: torch.Tensor, *, importance_weighted: bool = True
) -> torch.Tensor:
    """The fallback centre of Thm 1 when the exact per-state ``E[Q|s_t]`` is not available.

    One scalar for the whole batch (float64): the self-normalised,
    ratio-weighted mean of ``Q_t = pi(y_t) (log pi(y_t) + H_t)`` over its
    valid tokens (the plain mean with ``importance_weighted=False``). It pools
    all states of the batch, so it centres each token on an average over
    states rather than on its own state's expectation; it is exact only when
    all tokens share one state (the tabular simulation).
    """
    valid = mask.bool()
    logp = logp.detach().double()
    q = torch.exp(logp) * (logp + entropy.double())
    w = _weights(logp, old_logp, valid, importance_weighted)
    den = w.sum()
    num = torch.where(valid, w * q, torch.zeros_like(q)).sum()
    return num / den if den > 0 else torch.zeros((), dtype=torch.float64)


def _weights(logp: torch.Tensor, old_logp: torch.Tensor, valid: torch.Tensor, importance_weighted: bool) -> torch.Tensor:
    """``r_t`` (or 1) on valid tokens, exactly 0 elsewhere; float64."""
    if importance_weighted:
        w = torch.exp(log_ratio(logp.detach().double(), old_logp.double()))
    else:
        w = torch.ones(logp.shape, dtype=torch.float64, device=logp.device)
    return torch.where(valid, w, torch.zeros_like(w))


@torch.no_grad()
def clip_stat_sums(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    entropy: torch.Tensor,
    expected_q: Optional[torch.Tensor] = None,
    *,
    eps_low: float,
    eps_high: float,
    dual_clip_c: Optional[float] = None,
    importance_weighted: bool = True,
) -> dict[str, torch.Tensor]:
    """Additive sums (``SUM_KEYS``) for one minibatch, estimating expectations under ``pi_k``.

    Args:
        logp: ``[N, T]`` log pi_k(y_t) (the policy being updated).
        old_logp: ``[N, T]`` log pi_old(y_t) (the sampling policy).
        advantages: ``[N]`` or ``[N, T]``.
        mask: ``[N, T]`` valid tokens.
        entropy: ``[N, T]`` H_t under pi_k.
        expected_q: ``[N, T]`` the exact ``E_{pi_k}[Q | s_t] = sum_a pi(a)^2 (log pi(a) + H_t)``
            per position (``with_expected_q=True`` of ``token_entropy`` /
            ``token_logprobs_and_entropy`` / ``fused_logprobs_entropy``). When
            None, every token is centred on ``pooled_expected_q`` of this call's
            tokens (an approximation across states, see there).
        importance_weighted: weight each token by ``r_t`` (default). ``False``
            gives the unweighted estimator, i.e. the same brackets under
            ``pi_old``; it is biased toward clip-low and kept for comparisons
            (old runs, the estimator tests).

    The counts ``n_*`` are always plain counts of sampled tokens.
    """
    ev = clip_event_masks(
        logp, old_logp, advantages, mask, eps_low=eps_low, eps_high=eps_high, dual_clip_c=dual_clip_c
    )
    valid = mask.bool()
    w = _weights(logp, old_logp, valid, importance_weighted)
    logp = logp.detach().double()
    entropy = entropy.double()
    if expected_q is None:
        centre = pooled_expected_q(logp, old_logp, mask, entropy, importance_weighted=importance_weighted)
    else:
        centre = expected_q.detach().double()
    qdev = centre - torch.exp(logp) * (logp + entropy)
    gap = -logp - entropy

    def wsum(x: Optional[torch.Tensor], where: torch.Tensor) -> torch.Tensor:
        # where() rather than a product: garbage (NaN, inf) on padding must not leak in.
        term = w if x is None else w * x
        return torch.where(where, term, torch.zeros_like(term)).sum()

    def count(where: torch.Tensor) -> torch.Tensor:
        return where.sum().double()

    return {
        "n_tokens": count(valid),
        "n_below": count(ev["ratio_below"]),
        "n_above": count(ev["ratio_above"]),
        "n_clip_low": count(ev["clip_low"]),
        "n_clip_high": count(ev["clip_high"]),
        "n_dual_clip": count(ev["dual_clip"]),
        "w_sum": wsum(None, valid),
        "w_sum_below": wsum(None, ev["ratio_below"]),
        "w_sum_above": wsum(None, ev["ratio_above"]),
        "qdev_wsum_below": wsum(qdev, ev["ratio_below"]),
        "qdev_wsum_above": wsum(qdev, ev["ratio_above"]),
        "gap_wsum_below": wsum(gap, ev["ratio_below"]),
        "gap_wsum_above": wsum(gap, ev["ratio_above"]),
    }


def add_sums(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Element-wise sum of two ``clip_stat_sums`` results."""
    return {k: a[k] + b[k] for k in SUM_KEYS}


def _div(num: float, den: float) -> float:
    # An empty region has no conditional mean: NaN, never 0 (SPEC 7).
    return num / den if den > 0 else math.nan


def finalize_clip_stats(sums: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """Fractions and Theorem 1/2 brackets (``STAT_KEYS``) from additive sums.

    With ``W``, ``W_X``, ``W_Y`` the ratio-weight sums (all tokens, X, Y):

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


# SPEC 7b columns of the steps table (NaN on steps that are not probed).
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


def probe_replays(eps_low: float, eps_high: float) -> dict[str, tuple[float, float]]:
    """The four replays of the clip probe as ``label -> (eps_low, eps_high)``.

    ``replay``: the run's own clip settings (and its dual clip), i.e. the real
    step again: its distance to the real step is the probe's noise floor;
    ``noclip``: no clipping at all; ``lowonly``: the run's clip-low alone;
    ``highonly``: the run's clip-high alone. Dual clip is off in the last three.
    """
    return {
        "replay": (eps_low, eps_high),
        "noclip": (1.0, math.inf),
        "lowonly": (eps_low, math.inf),
        "highonly": (1.0, eps_high),
    }


def attributed_entropy_changes(entropy_post: float, post: Mapping[str, float]) -> dict[str, float]:
    """Probe columns from the real ``entropy_post`` and the replays' Eq. 4 entropies.

    Every attributed change is a difference of two replays, so non-determinism
    of the real step (GPU atomics) cannot land in one of them only; it is
    measured on its own as ``probe_noise = entropy_post - entropy_post_replay``
    (exactly 0 on a CPU).
    """
    return {
        "entropy_post_replay": post["replay"],
        "entropy_post_noclip": post["noclip"],
        "entropy_post_lowonly": post["lowonly"],
        "entropy_post_highonly": post["highonly"],
        "clip_attributed_dH": post["replay"] - post["noclip"],
        "clip_low_attributed_dH": post["lowonly"] - post["noclip"],
        "clip_high_attributed_dH": post["highonly"] - post["noclip"],
        "probe_noise": entropy_post - post["replay"],
    }
