"""Log-probs and entropy straight from hidden states and the LM-head weight, tiled.

Never holds ``[tokens x vocab]``: tokens are processed ``token_tile`` at a time
and the vocabulary ``vocab_tile`` columns at a time, keeping only running
log-sum-exp statistics per token (online softmax). Backward recomputes each
tile's logits and sends the gradient to the hidden states and the weight (and
bias). Everything accumulates in float32, also when the model runs in bf16.

Per token with ``x = (h W^T + b) / tau``:

- ``logp = x_y - logsumexp(x)``
- ``H = logsumexp(x) - sum_a softmax(x)_a x_a`` (docs/definitions.md section 5)
- ``EQ = sum_a softmax(x)_a^2 (x_a - sum_b softmax(x)_b x_b)`` (optional: the
  Theorem 1 centre ``E[Q]``, since ``log pi_a + H = x_a - sum_b pi_b x_b``)
- ``d logp / d x_a = 1[a = y] - softmax(x)_a``;
  ``d H / d x_a = -softmax(x)_a (x_a - sum_b softmax(x)_b x_b)``

On CUDA (when triton imports) ``fused_logprobs_entropy`` runs the Triton
kernels of ``fused_head_triton`` instead of this tiled loop (``impl``).
"""

from __future__ import annotations

import os
from typing import Optional

import torch

DEFAULT_BUDGET_BYTES = 64 * 2**20


def choose_tiles(n_tokens: int, vocab: int, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> tuple[int, int]:
    """Token and vocab tile sizes whose float32 work tiles fit ``budget_bytes``.

    A tile step holds about three ``[token_tile, vocab_tile]`` float32 arrays
    (logits, probabilities, gradient), so ``token_tile * vocab_tile`` is kept
    under ``budget / 12``. The vocab tile is as wide as possible (fewer
    passes), the token tile fills the rest.
    """
    elems = max(budget_bytes // 12, 1024)
    vocab_tile = min(vocab, max(elems // 256, 256))
    token_tile = max(1, min(n_tokens, elems // vocab_tile))
    return token_tile, vocab_tile


def _tile_logits(h, weight, bias, v0, v1, tau):
    x = h @ weight[v0:v1].to(h.dtype).T
    if bias is not None:
        x = x + bias[v0:v1].to(h.dtype)
    return x / tau


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 accumulation for bf16/fp16/fp32 inputs; float64 stays float64."""
    return torch.promote_types(t.dtype, torch.float32)


class _FusedLogProbEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, tau, token_tile, vocab_tile, entropy_grad, with_eq):
        n, vocab = hidden.shape[0], weight.shape[0]
        acc = _acc_dtype(hidden)
        logp = torch.empty(n, dtype=acc, device=hidden.device)
        ent = torch.empty_like(logp)
        lse = torch.empty_like(logp)
        mean_x = torch.empty_like(logp)  # sum_a p_a x_a, needed by the entropy gradient
        eq = torch.empty_like(logp) if with_eq else torch.empty(0, dtype=acc, device=hidden.device)
        for t0 in range(0, n, token_tile):
            t1 = min(t0 + token_tile, n)
            h = hidden[t0:t1].to(acc)
            y = targets[t0:t1]
            m = torch.full((t1 - t0,), -torch.inf, dtype=acc, device=h.device)
            s = torch.zeros(t1 - t0, dtype=acc, device=h.device)  # sum exp(x - m)
            # sum exp(x - m) (x - m): shifted, so H = log s - u / s has no cancellation
            u = torch.zeros(t1 - t0, dtype=acc, device=h.device)
            xy = torch.zeros(t1 - t0, dtype=acc, device=h.device)
            # the same two running sums with weights exp(2 (x - m)), for E[Q] = sum p^2 (x - mean_x)
            s2 = torch.zeros(t1 - t0, dtype=acc, device=h.device)
            u2 = torch.zeros(t1 - t0, dtype=acc, device=h.device)
            for v0 in range(0, vocab, vocab_tile):
                v1 = min(v0 + vocab_tile, vocab)
                x = _tile_logits(h, weight, bias, v0, v1, tau)
                new_m = torch.maximum(m, x.max(dim=1).values)
                scale = torch.exp(m - new_m)
                shifted = x - new_m.unsqueeze(1)
                e = torch.exp(shifted)
                carried = torch.where(s > 0, scale * (u + s * (m - new_m)), torch.zeros_like(u))
                u = carried + (e * shifted).sum(1)
                s = s * scale + e.sum(1)
                if with_eq:
                    scale2, e2 = scale * scale, e * e
                    carried2 = torch.where(s2 > 0, scale2 * (u2 + s2 * (m - new_m)), torch.zeros_like(u2))
                    u2 = carried2 + (e2 * shifted).sum(1)
                    s2 = s2 * scale2 + e2.sum(1)
                m = new_m
                in_tile = (y >= v0) & (y < v1)
                if in_tile.any():
                    idx = (y - v0).clamp(0, v1 - v0 - 1)
                    xy = torch.where(in_tile, x.gather(1, idx.unsqueeze(1)).squeeze(1), xy)
            lse_t = m + torch.log(s)
            lse[t0:t1] = lse_t
            logp[t0:t1] = xy - lse_t
            mean_x[t0:t1] = m + u / s
            ent[t0:t1] = torch.log(s) - u / s
            if with_eq:
                # sum_a e_a^2 ((x_a - m) - u / s) / s^2 with e_a = exp(x_a - m), p_a = e_a / s
                eq[t0:t1] = (u2 - s2 * (u / s)) / (s * s)
        ctx.save_for_backward(hidden, weight, bias if bias is not None else torch.empty(0), targets, lse, mean_x)
        ctx.has_bias = bias is not None
        ctx.cfg = (tau, token_tile, vocab_tile, entropy_grad)
        ctx.mark_non_differentiable(eq)
        return logp, ent, eq

    @staticmethod
    def backward(ctx, grad_logp, grad_ent, grad_eq):
        hidden, weight, bias, targets, lse, mean_x = ctx.saved_tensors
        bias = bias if ctx.has_bias else None
        tau, token_tile, vocab_tile, entropy_grad = ctx.cfg
        n, vocab = hidden.shape[0], weight.shape[0]
        use_ent = entropy_grad and grad_ent is not None
        acc = _acc_dtype(hidden)
        grad_h = torch.zeros(hidden.shape, dtype=acc, device=hidden.device)
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        grad_b = torch.zeros(vocab, dtype=acc, device=weight.device) if bias is not None else None
        g_lp = grad_logp.to(acc) if grad_logp is not None else torch.zeros(n, dtype=acc, device=hidden.device)
        for t0 in range(0, n, token_tile):
            t1 = min(t0 + token_tile, n)
            h = hidden[t0:t1].to(acc)
            y = targets[t0:t1]
            g = g_lp[t0:t1].unsqueeze(1)
            for v0 in range(0, vocab, vocab_tile):
                v1 = min(v0 + vocab_tile, vocab)
                x = _tile_logits(h, weight, bias, v0, v1, tau)
                p = torch.exp(x - lse[t0:t1].unsqueeze(1))
                gx = -p * g  # d(g * logp)/dx for a != y
                in_tile = (y >= v0) & (y < v1)
                if in_tile.any():
                    rows = in_tile.nonzero().squeeze(1)
                    gx[rows, y[rows] - v0] += g[rows, 0]
                if use_ent:
                    ge = grad_ent[t0:t1].to(acc).unsqueeze(1)
                    gx -= ge * p * (x - mean_x[t0:t1].unsqueeze(1))
                gx = gx / tau
                grad_h[t0:t1].addmm_(gx, weight[v0:v1].to(acc))
                grad_w[v0:v1].addmm_(gx.T, h)
                if grad_b is not None:
                    grad_b[v0:v1] += gx.sum(0)
        return (
            grad_h.to(hidden.dtype),
            grad_w.to(weight.dtype),
            grad_b.to(bias.dtype) if grad_b is not None else None,
            None, None, None, None, None, None,
        )


IMPLS = ("auto", "tiled", "triton")
IMPL_ENV = "CLIPCTL_FUSED_HEAD"


def triton_available() -> bool:
    """Whether triton imports (checked once; only called for CUDA tensors or a forced Triton path)."""
    global _TRITON_OK
    if _TRITON_OK is None:
        try:
            import triton  # noqa: F401

            _TRITON_OK = True
        except ImportError:
            _TRITON_OK = False
    return _TRITON_OK


_TRITON_OK: Optional[bool] = None


def resolve_impl(hidden: torch.Tensor, weight: torch.Tensor, bias=None, impl: Optional[str] = None) -> str:
    """``"triton"`` or ``"tiled"`` for these inputs.

    ``impl`` (else ``$CLIPCTL_FUSED_HEAD``, else ``"auto"``): ``auto`` takes the
    Triton kernels for CUDA tensors of one fp32/bf16/fp16 dtype when triton
    imports, the tiled path otherwise (CPU, float64, mixed dtypes);
    ``triton`` / ``tiled`` force one (CPU tensors on ``triton`` need
    ``TRITON_INTERPRET=1``).
    """
    impl = impl or os.environ.get(IMPL_ENV, "") or "auto"
    if impl not in IMPLS:
        raise ValueError(f"fused head impl {impl!r} must be one of {IMPLS}")
    if impl != "auto":
        return impl
    if not (hidden.is_cuda and weight.is_cuda) or not triton_available():
        return "tiled"
    from clipctl.algo.fused_head_triton import supports

    return "triton" if supports(hidden, weight, bias) else "tiled"


def fused_logprobs_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    entropy_grad: bool = False,
    with_expected_q: bool = False,
    impl: Optional[str] = None,
):
    """``(logp, entropy)`` of ``targets`` under ``softmax((hidden W^T + b) / tau)``.

    Args:
        hidden: ``[..., H]`` final hidden states (any float dtype).
        weight: ``[V, H]`` LM-head weight.
        targets: ``[...]`` token ids.
        bias: optional ``[V]``.
        budget_bytes: memory for the work tiles; tile sizes follow from it.
        entropy_grad: let gradient flow through the entropy too (entropy bonus);
            by default the entropy is a metric and gets no gradient.
        with_expected_q: also return the Theorem 1 centre
            ``E_pi[Q] = sum_a pi(a)^2 (log pi(a) + H)`` per token, from the same
            tiles (two more running sums per token; no ``[tokens x vocab]``
            tensor), as a third tensor without gradient.
        impl: ``auto`` (default; ``$CLIPCTL_FUSED_HEAD`` overrides it): the
            Triton kernels (``fused_head_triton``) for CUDA tensors when triton
            imports, this tiled path otherwise; ``tiled`` / ``triton`` force one.
    Returns:
        two ``[...]`` tensors (three with ``with_expected_q``), float32 (float64
        for float64 inputs); ``logp`` is differentiable in hidden, weight, bias.
    """
    shape = targets.shape
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_y = targets.reshape(-1)
    if resolve_impl(hidden, weight, bias, impl) == "triton":
        from clipctl.algo.fused_head_triton import fused_flat

        logp, ent, eq = fused_flat(
            flat_h, weight, bias, flat_y, temperature, budget_bytes, entropy_grad, with_expected_q
        )
    else:
        token_tile, vocab_tile = choose_tiles(flat_h.shape[0], weight.shape[0], budget_bytes)
        logp, ent, eq = _FusedLogProbEntropy.apply(
            flat_h, weight, bias, flat_y, float(temperature), token_tile, vocab_tile, bool(entropy_grad),
            bool(with_expected_q),
        )
    if not entropy_grad:
        ent = ent.detach()
    if with_expected_q:
        return logp.view(shape), ent.view(shape), eq.view(shape)
    return logp.view(shape), ent.view(shape)
