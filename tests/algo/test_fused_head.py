"""The tiled LM head against the plain full-logits computation."""

import math

import pytest
import torch

from clipctl.algo import choose_tiles, fused_logprobs_entropy


def plain(h, w, y, bias=None, tau=1.0):
    logits = h.double() @ w.double().T
    if bias is not None:
        logits = logits + bias.double()
    logp_all = torch.log_softmax(logits / tau, -1)
    logp = logp_all.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    ent = -(logp_all.exp() * logp_all).sum(-1)
    return logp, ent


def naive_loop(h, w, y, tau=1.0):
    """Token by token, vocabulary entry by entry: docs/definitions.md section 5 literally."""
    logp, ent = [], []
    for t in range(h.shape[0]):
        xs = [float(h[t].double() @ w[a].double()) / tau for a in range(w.shape[0])]
        m = max(xs)
        z = sum(math.exp(x - m) for x in xs)
        ps = [math.exp(x - m) / z for x in xs]
        logp.append(math.log(ps[int(y[t])]))
        ent.append(-sum(p * math.log(p) for p in ps if p > 0))
    return torch.tensor(logp, dtype=torch.float64), torch.tensor(ent, dtype=torch.float64)


def test_hand_computed():
    # h = [1, 0], W rows [0, 0], [ln 3, 0]: logits [0, ln 3] -> p = [1/4, 3/4]
    h = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    w = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], dtype=torch.float64)
    logp, ent = fused_logprobs_entropy(h, w, torch.tensor([1]))
    assert logp.item() == pytest.approx(math.log(0.75), abs=1e-12)
    assert ent.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_loop(seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(5, 3, generator=g, dtype=torch.float64)
    w = torch.randn(11, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 11, (5,), generator=g)
    logp, ent = fused_logprobs_entropy(h, w, y, temperature=0.8, budget_bytes=12 * 8)
    ref_lp, ref_ent = naive_loop(h, w, y, tau=0.8)
    torch.testing.assert_close(logp, ref_lp, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ent, ref_ent, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 13)])
@pytest.mark.parametrize("vocab", [1, 97, 1000])
@pytest.mark.parametrize("tau", [1.0, 0.6])
@pytest.mark.parametrize("use_bias", [False, True])
def test_values_and_gradients_match_plain(dtype, rtol, shape, vocab, tau, use_bias):
    g = torch.Generator().manual_seed(vocab + shape[1])
    hidden = 24
    h = torch.randn(*shape, hidden, generator=g, dtype=dtype).requires_grad_(True)
    w = (torch.randn(vocab, hidden, generator=g, dtype=dtype) * 0.5).requires_grad_(True)
    b = (torch.randn(vocab, generator=g, dtype=dtype) if use_bias else torch.zeros(0)).requires_grad_(use_bias)
    y = torch.randint(0, vocab, shape, generator=g)
    mask = torch.rand(shape, generator=g) > 0.3  # masked tokens: weights 0 in the loss
    coef = torch.randn(shape, generator=g, dtype=torch.float64) * mask
    # A tiny budget forces many token and vocab tiles (odd remainders included).
    logp, ent = fused_logprobs_entropy(h, w, y, bias=b if use_bias else None, temperature=tau, budget_bytes=12 * 64)
    ref_lp, ref_ent = plain(h, w, y, b if use_bias else None, tau)

    def rel(a, r):
        return ((a.double() - r).abs().max() / r.abs().max().clamp(min=1e-12)).item()

    assert rel(logp, ref_lp) < rtol
    assert rel(ent, ref_ent) < rtol
    params = (h, w, b) if use_bias else (h, w)
    got = torch.autograd.grad((logp.double() * coef).sum(), params)
    want = torch.autograd.grad((ref_lp * coef).sum(), params)
    for a, r in zip(got, want):
        assert ((a.double() - r).norm() / r.norm().clamp(min=1e-12)).item() < rtol


def test_entropy_gradient_option():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(30, 8, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 30, (4,), generator=g)
    logp, ent = fused_logprobs_entropy(h, w, y, entropy_grad=True, temperature=1.3, budget_bytes=12 * 16)
    ref_lp, ref_ent = plain(h, w, y, tau=1.3)
    got = torch.autograd.grad((logp - 0.3 * ent).sum(), (h, w))
    want = torch.autograd.grad((ref_lp - 0.3 * ref_ent).sum(), (h, w))
    for a, r in zip(got, want):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-11)
    _, metric_only = fused_logprobs_entropy(h, w, y)
    assert not metric_only.requires_grad


def test_bf16_inputs_accumulate_in_float32():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(6, 16, generator=g).bfloat16().requires_grad_(True)
    w = torch.randn(50, 16, generator=g).bfloat16().requires_grad_(True)
    y = torch.randint(0, 50, (6,), generator=g)
    logp, ent = fused_logprobs_entropy(h, w, y)
    assert logp.dtype == torch.float32 and ent.dtype == torch.float32
    ref_lp, ref_ent = plain(h.float(), w.float(), y)
    torch.testing.assert_close(logp.double(), ref_lp, rtol=1e-5, atol=1e-5)
    logp.sum().backward()
    assert h.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.bfloat16


def test_tiles_follow_the_budget():
    for budget in (2**20, 64 * 2**20, 1 * 2**30):
        tt, vt = choose_tiles(8192, 151_936, budget)
        assert tt * vt * 12 <= max(budget, 12 * 1024 * 2)
        assert 1 <= tt <= 8192 and 1 <= vt <= 151_936
    assert choose_tiles(3, 10, 2**30) == (3, 10)
    small = choose_tiles(8192, 151_936, 2**20)
    big = choose_tiles(8192, 151_936, 2**30)
    assert small[0] * small[1] < big[0] * big[1]


# --- the Theorem 1 centre E_pi[Q] = sum_a pi(a)^2 (log pi(a) + H) --------------


def naive_expected_q(h, w, tau=1.0):
    out = []
    for t in range(h.shape[0]):
        xs = [float(h[t].double() @ w[a].double()) / tau for a in range(w.shape[0])]
        m = max(xs)
        z = sum(math.exp(x - m) for x in xs)
        ps = [math.exp(x - m) / z for x in xs]
        ent = -sum(p * math.log(p) for p in ps if p > 0)
        out.append(sum(p * p * (math.log(p) + ent) for p in ps if p > 0))
    return torch.tensor(out, dtype=torch.float64)


def test_expected_q_hand_computed():
    # logits [0, ln 3] -> p = [1/4, 3/4]; log p + H = x - (3/4) ln 3
    # EQ = (1/16)(-(3/4) ln 3) + (9/16)((1/4) ln 3) = (3/32) ln 3
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    w = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], dtype=torch.float64)
    # token 1: h = [0, 1] gives logits [0, 0]: uniform, EQ = 0
    logp, ent, eq = fused_logprobs_entropy(h, w, torch.tensor([1, 0]), with_expected_q=True, budget_bytes=12)
    torch.testing.assert_close(eq, torch.tensor([3 / 32 * math.log(3.0), 0.0], dtype=torch.float64))
    assert logp[0].item() == pytest.approx(math.log(0.75), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expected_q_matches_naive_loop(seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(5, 3, generator=g, dtype=torch.float64) * 2
    w = torch.randn(11, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 11, (5,), generator=g)
    # budget 12 * 8: vocab tiles of at most 8 of 11 entries, so the running sums are rescaled across tiles
    logp, ent, eq = fused_logprobs_entropy(h, w, y, temperature=0.8, budget_bytes=12 * 8, with_expected_q=True)
    torch.testing.assert_close(eq, naive_expected_q(h, w, tau=0.8), rtol=1e-10, atol=1e-12)
    ref_lp, ref_ent = naive_loop(h, w, y, tau=0.8)
    torch.testing.assert_close(logp, ref_lp, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ent, ref_ent, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("budget", [12 * 64, 12 * 4096, 2**30])
def test_expected_q_matches_the_chunked_path_and_changes_nothing_else(dtype, tol, budget):
    from clipctl.algo import token_entropy

    g = torch.Generator().manual_seed(7)
    h = (torch.randn(3, 9, 24, generator=g, dtype=dtype) * 2).requires_grad_(True)
    w = (torch.randn(301, 24, generator=g, dtype=dtype)).requires_grad_(True)
    b = torch.randn(301, generator=g, dtype=dtype)
    y = torch.randint(0, 301, (3, 9), generator=g)
    logp, ent, eq = fused_logprobs_entropy(h, w, y, bias=b, temperature=0.6, budget_bytes=budget, with_expected_q=True)
    assert eq.shape == (3, 9) and not eq.requires_grad
    logits = h.detach().double() @ w.detach().double().T + b.double()
    # the chunked path (float32 by design) and a float64 full-softmax reference
    _, chunked_eq = token_entropy(logits, temperature=0.6, with_expected_q=True)
    lsm = torch.log_softmax(logits / 0.6, -1)
    ref_eq = (lsm.exp() ** 2 * (lsm - (lsm.exp() * lsm).sum(-1, keepdim=True))).sum(-1)
    torch.testing.assert_close(eq.double(), ref_eq, rtol=0, atol=tol)
    torch.testing.assert_close(chunked_eq.double(), ref_eq, rtol=0, atol=2e-6)
    # logp, entropy and the gradient are those of the call without the flag
    logp2, ent2 = fused_logprobs_entropy(h, w, y, bias=b, temperature=0.6, budget_bytes=budget)
    assert torch.equal(logp, logp2) and torch.equal(ent, ent2)
    g1 = torch.autograd.grad(logp.sum(), (h, w))
    g2 = torch.autograd.grad(logp2.sum(), (h, w))
    for a, r in zip(g1, g2):
        assert torch.equal(a, r)
