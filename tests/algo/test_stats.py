"""Tests of clip events (SPEC 6) and the Theorem 1/2 statistics (SPEC 7)."""

from __future__ import annotations

import math

import pytest
import torch

from clipctl.algo.stats import (
    STAT_KEYS,
    SUM_KEYS,
    add_sums,
    clip_event_masks,
    clip_stat_sums,
    finalize_clip_stats,
)

INF = float("inf")
NAN = float("nan")
F64 = torch.float64
EVENT_KEYS = ("ratio_below", "ratio_above", "clip_low", "clip_high", "dual_clip")


def assert_stats_equal(got: dict, expected: dict, *, rel=1e-9, abs_=1e-12):
    assert set(got) == set(expected)
    for k in expected:
        if math.isnan(expected[k]):
            assert math.isnan(got[k]), (k, got[k])
        else:
            assert got[k] == pytest.approx(expected[k], rel=rel, abs=abs_), k


# --- the hand-computed example ------------------------------------------------
#
# eps_low = 0.2 (X: r < 0.8), eps_high = 0.28 (Y: r > 1.28), dual clip c = 3.
# Two responses of 3 valid tokens and one padded position each.
#
#   token  A    r    pi(y)  H    region        event
#   (0,0)  -1   0.5  0.5    1.0  X             clip_low
#   (0,1)  -1   4.0  0.25   1.5  Y             dual_clip (A<0, r=4>3); not clip_high
#   (0,2)  -1   1.2  1.0    0.5  -             -
#   (1,0)  +1   0.7  0.1    3.0  X             - (A>0)
#   (1,1)  +1   1.5  0.8    0.2  Y             clip_high
#   (1,2)  +1   1.0  0.5    0.6  -             -
#
# Q = pi (log pi + H):
#   (0,0) 0.5  (-0.6931471806 + 1.0) =  0.1534264097
#   (0,1) 0.25 (-1.3862943611 + 1.5) =  0.0284264097
#   (0,2) 1.0  ( 0.0          + 0.5) =  0.5
#   (1,0) 0.1  (-2.3025850930 + 3.0) =  0.0697414907
#   (1,1) 0.8  (-0.2231435513 + 0.2) = -0.0185148411
#   (1,2) 0.5  (-0.6931471806 + 0.6) = -0.0465735903
#   sum 0.6865058788, mean_all = 0.6865058788 / 6 = 0.1144176465
# gap = -log pi - H:
#   X: (0,0) 0.6931471806 - 1.0 = -0.3068528194 ; (1,0) 2.3025850930 - 3.0 = -0.6974149070
#   Y: (0,1) 1.3862943611 - 1.5 = -0.1137056389 ; (1,1) 0.2231435513 - 0.2 =  0.0231435513


def hand_example(dtype=F64):
    pi = [[0.5, 0.25, 1.0, 1.0], [0.1, 0.8, 0.5, 1.0]]
    ratio = [[0.5, 4.0, 1.2, 1.0], [0.7, 1.5, 1.0, 1.0]]
    logp = torch.tensor([[math.log(p) for p in row] for row in pi], dtype=dtype)
    old = logp - torch.tensor([[math.log(r) for r in row] for row in ratio], dtype=dtype)
    entropy = torch.tensor([[1.0, 1.5, 0.5, NAN], [3.0, 0.2, 0.6, NAN]], dtype=dtype)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    # padding holds garbage: it must not count anywhere
    logp[:, 3] = NAN
    old[:, 3] = -INF
    adv = torch.tensor([-1.0, 1.0], dtype=dtype)
    return logp, old, adv, mask, entropy


HAND_KW = dict(eps_low=0.2, eps_high=0.28, dual_clip_c=3.0)


def test_clip_event_masks_hand_computed():
    logp, old, adv, mask, _ = hand_example()
    ev = clip_event_masks(logp, old, adv, mask, **HAND_KW)
    assert set(ev) == set(EVENT_KEYS)
    expected = {
        "ratio_below": [[1, 0, 0, 0], [1, 0, 0, 0]],
        "ratio_above": [[0, 1, 0, 0], [0, 1, 0, 0]],
        "clip_low": [[1, 0, 0, 0], [0, 0, 0, 0]],
        "clip_high": [[0, 0, 0, 0], [0, 1, 0, 0]],
        "dual_clip": [[0, 1, 0, 0], [0, 0, 0, 0]],
    }
    for k, v in expected.items():
        assert ev[k].dtype == torch.bool
        assert ev[k].int().tolist() == v, k
    # without dual clip the r=4, A<0 token is no event of its own
    ev = clip_event_masks(logp, old, adv, mask, eps_low=0.2, eps_high=0.28)
    assert not ev["dual_clip"].any()


def test_zero_advantage_is_no_active_clip():
    # r = [0.5, 1.5, 5.0], A = 0: in X, in Y, above c; SPEC 6 needs A < 0 / A > 0 strictly
    logp = torch.tensor([[math.log(0.5), math.log(1.5), math.log(5.0)]], dtype=F64)
    ev = clip_event_masks(logp, torch.zeros(1, 3, dtype=F64), torch.zeros(1, dtype=F64), torch.ones(1, 3), **HAND_KW)
    assert ev["ratio_below"].int().tolist() == [[1, 0, 0]]
    assert ev["ratio_above"].int().tolist() == [[0, 1, 1]]
    assert not (ev["clip_low"] | ev["clip_high"] | ev["dual_clip"]).any()


def test_clip_stat_sums_hand_computed():
    logp, old, adv, mask, entropy = hand_example()
    sums = clip_stat_sums(logp, old, adv, mask, entropy, **HAND_KW)
    assert tuple(sums) == SUM_KEYS
    expected = {
        "n_tokens": 6.0,
        "n_below": 2.0,
        "n_above": 2.0,
        "n_clip_low": 1.0,
        "n_clip_high": 1.0,
        "n_dual_clip": 1.0,
        "q_sum": 0.6865058788,
        "q_sum_below": 0.2231679004,  # 0.1534264097 + 0.0697414907
        "q_sum_above": 0.0099115686,  # 0.0284264097 - 0.0185148411
        "gap_sum_below": -1.0042677264,  # -0.3068528194 - 0.6974149070
        "gap_sum_above": -0.0905620876,  # -0.1137056389 + 0.0231435513
    }
    for k, v in expected.items():
        assert sums[k].dtype == F64
        assert sums[k].item() == pytest.approx(v, abs=1e-9), k


def test_finalize_hand_computed():
    logp, old, adv, mask, entropy = hand_example()
    stats = finalize_clip_stats(clip_stat_sums(logp, old, adv, mask, entropy, **HAND_KW))
    assert tuple(stats) == STAT_KEYS
    expected = {
        "clip_low_frac": 1 / 6,
        "clip_high_frac": 1 / 6,
        "dual_clip_frac": 1 / 6,
        "ratio_below_frac": 2 / 6,
        "ratio_above_frac": 2 / 6,
        # mean_all(Q) - mean_X(Q) = 0.1144176465 - 0.2231679004 / 2 = 0.1144176465 - 0.1115839502
        "thm1_low": 0.0028336963,
        # mean_all(Q) - mean_Y(Q) = 0.1144176465 - 0.0099115686 / 2
        #                         = 0.1144176465 - 0.0049557843 = 0.1094618621 (rounded)
        "thm1_high": 0.1094618621,
        # mean_X(gap) = -1.0042677264 / 2
        "thm2_low": -0.5021338632,
        # mean_Y(gap) = -0.0905620876 / 2
        "thm2_high": -0.0452810438,
        # (1/3) 0.0028336963 - (1/3) 0.1094618621 = -0.1066281658 / 3
        "thm1_drift": -0.0355427220,
        # (1/3)(-0.5021338632) - (1/3)(-0.0452810438) = -0.4568528194 / 3
        "thm2_drift": -0.1522842731,
    }
    assert_stats_equal(stats, expected, rel=0, abs_=1e-9)


def test_advantages_1d_and_2d_agree():
    logp, old, adv, mask, entropy = hand_example()
    a = clip_stat_sums(logp, old, adv, mask, entropy, **HAND_KW)
    b = clip_stat_sums(logp, old, adv.unsqueeze(-1).expand(-1, 4), mask, entropy, **HAND_KW)
    for k in SUM_KEYS:
        assert a[k].item() == b[k].item()


def test_float32_inputs_sum_in_float64():
    logp, old, adv, mask, entropy = hand_example(torch.float32)
    sums = clip_stat_sums(logp, old, adv, mask, entropy, **HAND_KW)
    assert all(sums[k].dtype == F64 for k in SUM_KEYS)
    assert sums["q_sum"].item() == pytest.approx(0.6865058788, abs=1e-6)


def test_log_ratio_clamp_applies_to_events():
    # logp - old = +1000 is clamped to 20: r = exp(20) = 4.85e8, not exp(1000) = inf.
    # So with eps_high = 1e9 (Y: r > 1e9 + 1) and c = 1e10 neither event fires;
    # without the clamp both would.
    logp = torch.tensor([[-1.0]], dtype=F64)
    old = torch.tensor([[-1001.0]], dtype=F64)
    mask = torch.ones(1, 1)
    ev = clip_event_masks(logp, old, torch.tensor([-1.0], dtype=F64), mask, eps_low=0.2, eps_high=1e9, dual_clip_c=1e10)
    assert not ev["ratio_above"].any() and not ev["dual_clip"].any()
    # with eps_high = 1e8 and c = 1e8 both fire: 4.85e8 > 1e8 + 1 and 4.85e8 > 1e8
    ev = clip_event_masks(logp, old, torch.tensor([-1.0], dtype=F64), mask, eps_low=0.2, eps_high=1e8, dual_clip_c=1e8)
    assert ev["ratio_above"].all() and ev["dual_clip"].all()


# --- empty regions -------------------------------------------------------------


def test_empty_regions_give_nan_not_zero():
    logp, old, adv, mask, entropy = hand_example()
    # eps_high = inf: region Y is empty; eps_low = 1: region X is empty
    stats = finalize_clip_stats(clip_stat_sums(logp, old, adv, mask, entropy, eps_low=1.0, eps_high=INF))
    assert stats["ratio_below_frac"] == 0.0 and stats["ratio_above_frac"] == 0.0
    assert stats["clip_low_frac"] == 0.0 and stats["clip_high_frac"] == 0.0
    assert stats["dual_clip_frac"] == 0.0
    for k in ("thm1_low", "thm1_high", "thm2_low", "thm2_high"):
        assert math.isnan(stats[k]), k
    # an empty region has probability 0: its drift term is 0 (docstring of
    # finalize_clip_stats), so the drifts stay finite
    assert stats["thm1_drift"] == 0.0 and stats["thm2_drift"] == 0.0

    only_x = finalize_clip_stats(clip_stat_sums(logp, old, adv, mask, entropy, eps_low=0.2, eps_high=INF))
    assert math.isnan(only_x["thm1_high"]) and math.isnan(only_x["thm2_high"])
    assert only_x["thm2_low"] == pytest.approx(-0.5021338632, abs=1e-9)
    # drift = (1/3)(-0.5021338632) - 0 = -0.1673779544
    assert only_x["thm2_drift"] == pytest.approx(-0.1673779544, abs=1e-9)
    # thm1 drift = (1/3)(0.0028336963) = 0.0009445654
    assert only_x["thm1_drift"] == pytest.approx(0.0009445654, abs=1e-9)


def test_no_valid_tokens_gives_all_nan():
    logp, old, adv, mask, entropy = hand_example()
    sums = clip_stat_sums(logp, old, adv, torch.zeros_like(mask), entropy, **HAND_KW)
    assert all(sums[k].item() == 0.0 for k in SUM_KEYS)
    stats = finalize_clip_stats(sums)
    assert all(math.isnan(stats[k]) for k in STAT_KEYS), stats


# --- combining minibatches ----------------------------------------------------


def sums_dict(**kw) -> dict[str, torch.Tensor]:
    base = {k: 0.0 for k in SUM_KEYS}
    base.update(kw)
    return {k: torch.tensor(v, dtype=F64) for k, v in base.items()}


def test_add_sums_reweights_by_region_size_hand_computed():
    # minibatch a: 2 tokens, 1 in X with gap -1 and Q 0.4; q_sum 1.0
    a = sums_dict(n_tokens=2, n_below=1, n_clip_low=1, q_sum=1.0, q_sum_below=0.4, gap_sum_below=-1.0)
    # minibatch b: 8 tokens, 3 in X with gaps summing to 3 and Q summing to 0.3; q_sum 2.0
    b = sums_dict(n_tokens=8, n_below=3, q_sum=2.0, q_sum_below=0.3, gap_sum_below=3.0)
    sa, sb = finalize_clip_stats(a), finalize_clip_stats(b)
    # per minibatch: thm2_low a = -1 / 1 = -1, b = 3 / 3 = 1
    assert sa["thm2_low"] == -1.0 and sb["thm2_low"] == 1.0
    pooled = finalize_clip_stats(add_sums(a, b))
    # pooled: (-1 + 3) / (1 + 3) = 0.5, NOT the mean of means (-1 + 1) / 2 = 0
    assert pooled["thm2_low"] == pytest.approx(0.5)
    assert (sa["thm2_low"] + sb["thm2_low"]) / 2 == 0.0
    # ratio_below_frac: (1 + 3) / (2 + 8) = 0.4 (mean of fractions would be (0.5 + 0.375) / 2)
    assert pooled["ratio_below_frac"] == pytest.approx(0.4)
    assert pooled["clip_low_frac"] == pytest.approx(0.1)  # 1 / 10
    # thm1_low: mean_all(Q) - mean_X(Q) = (1 + 2) / 10 - (0.4 + 0.3) / 4 = 0.3 - 0.175 = 0.125
    assert pooled["thm1_low"] == pytest.approx(0.125)
    # drifts: 0.4 * 0.5 = 0.2 and 0.4 * 0.125 = 0.05 (Y empty -> its term is 0)
    assert pooled["thm2_drift"] == pytest.approx(0.2)
    assert pooled["thm1_drift"] == pytest.approx(0.05)
    assert math.isnan(pooled["thm2_high"])


def test_add_sums_equals_concatenated_minibatch_and_differs_from_mean_of_means():
    logp_a, old_a, adv_a, mask_a, ent_a = hand_example()
    # minibatch b: 3 responses of different lengths, ratios in both regions
    pi_b = [[0.3, 0.9, 0.05, 0.6], [0.2, 0.7, 0.4, 0.9], [0.5, 0.5, 0.5, 0.5]]
    ratio_b = [[0.6, 1.1, 0.3, 2.0], [0.75, 0.95, 1.4, 1.0], [0.4, 1.0, 1.0, 1.0]]
    logp_b = torch.tensor([[math.log(p) for p in row] for row in pi_b], dtype=F64)
    old_b = logp_b - torch.tensor([[math.log(r) for r in row] for row in ratio_b], dtype=F64)
    ent_b = torch.tensor([[2.0, 0.3, 4.0, 0.8], [2.5, 0.4, 1.0, 0.1], [1.0, 1.0, 1.0, 1.0]], dtype=F64)
    mask_b = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]])
    adv_b = torch.tensor([0.5, -0.5, 2.0], dtype=F64)

    sums_a = clip_stat_sums(logp_a, old_a, adv_a, mask_a, ent_a, **HAND_KW)
    sums_b = clip_stat_sums(logp_b, old_b, adv_b, mask_b, ent_b, **HAND_KW)
    pooled = finalize_clip_stats(add_sums(sums_a, sums_b))
    concat = finalize_clip_stats(
        clip_stat_sums(
            torch.cat([logp_a, logp_b]), torch.cat([old_a, old_b]), torch.cat([adv_a, adv_b]),
            torch.cat([mask_a, mask_b]), torch.cat([ent_a, ent_b]), **HAND_KW,
        )
    )
    assert_stats_equal(pooled, concat)

    sa, sb = finalize_clip_stats(sums_a), finalize_clip_stats(sums_b)
    # 6 vs 8 tokens, 2 vs 4 tokens in X: a plain mean of means is measurably different
    assert sums_a["n_below"].item() == 2 and sums_b["n_below"].item() == 4
    for k in ("ratio_below_frac", "thm1_low", "thm2_low", "thm2_drift"):
        assert abs(pooled[k] - (sa[k] + sb[k]) / 2) > 1e-3, k


def test_add_sums_keeps_only_sum_keys_and_is_order_free():
    logp, old, adv, mask, entropy = hand_example()
    s = clip_stat_sums(logp, old, adv, mask, entropy, **HAND_KW)
    t = clip_stat_sums(logp, old, -adv, mask, entropy, eps_low=0.1, eps_high=0.1)
    ab, ba = add_sums(s, t), add_sums(t, s)
    assert tuple(ab) == SUM_KEYS
    assert all(ab[k].item() == ba[k].item() == s[k].item() + t[k].item() for k in SUM_KEYS)


# --- naive loop ------------------------------------------------------------------


def naive_clip_stats(logp, old, adv, mask, entropy, *, eps_low, eps_high, dual_clip_c):
    """SPEC 6 and 7 written token by token with Python floats."""
    n = n_below = n_above = n_clip_low = n_clip_high = n_dual = 0
    q_all, q_x, q_y, gap_x, gap_y = [], [], [], [], []
    for i in range(len(mask)):
        for t in range(len(mask[i])):
            if not mask[i][t]:
                continue
            a = adv[i] if not isinstance(adv[i], list) else adv[i][t]
            r = math.exp(min(max(logp[i][t] - old[i][t], -20.0), 20.0))
            pi, h = math.exp(logp[i][t]), entropy[i][t]
            q = pi * (logp[i][t] + h)
            gap = -logp[i][t] - h
            n += 1
            q_all.append(q)
            if r < 1 - eps_low:
                n_below += 1
                q_x.append(q)
                gap_x.append(gap)
                n_clip_low += a < 0
            if r > 1 + eps_high:
                n_above += 1
                q_y.append(q)
                gap_y.append(gap)
                n_clip_high += a > 0
            if dual_clip_c is not None and a < 0 and r > dual_clip_c:
                n_dual += 1

    def mean(xs):
        return sum(xs) / len(xs) if xs else NAN

    def frac(k):
        return k / n if n else NAN

    out = {
        "clip_low_frac": frac(n_clip_low),
        "clip_high_frac": frac(n_clip_high),
        "dual_clip_frac": frac(n_dual),
        "ratio_below_frac": frac(n_below),
        "ratio_above_frac": frac(n_above),
        "thm1_low": mean(q_all) - mean(q_x),
        "thm1_high": mean(q_all) - mean(q_y),
        "thm2_low": mean(gap_x),
        "thm2_high": mean(gap_y),
    }
    for thm in ("thm1", "thm2"):
        # p * mean_X = (|X| / n) (sum_X / |X|): a region with probability 0 adds 0
        low = out["ratio_below_frac"] * out[f"{thm}_low"] if n_below else 0.0
        high = out["ratio_above_frac"] * out[f"{thm}_high"] if n_above else 0.0
        out[f"{thm}_drift"] = low - high if n else NAN
    return out


@pytest.mark.parametrize(
    "eps_low, eps_high, dual_clip_c",
    [(0.2, 0.28, None), (0.2, 0.28, 3.0), (0.2, INF, None), (1.0, 0.28, 2.0), (1.0, INF, None), (0.05, 0.05, 1.5)],
)
@pytest.mark.parametrize("seed, n, t_len", [(0, 4, 6), (1, 1, 5), (2, 8, 3), (3, 3, 12)])
@pytest.mark.parametrize("adv_2d", [False, True])
def test_matches_naive_loop(eps_low, eps_high, dual_clip_c, seed, n, t_len, adv_2d):
    gen = torch.Generator().manual_seed(seed)
    logp = -4.0 * torch.rand(n, t_len, generator=gen, dtype=F64)
    old = logp - 0.8 * torch.randn(n, t_len, generator=gen, dtype=F64)
    entropy = 3.0 * torch.rand(n, t_len, generator=gen, dtype=F64)
    adv = torch.randn(n, t_len, generator=gen, dtype=F64) if adv_2d else torch.randn(n, generator=gen, dtype=F64)
    mask = torch.rand(n, t_len, generator=gen) < 0.75
    mask[0, 0] = True
    # garbage on padding must be ignored
    logp = torch.where(mask, logp, torch.tensor(NAN, dtype=F64))
    entropy = torch.where(mask, entropy, torch.tensor(INF, dtype=F64))
    kw = dict(eps_low=eps_low, eps_high=eps_high, dual_clip_c=dual_clip_c)
    got = finalize_clip_stats(clip_stat_sums(logp, old, adv, mask, entropy, **kw))
    expected = naive_clip_stats(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), entropy.tolist(), **kw)
    assert_stats_equal(got, expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sums_over_random_minibatches_match_whole_batch(seed):
    gen = torch.Generator().manual_seed(seed)
    n, t_len = 10, 7
    logp = -4.0 * torch.rand(n, t_len, generator=gen, dtype=F64)
    old = logp - 0.8 * torch.randn(n, t_len, generator=gen, dtype=F64)
    entropy = 3.0 * torch.rand(n, t_len, generator=gen, dtype=F64)
    adv = torch.randn(n, generator=gen, dtype=F64)
    mask = torch.rand(n, t_len, generator=gen) < 0.6
    whole = finalize_clip_stats(clip_stat_sums(logp, old, adv, mask, entropy, **HAND_KW))
    total = None
    for rows in (slice(0, 1), slice(1, 5), slice(5, 10)):
        part = clip_stat_sums(logp[rows], old[rows], adv[rows], mask[rows], entropy[rows], **HAND_KW)
        total = part if total is None else add_sums(total, part)
    assert_stats_equal(finalize_clip_stats(total), whole)


def test_probe_replays_and_attributed_changes_by_hand():
    from clipctl.algo import attributed_entropy_changes, probe_replays

    assert probe_replays(0.1, 0.28) == {"noclip": (1.0, math.inf), "lowonly": (0.1, math.inf), "highonly": (1.0, 0.28)}
    out = attributed_entropy_changes(2.0, {"noclip": 1.5, "lowonly": 1.75, "highonly": 1.25})
    # 2.0 - 1.5 = 0.5; 1.75 - 1.5 = 0.25; 1.25 - 1.5 = -0.25
    assert out["clip_attributed_dH"] == 0.5
    assert out["clip_low_attributed_dH"] == 0.25
    assert out["clip_high_attributed_dH"] == -0.25
    assert out["entropy_post_noclip"] == 1.5
