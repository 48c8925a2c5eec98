"""Policy losses: the clipped surrogate and its successors, each with its clip events (docs/definitions.md section 4, docs/losses.md).

Per valid token ``t`` of response ``i`` (``vanilla``):

    l_t = clamp(logp_theta(y_t) - logp_old(y_t), -20, 20),   r_t = exp(l_t)
    L_t = -min(r_t A, clip(r_t, 1 - eps_low, 1 + eps_high) A)
    dual clip (c > 1, A < 0 only):  L_t = min(L_t, -c A)

``eps_low = 1`` disables clip-low (``r_t > 0`` always); ``eps_high = inf``
disables clip-high; ``ClipSpec`` checks the bounds. The other families
(``cispo``, ``gspo``, ``dppo_tv``, ``dppo_kl``, ``clip_cov``, ``kl_cov``; names
as verl's ``loss_mode``) read their two sides from the same ``ClipSpec``
fields, with the same switches; each docstring gives its equation and events.
Policy losses are listed in ``POLICY_LOSSES``, aggregations in ``LOSS_AGGS``.
A policy loss returns, next to its per-token loss, the log ratio it used and
the clip events it applied (docs/definitions.md section 6), so the logged clip
statistics (``clip_stat_sums``) describe exactly the gradient that was taken.

Events, for every family: ``ratio_below`` / ``ratio_above`` are the regions
where the family's low / high bound is crossed (whatever the sign of ``A``);
``clip_low = ratio_below & (A < 0)`` and ``clip_high = ratio_above & (A > 0)``
are the theorems' two sides (the low side acts when ``A < 0`` and the ratio or
probability fell, the high side when ``A > 0`` and it rose). A covariance
selection is not triggered by a ratio: its tokens are ``cov_low`` /
``cov_high`` by the sign of ``A``, outside the regions and the brackets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch

from clipctl.clip import ClipSpec

LOG_RATIO_CLAMP = 20.0


def log_ratio(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """``clamp(logp - old_logp, -20, 20)``: keeps ``exp`` finite on wild tokens."""
    return (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def k3_kl(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi_old || pi_theta): ``exp(l) - 1 - l`` with ``l = log_ratio``.

    Unbiased for the KL over tokens sampled from pi_old, and >= 0 token by token.
    """
    lr_ = log_ratio(logp, old_logp)
    return torch.exp(lr_) - 1.0 - lr_


@dataclass(frozen=True)
class ClipEvents:
    """Boolean ``[N, T]`` masks on valid tokens (docs/definitions.md section 6).

    ``ratio_below`` / ``ratio_above`` are the regions X (``r_t < 1 - eps_low``)
    and Y (``r_t > 1 + eps_high``; for the other families, their own bound
    crossed, docs/losses.md) whatever the sign of ``A``; ``clip_low``,
    ``clip_high`` and ``dual_clip`` are where the loss's clip acted on the
    token (zeroed its gradient; for ``cispo`` and DPPO's cap, bounded its IS
    weight); ``cov_low`` / ``cov_high`` are the tokens a covariance selection
    treated, by the sign of ``A``.
    """

    ratio_below: torch.Tensor
    ratio_above: torch.Tensor
    clip_low: torch.Tensor
    clip_high: torch.Tensor
    dual_clip: torch.Tensor
    cov_low: Optional[torch.Tensor] = None  # covariance selection, A < 0 (clip_cov, kl_cov); None = none
    cov_high: Optional[torch.Tensor] = None  # covariance selection, A > 0


@dataclass(frozen=True)
class PolicyLossOutput:
    """What a policy loss computed for a ``[N, T]`` batch.

    ``per_token``: the unaggregated loss ``L_t`` (differentiable; padding not
    masked). ``logp``: the detached ``log pi_theta(y_t)`` it was evaluated at.
    ``log_ratio``: the detached clamped ``l_t`` it used. ``events``: the clip
    events it applied. The statistics (``clip_stat_sums``) read the last three,
    so they never recompute the ratio.
    """

    per_token: torch.Tensor
    logp: torch.Tensor
    log_ratio: torch.Tensor
    events: ClipEvents


def vanilla_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: ClipSpec
) -> PolicyLossOutput:
    """The clipped surrogate with dual clip (docs/definitions.md sections 4 and 6; PPO, GRPO; Ye et al. 2020).

    ``L_t = -min(r_t A, clip(r_t, 1 - eps_low, 1 + eps_high) A)``, then
    ``L_t = min(L_t, -c A)`` where ``A < 0`` when ``dual_clip_c = c`` is set.

    Args:
        logp: ``[N, T]`` log-probs of the sampled tokens under ``pi_theta``.
        old_logp: ``[N, T]`` the same under ``pi_old`` (no gradient).
        advantages: ``[N]`` (broadcast over tokens) or ``[N, T]``.
        mask: ``[N, T]`` 1 for valid response tokens, 0 for padding.
        clip: the bounds ``eps_low``, ``eps_high`` and ``dual_clip_c``.

    Events: ``clip_low = X & (A < 0)`` (``L_t = -(1 - eps_low) A``),
    ``clip_high = Y & (A > 0)`` (``L_t = -(1 + eps_high) A``) and
    ``dual_clip = (A < 0) & (r_t > c)`` (``L_t = -c A``): the constant branch
    of the ``min`` wins, so ``dL_t / dlogp_t = 0``. Elsewhere the gradient is
    ``-A r_t``; the ``[-20, 20]`` clamp of ``l_t`` is a numerical guard, not an event.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    lr_ = log_ratio(logp, old_logp)
    ratio = torch.exp(lr_)
    surr_unclipped = ratio * advantages
    surr_clipped = ratio.clamp(1.0 - clip.eps_low, 1.0 + clip.eps_high) * advantages
    loss = -torch.minimum(surr_unclipped, surr_clipped)
    valid, neg, pos = mask.bool(), advantages < 0, advantages > 0
    below = valid & (ratio < 1.0 - clip.eps_low)
    above = valid & (ratio > 1.0 + clip.eps_high)
    if clip.dual_clip_c is None:
        dual = torch.zeros_like(valid)
    else:
        # Dual clip bounds the loss of negative-advantage tokens whose ratio
        # exploded: L_t <= -c A for A < 0.
        bounded = torch.minimum(loss, -clip.dual_clip_c * advantages)
        loss = torch.where(neg, bounded, loss)
        dual = valid & neg & (ratio > clip.dual_clip_c)
    events = ClipEvents(
        ratio_below=below, ratio_above=above, clip_low=below & neg, clip_high=above & pos, dual_clip=dual
    )
    return PolicyLossOutput(per_token=loss, logp=logp.detach(), log_ratio=lr_.detach(), events=events)


def _per_token(advantages: torch.Tensor) -> torch.Tensor:
    return advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages


def _side_events(valid, below, above, advantages, dual=None, cov_low=None, cov_high=None) -> ClipEvents:
    """Events from the two regions: the theorem sides are a region and the matching sign of ``A``."""
    neg, pos = advantages < 0, advantages > 0
    return ClipEvents(
        ratio_below=below, ratio_above=above, clip_low=below & neg, clip_high=above & pos,
        dual_clip=torch.zeros_like(valid) if dual is None else dual, cov_low=cov_low, cov_high=cov_high,
    )


def _region(valid: torch.Tensor, crossed: torch.Tensor, on: bool) -> torch.Tensor:
    # An off side never acts, whatever its bound would say (the probe's switch).
    return valid & crossed if on else torch.zeros_like(valid)


def cispo_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: ClipSpec
) -> PolicyLossOutput:
    """CISPO: a clipped, stop-gradient IS weight times the log-prob (MiniMax-M1, arXiv 2506.13585, Eqs. 4-5).

    ``L_t = -sg(w_t) A log pi_theta(y_t)`` with ``w_t = clip(r_t, 1 - eps_low, 1 + eps_high)``,
    so ``dL_t / dlogp_t = -w_t A``: no token's gradient is ever zeroed, the
    clip bounds its weight. Shapes as ``vanilla_policy_loss``.

    Events: ``ratio_below = r_t < 1 - eps_low`` (weight raised to the floor),
    ``ratio_above = r_t > 1 + eps_high`` (weight capped); ``clip_low`` /
    ``clip_high`` are their ``A < 0`` / ``A > 0`` parts. The other parts (a
    floored ``A > 0`` token, a capped ``A < 0`` token) are in the regions only.
    With ``eps_low = 1`` and ``eps_high = inf`` the gradient is REINFORCE with
    IS weights, ``-r_t A dlogp_t``: vanilla's with no clip.
    """
    adv = _per_token(advantages)
    lr_ = log_ratio(logp, old_logp)
    ratio = torch.exp(lr_)
    weight = ratio.clamp(1.0 - clip.eps_low, 1.0 + clip.eps_high).detach()
    loss = -weight * adv * logp
    valid = mask.bool()
    below = _region(valid, ratio < 1.0 - clip.eps_low, clip.low_on)
    above = _region(valid, ratio > 1.0 + clip.eps_high, clip.high_on)
    return PolicyLossOutput(loss, logp.detach(), lr_.detach(), _side_events(valid, below, above, adv))


def gspo_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: ClipSpec
) -> PolicyLossOutput:
    """GSPO: the clipped surrogate on the length-normalised sequence ratio (Zheng et al., arXiv 2507.18071, Eqs. 5-7).

    ``s_i = exp(clamp(mean_t (logp_t - logp_old_t), -20, 20))`` over response
    ``i``'s valid tokens; per token ``s_it = sg(s_i) pi_theta(y_t) / sg(pi_theta(y_t))``
    (value ``s_i``, gradient ``s_i dlogp_t``, the paper's GSPO-token form) and
    ``L_t = -min(s_it A, clip(s_it, 1 - eps_low, 1 + eps_high) A)``. With the
    ``seq-mean-token-mean`` aggregation this is the paper's objective. Shapes as
    ``vanilla_policy_loss``.

    Events are per sequence, broadcast to its valid tokens: ``ratio_below =
    s_i < 1 - eps_low``, ``ratio_above = s_i > 1 + eps_high``; ``clip_low`` /
    ``clip_high`` zero the gradient. ``log_ratio`` is the token ``l_t`` (the
    statistics' importance weights), not the sequence ratio. A one-token
    response has ``s_i = r_t``: vanilla exactly.
    """
    adv = _per_token(advantages)
    valid = mask.bool()
    delta = torch.where(valid, logp - old_logp, torch.zeros_like(logp)).detach()
    seq = (delta.sum(-1) / valid.sum(-1).clamp(min=1)).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    s = torch.exp(seq.unsqueeze(-1) + logp - logp.detach())
    loss = -torch.minimum(s * adv, s.clamp(1.0 - clip.eps_low, 1.0 + clip.eps_high) * adv)
    s_ = s.detach()
    below = _region(valid, s_ < 1.0 - clip.eps_low, clip.low_on)
    above = _region(valid, s_ > 1.0 + clip.eps_high, clip.high_on)
    return PolicyLossOutput(loss, logp.detach(), log_ratio(logp, old_logp).detach(), _side_events(valid, below, above, adv))


def binary_kl(p_old: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``KL(Bern(p_old) || Bern(p)) = p_old log(p_old / p) + (1 - p_old) log((1 - p_old) / (1 - p))`` element-wise.

    DPPO-Binary-KL's divergence of one sampled token (arXiv 2602.04879). Both
    probabilities are clamped to ``[1e-12, 1 - 1e-7]`` so a certain token gives a finite value.
    """
    p_old = p_old.clamp(1e-12, 1.0 - 1e-7)
    p = p.clamp(1e-12, 1.0 - 1e-7)
    return p_old * (torch.log(p_old) - torch.log(p)) + (1.0 - p_old) * (torch.log1p(-p_old) - torch.log1p(-p))


def _dppo(logp, old_logp, advantages, mask, clip: ClipSpec, fell: torch.Tensor, rose: torch.Tensor) -> PolicyLossOutput:
    """DPPO's loss given where the probability fell / rose past its divergence bound (``[N, T]`` booleans)."""
    adv = _per_token(advantages)
    lr_ = log_ratio(logp, old_logp)
    ratio = torch.exp(lr_)
    valid = mask.bool()
    below = _region(valid, fell, clip.low_on)
    above = _region(valid, rose, clip.high_on)
    events = _side_events(valid, below, above, adv)
    keep = ~(events.clip_low | events.clip_high)
    cap = math.inf if clip.dual_clip_c is None else clip.dual_clip_c
    weight = ratio.clamp(max=cap).detach()
    loss = torch.where(keep, -adv * weight * logp, torch.zeros_like(logp))
    events = replace(events, dual_clip=valid & keep & (ratio > cap))
    return PolicyLossOutput(loss, logp.detach(), lr_.detach(), events)


def dppo_tv_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: ClipSpec
) -> PolicyLossOutput:
    """DPPO-Binary-TV: a trust region on the sampled token's probability difference (arXiv 2602.04879).

    With ``p = pi_theta(y_t)``, ``p_old = pi_old(y_t)`` and ``w_t = sg(min(r_t, c))``:
    ``L_t = -A w_t log pi_theta(y_t) M_t``, ``M_t = 0`` where ``A > 0`` and
    ``p - p_old > eps_high`` or ``A < 0`` and ``p - p_old < -eps_low``, else 1;
    so ``dL_t / dlogp_t = -A w_t`` inside the region and 0 outside. ``c`` is
    ``clip.dual_clip_c`` (none = no cap). Shapes as ``vanilla_policy_loss``.

    Events: ``ratio_below = p - p_old < -eps_low``, ``ratio_above = p - p_old > eps_high``
    (probability, not ratio, regions); ``clip_low`` / ``clip_high`` are ``M_t = 0``;
    ``dual_clip`` counts kept tokens whose weight was capped at ``c``, either sign.
    With no bounds and no cap the gradient is vanilla's with no clip.
    """
    diff = torch.exp(logp.detach()) - torch.exp(old_logp)
    return _dppo(logp, old_logp, advantages, mask, clip, diff < -clip.eps_low, diff > clip.eps_high)


def dppo_kl_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: ClipSpec
) -> PolicyLossOutput:
    """DPPO-Binary-KL: as ``dppo_tv`` with the sampled token's binary KL as the divergence (arXiv 2602.04879).

    ``D_t = binary_kl(p_old, p)``; ``M_t = 0`` where ``A > 0``, ``p > p_old`` and
    ``D_t > eps_high``, or ``A < 0``, ``p < p_old`` and ``D_t > eps_low``.
    Events as ``dppo_tv`` with ``ratio_below = (p < p_old) & (D_t > eps_low)``,
    ``ratio_above = (p > p_old) & (D_t > eps_high)``. The side switch is the
    ``ClipSpec`` one (``eps_low = 1`` turns the low side off even though a binary
    KL can exceed 1 nat).
    """
    p, p_old = torch.exp(logp.detach()), torch.exp(old_logp)
    d = binary_kl(p_old, p)
    return _dppo(logp, old_logp, advantages, mask, clip, (p < p_old) & (d > clip.eps_low), (p > p_old) & (d > clip.eps_high))


def token_covariance(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``cov_t = (A_t - mean A) (logp_t - mean logp)``, means over the call's valid tokens; float64, detached.

    The per-token centred product of Cui et al. (arXiv 2505.22617, Eq. 11) whose
    batch mean is the covariance that drives the entropy change. Padding holds 0.
    """
    valid = mask.bool()
    a = torch.broadcast_to(_per_token(advantages), logp.shape).double()
    lp = logp.detach().double()
    zero = torch.zeros_like(lp)
    n = valid.sum().clamp(min=1)
    a_c = a - torch.where(valid, a, zero).sum() / n
    lp_c = lp - torch.where(valid, lp, zero).sum() / n
    return torch.where(valid, a_c * lp_c, zero)


def _top_share(key: torch.Tensor, eligible: torch.Tensor, share: float, n_valid: torch.Tensor) -> torch.Tensor:
    """The ``max(1, floor(share * n_valid))`` eligible positions with the largest ``key`` (ties: first in row order).

    Ranks come from a stable sort on the device, so no count is read back to the host.
    """
    flat = torch.where(eligible, key, torch.full_like(key, -math.inf)).reshape(-1)
    order = torch.argsort(flat, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    k = torch.clamp(torch.floor(share * n_valid.double()), min=1)
    return eligible & (rank.reshape(key.shape) < k)


def _hash_uniform(logp_old: torch.Tensor) -> torch.Tensor:
    """A deterministic uniform-looking key in ``[0, 1)`` per position, from its index and ``logp_old`` (float64).

    Stands in for verl's ``torch.randperm`` in Clip-Cov's random choice: the
    same step selects the same tokens when the probe replays it (noise floor
    exactly 0 on a CPU), and the choice changes from step to step with ``pi_old``.
    """
    idx = torch.arange(logp_old.numel(), device=logp_old.device, dtype=torch.float64).reshape(logp_old.shape)
    x = torch.sin(idx * 12.9898 + logp_old.double() * 78.233) * 43758.5453
    return x - torch.floor(x)


def _cov_sides(selected: torch.Tensor, advantages: torch.Tensor, clip: ClipSpec):
    neg, pos = advantages < 0, advantages > 0
    return selected & neg & clip.cov.low, selected & pos & clip.cov.high


def clip_cov_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: ClipSpec
) -> PolicyLossOutput:
    """Clip-Cov: vanilla's clipped surrogate, plus a few high-covariance tokens detached (Cui et al., arXiv 2505.22617, Eq. 12).

    Among valid tokens that vanilla did not clip and whose ``cov_t``
    (``token_covariance``) lies in ``(cov.lb, cov.ub)``, ``max(1, floor(cov.ratio * n))``
    are chosen at random (``n`` valid tokens in this call) and their loss and
    gradient set to 0. The choice is a deterministic hash (``_hash_uniform``),
    not verl's ``randperm``. Dual clip is not part of the family. Shapes as
    ``vanilla_policy_loss``.

    Events: vanilla's (regions, ``clip_low``, ``clip_high``) for the ratio clip;
    the detached tokens are ``cov_low`` (``A < 0``) and ``cov_high`` (``A > 0``).
    """
    out = vanilla_policy_loss(logp, old_logp, advantages, mask, clip.without_dual())
    adv = torch.broadcast_to(_per_token(advantages), logp.shape)
    valid = mask.bool()
    cov = token_covariance(logp, adv, mask)
    eligible = valid & ~(out.events.clip_low | out.events.clip_high) & (cov > clip.cov.lb) & (cov < clip.cov.ub)
    selected = _top_share(_hash_uniform(old_logp), eligible, clip.cov.ratio, valid.sum())
    cov_low, cov_high = _cov_sides(selected, adv, clip)
    loss = torch.where(cov_low | cov_high, torch.zeros_like(out.per_token), out.per_token)
    return replace(out, per_token=loss, events=replace(out.events, cov_low=cov_low, cov_high=cov_high))


def kl_cov_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: ClipSpec
) -> PolicyLossOutput:
    """KL-Cov: the unclipped surrogate plus ``coef |l_t|`` on the top-covariance tokens (Cui et al., arXiv 2505.22617, Eq. 13).

    ``L_t = -r_t A``, and ``L_t = -r_t A + cov.coef |l_t|`` on the
    ``max(1, floor(cov.ratio * n))`` valid tokens of this call with the largest
    ``cov_t`` (``token_covariance``). There is no ratio clip: ``eps_low`` /
    ``eps_high`` are not used and its regions are empty. Shapes as
    ``vanilla_policy_loss``.

    Events: the penalised tokens, ``cov_low`` (``A < 0``) and ``cov_high`` (``A > 0``).
    """
    adv = torch.broadcast_to(_per_token(advantages), logp.shape)
    lr_ = log_ratio(logp, old_logp)
    valid = mask.bool()
    selected = _top_share(token_covariance(logp, adv, mask), valid, clip.cov.ratio, valid.sum())
    cov_low, cov_high = _cov_sides(selected, adv, clip)
    penalty = torch.where(cov_low | cov_high, clip.cov.coef * lr_.abs(), torch.zeros_like(lr_))
    loss = -torch.exp(lr_) * adv + penalty
    none = torch.zeros_like(valid)
    events = _side_events(valid, none, none, adv, cov_low=cov_low, cov_high=cov_high)
    return PolicyLossOutput(loss, logp.detach(), lr_.detach(), events)


# Each policy loss is fn(logp, old_logp, advantages, mask, clip) -> PolicyLossOutput (names: verl's loss_mode).
POLICY_LOSSES: dict[str, Callable[..., PolicyLossOutput]] = {
    "vanilla": vanilla_policy_loss,
    "cispo": cispo_policy_loss,
    "gspo": gspo_policy_loss,
    "dppo_tv": dppo_tv_policy_loss,
    "dppo_kl": dppo_kl_policy_loss,
    "clip_cov": clip_cov_policy_loss,
    "kl_cov": kl_cov_policy_loss,
}
# The families that need a covariance selection (``ClipSpec.cov``).
COV_LOSSES = ("clip_cov", "kl_cov")


# Each aggregator gets the loss already zeroed on padding (``loss``) and the
# float mask; normalisers come from the caller (see ``agg_loss``).
def _seq_mean_token_mean(loss, mask, num_seqs, num_tokens, max_new_tokens):
    per_seq = loss.sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.sum() / num_seqs


def _token_mean(loss, mask, num_seqs, num_tokens, max_new_tokens):
    return loss.sum() / max(num_tokens, 1)


def _seq_mean_token_sum(loss, mask, num_seqs, num_tokens, max_new_tokens):
    return loss.sum() / num_seqs


def _seq_mean_token_sum_norm(loss, mask, num_seqs, num_tokens, max_new_tokens):
    if max_new_tokens is None:
        raise ValueError("loss_agg 'seq-mean-token-sum-norm' needs max_new_tokens")
    return loss.sum() / (num_seqs * max_new_tokens)


LOSS_AGGS: dict[str, Callable] = {
    "seq-mean-token-mean": _seq_mean_token_mean,
    "token-mean": _token_mean,
    "seq-mean-token-sum": _seq_mean_token_sum,
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm,
}


def agg_loss(
    loss: torch.Tensor,
    mask: torch.Tensor,
    loss_agg: str = "seq-mean-token-mean",
    *,
    max_new_tokens: Optional[int] = None,
    num_seqs: Optional[float] = None,
    num_tokens: Optional[float] = None,
) -> torch.Tensor:
    """Aggregate a ``[N, T]`` per-token loss over valid tokens (docs/definitions.md section 4 table).

    ``num_seqs`` / ``num_tokens`` default to this batch's counts. A caller that
    splits a minibatch into micro-batches passes the *minibatch's* counts, so
    the micro-batch losses sum to the minibatch loss and the gradient does not
    depend on the split.
    """
    if loss_agg not in LOSS_AGGS:
        raise ValueError(f"unknown loss_agg {loss_agg!r}; valid: {', '.join(LOSS_AGGS)}")
    # where, not multiply: a non-finite value on a padded position must not leak.
    loss = torch.where(mask.bool(), loss, torch.zeros_like(loss))
    mask = mask.to(loss.dtype)
    if num_seqs is None:
        num_seqs = loss.shape[0]
    if num_tokens is None:
        num_tokens = mask.sum()
    return LOSS_AGGS[loss_agg](loss, mask, num_seqs, num_tokens, max_new_tokens)


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: ClipSpec,
    *,
    loss_mode: str = "vanilla",
    loss_agg: str = "seq-mean-token-mean",
    max_new_tokens: Optional[int] = None,
    num_seqs: Optional[float] = None,
    num_tokens: Optional[float] = None,
) -> tuple[torch.Tensor, PolicyLossOutput]:
    """The scalar policy loss (docs/definitions.md section 4), differentiable in ``logp``, and what it applied.

    Args:
        logp: ``[N, T]`` log-probs of the sampled tokens under ``pi_theta``.
        old_logp: ``[N, T]`` the same under ``pi_old`` (no gradient).
        advantages: ``[N]`` or ``[N, T]``.
        mask: ``[N, T]`` 1 for valid response tokens, 0 for padding.
        clip: the clip bounds (valid by construction).
        loss_mode: a key of ``POLICY_LOSSES``.
        loss_agg: a key of ``LOSS_AGGS``.
        max_new_tokens: the constant of ``seq-mean-token-sum-norm`` (Dr. GRPO).
        num_seqs, num_tokens: minibatch normalisers when this is a micro-batch.

    Returns ``(loss, out)``: ``loss = agg_loss(out.per_token, mask, loss_agg)``
    and the ``PolicyLossOutput`` that ``clip_stat_sums`` turns into statistics.
    """
    if loss_mode not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {loss_mode!r}; valid: {', '.join(POLICY_LOSSES)}")
    if loss_mode in COV_LOSSES and clip.cov is None:
        raise ValueError(f"policy loss {loss_mode!r} needs clip.cov (a CovSpec)")
    out = POLICY_LOSSES[loss_mode](logp, old_logp, advantages, mask, clip)
    loss = agg_loss(
        out.per_token, mask, loss_agg, max_new_tokens=max_new_tokens, num_seqs=num_seqs, num_tokens=num_tokens
    )
    return loss, out
