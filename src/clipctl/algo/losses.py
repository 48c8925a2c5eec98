"""Policy losses: the clipped surrogate with independent clip-low / clip-high (docs/definitions.md section 4).

Per valid token ``t`` of response ``i``:

    l_t = clamp(logp_theta(y_t) - logp_old(y_t), -20, 20),   r_t = exp(l_t)
    L_t = -min(r_t A, clip(r_t, 1 - eps_low, 1 + eps_high) A)
    dual clip (c > 1, A < 0 only):  L_t = min(L_t, -c A)

``eps_low = 1`` disables clip-low (``r_t > 0`` always); ``eps_high = inf``
disables clip-high; ``ClipSpec`` checks the bounds. Policy losses are listed
in ``POLICY_LOSSES``, aggregations in ``LOSS_AGGS``. A policy loss returns,
next to its per-token loss, the log ratio it used and the clip events it
applied (docs/definitions.md section 6), so the logged clip statistics
(``clip_stat_sums``) describe exactly the gradient that was taken.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    and Y (``r_t > 1 + eps_high``) whatever the sign of ``A``; ``clip_low``,
    ``clip_high`` and ``dual_clip`` are where the loss's clip made the token's
    gradient zero.
    """

    ratio_below: torch.Tensor
    ratio_above: torch.Tensor
    clip_low: torch.Tensor
    clip_high: torch.Tensor
    dual_clip: torch.Tensor


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


# Each policy loss is fn(logp, old_logp, advantages, mask, clip) -> PolicyLossOutput.
POLICY_LOSSES: dict[str, Callable[..., PolicyLossOutput]] = {
    "vanilla": vanilla_policy_loss,
}


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
    out = POLICY_LOSSES[loss_mode](logp, old_logp, advantages, mask, clip)
    loss = agg_loss(
        out.per_token, mask, loss_agg, max_new_tokens=max_new_tokens, num_seqs=num_seqs, num_tokens=num_tokens
    )
    return loss, out
