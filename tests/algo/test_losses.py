"""Tests of the policy losses, their clip events and aggregations (docs/definitions.md sections 4 and 6)."""

from __future__ import annotations

import math
import re

import pytest
import torch

from clipctl.algo.losses import (
    LOG_RATIO_CLAMP,
    LOSS_AGGS,
    POLICY_LOSSES,
    ClipEvents,
    PolicyLossOutput,
    agg_loss,
    log_ratio,
    policy_loss,
)
from clipctl.clip import ClipSpec
from clipctl.config import choices
from clipctl.errors import ConfigError

INF = float("inf")
AGGS = ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
# (eps_low, eps_high, dual_clip_c): asymmetric clip, each side disabled, both
# disabled, and dual clip.
CLIP_CONFIGS = [
    (0.2, 0.28, None),
    (0.2, INF, None),
    (1.0, 0.28, None),
    (1.0, INF, None),
    (0.2, 0.28, 3.0),
    (0.1, INF, 3.0),
]
F64 = torch.float64
EVENT_KEYS = ("ratio_below", "ratio_above", "clip_low", "clip_high", "dual_clip")
CLIP = ClipSpec(0.2, 0.2)
ASYM = ClipSpec(0.2, 0.28)


def per_token(logp, old, adv, clip: ClipSpec) -> torch.Tensor:
    """The vanilla loss's unaggregated ``L_t`` with every token valid."""
    return POLICY_LOSSES["vanilla"](logp, old, adv, torch.ones_like(logp), clip).per_token


def scalar_loss(logp, old, adv, mask, clip: ClipSpec, **kw) -> torch.Tensor:
    return policy_loss(logp, old, adv, mask, clip, **kw)[0]


def t64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=F64)


# --- naive reference: docs/definitions.md section 4 written literally, token by token --------------


def naive_token_loss(logp_t, old_t: float, a: float, eps_low, eps_high, c) -> torch.Tensor:
    """L_t for one token; ``logp_t`` is a 0-d tensor so autograd gives dL_t/dlogp_t.

    Each branch is chosen with Python ``if`` on the value; a branch that is a
    constant (clamp/clip saturated) carries no gradient, as the maths says.
    """
    lr = logp_t - old_t
    if lr.item() > 20.0:
        lr = t64(20.0)
    elif lr.item() < -20.0:
        lr = t64(-20.0)
    r = torch.exp(lr)
    if r.item() < 1.0 - eps_low:
        clipped = t64(1.0 - eps_low)
    elif r.item() > 1.0 + eps_high:
        clipped = t64(1.0 + eps_high)
    else:
        clipped = r
    s_unclipped, s_clipped = r * a, clipped * a
    loss = -(s_unclipped if s_unclipped.item() <= s_clipped.item() else s_clipped)
    if c is not None and a < 0 and loss.item() > -c * a:
        loss = t64(-c * a)
    return loss


def naive_policy_loss(logp, old, adv, mask, *, eps_low, eps_high, c, agg, max_new_tokens):
    """Loops over responses i and tokens t; returns a differentiable 0-d tensor."""
    n, t_len = mask.shape
    seq_sums, seq_lens = [], []
    for i in range(n):
        s, length = t64(0.0), 0
        for t in range(t_len):
            if not mask[i, t]:
                continue
            a = float(adv[i]) if adv.dim() == 1 else float(adv[i, t])
            s = s + naive_token_loss(logp[i, t], float(old[i, t]), a, eps_low, eps_high, c)
            length += 1
        seq_sums.append(s)
        seq_lens.append(length)
    if agg == "seq-mean-token-mean":
        return sum(s / length for s, length in zip(seq_sums, seq_lens)) / n
    if agg == "token-mean":
        return sum(seq_sums) / sum(seq_lens)
    if agg == "seq-mean-token-sum":
        return sum(seq_sums) / n
    if agg == "seq-mean-token-sum-norm":
        return sum(s / max_new_tokens for s in seq_sums) / n
    raise AssertionError(agg)


def random_batch(seed: int, n: int, t_len: int, *, spread: float = 0.8):
    """log-probs with ratios spread around 1 (so every region is hit), mixed-sign
    advantages and a mask with at least one valid token per response."""
    gen = torch.Generator().manual_seed(seed)
    logp = -3.0 * torch.rand(n, t_len, generator=gen, dtype=F64)
    old = logp - spread * torch.randn(n, t_len, generator=gen, dtype=F64)
    adv = torch.randn(n, generator=gen, dtype=F64)
    mask = torch.rand(n, t_len, generator=gen) < 0.7
    mask[:, 0] = True
    return logp, old, adv, mask.to(F64)


# --- hand-computed -----------------------------------------------------------


def test_log_ratio_hand_computed_and_clamped():
    logp = t64([-1.0, 0.0, 30.0, -50.0, 5.0])
    old = t64([-2.0, -0.5, 5.0, -10.0, 5.0])
    # differences: 1.0, 0.5, 25 -> clamp 20, -40 -> clamp -20, 0
    torch.testing.assert_close(log_ratio(logp, old), t64([1.0, 0.5, 20.0, -20.0, 0.0]))
    assert LOG_RATIO_CLAMP == 20.0


def hand_batch():
    # ratios r = exp(logp - old): row 0 [1.5, 0.5], row 1 [1.5, 0.5]; A = [+1, -1]
    old = torch.zeros(2, 2, dtype=F64)
    logp = t64([[math.log(1.5), math.log(0.5)], [math.log(1.5), math.log(0.5)]]).requires_grad_()
    adv = t64([1.0, -1.0])
    mask = t64([[1, 1], [1, 0]])
    return logp, old, adv, mask


def test_per_token_loss_hand_computed():
    logp, old, adv, _ = hand_batch()
    loss = per_token(logp, old, adv, CLIP)
    # clip range [0.8, 1.2]
    # A=+1, r=1.5: -min(1.5, 1.2) = -1.2      A=+1, r=0.5: -min(0.5, 0.8) = -0.5
    # A=-1, r=1.5: -min(-1.5, -1.2) = 1.5     A=-1, r=0.5: -min(-0.5, -0.8) = 0.8
    torch.testing.assert_close(loss, t64([[-1.2, -0.5], [1.5, 0.8]]))


@pytest.mark.parametrize(
    "agg, expected",
    [
        # valid L: row 0 [-1.2, -0.5], row 1 [1.5] (the 0.8 is padding)
        ("seq-mean-token-mean", 0.325),  # ((-1.2 - 0.5) / 2 + 1.5 / 1) / 2 = (-0.85 + 1.5) / 2
        ("token-mean", -0.2 / 3),  # (-1.2 - 0.5 + 1.5) / 3 = -0.0666...
        ("seq-mean-token-sum", -0.1),  # (-1.7 + 1.5) / 2
        ("seq-mean-token-sum-norm", -0.025),  # (-1.7 + 1.5) / (2 * max_new_tokens=4)
    ],
)
def test_policy_loss_hand_computed(agg, expected):
    logp, old, adv, mask = hand_batch()
    loss = scalar_loss(logp, old, adv, mask, CLIP, loss_agg=agg, max_new_tokens=4)
    assert loss.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "agg, scale",
    [
        # dL_t/dlogp_t = -A r on an unclipped token, 0 on a clipped one:
        # (0,0) A=+1 r=1.5 clip-high -> 0; (0,1) A=+1 r=0.5 -> -0.5;
        # (1,0) A=-1 r=1.5 -> +1.5;       (1,1) padding -> 0.
        # Each is then multiplied by the aggregation weight of its token:
        ("seq-mean-token-mean", [[0.0, 1 / 4], [1 / 2, 0.0]]),  # 1 / (N * T_i)
        ("token-mean", [[0.0, 1 / 3], [1 / 3, 0.0]]),  # 1 / sum(m)
        ("seq-mean-token-sum", [[0.0, 1 / 2], [1 / 2, 0.0]]),  # 1 / N
        ("seq-mean-token-sum-norm", [[0.0, 1 / 8], [1 / 8, 0.0]]),  # 1 / (N * 4)
    ],
)
def test_policy_loss_gradient_hand_computed(agg, scale):
    logp, old, adv, mask = hand_batch()
    scalar_loss(logp, old, adv, mask, CLIP, loss_agg=agg, max_new_tokens=4).backward()
    raw = t64([[0.0, -0.5], [1.5, 0.0]])
    torch.testing.assert_close(logp.grad, raw * t64(scale))


def test_no_clip_is_vanilla_policy_gradient_surrogate():
    logp, old, adv, mask = hand_batch()
    loss = per_token(logp, old, adv, ClipSpec(1.0, INF))
    # eps_low=1 and eps_high=inf clip to [0, inf]: L = -r A everywhere
    # [[-1.5, -0.5], [1.5, 0.5]]
    torch.testing.assert_close(loss, t64([[-1.5, -0.5], [1.5, 0.5]]))


def test_dual_clip_hand_computed():
    # r = [5, 2, 5, 0.5], A = [-1, -1, +1, -1], eps 0.2/0.2, c = 3
    logp = t64([[math.log(5.0), math.log(2.0), math.log(5.0), math.log(0.5)]]).requires_grad_()
    old = torch.zeros(1, 4, dtype=F64)
    adv = t64([[-1.0, -1.0, 1.0, -1.0]])
    loss = per_token(logp, old, adv, ClipSpec(0.2, 0.2, 3.0))
    # A=-1, r=5:   L = -min(-5, -1.2) = 5   -> dual: min(5, 3) = 3    (grad 0)
    # A=-1, r=2:   L = -min(-2, -1.2) = 2   -> dual: min(2, 3) = 2    (grad r = 2)
    # A=+1, r=5:   L = -min(5, 1.2) = -1.2  -> dual does not apply    (grad 0)
    # A=-1, r=0.5: L = -min(-0.5, -0.8) = 0.8 -> min(0.8, 3) = 0.8    (grad 0, clip-low)
    torch.testing.assert_close(loss, t64([[3.0, 2.0, -1.2, 0.8]]))
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, t64([[0.0, 2.0, 0.0, 0.0]]))


def test_log_ratio_clamp_in_loss():
    # logp - old = +25 and -25; clamped to +-20
    logp = t64([[25.0, -25.0]]).requires_grad_()
    old = torch.zeros(1, 2, dtype=F64)
    loss = per_token(logp, old, t64([1.0]), ClipSpec(1.0, INF))
    # L = -exp(20) * 1 = -485165195.4097903 ; L = -exp(-20) = -2.061153622438558e-09
    torch.testing.assert_close(loss, t64([[-485165195.4097903, -2.061153622438558e-09]]))
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    # the clamp is saturated: no gradient flows through it
    torch.testing.assert_close(logp.grad, torch.zeros(1, 2, dtype=F64))


def test_large_log_ratio_stays_finite_where_exp_would_overflow():
    logp = torch.tensor([[100.0]])  # float32 exp(100) = inf; the clamp keeps exp(20)
    loss = scalar_loss(logp, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1), ClipSpec(1.0, INF))
    assert torch.isfinite(loss)


def test_ratio_one_gives_minus_mean_advantage():
    # first minibatch of a step: logp == old_logp, r = 1, nothing clips
    logp = t64([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]]).requires_grad_()
    adv = t64([0.5, -2.0])
    mask = t64([[1, 1, 1], [1, 1, 0]])
    loss = scalar_loss(logp, logp.detach().clone(), adv, mask, ASYM)
    # (1/2) [ (-0.5 * 3) / 3 + (2.0 * 2) / 2 ] = (1/2)(-0.5 + 2.0) = 0.75
    assert loss.item() == pytest.approx(0.75)
    loss.backward()
    # dL/dlogp = -A / (N T_i): row 0 -0.5/6, row 1 2.0/4, padding 0
    torch.testing.assert_close(logp.grad, t64([[-0.5 / 6] * 3, [0.5, 0.5, 0.0]]))


def test_agg_loss_hand_computed_and_defaults():
    loss = t64([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
    mask = t64([[1, 1, 1], [1, 0, 0]])
    # seq-mean-token-mean: ((1+2+3)/3 + 4/1) / 2 = (2 + 4) / 2 = 3
    assert agg_loss(loss, mask).item() == pytest.approx(3.0)
    # token-mean: (1+2+3+4)/4 = 2.5
    assert agg_loss(loss, mask, "token-mean").item() == pytest.approx(2.5)
    # seq-mean-token-sum: 10 / 2 = 5
    assert agg_loss(loss, mask, "seq-mean-token-sum").item() == pytest.approx(5.0)
    # seq-mean-token-sum-norm: 10 / (2 * 5) = 1
    assert agg_loss(loss, mask, "seq-mean-token-sum-norm", max_new_tokens=5).item() == pytest.approx(1.0)
    # explicit normalisers: token-mean 10 / 8, seq-mean-token-sum 10 / 4
    assert agg_loss(loss, mask, "token-mean", num_tokens=8).item() == pytest.approx(1.25)
    assert agg_loss(loss, mask, "seq-mean-token-sum", num_seqs=4).item() == pytest.approx(2.5)
    # seq-mean-token-mean with num_seqs=4: (2 + 4) / 4 = 1.5
    assert agg_loss(loss, mask, num_seqs=4).item() == pytest.approx(1.5)


def test_agg_loss_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"'sum'") as info:
        agg_loss(torch.zeros(1, 1), torch.ones(1, 1), "sum")
    for name in AGGS:
        assert name in str(info.value)
    assert list(LOSS_AGGS) == AGGS


def test_sum_norm_needs_max_new_tokens():
    with pytest.raises(ValueError, match=r"max_new_tokens"):
        agg_loss(torch.zeros(1, 1), torch.ones(1, 1), "seq-mean-token-sum-norm")


# --- naive loop equivalence: value and gradient -----------------------------


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("eps_low, eps_high, dual_clip_c", CLIP_CONFIGS)
@pytest.mark.parametrize("seed, n, t_len", [(0, 4, 6), (1, 1, 9), (2, 7, 3)])
def test_matches_naive_loop(agg, eps_low, eps_high, dual_clip_c, seed, n, t_len):
    logp, old, adv, mask = random_batch(seed, n, t_len)
    logp_vec = logp.clone().requires_grad_()
    logp_naive = logp.clone().requires_grad_()
    clip = ClipSpec(eps_low, eps_high, dual_clip_c)
    got = scalar_loss(logp_vec, old, adv, mask, clip, loss_agg=agg, max_new_tokens=t_len + 2)
    expected = naive_policy_loss(
        logp_naive, old, adv, mask, eps_low=eps_low, eps_high=eps_high, c=dual_clip_c, agg=agg,
        max_new_tokens=t_len + 2,
    )
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    got.backward()
    expected.backward()
    torch.testing.assert_close(logp_vec.grad, logp_naive.grad, rtol=1e-12, atol=1e-12)


def test_naive_loop_test_sees_every_region():
    """The random batches above do exercise clip-low, clip-high and dual clip."""
    hits = {"clip_low": 0, "clip_high": 0, "dual_clip": 0}
    for seed, n, t_len in [(0, 4, 6), (1, 1, 9), (2, 7, 3)]:
        logp, old, adv, mask = random_batch(seed, n, t_len)
        _, out = policy_loss(logp, old, adv, mask, ClipSpec(0.2, 0.28, 3.0))
        for k in hits:
            hits[k] += int(getattr(out.events, k).sum())
    assert all(v > 0 for v in hits.values()), hits


# --- the output: what the loss used and applied ------------------------------------


def test_output_carries_the_detached_log_ratio_and_masked_events():
    logp, old, adv, mask = random_batch(8, 5, 7)
    logp.requires_grad_()
    loss, out = policy_loss(logp, old, adv, mask, ClipSpec(0.2, 0.28, 3.0), loss_agg="token-mean")
    assert isinstance(out, PolicyLossOutput) and isinstance(out.events, ClipEvents)
    assert out.per_token.shape == logp.shape and out.per_token.requires_grad
    assert not out.log_ratio.requires_grad and not out.logp.requires_grad
    torch.testing.assert_close(out.log_ratio, log_ratio(logp.detach(), old), rtol=0, atol=0)
    torch.testing.assert_close(out.logp, logp.detach(), rtol=0, atol=0)
    torch.testing.assert_close(loss, agg_loss(out.per_token, mask, "token-mean"), rtol=0, atol=0)
    assert tuple(vars(out.events)) == (*EVENT_KEYS, "cov_low", "cov_high")
    pad = ~mask.bool()
    for k in EVENT_KEYS:
        ev = getattr(out.events, k)
        assert ev.dtype == torch.bool and ev.shape == logp.shape, k
        assert not ev[pad].any(), k


def test_policy_loss_registry_matches_the_config_choices():
    assert tuple(POLICY_LOSSES) == choices("algo", "policy_loss")


def test_unknown_policy_loss_lists_valid_names():
    logp, old, adv, mask = hand_batch()
    with pytest.raises(ValueError, match=r"unknown policy loss 'sapo'") as info:
        policy_loss(logp, old, adv, mask, CLIP, loss_mode="sapo")
    for name in POLICY_LOSSES:
        assert name in str(info.value)


# --- where the gradient is zero ---------------------------------------------


def test_gradient_zero_exactly_on_active_clips_hand_built():
    # columns: (r, A) = (0.5,-1) (0.5,+1) (1.5,+1) (1.5,-1) (1,+1) (1,-1) (4,-1) (4,+1)
    ratios = [0.5, 0.5, 1.5, 1.5, 1.0, 1.0, 4.0, 4.0]
    adv = t64([[-1.0, 1.0, 1.0, -1.0, 1.0, -1.0, -1.0, 1.0]])
    old = torch.zeros(1, 8, dtype=F64)
    mask = torch.ones(1, 8, dtype=F64)
    for dual, zero in [
        # clip-low with A<0, clip-high with A>0 (twice), and dual clip (r=4 > c=3, A<0)
        (3.0, [1, 0, 1, 0, 0, 0, 1, 1]),
        # without dual clip the (4, -1) token is unclipped: -min(-4, -1.28) = 4, grad 4
        (None, [1, 0, 1, 0, 0, 0, 0, 1]),
    ]:
        logp = t64([[math.log(r) for r in ratios]]).requires_grad_()
        loss, out = policy_loss(logp, old, adv, mask, ClipSpec(0.2, 0.28, dual), loss_agg="seq-mean-token-sum")
        loss.backward()
        assert (logp.grad == 0).int().tolist() == [zero]
        ev = out.events
        assert (ev.clip_low | ev.clip_high | ev.dual_clip).int().tolist() == [zero]
        # dL_t/dlogp_t = -A r on the others: 0.5, 1.5, -1, 1 (and 4 without dual clip)
        expected = [0.0 if z else -a * r for z, a, r in zip(zero, adv[0].tolist(), ratios)]
        torch.testing.assert_close(logp.grad, t64([expected]))


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("eps_low, eps_high, dual_clip_c", CLIP_CONFIGS)
@pytest.mark.parametrize("seed", [3, 4])
def test_gradient_zero_iff_active_clip(agg, eps_low, eps_high, dual_clip_c, seed):
    logp, old, adv, mask = random_batch(seed, 6, 8)
    logp.requires_grad_()
    loss, out = policy_loss(logp, old, adv, mask, ClipSpec(eps_low, eps_high, dual_clip_c), loss_agg=agg, max_new_tokens=8)
    loss.backward()
    ev = out.events
    active = ev.clip_low | ev.clip_high | ev.dual_clip
    valid = mask.bool()
    zero = logp.grad == 0
    assert torch.equal(zero[valid], active[valid])
    assert zero[~valid].all()
    # the configs without any clip must leave every valid token with a gradient
    if eps_low == 1.0 and eps_high == INF and dual_clip_c is None:
        assert not active.any()


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("eps_low, eps_high, dual_clip_c", CLIP_CONFIGS)
@pytest.mark.parametrize("seed", range(5))
def test_events_are_where_the_clip_zeroes_the_per_token_gradient(dtype, eps_low, eps_high, dual_clip_c, seed):
    """dL_t/dlogp_t of the unaggregated loss is 0 exactly on the returned clip events (A != 0)."""
    logp, old, adv, mask = random_batch(10 + seed, 8, 9, spread=1.2)
    adv = adv.unsqueeze(-1).expand(-1, 9).clone()
    adv[:, ::4] = 0.0  # some tokens without advantage: no event, and no gradient either
    logp, old, adv = logp.to(dtype).requires_grad_(), old.to(dtype), adv.to(dtype)
    clip = ClipSpec(eps_low, eps_high, dual_clip_c)
    out = POLICY_LOSSES["vanilla"](logp, old, adv, mask, clip)
    (grad,) = torch.autograd.grad(out.per_token.sum(), logp)
    ev = out.events
    clipped = ev.clip_low | ev.clip_high | ev.dual_clip
    valid, signed = mask.bool(), adv != 0
    assert torch.equal(grad[valid & signed] == 0, clipped[valid & signed])
    assert not clipped[~signed].any()
    assert (grad[valid & ~signed] == 0).all()
    # the batch does clip whenever a clip is on
    assert bool(clipped.any()) == (clip.low_on or clip.high_on or dual_clip_c is not None)
    # the events are subsets of their regions and respect the sign of A
    assert not (ev.clip_low & ~(ev.ratio_below & (adv < 0))).any()
    assert not (ev.clip_high & ~(ev.ratio_above & (adv > 0))).any()
    assert dual_clip_c is not None or not ev.dual_clip.any()


# --- micro-batches ------------------------------------------------------------


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("splits", [[1, 1, 1, 1, 1, 1], [2, 3, 1], [5, 1]])
@pytest.mark.parametrize("seed", [0, 1])
def test_micro_batches_sum_to_minibatch(agg, splits, seed):
    logp, old, adv, mask = random_batch(seed, 6, 7)
    clip = ClipSpec(0.2, 0.28, 3.0)
    kw = dict(loss_agg=agg, max_new_tokens=7)
    whole_logp = logp.clone().requires_grad_()
    whole = scalar_loss(whole_logp, old, adv, mask, clip, **kw)
    whole.backward()

    micro_logp = logp.clone().requires_grad_()
    total = t64(0.0)
    start = 0
    for size in splits:
        rows = slice(start, start + size)
        part = scalar_loss(
            micro_logp[rows], old[rows], adv[rows], mask[rows], clip,
            num_seqs=6, num_tokens=mask.sum(), **kw,
        )
        part.backward()  # gradient accumulation, one backward per micro-batch
        total = total + part.detach()
        start += size
    torch.testing.assert_close(total, whole.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(micro_logp.grad, whole_logp.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("agg", AGGS)
def test_micro_batches_need_the_minibatch_normalisers(agg):
    """Without num_seqs/num_tokens each micro-batch normalises by itself: the sum differs."""
    logp, old, adv, mask = random_batch(0, 6, 7)
    kw = dict(loss_agg=agg, max_new_tokens=7)
    whole = scalar_loss(logp, old, adv, mask, ASYM, **kw)
    parts = scalar_loss(logp[:2], old[:2], adv[:2], mask[:2], ASYM, **kw) + scalar_loss(
        logp[2:], old[2:], adv[2:], mask[2:], ASYM, **kw
    )
    assert not torch.allclose(parts, whole)


# --- padding and advantage shapes ------------------------------------------


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("bad", [float("nan"), INF, -INF])
def test_non_finite_padding_does_not_change_loss(agg, bad):
    logp, old, adv, mask = random_batch(5, 4, 6)
    clip = ClipSpec(0.2, 0.28, 3.0)
    kw = dict(loss_agg=agg, max_new_tokens=6)
    clean_logp = logp.clone().requires_grad_()
    clean = scalar_loss(clean_logp, old, adv, mask, clip, **kw)
    clean.backward()

    pad = ~mask.bool()
    assert pad.any()
    dirty_logp = torch.where(pad, t64(bad), logp).requires_grad_()
    dirty = scalar_loss(dirty_logp, old, adv, mask, clip, **kw)
    dirty.backward()
    assert torch.isfinite(dirty)
    torch.testing.assert_close(dirty, clean, rtol=0, atol=0)
    torch.testing.assert_close(dirty_logp.grad, clean_logp.grad, rtol=0, atol=0)


def test_non_finite_padding_in_old_logp_and_advantages():
    logp, old, adv, mask = random_batch(6, 3, 5)
    pad = ~mask.bool()
    adv_2d = adv.unsqueeze(-1).expand(-1, 5)
    clean = scalar_loss(logp, old, adv_2d, mask, ASYM)
    dirty = scalar_loss(
        logp, torch.where(pad, t64(float("nan")), old), torch.where(pad, t64(INF), adv_2d), mask, ASYM
    )
    torch.testing.assert_close(dirty, clean, rtol=0, atol=0)


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("eps_low, eps_high, dual_clip_c", CLIP_CONFIGS)
def test_advantages_1d_and_2d_agree(agg, eps_low, eps_high, dual_clip_c):
    logp, old, adv, mask = random_batch(7, 5, 6)
    clip = ClipSpec(eps_low, eps_high, dual_clip_c)
    kw = dict(loss_agg=agg, max_new_tokens=6)
    a = logp.clone().requires_grad_()
    b = logp.clone().requires_grad_()
    loss_1d, out_1d = policy_loss(a, old, adv, mask, clip, **kw)
    loss_2d, out_2d = policy_loss(b, old, adv.unsqueeze(-1).expand(-1, 6).contiguous(), mask, clip, **kw)
    loss_1d.backward()
    loss_2d.backward()
    torch.testing.assert_close(loss_1d, loss_2d, rtol=0, atol=0)
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
    for k in EVENT_KEYS:
        assert torch.equal(getattr(out_1d.events, k), getattr(out_2d.events, k)), k


# --- the clip bounds --------------------------------------------------------------


@pytest.mark.parametrize(
    "bounds, match",
    [
        ((0.0, 0.2), "eps_low=0.0"),
        ((-0.1, 0.2), "eps_low=-0.1"),
        ((1.5, 0.2), "eps_low=1.5"),
        ((float("nan"), 0.2), "eps_low=nan"),
        ((0.2, 0.0), "eps_high=0.0"),
        ((0.2, -0.5), "eps_high=-0.5"),
        ((0.2, float("nan")), "eps_high=nan"),
        ((0.2, -INF), "eps_high=-inf"),
        ((0.2, 0.2, 1.0), "dual_clip_c=1.0"),
        ((0.2, 0.2, 0.5), "dual_clip_c=0.5"),
    ],
)
def test_invalid_clip_parameters_never_reach_a_loss(bounds, match):
    """The losses take a ClipSpec; the spec itself rejects bounds out of range."""
    with pytest.raises(ConfigError, match=re.escape(match)):
        ClipSpec(*bounds)


@pytest.mark.parametrize("bounds", [(1.0, INF), (1e-6, 1e-6), (0.2, 0.28, 1.0001)])
def test_boundary_clip_parameters_accepted(bounds):
    logp, old, adv, mask = hand_batch()
    assert torch.isfinite(scalar_loss(logp, old, adv, mask, ClipSpec(*bounds)))
