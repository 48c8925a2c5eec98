"""Tests of clip events and the Theorem 1/2 statistics (docs/definitions.md sections 6 and 7)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from clipctl.algo.losses import ClipEvents, log_ratio, policy_loss
from clipctl.algo.stats import add_sums, clip_stat_sums, pooled_expected_q
from clipctl.schema import STAT_KEYS, SUM_KEYS, finalize_clip_stats
from clipctl.clip import ClipSpec

INF = float("inf")
NAN = float("nan")
F64 = torch.float64
EVENT_KEYS = ("ratio_below", "ratio_above", "clip_low", "clip_high", "dual_clip")


def events(logp, old, adv, mask, *, eps_low, eps_high, dual_clip_c=None) -> ClipEvents:
    """The clip events the policy loss applies to this batch."""
    return policy_loss(logp, old, adv, mask, ClipSpec(eps_low, eps_high, dual_clip_c))[1].events


def stat_sums(
    logp, old, adv, mask, entropy, expected_q=None, *, eps_low, eps_high, dual_clip_c=None, importance_weighted=True
) -> dict[str, torch.Tensor]:
    """``clip_stat_sums`` of the policy loss's output on this batch, as the trainer calls it."""
    _, out = policy_loss(logp, old, adv, mask, ClipSpec(eps_low, eps_high, dual_clip_c))
    return clip_stat_sums(out, mask, entropy, expected_q, importance_weighted=importance_weighted)


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


def test_clip_events_hand_computed():
    logp, old, adv, mask, _ = hand_example()
    ev = events(logp, old, adv, mask, **HAND_KW)
    assert tuple(vars(ev)) == (*EVENT_KEYS, "cov_low", "cov_high")
    assert ev.cov_low is None and ev.cov_high is None  # vanilla has no covariance selection
    expected = {
        "ratio_below": [[1, 0, 0, 0], [1, 0, 0, 0]],
        "ratio_above": [[0, 1, 0, 0], [0, 1, 0, 0]],
        "clip_low": [[1, 0, 0, 0], [0, 0, 0, 0]],
        "clip_high": [[0, 0, 0, 0], [0, 1, 0, 0]],
        "dual_clip": [[0, 1, 0, 0], [0, 0, 0, 0]],
    }
    for k, v in expected.items():
        assert getattr(ev, k).dtype == torch.bool
        assert getattr(ev, k).int().tolist() == v, k
    # without dual clip the r=4, A<0 token is no event of its own
    ev = events(logp, old, adv, mask, eps_low=0.2, eps_high=0.28)
    assert not ev.dual_clip.any()


def test_zero_advantage_is_no_active_clip():
    # r = [0.5, 1.5, 5.0], A = 0: in X, in Y, above c; docs/definitions.md section 6 needs A < 0 / A > 0 strictly
    logp = torch.tensor([[math.log(0.5), math.log(1.5), math.log(5.0)]], dtype=F64)
    ev = events(logp, torch.zeros(1, 3, dtype=F64), torch.zeros(1, dtype=F64), torch.ones(1, 3), **HAND_KW)
    assert ev.ratio_below.int().tolist() == [[1, 0, 0]]
    assert ev.ratio_above.int().tolist() == [[0, 1, 1]]
    assert not (ev.clip_low | ev.clip_high | ev.dual_clip).any()


# Weighted sums with the exact centres EQ = E[Q|s_t] = [[0.2, 0.1, 0.4, -], [0.05, 0.3, 0.0, -]]
# (any numbers will do: clip_stat_sums takes them as given):
#
#   token  r    region  Q              EQ - Q          r (EQ - Q)       r gap
#   (0,0)  0.5  X       0.1534264097   0.0465735903    0.0232867952    -0.1534264097
#   (0,1)  4.0  Y       0.0284264097   0.0715735903    0.2862943612    -0.4548225556
#   (0,2)  1.2  -
#   (1,0)  0.7  X       0.0697414907  -0.0197414907   -0.0138190435    -0.4881904349
#   (1,1)  1.5  Y      -0.0185148411   0.3185148411    0.4777722617     0.0347153270
#   (1,2)  1.0  -
#
# w_sum = 0.5 + 4 + 1.2 + 0.7 + 1.5 + 1 = 8.9; w_sum_below = 0.5 + 0.7 = 1.2; w_sum_above = 4 + 1.5 = 5.5

HAND_EQ = [[0.2, 0.1, 0.4, NAN], [0.05, 0.3, 0.0, NAN]]


def test_clip_stat_sums_hand_computed():
    logp, old, adv, mask, entropy = hand_example()
    sums = stat_sums(logp, old, adv, mask, entropy, torch.tensor(HAND_EQ, dtype=F64), **HAND_KW)
    assert tuple(sums) == SUM_KEYS
    expected = {
        "n_tokens": 6.0,
        "n_below": 2.0,
        "n_above": 2.0,
        "n_clip_low": 1.0,
        "n_clip_high": 1.0,
        "n_dual_clip": 1.0,
        "n_cov_low": 0.0,
        "n_cov_high": 0.0,
        "w_sum": 8.9,
        "w_sum_below": 1.2,
        "w_sum_above": 5.5,
        "qdev_wsum_below": 0.0094677517,  # 0.0232867952 - 0.0138190435
        "qdev_wsum_above": 0.7640666229,  # 0.2862943612 + 0.4777722617
        "gap_wsum_below": -0.6416168446,  # -0.1534264097 - 0.4881904349
        "gap_wsum_above": -0.4201072286,  # -0.4548225556 + 0.0347153270
    }
    for k, v in expected.items():
        assert sums[k].dtype == F64
        assert sums[k].item() == pytest.approx(v, abs=1e-9), k


def test_finalize_hand_computed():
    logp, old, adv, mask, entropy = hand_example()
    stats = finalize_clip_stats(
        stat_sums(logp, old, adv, mask, entropy, torch.tensor(HAND_EQ, dtype=F64), **HAND_KW)
    )
    assert tuple(stats) == STAT_KEYS
    expected = {
        # clip events stay plain shares of the 6 sampled tokens
        "clip_low_frac": 1 / 6,
        "clip_high_frac": 1 / 6,
        "dual_clip_frac": 1 / 6,
        "cov_low_frac": 0.0,  # vanilla: no covariance selection
        "cov_high_frac": 0.0,
        # region probabilities under pi_k: W_X / W = 1.2 / 8.9, W_Y / W = 5.5 / 8.9
        "ratio_below_frac": 0.1348314607,
        "ratio_above_frac": 0.6179775281,
        "thm1_low": 0.0078897931,  # 0.0094677517 / 1.2
        "thm1_high": 0.1389212042,  # 0.7640666229 / 5.5
        "thm2_low": -0.5346807038,  # -0.6416168446 / 1.2
        "thm2_high": -0.0763831325,  # -0.4201072286 / 5.5
        # p * low - q * high = (qdev_wsum_below - qdev_wsum_above) / W = -0.7545988712 / 8.9
        "thm1_drift": -0.0847863900,
        # (-0.6416168446 + 0.4201072286) / 8.9 = -0.2215096160 / 8.9
        "thm2_drift": -0.0248887209,
    }
    assert_stats_equal(stats, expected, rel=0, abs_=1e-9)


def test_fallback_centre_is_the_weighted_pooled_mean_of_q():
    # Without expected_q every token is centred on sum_t r_t Q_t / sum_t r_t:
    #   0.5 (0.1534264097) + 4 (0.0284264097) + 1.2 (0.5) + 0.7 (0.0697414907)
    #   + 1.5 (-0.0185148411) + 1 (-0.0465735903) = 0.7648920352;  / 8.9 = 0.0859429253
    logp, old, adv, mask, entropy = hand_example()
    centre = pooled_expected_q(logp, log_ratio(logp, old), mask, entropy)
    assert centre.dtype == F64 and centre.item() == pytest.approx(0.0859429253, abs=1e-9)
    stats = finalize_clip_stats(stat_sums(logp, old, adv, mask, entropy, **HAND_KW))
    # thm1_low = centre - E_w[Q | X] = 0.0859429253 - (0.0767132049 + 0.0488190435) / 1.2
    #          = 0.0859429253 - 0.1046102070 = -0.0186672817
    assert stats["thm1_low"] == pytest.approx(-0.0186672817, abs=1e-9)
    # thm2 does not depend on the centre
    assert stats["thm2_low"] == pytest.approx(-0.5346807038, abs=1e-9)
    # the same as passing the pooled centre explicitly
    explicit = stat_sums(logp, old, adv, mask, entropy, torch.full_like(logp, centre.item()), **HAND_KW)
    assert_stats_equal(stats, finalize_clip_stats(explicit))
    # unweighted: plain mean of the 6 Q values = 0.6865058788 / 6
    plain = pooled_expected_q(logp, log_ratio(logp, old), mask, entropy, importance_weighted=False)
    assert plain.item() == pytest.approx(0.6865058788 / 6, abs=1e-9)


def test_unweighted_estimator_by_hand():
    # importance_weighted=False: every weight is 1 (the pi_old measure).
    logp, old, adv, mask, entropy = hand_example()
    eq = torch.tensor(HAND_EQ, dtype=F64)
    stats = finalize_clip_stats(stat_sums(logp, old, adv, mask, entropy, eq, importance_weighted=False, **HAND_KW))
    assert stats["ratio_below_frac"] == pytest.approx(2 / 6) and stats["ratio_above_frac"] == pytest.approx(2 / 6)
    # mean_X(EQ - Q) = (0.0465735903 - 0.0197414907) / 2
    assert stats["thm1_low"] == pytest.approx(0.0134160498, abs=1e-9)
    # mean_X(gap) = (-0.3068528194 - 0.6974149070) / 2; drift (1/3)(-0.5021338632) - (1/3)(-0.0452810438)
    assert stats["thm2_low"] == pytest.approx(-0.5021338632, abs=1e-9)
    assert stats["thm2_drift"] == pytest.approx(-0.1522842731, abs=1e-9)


def test_on_policy_weights_change_nothing():
    # r = 1 everywhere (minibatch 0 of epoch 0): weighted and unweighted sums agree exactly.
    logp, _, adv, mask, entropy = hand_example()
    eq = torch.tensor(HAND_EQ, dtype=F64)
    a = stat_sums(logp, logp.clone(), adv, mask, entropy, eq, **HAND_KW)
    b = stat_sums(logp, logp.clone(), adv, mask, entropy, eq, importance_weighted=False, **HAND_KW)
    for k in SUM_KEYS:
        assert a[k].item() == b[k].item(), k


def test_advantages_1d_and_2d_agree():
    logp, old, adv, mask, entropy = hand_example()
    a = stat_sums(logp, old, adv, mask, entropy, **HAND_KW)
    b = stat_sums(logp, old, adv.unsqueeze(-1).expand(-1, 4), mask, entropy, **HAND_KW)
    for k in SUM_KEYS:
        assert a[k].item() == b[k].item()


def test_sums_read_the_loss_output_and_recompute_nothing():
    logp, old, adv, mask, entropy = hand_example()
    eq = torch.tensor(HAND_EQ, dtype=F64)
    _, out = policy_loss(logp, old, adv, mask, ClipSpec(**HAND_KW))
    sums = clip_stat_sums(out, mask, entropy, eq)
    for key, event in [("n_below", "ratio_below"), ("n_above", "ratio_above"), ("n_clip_low", "clip_low"),
                       ("n_clip_high", "clip_high"), ("n_dual_clip", "dual_clip")]:
        assert sums[key].item() == getattr(out.events, event).sum().item(), key
    # the weights are exp(out.log_ratio): an output whose log ratio is 0 gives the unweighted sums
    flat = clip_stat_sums(replace(out, log_ratio=torch.zeros_like(out.log_ratio)), mask, entropy, eq)
    unweighted = clip_stat_sums(out, mask, entropy, eq, importance_weighted=False)
    for k in SUM_KEYS:
        assert flat[k].item() == unweighted[k].item(), k


def test_float32_inputs_sum_in_float64():
    logp, old, adv, mask, entropy = hand_example(torch.float32)
    sums = stat_sums(logp, old, adv, mask, entropy, torch.tensor(HAND_EQ), **HAND_KW)
    assert all(sums[k].dtype == F64 for k in SUM_KEYS)
    assert sums["qdev_wsum_above"].item() == pytest.approx(0.7640666229, abs=1e-6)
    assert sums["w_sum"].item() == pytest.approx(8.9, abs=1e-6)


def test_log_ratio_clamp_applies_to_events():
    # logp - old = +1000 is clamped to 20: r = exp(20) = 4.85e8, not exp(1000) = inf.
    # So with eps_high = 1e9 (Y: r > 1e9 + 1) and c = 1e10 neither event fires;
    # without the clamp both would.
    logp = torch.tensor([[-1.0]], dtype=F64)
    old = torch.tensor([[-1001.0]], dtype=F64)
    mask = torch.ones(1, 1)
    ev = events(logp, old, torch.tensor([-1.0], dtype=F64), mask, eps_low=0.2, eps_high=1e9, dual_clip_c=1e10)
    assert not ev.ratio_above.any() and not ev.dual_clip.any()
    # with eps_high = 1e8 and c = 1e8 both fire: 4.85e8 > 1e8 + 1 and 4.85e8 > 1e8
    ev = events(logp, old, torch.tensor([-1.0], dtype=F64), mask, eps_low=0.2, eps_high=1e8, dual_clip_c=1e8)
    assert ev.ratio_above.all() and ev.dual_clip.all()
    # the weight uses the same clamped ratio: finite
    sums = stat_sums(logp, old, torch.tensor([-1.0], dtype=F64), mask, torch.ones(1, 1, dtype=F64), eps_low=0.2, eps_high=1e8)
    assert sums["w_sum"].item() == pytest.approx(math.exp(20.0))


# --- empty regions -------------------------------------------------------------


def test_empty_regions_give_nan_not_zero():
    logp, old, adv, mask, entropy = hand_example()
    eq = torch.tensor(HAND_EQ, dtype=F64)
    # eps_high = inf: region Y is empty; eps_low = 1: region X is empty
    stats = finalize_clip_stats(stat_sums(logp, old, adv, mask, entropy, eq, eps_low=1.0, eps_high=INF))
    assert stats["ratio_below_frac"] == 0.0 and stats["ratio_above_frac"] == 0.0
    assert stats["clip_low_frac"] == 0.0 and stats["clip_high_frac"] == 0.0
    assert stats["dual_clip_frac"] == 0.0
    for k in ("thm1_low", "thm1_high", "thm2_low", "thm2_high"):
        assert math.isnan(stats[k]), k
    # an empty region has probability 0: its drift term is 0 (docstring of
    # finalize_clip_stats), so the drifts stay finite
    assert stats["thm1_drift"] == 0.0 and stats["thm2_drift"] == 0.0

    only_x = finalize_clip_stats(stat_sums(logp, old, adv, mask, entropy, eq, eps_low=0.2, eps_high=INF))
    assert math.isnan(only_x["thm1_high"]) and math.isnan(only_x["thm2_high"])
    assert only_x["thm2_low"] == pytest.approx(-0.5346807038, abs=1e-9)
    # drift = (1.2 / 8.9)(-0.5346807038) - 0 = -0.6416168446 / 8.9 = -0.0720917803
    assert only_x["thm2_drift"] == pytest.approx(-0.0720917803, abs=1e-9)
    # thm1 drift = 0.0094677517 / 8.9 = 0.0010637923
    assert only_x["thm1_drift"] == pytest.approx(0.0010637923, abs=1e-9)


def test_no_valid_tokens_gives_all_nan():
    logp, old, adv, mask, entropy = hand_example()
    sums = stat_sums(logp, old, adv, torch.zeros_like(mask), entropy, **HAND_KW)
    assert all(sums[k].item() == 0.0 for k in SUM_KEYS)
    stats = finalize_clip_stats(sums)
    assert all(math.isnan(stats[k]) for k in STAT_KEYS), stats


# --- combining minibatches ----------------------------------------------------


def sums_dict(**kw) -> dict[str, torch.Tensor]:
    base = {k: 0.0 for k in SUM_KEYS}
    base.update(kw)
    return {k: torch.tensor(v, dtype=F64) for k, v in base.items()}


def test_add_sums_reweights_by_region_size_hand_computed():
    # minibatch a: 2 tokens (weights 2.5), 1 in X with weight 0.5, weighted gap -1, weighted EQ - Q 0.1
    a = sums_dict(n_tokens=2, n_below=1, n_clip_low=1, w_sum=2.5, w_sum_below=0.5, gap_wsum_below=-1.0, qdev_wsum_below=0.1)
    # minibatch b: 8 tokens (weights 7.5), 3 in X with weights 1.5, weighted gap 3, weighted EQ - Q 0.2
    b = sums_dict(n_tokens=8, n_below=3, w_sum=7.5, w_sum_below=1.5, gap_wsum_below=3.0, qdev_wsum_below=0.2)
    sa, sb = finalize_clip_stats(a), finalize_clip_stats(b)
    # per minibatch: thm2_low a = -1 / 0.5 = -2, b = 3 / 1.5 = 2
    assert sa["thm2_low"] == -2.0 and sb["thm2_low"] == 2.0
    pooled = finalize_clip_stats(add_sums(a, b))
    # pooled: (-1 + 3) / (0.5 + 1.5) = 1, NOT the mean of means (-2 + 2) / 2 = 0
    assert pooled["thm2_low"] == pytest.approx(1.0)
    assert (sa["thm2_low"] + sb["thm2_low"]) / 2 == 0.0
    # ratio_below_frac: (0.5 + 1.5) / (2.5 + 7.5) = 0.2 (mean of fractions would be (0.2 + 0.2) / 2 too,
    # but per-token counts would give 4 / 10)
    assert pooled["ratio_below_frac"] == pytest.approx(0.2)
    assert pooled["clip_low_frac"] == pytest.approx(0.1)  # 1 / 10 sampled tokens
    # thm1_low: (0.1 + 0.2) / 2 = 0.15
    assert pooled["thm1_low"] == pytest.approx(0.15)
    # drifts: 0.2 * 1 = 0.2 and 0.2 * 0.15 = 0.03 (Y empty -> its term is 0)
    assert pooled["thm2_drift"] == pytest.approx(0.2)
    assert pooled["thm1_drift"] == pytest.approx(0.03)
    assert math.isnan(pooled["thm2_high"])


def _batch_b():
    # 3 responses of different lengths, ratios in both regions
    pi_b = [[0.3, 0.9, 0.05, 0.6], [0.2, 0.7, 0.4, 0.9], [0.5, 0.5, 0.5, 0.5]]
    ratio_b = [[0.6, 1.1, 0.3, 2.0], [0.75, 0.95, 1.4, 1.0], [0.4, 1.0, 1.0, 1.0]]
    logp_b = torch.tensor([[math.log(p) for p in row] for row in pi_b], dtype=F64)
    old_b = logp_b - torch.tensor([[math.log(r) for r in row] for row in ratio_b], dtype=F64)
    ent_b = torch.tensor([[2.0, 0.3, 4.0, 0.8], [2.5, 0.4, 1.0, 0.1], [1.0, 1.0, 1.0, 1.0]], dtype=F64)
    eq_b = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.0, -0.1, 0.5, 0.2], [0.3, 0.3, 0.3, 0.3]], dtype=F64)
    mask_b = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]])
    adv_b = torch.tensor([0.5, -0.5, 2.0], dtype=F64)
    return logp_b, old_b, adv_b, mask_b, ent_b, eq_b


def test_add_sums_equals_concatenated_minibatch_and_differs_from_mean_of_means():
    logp_a, old_a, adv_a, mask_a, ent_a = hand_example()
    eq_a = torch.tensor(HAND_EQ, dtype=F64)
    logp_b, old_b, adv_b, mask_b, ent_b, eq_b = _batch_b()

    sums_a = stat_sums(logp_a, old_a, adv_a, mask_a, ent_a, eq_a, **HAND_KW)
    sums_b = stat_sums(logp_b, old_b, adv_b, mask_b, ent_b, eq_b, **HAND_KW)
    pooled = finalize_clip_stats(add_sums(sums_a, sums_b))
    concat = finalize_clip_stats(
        stat_sums(
            torch.cat([logp_a, logp_b]), torch.cat([old_a, old_b]), torch.cat([adv_a, adv_b]),
            torch.cat([mask_a, mask_b]), torch.cat([ent_a, ent_b]), torch.cat([eq_a, eq_b]), **HAND_KW,
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
    s = stat_sums(logp, old, adv, mask, entropy, **HAND_KW)
    t = stat_sums(logp, old, -adv, mask, entropy, eps_low=0.1, eps_high=0.1)
    ab, ba = add_sums(s, t), add_sums(t, s)
    assert tuple(ab) == SUM_KEYS
    assert all(ab[k].item() == ba[k].item() == s[k].item() + t[k].item() for k in SUM_KEYS)


# --- naive loop ------------------------------------------------------------------


def naive_clip_stats(logp, old, adv, mask, entropy, expected_q, *, eps_low, eps_high, dual_clip_c, weighted):
    """docs/definitions.md sections 6 and 7 written token by token with Python floats.

    ``expected_q`` None: the centre is the (weighted) mean of Q over valid tokens.
    """
    tokens = []
    for i in range(len(mask)):
        for t in range(len(mask[i])):
            if not mask[i][t]:
                continue
            a = adv[i] if not isinstance(adv[i], list) else adv[i][t]
            r = math.exp(min(max(logp[i][t] - old[i][t], -20.0), 20.0))
            pi, h = math.exp(logp[i][t]), entropy[i][t]
            tokens.append(
                {
                    "w": r if weighted else 1.0, "r": r, "a": a, "q": pi * (logp[i][t] + h), "gap": -logp[i][t] - h,
                    "eq": None if expected_q is None else expected_q[i][t],
                }
            )
    n = len(tokens)
    w_all = sum(tok["w"] for tok in tokens)
    pooled = sum(tok["w"] * tok["q"] for tok in tokens) / w_all if n else 0.0
    X = [tok for tok in tokens if tok["r"] < 1 - eps_low]
    Y = [tok for tok in tokens if tok["r"] > 1 + eps_high]

    def wmean(region, f):
        den = sum(tok["w"] for tok in region)
        return sum(tok["w"] * f(tok) for tok in region) / den if region else NAN

    def frac(k):
        return k / n if n else NAN

    def qdev(tok):
        return (pooled if tok["eq"] is None else tok["eq"]) - tok["q"]

    out = {
        "clip_low_frac": frac(sum(tok["a"] < 0 for tok in X)),
        "clip_high_frac": frac(sum(tok["a"] > 0 for tok in Y)),
        "dual_clip_frac": frac(
            sum(dual_clip_c is not None and tok["a"] < 0 and tok["r"] > dual_clip_c for tok in tokens)
        ),
        "cov_low_frac": frac(0),  # vanilla selects no tokens by covariance
        "cov_high_frac": frac(0),
        "ratio_below_frac": sum(tok["w"] for tok in X) / w_all if n else NAN,
        "ratio_above_frac": sum(tok["w"] for tok in Y) / w_all if n else NAN,
        "thm1_low": wmean(X, qdev),
        "thm1_high": wmean(Y, qdev),
        "thm2_low": wmean(X, lambda tok: tok["gap"]),
        "thm2_high": wmean(Y, lambda tok: tok["gap"]),
    }
    for thm in ("thm1", "thm2"):
        # p * mean_X: a region with probability 0 adds 0
        low = out["ratio_below_frac"] * out[f"{thm}_low"] if X else 0.0
        high = out["ratio_above_frac"] * out[f"{thm}_high"] if Y else 0.0
        out[f"{thm}_drift"] = low - high if n else NAN
    return out


@pytest.mark.parametrize(
    "eps_low, eps_high, dual_clip_c",
    [(0.2, 0.28, None), (0.2, 0.28, 3.0), (0.2, INF, None), (1.0, 0.28, 2.0), (1.0, INF, None), (0.05, 0.05, 1.5)],
)
@pytest.mark.parametrize("seed, n, t_len", [(0, 4, 6), (1, 1, 5), (2, 8, 3), (3, 3, 12)])
@pytest.mark.parametrize("adv_2d", [False, True])
@pytest.mark.parametrize("weighted, with_eq", [(True, True), (True, False), (False, True), (False, False)])
def test_matches_naive_loop(eps_low, eps_high, dual_clip_c, seed, n, t_len, adv_2d, weighted, with_eq):
    gen = torch.Generator().manual_seed(seed)
    logp = -4.0 * torch.rand(n, t_len, generator=gen, dtype=F64)
    old = logp - 0.8 * torch.randn(n, t_len, generator=gen, dtype=F64)
    entropy = 3.0 * torch.rand(n, t_len, generator=gen, dtype=F64)
    adv = torch.randn(n, t_len, generator=gen, dtype=F64) if adv_2d else torch.randn(n, generator=gen, dtype=F64)
    eq = 0.5 * torch.randn(n, t_len, generator=gen, dtype=F64)
    mask = torch.rand(n, t_len, generator=gen) < 0.75
    mask[0, 0] = True
    # garbage on padding must be ignored
    logp = torch.where(mask, logp, torch.tensor(NAN, dtype=F64))
    entropy = torch.where(mask, entropy, torch.tensor(INF, dtype=F64))
    eq = torch.where(mask, eq, torch.tensor(NAN, dtype=F64))
    kw = dict(eps_low=eps_low, eps_high=eps_high, dual_clip_c=dual_clip_c)
    got = finalize_clip_stats(
        stat_sums(logp, old, adv, mask, entropy, eq if with_eq else None, importance_weighted=weighted, **kw)
    )
    expected = naive_clip_stats(
        logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), entropy.tolist(), eq.tolist() if with_eq else None,
        weighted=weighted, **kw,
    )
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
    eq = 0.5 * torch.randn(n, t_len, generator=gen, dtype=F64)
    whole = finalize_clip_stats(stat_sums(logp, old, adv, mask, entropy, eq, **HAND_KW))
    total = None
    for rows in (slice(0, 1), slice(1, 5), slice(5, 10)):
        part = stat_sums(logp[rows], old[rows], adv[rows], mask[rows], entropy[rows], eq[rows], **HAND_KW)
        total = part if total is None else add_sums(total, part)
    assert_stats_equal(finalize_clip_stats(total), whole)


def test_probe_replays_and_attributed_changes_by_hand():
    from clipctl.algo import ClipSpec, attributed_entropy_changes, probe_replays

    assert probe_replays(ClipSpec(0.1, 0.28, 3.0)) == {
        "replay": ClipSpec(0.1, 0.28, 3.0), "noclip": ClipSpec(1.0, math.inf),
        "lowonly": ClipSpec(0.1, math.inf), "highonly": ClipSpec(1.0, 0.28),
    }
    out = attributed_entropy_changes(2.0, {"replay": 1.875, "noclip": 1.5, "lowonly": 1.75, "highonly": 1.25})
    # 1.875 - 1.5 = 0.375; 1.75 - 1.5 = 0.25; 1.25 - 1.5 = -0.25; noise 2.0 - 1.875 = 0.125
    assert out["clip_attributed_dH"] == 0.375
    assert out["probe_noise"] == 0.125
    assert out["entropy_post_replay"] == 1.875
    # One-sided: lowonly - noclip = 0.25, highonly - noclip = -0.25; interaction 0.375 - 0.25 + 0.25 = 0.375.
    assert out["clip_low_alone_dH"] == 0.25
    assert out["clip_high_alone_dH"] == -0.25
    assert out["clip_interaction_dH"] == 0.375
    # Shapley: low = (0.25 + (1.875 - 1.25)) / 2 = 0.4375, high = (-0.25 + (1.875 - 1.75)) / 2 = -0.0625.
    assert out["clip_low_attributed_dH"] == 0.4375
    assert out["clip_high_attributed_dH"] == -0.0625
    assert out["clip_low_attributed_dH"] + out["clip_high_attributed_dH"] == out["clip_attributed_dH"]
    assert out["entropy_post_noclip"] == 1.5
    assert math.isnan(out["probe_noise_sd"])  # one identity replay: no spread
    # Three identity replays 1.875, 1.75, 2.0: mean 1.875, sd sqrt((0 + 1/64 + 1/64) / 2) = 1/8.
    post = {"replay": 1.875, "noclip": 1.5, "lowonly": 1.75, "highonly": 1.25}
    assert attributed_entropy_changes(2.0, post, [1.75, 2.0])["probe_noise_sd"] == 0.125


def _shapley_naive(value: dict) -> dict:
    """Shapley values of the players "low" and "high" by the definition: the mean over both
    orderings of each player's marginal contribution; ``value[frozenset]`` is the game."""
    import itertools

    out = {"low": 0.0, "high": 0.0}
    orders = list(itertools.permutations(("low", "high")))
    for order in orders:
        have: set = set()
        for player in order:
            before = value[frozenset(have)]
            have.add(player)
            out[player] += (value[frozenset(have)] - before) / len(orders)
    return out


def test_attributed_split_is_the_shapley_value_of_the_two_clips():
    from clipctl.algo import attributed_entropy_changes

    gen = torch.Generator().manual_seed(7)
    for _ in range(50):
        r, n, lo, hi = (2.0 + torch.randn(4, generator=gen, dtype=F64)).tolist()
        value = {frozenset(): n, frozenset({"low"}): lo, frozenset({"high"}): hi, frozenset({"low", "high"}): r}
        want = _shapley_naive(value)
        out = attributed_entropy_changes(r, {"replay": r, "noclip": n, "lowonly": lo, "highonly": hi})
        assert out["clip_low_attributed_dH"] == pytest.approx(want["low"], abs=1e-12)
        assert out["clip_high_attributed_dH"] == pytest.approx(want["high"], abs=1e-12)
        parts = out["clip_low_attributed_dH"] + out["clip_high_attributed_dH"]
        assert parts == pytest.approx(out["clip_attributed_dH"], abs=1e-12)
        alone = out["clip_low_alone_dH"] + out["clip_high_alone_dH"] + out["clip_interaction_dH"]
        assert alone == pytest.approx(out["clip_attributed_dH"], abs=1e-12)


def test_agreeing_replays_by_hand():
    from clipctl.algo import agreeing_replays
    from clipctl.schema import empty_sums

    def sums(**n):
        return {**empty_sums(), **n}

    assert agreeing_replays(sums()) == {"noclip", "lowonly", "highonly"}
    # clip-low acted: only lowonly retraces the real step
    assert agreeing_replays(sums(n_clip_low=3, n_below=5)) == {"lowonly"}
    assert agreeing_replays(sums(n_clip_high=2, n_above=2)) == {"highonly"}
    assert agreeing_replays(sums(n_clip_low=1, n_clip_high=1)) == set()
    assert agreeing_replays(sums(n_dual_clip=1)) == set()  # the dual clip acted: only the identity replay has it
    # Vanilla: a region crossed by a token whose advantage has the other sign changes nothing.
    assert agreeing_replays(sums(n_above=4)) == {"noclip", "lowonly", "highonly"}
    # CISPO caps the weight of every token in a region, whatever the sign of A.
    assert agreeing_replays(sums(n_above=4), "cispo") == {"highonly"}
    assert agreeing_replays(sums(n_below=1), "cispo") == {"lowonly"}
    # The covariance families: their treated tokens count for the side of A.
    assert agreeing_replays(sums(n_cov_high=1), "clip_cov") == {"highonly"}
    assert agreeing_replays(sums(n_cov_low=1), "kl_cov") == {"lowonly"}
    assert agreeing_replays(sums(n_clip_low=1), "kl_cov") == {"noclip", "lowonly", "highonly"}  # kl_cov has no ratio clip
    assert agreeing_replays(sums(n_clip_high=1, n_cov_low=1), "clip_cov") == set()


def test_shares_first_update_only_where_the_ratio_triggers_the_mechanism():
    from clipctl.algo import POLICY_LOSSES, shares_first_update

    assert {name for name in POLICY_LOSSES if not shares_first_update(name)} == {"clip_cov", "kl_cov"}


def test_clip_probe_shares_agreeing_replays_and_repeats_the_identity():
    from clipctl.algo import ClipSpec, clip_probe

    calls = []

    def replay(spec):
        calls.append((spec.eps_low, spec.eps_high, spec.dual_clip_c))
        lo, hi = spec.eps_low, spec.eps_high
        return 2.0 - 0.5 * min(lo, 1.0) + (0.0 if math.isinf(hi) else 0.25 * hi)

    out = clip_probe(replay, ClipSpec(0.2, 0.2), 1.95, agreeing=frozenset({"lowonly"}), repeats=3)
    # noclip and highonly run; lowonly takes the identity replay's value; two extra identity runs.
    assert calls == [(0.2, 0.2, None), (1.0, math.inf, None), (1.0, 0.2, None), (0.2, 0.2, None), (0.2, 0.2, None)]
    assert out["entropy_post_lowonly"] == out["entropy_post_replay"] == 2.0 - 0.1 + 0.05
    assert out["probe_noise_sd"] == 0.0


def test_clip_probe_runs_each_distinct_replay_once():
    from clipctl.algo import ClipSpec, attributed_entropy_changes, clip_probe, probe_replays

    # A stand-in replay: entropy as a made-up function of the settings, calls counted.
    def make():
        calls = []

        def replay(spec):
            calls.append(spec)
            lo, hi, dual = spec.eps_low, spec.eps_high, spec.dual_clip_c
            return 2.0 - 0.5 * min(lo, 1.0) + (0.0 if math.isinf(hi) else 0.25 * hi) + (0.01 if dual else 0.0)

        return replay, calls

    for eps_low, eps_high, dual in ((0.2, 0.2, None), (0.2, math.inf, None), (1.0, 0.2, None), (0.1, math.inf, 3.0)):
        replay, calls = make()
        clip = ClipSpec(eps_low, eps_high, dual)
        out = clip_probe(replay, clip, 1.9)
        # Naive loop: all four replays, no sharing.
        naive = {label: replay(spec) for label, spec in probe_replays(clip).items()}
        assert out == attributed_entropy_changes(1.9, naive)
        assert len(calls) - 4 == len(set(calls[:-4])) == len(calls[:-4])  # distinct settings only, each once
    # By hand: eps_high = inf without dual clip runs (0.2, inf) and (1, inf) only.
    replay, calls = make()
    out = clip_probe(replay, ClipSpec(0.2, math.inf), 1.9)
    assert calls == [ClipSpec(0.2, math.inf), ClipSpec(1.0, math.inf)]
    assert out["entropy_post_replay"] == out["entropy_post_lowonly"] == 2.0 - 0.1
    assert out["clip_high_attributed_dH"] == 0.0
    assert out["clip_low_attributed_dH"] == pytest.approx(0.4)  # (2 - 0.1) - (2 - 0.5)
    # With a dual clip the replay of the run's own settings is its own: three replays.
    replay, calls = make()
    clip_probe(replay, ClipSpec(0.2, math.inf, 3.0), 1.9)
    assert len(calls) == 3