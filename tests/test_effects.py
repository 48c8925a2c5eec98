"""clipctl.effects: the Shapley split, clustered regression, paired summaries and Student's t, by hand and
against naive loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clipctl import effects


# ---------------------------------------------------------------- Shapley split


def test_shapley_split_of_four_replays_by_hand():
    # R, N, L, H = 1.75, 1.5, 1.625, 1.5625 (dyadic: every difference is exact in binary floating point).
    out = effects.attribution_split(1.75, 1.5, 1.625, 1.5625)
    assert out["clip_attributed_dH"] == 0.25
    assert out["clip_low_alone_dH"] == 0.125 and out["clip_high_alone_dH"] == 0.0625
    assert out["clip_low_attributed_dH"] == 0.15625  # 1/2 [(L - N) + (R - H)] = 1/2 [0.125 + 0.1875]
    assert out["clip_high_attributed_dH"] == 0.09375  # 1/2 [(H - N) + (R - L)] = 1/2 [0.0625 + 0.125]
    assert out["clip_interaction_dH"] == 0.0625  # R - L - H + N
    # Exactly additive: low + high is the total, bit for bit.
    assert out["clip_low_attributed_dH"] + out["clip_high_attributed_dH"] == out["clip_attributed_dH"]
    # With one clip off its Shapley value is 0 and the other takes the whole total (L = N, R = H).
    off = effects.attribution_split(1.25, 1.5, 1.5, 1.25)
    assert off["clip_low_attributed_dH"] == 0.0 and off["clip_high_attributed_dH"] == -0.25


def test_shapley_split_against_a_naive_loop():
    rng = np.random.default_rng(0)
    r, n, lo, hi = (rng.normal(2.0, 0.1, size=50) for _ in range(4))
    r[3] = math.nan  # a step not probed stays NaN
    out = effects.attribution_split(r, n, lo, hi)
    for i in range(50):
        total = r[i] - n[i]
        # Shapley value: the mean over both orders in which the clips are switched on.
        low = ((lo[i] - n[i]) + (r[i] - hi[i])) / 2
        high = ((hi[i] - n[i]) + (r[i] - lo[i])) / 2
        for name, want in (("clip_attributed_dH", total), ("clip_low_attributed_dH", low),
                           ("clip_high_attributed_dH", high), ("clip_interaction_dH", total - (lo[i] - n[i]) - (hi[i] - n[i]))):
            got = out[name][i]
            assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-15), (name, i)
    ok = np.isfinite(out["clip_attributed_dH"])
    np.testing.assert_allclose(
        out["clip_low_attributed_dH"][ok] + out["clip_high_attributed_dH"][ok], out["clip_attributed_dH"][ok], atol=1e-15, rtol=0
    )


# ---------------------------------------------------------------- regression with clustered standard errors


def test_ols_clustered_by_hand():
    # x = (0, 1, 0, 1), y = (1, 3, 1, 5), clusters (a, a, b, b): slope 3, intercept 1, residuals (0, -1, 0, 1).
    # (X'X)^-1 = [[0.5, -0.5], [-0.5, 1]]; cluster scores X_g'u_g = (-1, -1) and (1, 1); meat [[2, 2], [2, 2]];
    # sandwich [[0, 0], [0, 0.5]]; c = 2/1 * 3/2 = 3: V = [[0, 0], [0, 1.5]].
    fit = effects.ols_clustered([0, 1, 0, 1], [1, 3, 1, 5], ["a", "a", "b", "b"])
    assert fit["n"] == 4 and fit["n_clusters"] == 2
    assert fit["intercept"] == pytest.approx(1.0) and fit["slope"] == pytest.approx(3.0)
    assert fit["intercept_se"] == pytest.approx(0.0, abs=1e-12)
    assert fit["slope_se"] == pytest.approx(math.sqrt(1.5))
    # 2 clusters: 1 degree of freedom, t_{0.975, 1} = tan(0.475 pi)
    assert fit["slope_ci_high"] == pytest.approx(3.0 + math.tan(math.pi * 0.475) * math.sqrt(1.5), rel=1e-9)
    # The plain mean with its clustered SE: mean 2.5, cluster sums of deviations (-1, 1): 2 * 2 / 16 = 0.25.
    assert effects.mean_clustered([1, 3, 1, 5], ["a", "a", "b", "b"]) == pytest.approx((2.5, 0.5))


def _naive_ols_clustered(x, y, groups):
    """Normal equations and the CR1 sandwich written out with plain loops over rows and clusters."""
    n = len(x)
    sx, sy = sum(x), sum(y)
    sxx, sxy = sum(v * v for v in x), sum(a * b for a, b in zip(x, y))
    det = n * sxx - sx * sx
    slope = (n * sxy - sx * sy) / det
    icpt = (sy - slope * sx) / n
    inv = [[sxx / det, -sx / det], [-sx / det, n / det]]
    meat = [[0.0, 0.0], [0.0, 0.0]]
    for g in sorted(set(groups)):
        s0 = s1 = 0.0
        for xi, yi, gi in zip(x, y, groups):
            if gi == g:
                u = yi - icpt - slope * xi
                s0, s1 = s0 + u, s1 + u * xi
        meat = [[meat[0][0] + s0 * s0, meat[0][1] + s0 * s1], [meat[1][0] + s1 * s0, meat[1][1] + s1 * s1]]
    G = len(set(groups))
    c = G / (G - 1) * (n - 1) / (n - 2)
    cov = [[0.0, 0.0], [0.0, 0.0]]
    for i in range(2):
        for j in range(2):
            cov[i][j] = c * sum(inv[i][a] * meat[a][b] * inv[b][j] for a in range(2) for b in range(2))
    return icpt, slope, math.sqrt(cov[0][0]), math.sqrt(cov[1][1])


@pytest.mark.parametrize("seed", range(5))
def test_ols_clustered_against_naive_least_squares(seed):
    rng = np.random.default_rng(seed)
    n_clusters, n = int(rng.integers(2, 6)), int(rng.integers(8, 40))
    groups = [f"run{int(g)}" for g in rng.integers(0, n_clusters, size=n)]
    groups[:n_clusters] = [f"run{g}" for g in range(n_clusters)]  # every cluster present
    x = rng.normal(size=n)
    y = 0.01 - 0.4 * x + rng.normal(scale=0.1, size=n)
    fit = effects.ols_clustered(list(x) + [math.nan], list(y) + [1.0], groups + ["run0"])  # a NaN row is dropped
    icpt, slope, se_i, se_s = _naive_ols_clustered(list(x), list(y), groups)
    assert fit["n"] == n and fit["n_clusters"] == len(set(groups))
    assert fit["intercept"] == pytest.approx(icpt, rel=1e-9, abs=1e-12)
    assert fit["slope"] == pytest.approx(slope, rel=1e-9)
    assert fit["intercept_se"] == pytest.approx(se_i, rel=1e-9)
    assert fit["slope_se"] == pytest.approx(se_s, rel=1e-9)
    # numpy's own least squares agrees on the coefficients
    coef = np.linalg.lstsq(np.column_stack([np.ones(n), x]), y, rcond=None)[0]
    assert fit["intercept"] == pytest.approx(coef[0]) and fit["slope"] == pytest.approx(coef[1])


def test_ols_clustered_degenerate_inputs_are_nan():
    one_cluster = effects.ols_clustered([0, 1, 2], [1, 2, 4], ["a", "a", "a"])
    assert math.isfinite(one_cluster["slope"]) and math.isnan(one_cluster["slope_se"])
    constant_x = effects.ols_clustered([1, 1, 1], [1, 2, 4], ["a", "b", "c"])
    assert math.isnan(constant_x["slope"]) and constant_x["n"] == 3
    empty = effects.ols_clustered([], [], [])
    assert empty["n"] == 0 and math.isnan(empty["intercept"])
    assert effects.mean_clustered([1.0], ["a"])[0] == 1.0 and math.isnan(effects.mean_clustered([1.0], ["a"])[1])


# ---------------------------------------------------------------- paired differences and the t distribution


def test_paired_summary_by_hand():
    # diffs (0.1, 0.3, 0.2): mean 0.2, sd 0.1, SE 0.1 / sqrt(3); CI mean +- t_{0.975, 2} SE
    out = effects.paired_summary([0.1, 0.3, 0.2, math.nan])
    se = 0.1 / math.sqrt(3)
    assert out["n_pairs"] == 3 and out["mean"] == pytest.approx(0.2) and out["se"] == pytest.approx(se)
    t2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    assert out["ci_low"] == pytest.approx(0.2 - t2 * se, rel=1e-9) and out["ci_high"] == pytest.approx(0.2 + t2 * se, rel=1e-9)
    assert out["n_pos"] == 3 and out["n_neg"] == 0
    single = effects.paired_summary([0.5])
    assert single["mean"] == 0.5 and math.isnan(single["se"]) and math.isnan(single["ci_low"])


def test_paired_summary_against_a_naive_loop():
    rng = np.random.default_rng(3)
    d = list(rng.normal(size=7))
    mean = sum(d) / 7
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / 6)
    out = effects.paired_summary(d)
    assert out["mean"] == pytest.approx(mean) and out["se"] == pytest.approx(sd / math.sqrt(7))
    assert out["n_pos"] == sum(v > 0 for v in d) and out["n_neg"] == sum(v < 0 for v in d)


T1 = math.tan(math.pi * 0.475)  # t_{0.975, 1}: the Cauchy quantile, 12.7062...
T2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # t_{0.975, 2} = (2p - 1) / sqrt(2 p (1 - p)), 4.3027...


@pytest.mark.parametrize("df, want, tol", [(1, T1, 1e-10), (2, T2, 1e-10), (4, 2.776445, 1e-6), (10, 2.228139, 1e-6),
                                           (30, 2.042272, 1e-6), (1000, 1.962339, 1e-6)])
def test_t_quantile_matches_closed_forms_and_tables(df, want, tol):
    q = effects.t_quantile(0.975, df)
    assert q == pytest.approx(want, abs=tol * want)
    assert effects.t_cdf(q, df) == pytest.approx(0.975, abs=1e-11)
    assert effects.t_cdf(-q, df) == pytest.approx(0.025, abs=1e-11)


def test_reading_needs_two_se_and_the_t_interval():
    assert effects.reading(0.3, 0.1, 100) == "raises"  # 3 SE, t ~ 1.98
    assert effects.reading(-0.3, 0.1, 100) == "lowers"
    assert effects.reading(0.19, 0.1, 100) == "unresolved"  # under 2 SE
    assert effects.reading(0.3, 0.1, 2) == "unresolved"  # 3 SE but t_{0.975, 2} = 4.3
    assert effects.reading(0.3, math.nan, 5) == "unresolved" and effects.reading(0.3, 0.1, 0) == "unresolved"
    assert effects.reading(0.5, 0.1, 2, "higher", "lower") == "higher"
