"""Clip statistics and the Theorem 1/2 statistics (docs/definitions.md sections 6 and 7).

``clip_stat_sums`` turns what the policy loss computed on one update
minibatch (``PolicyLossOutput``: its clip events and log ratio) into additive
sums and counts, so the logged events are the ones the gradient saw;
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
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from clipctl.algo.losses import PolicyLossOutput

# The column names and finalize_clip_stats live in the torch-free clipctl.schema (analysis reads them without torch).
from clipctl.schema import SUM_KEYS


def _weights(log_ratio: torch.Tensor, valid: torch.Tensor, importance_weighted: bool) -> torch.Tensor:
    """``r_t = exp(l_t)`` (or 1) on valid tokens, exactly 0 elsewhere; float64."""
    if importance_weighted:
        w = torch.exp(log_ratio.double())
    else:
        w = torch.ones(log_ratio.shape, dtype=torch.float64, device=log_ratio.device)
    return torch.where(valid, w, torch.zeros_like(w))


def _q(logp: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
    """``Q_t = pi(y_t) (log pi(y_t) + H_t)`` in float64."""
    logp = logp.detach().double()
    return torch.exp(logp) * (logp + entropy.double())


def _weighted_mean(x: torch.Tensor, w: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``sum_t w_t x_t / sum_t w_t`` over valid tokens (``w`` is 0 elsewhere); 0 when no weight."""
    den = w.sum()
    num = torch.where(valid, w * x, torch.zeros_like(x)).sum()
    return torch.where(den > 0, num / den, torch.zeros_like(num))


def pooled_expected_q(
    logp: torch.Tensor, log_ratio: torch.Tensor, mask: torch.Tensor, entropy: torch.Tensor,
    *, importance_weighted: bool = True,
) -> torch.Tensor:
    """The fallback centre of Thm 1 when the exact per-state ``E[Q|s_t]`` is not available.

    ``logp``, ``log_ratio`` (the loss's clamped ``l_t``, ``PolicyLossOutput.log_ratio``),
    ``mask``, ``entropy``: ``[N, T]``. One scalar for the whole batch
    (float64): the self-normalised, ratio-weighted mean of
    ``Q_t = pi(y_t) (log pi(y_t) + H_t)`` over its valid tokens (the plain mean
    with ``importance_weighted=False``). It pools all states of the batch, so
    it centres each token on an average over states rather than on its own
    state's expectation; it is exact only when all tokens share one state (the
    tabular simulation).
    """
    valid = mask.bool()
    return _weighted_mean(_q(logp, entropy), _weights(log_ratio, valid, importance_weighted), valid)


@torch.no_grad()
def clip_stat_sums(
    out: PolicyLossOutput,
    mask: torch.Tensor,
    entropy: torch.Tensor,
    expected_q: Optional[torch.Tensor] = None,
    *,
    importance_weighted: bool = True,
) -> dict[str, torch.Tensor]:
    """Additive sums (``SUM_KEYS``) for one minibatch, estimating expectations under ``pi_k``.

    Args:
        out: what the policy loss computed on the minibatch (``policy_loss``):
            its events are counted, its ``log_ratio`` gives the weights
            ``r_t = exp(l_t)`` (float64) and its ``logp`` is ``log pi_k(y_t)``.
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

    With ``X = out.events.ratio_below``, ``Y = out.events.ratio_above``:
    ``w_sum_X = sum_{t in X} r_t``, ``qdev_wsum_X = sum_{t in X} r_t (E[Q|s_t] - Q_t)``,
    ``gap_wsum_X = sum_{t in X} r_t (-log pi(y_t) - H_t)`` (docs/definitions.md section 7).
    The counts ``n_*`` are always plain counts of sampled tokens.
    """
    ev = out.events
    valid = mask.bool()
    w = _weights(out.log_ratio, valid, importance_weighted)
    logp = out.logp.double()
    entropy = entropy.double()
    q = _q(logp, entropy)
    centre = _weighted_mean(q, w, valid) if expected_q is None else expected_q.detach().double()
    qdev = centre - q
    gap = -logp - entropy

    def wsum(x: Optional[torch.Tensor], where: torch.Tensor) -> torch.Tensor:
        # where() rather than a product: garbage (NaN, inf) on padding must not leak in.
        term = w if x is None else w * x
        return torch.where(where, term, torch.zeros_like(term)).sum()

    def count(where: torch.Tensor) -> torch.Tensor:
        return where.sum().double()

    return {
        "n_tokens": count(valid),
        "n_below": count(ev.ratio_below),
        "n_above": count(ev.ratio_above),
        "n_clip_low": count(ev.clip_low),
        "n_clip_high": count(ev.clip_high),
        "n_dual_clip": count(ev.dual_clip),
        "w_sum": wsum(None, valid),
        "w_sum_below": wsum(None, ev.ratio_below),
        "w_sum_above": wsum(None, ev.ratio_above),
        "qdev_wsum_below": wsum(qdev, ev.ratio_below),
        "qdev_wsum_above": wsum(qdev, ev.ratio_above),
        "gap_wsum_below": wsum(gap, ev.ratio_below),
        "gap_wsum_above": wsum(gap, ev.ratio_above),
    }


def add_sums(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Element-wise sum of two ``clip_stat_sums`` results."""
    return {k: a[k] + b[k] for k in SUM_KEYS}


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


def attributed_entropy_changes(
    entropy_post: float, post: Mapping[str, float], repeats: Sequence[float] = ()
) -> dict[str, float]:
    """Probe columns from the real ``entropy_post`` and the replays' Eq. 4 entropies (docs/definitions.md section 8).

    ``post``: label -> Eq. 4 entropy after that replay (``probe_replays``).
    With ``R = replay``, ``N = noclip``, ``L = lowonly``, ``H = highonly``:

    - ``clip_attributed_dH = R - N`` (all clipping);
    - the Shapley split of it over the two clips, exactly additive:
      ``clip_low_attributed_dH = ((L - N) + (R - H)) / 2``,
      ``clip_high_attributed_dH = ((H - N) + (R - L)) / 2``;
    - one clip with the other off: ``clip_low_alone_dH = L - N``,
      ``clip_high_alone_dH = H - N``, and
      ``clip_interaction_dH = (R - N) - (L - N) - (H - N) = R - L - H + N``.

    Every change is a difference of replays, so non-determinism of the real
    step (GPU atomics) cannot land in one of them only; it is measured on its
    own as ``probe_noise = entropy_post - R`` (exactly 0 on a CPU).
    ``repeats``: the Eq. 4 entropies of extra runs of the identity replay
    (``log.probe_repeats - 1`` of them); ``probe_noise_sd`` is the sample
    standard deviation of ``R`` and them, NaN with none.
    """
    r, n, lo, hi = post["replay"], post["noclip"], post["lowonly"], post["highonly"]
    total, low_alone, high_alone = r - n, lo - n, hi - n
    runs = [r, *repeats]
    return {
        "entropy_post_replay": r,
        "entropy_post_noclip": n,
        "entropy_post_lowonly": lo,
        "entropy_post_highonly": hi,
        "clip_attributed_dH": total,
        "clip_low_attributed_dH": 0.5 * (low_alone + (r - hi)),
        "clip_high_attributed_dH": 0.5 * (high_alone + (r - lo)),
        "clip_low_alone_dH": low_alone,
        "clip_high_alone_dH": high_alone,
        "clip_interaction_dH": total - low_alone - high_alone,
        "probe_noise": entropy_post - r,
        "probe_noise_sd": float(np.std(runs, ddof=1)) if len(runs) > 1 else math.nan,
    }


def agreeing_replays(n_clip_low: float, n_clip_high: float, n_dual_clip: float) -> frozenset[str]:
    """Replays that are the identity replay by construction, from the real step's event counts.

    On one minibatch from one state, two clip settings give the same per-token
    loss and gradient when they zero the same tokens' gradients: a token no
    clip acts on contributes ``-A r_t`` under every setting. Along the real
    step, ``noclip`` zeroes nothing, ``lowonly`` the run's clip-low events
    only, ``highonly`` its clip-high events only (no dual clip in either). So
    when the real step (all its updates, none skipped) had no clip-high and no
    dual-clip event, ``lowonly`` retraces it update for update: it is the
    identity replay, and likewise for the others. The counts are the real
    step's totals (``n_clip_*`` of ``SUM_KEYS``); they are non-negative, so a
    total of 0 means 0 on every update.
    """
    out = set()
    if n_dual_clip == 0 and n_clip_high == 0:
        out.add("lowonly")
    if n_dual_clip == 0 and n_clip_low == 0:
        out.add("highonly")
    if n_dual_clip == 0 and n_clip_low == 0 and n_clip_high == 0:
        out.add("noclip")
    return frozenset(out)


def clip_probe(
    replay: Callable[[float, float, Optional[float]], float],
    eps_low: float, eps_high: float, dual_clip_c: Optional[float], entropy_post: float,
    *, repeats: int = 1, agreeing: frozenset[str] = frozenset(),
) -> dict[str, float]:
    """The probe columns of one step (docs/definitions.md section 8), for trainer and simulator alike.

    ``replay(eps_low, eps_high, dual_clip_c)`` replays the step's updates from
    its starting state with those settings and returns the Eq. 4 entropy after
    them. Replays with the same settings run once (eps_high = inf: ``highonly``
    is ``noclip`` and ``replay`` is ``lowonly``; eps_low = 1 likewise), and so
    do those in ``agreeing`` (``agreeing_replays``): they take the identity
    replay's value. The identity replay runs ``repeats`` times (at least once);
    the extra runs give ``probe_noise_sd``.
    """
    post, done = {}, {}
    for label, (low, high) in probe_replays(eps_low, eps_high).items():
        key = (low, high, dual_clip_c if label == "replay" else None)
        if label in agreeing:
            key = (eps_low, eps_high, dual_clip_c)  # the identity replay's key
        if key not in done:
            done[key] = replay(*key)
        post[label] = done[key]
    identity = (eps_low, eps_high, dual_clip_c)
    extra = [replay(*identity) for _ in range(max(repeats, 1) - 1)]
    return attributed_entropy_changes(entropy_post, post, extra)
