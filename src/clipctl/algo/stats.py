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

from clipctl.algo.losses import COV_LOSSES, PolicyLossOutput
from clipctl.clip import ClipSpec

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

    def count(where: Optional[torch.Tensor]) -> torch.Tensor:
        if where is None:  # a family without that event
            return torch.zeros((), dtype=torch.float64, device=valid.device)
        return where.sum().double()

    return {
        "n_tokens": count(valid),
        "n_below": count(ev.ratio_below),
        "n_above": count(ev.ratio_above),
        "n_clip_low": count(ev.clip_low),
        "n_clip_high": count(ev.clip_high),
        "n_dual_clip": count(ev.dual_clip),
        "n_cov_low": count(ev.cov_low),
        "n_cov_high": count(ev.cov_high),
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


def probe_replays(clip: ClipSpec) -> dict[str, ClipSpec]:
    """The four replays of the clip probe as ``label -> ClipSpec`` (``ClipSpec.sides``).

    ``replay``: the run's own settings (its dual clip and covariance selection
    too), i.e. the real step again: its distance to the real step is the
    probe's noise floor; ``noclip``: the family's mechanism off; ``lowonly``:
    its low side alone; ``highonly``: its high side alone. The same for every
    policy loss, since each reads its sides from the ``ClipSpec``.
    """
    return {
        "replay": clip,
        "noclip": clip.sides(False, False),
        "lowonly": clip.sides(True, False),
        "highonly": clip.sides(False, True),
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


# Per family, the counters (``schema.SUM_KEYS``) of the tokens whose gradient its
# low / high side changed (docs/losses.md, "Events"). Vanilla, GSPO and DPPO
# change only their clip events; CISPO caps or floors the weight of either sign
# inside a region; Clip-Cov also detaches its drawn tokens; KL-Cov penalises its
# selected ones. A dual clip or cap (``n_dual_clip``) belongs to the identity replay only.
_SIDE_COUNTERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cispo": (("n_below",), ("n_above",)),
    "clip_cov": (("n_clip_low", "n_cov_low"), ("n_clip_high", "n_cov_high")),
    "kl_cov": (("n_cov_low",), ("n_cov_high",)),
}
_CLIP_COUNTERS = (("n_clip_low",), ("n_clip_high",))


def shares_first_update(policy_loss: str) -> bool:
    """Whether every probe replay takes the real step's first, on-policy update (ratio exactly 1).

    True where the family's mechanism is triggered by the ratio (or the
    probability change) alone, so nothing acts at ratio 1. Clip-Cov detaches
    its drawn tokens and KL-Cov selects its tokens at any ratio, so their
    replays start from the step's start.
    """
    return policy_loss not in COV_LOSSES


def agreeing_replays(sums: Mapping[str, float], policy_loss: str = "vanilla") -> frozenset[str]:
    """Replays that are the identity replay by construction, from the real step's event counts.

    On one minibatch from one state, two settings give the same per-token
    loss gradient when they change the same tokens: a token no side acts on
    takes the family's unclipped gradient under every setting. Along the real
    step, ``noclip`` changes nothing, ``lowonly`` what the low side changed,
    ``highonly`` what the high side changed (no dual clip or cap in either). So
    when the real step (all its updates, none skipped) had no high-side and no
    dual event, ``lowonly`` retraces it update for update: it is the identity
    replay, and likewise for the others. ``sums``: the real step's totals of
    ``SUM_KEYS``; they are non-negative, so a total of 0 means 0 on every
    update. Which counters make a side is per family (``_SIDE_COUNTERS``).
    """
    low_keys, high_keys = _SIDE_COUNTERS.get(policy_loss, _CLIP_COUNTERS)
    low = any(sums[k] for k in low_keys)
    high = any(sums[k] for k in high_keys)
    if sums["n_dual_clip"]:
        return frozenset()
    out = set()
    if not high:
        out.add("lowonly")
    if not low:
        out.add("highonly")
    if not low and not high:
        out.add("noclip")
    return frozenset(out)


def clip_probe(
    replay: Callable[[ClipSpec], float], clip: ClipSpec, entropy_post: float,
    *, repeats: int = 1, agreeing: frozenset[str] = frozenset(),
) -> dict[str, float]:
    """The probe columns of one step (docs/definitions.md section 8), for trainer and simulator alike.

    ``replay(spec)`` replays the step's updates from its starting state with
    that ``ClipSpec`` and returns the Eq. 4 entropy after them. Replays with the
    same settings run once (eps_high = inf: ``highonly`` is ``noclip`` and
    ``replay`` is ``lowonly``; eps_low = 1 likewise), and so do those in
    ``agreeing`` (``agreeing_replays``): they take the identity replay's value.
    The identity replay runs ``repeats`` times; the extra runs give
    ``probe_noise_sd``. ``repeats = 0`` runs it not at all: the real step's
    ``entropy_post`` is its value, exact only where a replay retraces the real
    step bit for bit (a CPU); ``probe_noise`` is then NaN (not measured).
    """
    post, done = {}, {}
    if repeats == 0:  # the real step stands in for the identity replay (a deterministic device)
        done[clip] = entropy_post
    for label, spec in probe_replays(clip).items():
        if label in agreeing:
            spec = clip  # the identity replay
        if spec not in done:
            done[spec] = replay(spec)
        post[label] = done[spec]
    extra = [replay(clip) for _ in range(repeats - 1)]
    columns = attributed_entropy_changes(entropy_post, post, extra)
    if repeats == 0:
        columns["probe_noise"] = math.nan
    return columns
