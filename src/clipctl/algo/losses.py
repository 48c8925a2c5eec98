"""The clipped surrogate loss with independent clip-low / clip-high (docs/definitions.md section 4).

Per valid token ``t`` of response ``i``:

    l_t = clamp(logp_theta(y_t) - logp_old(y_t), -20, 20),   r_t = exp(l_t)
    L_t = -min(r_t A, clip(r_t, 1 - eps_low, 1 + eps_high) A)
    dual clip (c > 1, A < 0 only):  L_t = min(L_t, -c A)

``eps_low = 1`` disables clip-low (``r_t > 0`` always); ``eps_high = inf``
disables clip-high. Aggregations are listed in ``LOSS_AGGS``.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

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


def per_token_clipped_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    eps_low: float,
    eps_high: float,
    dual_clip_c: Optional[float] = None,
) -> torch.Tensor:
    """Unaggregated loss ``L_t`` (docs/definitions.md section 4), shape ``[N, T]``; padding not masked here.

    ``advantages`` is ``[N]`` (broadcast over tokens) or ``[N, T]``.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    ratio = torch.exp(log_ratio(logp, old_logp))
    surr_unclipped = ratio * advantages
    surr_clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * advantages
    loss = -torch.minimum(surr_unclipped, surr_clipped)
    if dual_clip_c is not None:
        # Dual clip bounds the loss of negative-advantage tokens whose ratio
        # exploded (Ye et al. 2020): L_t <= -c A for A < 0.
        bounded = torch.minimum(loss, -dual_clip_c * advantages)
        loss = torch.where(advantages < 0, bounded, loss)
    return loss


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
    *,
    eps_low: float,
    eps_high: float,
    loss_agg: str = "seq-mean-token-mean",
    dual_clip_c: Optional[float] = None,
    max_new_tokens: Optional[int] = None,
    num_seqs: Optional[float] = None,
    num_tokens: Optional[float] = None,
) -> torch.Tensor:
    """Scalar clipped-surrogate loss (docs/definitions.md section 4), differentiable in ``logp``.

    Args:
        logp: ``[N, T]`` log-probs of the sampled tokens under ``pi_theta``.
        old_logp: ``[N, T]`` the same under ``pi_old`` (no gradient).
        advantages: ``[N]`` or ``[N, T]``.
        mask: ``[N, T]`` 1 for valid response tokens, 0 for padding.
        eps_low: in ``(0, 1]``; 1 disables clip-low.
        eps_high: in ``(0, inf]``; ``inf`` disables clip-high.
        loss_agg: a key of ``LOSS_AGGS``.
        dual_clip_c: ``c > 1`` or ``None`` (off).
        max_new_tokens: the constant of ``seq-mean-token-sum-norm`` (Dr. GRPO).
        num_seqs, num_tokens: minibatch normalisers when this is a micro-batch.
    """
    if not 0.0 < eps_low <= 1.0:
        raise ValueError(f"eps_low must be in (0, 1], got {eps_low}")
    if not eps_high > 0.0:  # also rejects NaN and -inf; +inf is > 0
        raise ValueError(f"eps_high must be in (0, inf], got {eps_high}")
    if dual_clip_c is not None and not dual_clip_c > 1.0:
        raise ValueError(f"dual_clip_c must be > 1, got {dual_clip_c}")
    loss = per_token_clipped_loss(
        logp, old_logp, advantages, eps_low=eps_low, eps_high=eps_high, dual_clip_c=dual_clip_c
    )
    return agg_loss(
        loss, mask, loss_agg, max_new_tokens=max_new_tokens, num_seqs=num_seqs, num_tokens=num_tokens
    )
