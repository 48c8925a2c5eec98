"""Token log-probs and entropies from logits, in row chunks (docs/definitions.md sections 1 and 5).

All quantities are those of ``softmax(logits / tau)`` in float32. The full
``[N, T, V]`` float32 softmax is never held at once: rows (tokens) are
processed ``chunk_rows`` at a time, the backward pass of the log-prob
recomputes each chunk's softmax from the logits instead of saving it.
"""

from __future__ import annotations


import torch

DEFAULT_CHUNK_ROWS = 1024


def _rows(logits: torch.Tensor) -> torch.Tensor:
    return logits.reshape(-1, logits.shape[-1])


class _ChunkedTokenLogProb(torch.autograd.Function):
    """``log softmax(x / tau)[y]`` per row; saves only one log-sum-exp per row."""

    @staticmethod
    def forward(ctx, logits, targets, temperature, chunk_rows):
        rows = _rows(logits)
        flat_targets = targets.reshape(-1)
        logp = torch.empty(rows.shape[0], dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(logp)
        for start in range(0, rows.shape[0], chunk_rows):
            x = rows[start : start + chunk_rows].float() / temperature
            y = flat_targets[start : start + chunk_rows]
            chunk_lse = torch.logsumexp(x, dim=-1)
            lse[start : start + chunk_rows] = chunk_lse
            logp[start : start + chunk_rows] = x.gather(-1, y.unsqueeze(-1)).squeeze(-1) - chunk_lse
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature = temperature
        ctx.chunk_rows = chunk_rows
        return logp.view(targets.shape)

    @staticmethod
    def backward(ctx, grad_logp):
        logits, targets, lse = ctx.saved_tensors
        tau, chunk_rows = ctx.temperature, ctx.chunk_rows
        rows = _rows(logits)
        flat_targets = targets.reshape(-1)
        flat_grad = grad_logp.reshape(-1).float()
        grad = torch.empty_like(rows)
        # d logp_y / d x_j = (1[j = y] - softmax_j) / tau
        for start in range(0, rows.shape[0], chunk_rows):
            stop = start + chunk_rows
            x = rows[start:stop].float() / tau
            probs = torch.exp(x - lse[start:stop].unsqueeze(-1))
            g = flat_grad[start:stop].unsqueeze(-1)
            chunk = -probs * g
            chunk.scatter_add_(-1, flat_targets[start:stop].unsqueeze(-1), g)
            grad[start:stop] = (chunk / tau).to(grad.dtype)
        return grad.view(logits.shape), None, None, None


def token_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> torch.Tensor:
    """Log-prob of ``targets`` under ``softmax(logits / temperature)``.

    Args:
        logits: ``[..., V]`` any float dtype; differentiable.
        targets: ``[...]`` token ids.
    Returns:
        ``[...]`` float32, with gradient to ``logits``.
    """
    return _ChunkedTokenLogProb.apply(logits, targets, float(temperature), int(chunk_rows))


@torch.no_grad()
def token_entropy(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    with_expected_q: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``H_t = -sum_a pi(a) log pi(a)`` of ``softmax(logits / temperature)`` per row.

    ``H = -sum_a p_a log p_a`` with ``log p = x - logsumexp(x)``, ``x = logits / tau``.
    Returns ``[...]`` float32 with no gradient (entropy is a metric here).

    ``with_expected_q=True`` returns ``(H, EQ)`` instead, with the Theorem 1
    centre ``EQ_t = E_{a~pi}[Q(a)] = sum_a pi(a)^2 (log pi(a) + H_t)``
    (``Q(a) = pi(a) (log pi(a) + H_t)``) from the same chunk of probabilities.
    """
    rows = _rows(logits)
    out = torch.empty(rows.shape[0], dtype=torch.float32, device=logits.device)
    eq = torch.empty_like(out) if with_expected_q else None
    for start in range(0, rows.shape[0], chunk_rows):
        x = rows[start : start + chunk_rows].float() / temperature
        logp = x - torch.logsumexp(x, dim=-1, keepdim=True)
        probs = torch.exp(logp)
        # -sum p log p on normalised log-probs keeps float32 precision for large
        # logits; where() makes 0 * log 0 = 0 for banned (-inf) logits.
        plogp = torch.where(probs > 0, probs * logp, torch.zeros_like(probs))
        h = -plogp.sum(-1)
        out[start : start + chunk_rows] = h
        if eq is not None:
            # log p_a + H = x_a - sum_b p_b x_b: sum_a p_a^2 (log p_a + H) without 0 * inf
            q = torch.where(probs > 0, probs * probs * (logp + h.unsqueeze(-1)), torch.zeros_like(probs))
            eq[start : start + chunk_rows] = q.sum(-1)
    shape = logits.shape[:-1]
    return (out.view(shape), eq.view(shape)) if eq is not None else out.view(shape)


def token_logprobs_and_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    with_entropy: bool = True,
    with_expected_q: bool = False,
):
    """``(logp [...], entropy [...] or None)``; see ``token_logprobs`` and ``token_entropy``.

    ``with_expected_q=True`` (needs ``with_entropy``) returns a third tensor,
    ``(logp, entropy, expected_q)``: the per-position Theorem 1 centre of
    ``token_entropy(..., with_expected_q=True)``, from the same pass.
    """
    if with_expected_q and not with_entropy:
        raise ValueError("with_expected_q=True needs with_entropy=True (both come from one pass)")
    logp = token_logprobs(logits, targets, temperature=temperature, chunk_rows=chunk_rows)
    if with_expected_q:
        entropy, expected_q = token_entropy(
            logits.detach(), temperature=temperature, chunk_rows=chunk_rows, with_expected_q=True
        )
        return logp, entropy, expected_q
    entropy = (
        token_entropy(logits.detach(), temperature=temperature, chunk_rows=chunk_rows)
        if with_entropy
        else None
    )
    return logp, entropy


def sequence_mean_entropy(entropy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 4: ``(1/N) sum_i (1/T_i) sum_t H_it`` over responses with ``T_i > 0``."""
    mask = mask.to(torch.float32)
    lengths = mask.sum(-1)
    per_seq = torch.where(mask.bool(), entropy, torch.zeros_like(entropy)).sum(-1) / lengths.clamp(min=1)
    valid = lengths > 0
    return per_seq[valid].mean() if valid.any() else torch.tensor(float("nan"))


def token_mean_entropy(entropy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-weighted mean of ``H_t`` over valid tokens (``entropy_token_mean``)."""
    m = mask.bool()
    return entropy[m].mean() if m.any() else torch.tensor(float("nan"))
