"""Tests of chunked token log-probs and entropies (docs/definitions.md sections 1 and 5)."""

from __future__ import annotations

import math

import pytest
import torch

from clipctl.algo.entropy import (
    sequence_mean_entropy,
    token_entropy,
    token_logprobs,
    token_logprobs_and_entropy,
    token_mean_entropy,
)

F64 = torch.float64


def full_logprobs(logits, targets, temperature):
    """Reference: the whole [.., V] log-softmax at once, in the logits' dtype."""
    logsm = torch.log_softmax(logits / temperature, dim=-1)
    return logsm.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def full_entropy(logits, temperature):
    logsm = torch.log_softmax(logits / temperature, dim=-1)
    return -(logsm.exp() * logsm).sum(-1)


def random_logits(seed, shape, dtype, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(*shape, generator=gen, dtype=F64)).to(dtype)
    targets = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    return logits, targets


# Outputs are float32 by docs/definitions.md section 1 whatever the input dtype, so float64 inputs are
# compared to a float64 reference at float32 precision.
TOL = dict(rtol=2e-5, atol=2e-5)


# --- hand-computed -----------------------------------------------------------


def test_hand_computed_two_tokens():
    # row 0: logits [0, ln 3, -1e4, -1e4] -> probs [1/4, 3/4, 0, 0] (exp(-1e4) underflows to 0)
    #   log p(1) = ln(3/4) = -0.2876820725
    #   H = -(1/4 ln 1/4 + 3/4 ln 3/4) = ln 4 - (3/4) ln 3 = 1.3862943611 - 0.8239592165 = 0.5623351446
    # row 1: logits [0, 0, 0, 0] -> uniform over 4: log p = -ln 4 = -1.3862943611, H = ln 4
    logits = torch.tensor([[0.0, math.log(3.0), -1e4, -1e4], [0.0, 0.0, 0.0, 0.0]])
    targets = torch.tensor([1, 2])
    logp, ent = token_logprobs_and_entropy(logits, targets)
    torch.testing.assert_close(logp, torch.tensor([-0.2876820725, -1.3862943611]))
    torch.testing.assert_close(ent, torch.tensor([0.5623351446, 1.3862943611]))


def test_hand_computed_temperature():
    # logits [0, ln 3] at tau = 0.5 -> x = [0, 2 ln 3] = [0, ln 9] -> probs [1/10, 9/10]
    #   log p(0) = ln 0.1 = -2.3025850930
    #   H = ln 10 - (9/10) ln 9 = 2.3025850930 - 1.9775021197 = 0.3250829734
    logits = torch.tensor([[0.0, math.log(3.0)]])
    logp = token_logprobs(logits, torch.tensor([0]), temperature=0.5)
    ent = token_entropy(logits, temperature=0.5)
    torch.testing.assert_close(logp, torch.tensor([-2.3025850930]))
    torch.testing.assert_close(ent, torch.tensor([0.3250829734]))


def test_hand_computed_gradient():
    # d log p_y / d x_j = (1[j = y] - p_j) / tau; logits [0, ln 3], y = 1, tau = 1:
    #   p = [1/4, 3/4] -> grad = [-1/4, 1 - 3/4] = [-0.25, 0.25]
    # with tau = 0.5: p = [1/10, 9/10] -> grad = [-0.1, 0.1] / 0.5 = [-0.2, 0.2]
    for tau, expected in [(1.0, [-0.25, 0.25]), (0.5, [-0.2, 0.2])]:
        logits = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)
        token_logprobs(logits, torch.tensor([1]), temperature=tau).sum().backward()
        torch.testing.assert_close(logits.grad, torch.tensor([expected]))


@pytest.mark.parametrize("vocab", [1, 2, 7, 50])
@pytest.mark.parametrize("offset", [0.0, 3.7, -20.0])
def test_uniform_entropy_is_log_vocab(vocab, offset):
    logits = torch.full((3, 2, vocab), offset)
    for tau in (1.0, 0.7):
        ent = token_entropy(logits, temperature=tau)
        # H = logsumexp(x) - sum_a p_a x_a subtracts two numbers of size |x| in
        # float32, so the absolute error grows with the logit magnitude |offset / tau|.
        atol = 2e-6 * (1.0 + abs(offset) / tau)
        torch.testing.assert_close(ent, torch.full((3, 2), math.log(vocab)), rtol=0, atol=atol)
        logp = token_logprobs(logits, torch.zeros(3, 2, dtype=torch.long), temperature=tau)
        torch.testing.assert_close(logp, torch.full((3, 2), -math.log(vocab)), rtol=1e-6, atol=1e-6)


def test_one_hot_ish_entropy_near_zero():
    # one logit 40 above the others: p(others) ~ e^-40 ~ 4e-18, H ~ 99 * 41 * e^-40 ~ 2e-14
    logits = torch.zeros(2, 100)
    logits[0, 3] = 40.0
    logits[1, 99] = 40.0
    ent = token_entropy(logits)
    assert ent.shape == (2,)
    assert torch.all(ent >= -1e-6) and torch.all(ent < 1e-5)
    logp = token_logprobs(logits, torch.tensor([3, 99]))
    torch.testing.assert_close(logp, torch.zeros(2), rtol=0, atol=1e-6)


@pytest.mark.parametrize("offset", [30.0, 100.0])
def test_entropy_is_shift_invariant_up_to_float32_cancellation(offset):
    # softmax is shift invariant; the float32 lse - E[x] form loses ~4e-6 * offset
    # (measured), far below the entropy changes the project looks at.
    logits, _ = random_logits(4, (50, 300), torch.float32)
    ref = full_entropy(logits.double(), 1.0).float()
    torch.testing.assert_close(token_entropy(logits + offset), ref, rtol=0, atol=1e-5 * offset)


def test_entropy_has_no_gradient_and_logp_is_float32():
    logits = torch.randn(3, 5, dtype=F64, requires_grad=True)
    logp, ent = token_logprobs_and_entropy(logits, torch.tensor([0, 1, 2]))
    assert logp.dtype == torch.float32 and ent.dtype == torch.float32
    assert logp.requires_grad and not ent.requires_grad
    logp2, none = token_logprobs_and_entropy(logits, torch.tensor([0, 1, 2]), with_entropy=False)
    assert none is None
    torch.testing.assert_close(logp2, logp)


# --- equivalence with the full log-softmax computation ----------------------

SHAPES = [(1, 1, 3), (2, 5, 11), (3, 7, 17), (13, 33)]  # 1, 10, 21 and 13 rows
CHUNKS = [1, 4, 10, 21, 1024]  # smaller than, equal to (for 10 and 21 rows), larger than


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("chunk_rows", CHUNKS)
def test_matches_full_log_softmax(dtype, temperature, shape, chunk_rows):
    logits, targets = random_logits(sum(shape) + chunk_rows, shape, dtype)
    logits.requires_grad_()
    ref_logits = logits.detach().clone().requires_grad_()

    logp, ent = token_logprobs_and_entropy(logits, targets, temperature=temperature, chunk_rows=chunk_rows)
    ref_logp = full_logprobs(ref_logits, targets, temperature)
    ref_ent = full_entropy(ref_logits.detach(), temperature)
    assert logp.shape == targets.shape and ent.shape == targets.shape
    torch.testing.assert_close(logp, ref_logp.float(), **TOL)
    torch.testing.assert_close(ent, ref_ent.float(), **TOL)
    torch.testing.assert_close(token_entropy(logits.detach(), temperature=temperature, chunk_rows=chunk_rows), ent)

    # gradient of an arbitrary weighted sum, so every row's upstream grad differs
    weights = torch.linspace(-1.0, 2.0, targets.numel()).view(targets.shape)
    (logp * weights).sum().backward()
    (ref_logp * weights.to(dtype)).sum().backward()
    assert logits.grad.dtype == dtype
    torch.testing.assert_close(logits.grad, ref_logits.grad, **TOL)


@pytest.mark.parametrize("chunk_rows", [1, 3, 5, 100])
def test_chunking_does_not_change_results(chunk_rows):
    logits, targets = random_logits(11, (5, 9, 23), torch.float32)
    logits.requires_grad_()
    ref = token_logprobs(logits, targets, chunk_rows=45)
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    got = token_logprobs(logits, targets, chunk_rows=chunk_rows)
    (g_got,) = torch.autograd.grad(got.sum(), logits)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(token_entropy(logits, chunk_rows=chunk_rows), token_entropy(logits, chunk_rows=45))


def test_bfloat16_logits():
    logits, targets = random_logits(3, (4, 6, 10), torch.bfloat16)
    logits.requires_grad_()
    logp = token_logprobs(logits, targets, chunk_rows=7)
    ref = full_logprobs(logits.detach().float(), targets, 1.0)
    torch.testing.assert_close(logp, ref, **TOL)
    logp.sum().backward()
    assert logits.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_rows", [1, 2, 64])
def test_gradcheck_float64(temperature, chunk_rows):
    logits, targets = random_logits(5, (3, 5), F64, scale=1.0)
    logits.requires_grad_()

    def fn(x):
        return token_logprobs(x, targets, temperature=temperature, chunk_rows=chunk_rows)

    # docs/definitions.md section 1 computes in float32 even for float64 inputs, so the finite
    # differences need a larger step than gradcheck's default 1e-6: with
    # eps=1e-3 the float32 rounding (~1e-7 / 1e-3) and truncation errors stay
    # near 1e-4, well under atol.
    assert torch.autograd.gradcheck(fn, (logits,), eps=1e-3, atol=1e-3, rtol=1e-3)


def test_gradcheck_of_the_full_reference_agrees_with_analytic_gradient():
    """Jacobian of token_logprobs == Jacobian of the float64 log-softmax reference."""
    logits, targets = random_logits(6, (4, 6), F64, scale=1.0)
    for tau in (1.0, 0.7):
        jac = torch.autograd.functional.jacobian(
            lambda x: token_logprobs(x, targets, temperature=tau, chunk_rows=3).double(), logits
        )
        ref = torch.autograd.functional.jacobian(lambda x: full_logprobs(x, targets, tau), logits)
        torch.testing.assert_close(jac, ref, **TOL)


# --- sequence / token means --------------------------------------------------


def naive_sequence_mean(entropy, mask):
    """Eq. 4: (1/N) sum_i (1/T_i) sum_t H_it over responses with T_i > 0."""
    per_seq = []
    for i in range(len(mask)):
        vals = [entropy[i][t] for t in range(len(mask[i])) if mask[i][t]]
        if vals:
            per_seq.append(sum(vals) / len(vals))
    return sum(per_seq) / len(per_seq) if per_seq else math.nan


def naive_token_mean(entropy, mask):
    vals = [entropy[i][t] for i in range(len(mask)) for t in range(len(mask[i])) if mask[i][t]]
    return sum(vals) / len(vals) if vals else math.nan


def test_sequence_and_token_mean_hand_computed():
    entropy = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    # Eq. 4: row means (1+2)/2 = 1.5 and 4/1 = 4; row 2 has no tokens and is skipped
    #   -> (1.5 + 4) / 2 = 2.75
    assert sequence_mean_entropy(entropy, mask).item() == pytest.approx(2.75)
    # token mean: (1 + 2 + 4) / 3 = 7/3 = 2.3333 (differs: long responses weigh more)
    assert token_mean_entropy(entropy, mask).item() == pytest.approx(7 / 3)


def test_means_ignore_non_finite_padding():
    entropy = torch.tensor([[0.5, float("nan")], [1.5, float("inf")]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # (0.5 + 1.5) / 2 = 1.0 both ways
    assert sequence_mean_entropy(entropy, mask).item() == pytest.approx(1.0)
    assert token_mean_entropy(entropy, mask).item() == pytest.approx(1.0)


def test_means_of_no_tokens_are_nan():
    entropy = torch.ones(2, 3)
    mask = torch.zeros(2, 3)
    assert math.isnan(sequence_mean_entropy(entropy, mask).item())
    assert math.isnan(token_mean_entropy(entropy, mask).item())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("n, t_len", [(1, 1), (4, 6), (9, 3), (2, 15)])
def test_means_match_naive_loop(seed, n, t_len):
    gen = torch.Generator().manual_seed(seed)
    entropy = 3.0 * torch.rand(n, t_len, generator=gen)
    mask = torch.rand(n, t_len, generator=gen) < 0.6
    if n > 1:
        mask[0] = False  # a response with zero valid tokens
        mask[1, 0] = True
    else:
        mask[0, 0] = True
    entropy = torch.where(mask, entropy, torch.tensor(float("nan")))
    e, m = entropy.tolist(), mask.tolist()
    assert sequence_mean_entropy(entropy, mask).item() == pytest.approx(naive_sequence_mean(e, m), rel=1e-6)
    assert token_mean_entropy(entropy, mask).item() == pytest.approx(naive_token_mean(e, m), rel=1e-6)


def test_entropy_pipeline_end_to_end():
    """token_entropy -> sequence_mean_entropy equals a loop over full log-softmax rows."""
    logits, _ = random_logits(9, (3, 4, 12), torch.float32)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    ent = token_entropy(logits, temperature=0.7, chunk_rows=5)
    rows = []
    for i in range(3):
        hs = [full_entropy(logits[i, t].double(), 0.7).item() for t in range(4) if mask[i, t]]
        rows.append(sum(hs) / len(hs))
    assert sequence_mean_entropy(ent, mask).item() == pytest.approx(sum(rows) / 3, rel=1e-5)


# --- the Theorem 1 centre E_pi[Q] = sum_a pi(a)^2 (log pi(a) + H) -------------


def naive_expected_q(row, temperature=1.0):
    """One row of logits, entry by entry with Python floats."""
    xs = [float(v) / temperature for v in row]
    m = max(xs)
    z = sum(math.exp(x - m) for x in xs)
    ps = [math.exp(x - m) / z for x in xs]
    h = -sum(p * math.log(p) for p in ps if p > 0)
    return sum(p * p * (math.log(p) + h) for p in ps if p > 0)


def test_expected_q_hand_computed():
    # row 0: logits [0, ln 3, -1e4, -1e4] -> p = [1/4, 3/4, 0, 0], H = ln 4 - (3/4) ln 3
    #   log p + H = x - sum_b p_b x_b = x - (3/4) ln 3 -> [-(3/4) ln 3, (1/4) ln 3]
    #   EQ = (1/16)(-(3/4) ln 3) + (9/16)((1/4) ln 3) = (9/64 - 3/64) ln 3 = (3/32) ln 3 = 0.1029948 ;
    #   the banned entries (p = 0) add nothing
    # row 1: uniform: log p + H = 0 for every entry -> EQ = 0
    # row 2: [0, ln 3] / 0.5 -> p = [1/10, 9/10], x = [0, ln 9], mean x = 0.9 ln 9
    #   EQ = (1/100)(-0.9 ln 9) + (81/100)(0.1 ln 9) = (0.081 - 0.009) ln 9 = 0.072 ln 9 = 0.1582004
    logits = torch.tensor([[0.0, math.log(3.0), -1e4, -1e4], [0.0, 0.0, 0.0, 0.0]])
    ent, eq = token_entropy(logits, with_expected_q=True)
    torch.testing.assert_close(eq, torch.tensor([3 / 32 * math.log(3.0), 0.0]))
    torch.testing.assert_close(ent, token_entropy(logits))
    _, eq_t = token_entropy(torch.tensor([[0.0, math.log(3.0)]]), temperature=0.5, with_expected_q=True)
    assert eq_t.item() == pytest.approx(0.072 * math.log(9.0), abs=1e-6)
    # -inf logits (banned tokens) are no NaN
    _, eq_inf = token_entropy(torch.tensor([[0.0, math.log(3.0), -math.inf]]), with_expected_q=True)
    assert eq_inf.item() == pytest.approx(3 / 32 * math.log(3.0), abs=1e-6)


@pytest.mark.parametrize("seed, shape, temperature, chunk_rows", [(0, (3, 5, 17), 1.0, 4), (1, (7, 40), 0.7, 3), (2, (2, 2, 2, 9), 1.3, 1024)])
def test_expected_q_matches_naive_loop(seed, shape, temperature, chunk_rows):
    logits, targets = random_logits(seed, shape, F64)
    ent, eq = token_entropy(logits, temperature=temperature, chunk_rows=chunk_rows, with_expected_q=True)
    assert eq.shape == shape[:-1] and eq.dtype == torch.float32 and not eq.requires_grad
    ref = torch.tensor([naive_expected_q(r, temperature) for r in logits.reshape(-1, shape[-1]).tolist()], dtype=F64)
    torch.testing.assert_close(eq.double().reshape(-1), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ent, token_entropy(logits, temperature=temperature, chunk_rows=chunk_rows))


def test_logprobs_and_entropy_with_expected_q():
    logits, targets = random_logits(3, (4, 6, 33), F64)
    logits.requires_grad_(True)
    logp, ent, eq = token_logprobs_and_entropy(logits, targets, temperature=0.9, chunk_rows=5, with_expected_q=True)
    logp2, ent2 = token_logprobs_and_entropy(logits, targets, temperature=0.9, chunk_rows=5)
    torch.testing.assert_close(logp, logp2)
    torch.testing.assert_close(ent, ent2)
    torch.testing.assert_close(eq, token_entropy(logits.detach(), temperature=0.9, with_expected_q=True)[1])
    assert logp.requires_grad and not eq.requires_grad
    with pytest.raises(ValueError, match="with_entropy"):
        token_logprobs_and_entropy(logits, targets, with_entropy=False, with_expected_q=True)
