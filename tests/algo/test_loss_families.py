"""Tests of the policy-loss families beyond vanilla (docs/losses.md): hand-computed batches, naive loops, limits, sides.

Every family is checked three ways: a hand-computed batch (per-token loss,
gradient, events), a plain per-token Python loop over random batches, and the
limits that reduce it to a known loss. ``ClipSpec.sides`` is checked to turn
each family's low / high side off, as the clip probe's replays need.
"""

from __future__ import annotations

import math

import pytest
import torch

from clipctl.algo.losses import (
    COV_LOSSES,
    POLICY_LOSSES,
    _hash_uniform,
    binary_kl,
    policy_loss,
    token_covariance,
)
from clipctl.clip import ClipSpec, CovSpec
from clipctl.errors import ConfigError

F64 = torch.float64
INF = math.inf
MASKS = ("ratio_below", "ratio_above", "clip_low", "clip_high", "dual_clip")
FAMILIES = [f for f in POLICY_LOSSES if f != "vanilla"]


def hand_batch():
    """Two responses, A = +1 and -1; probabilities chosen so ratios are round.

    row 0 (A = +1): p_old = [0.5, 0.2, 0.4], p = [0.75, 0.2, 0.3]  -> r = [1.5, 1, 0.75]
    row 1 (A = -1): p_old = [0.5, 0.4, pad], p = [0.25, 0.7, pad]  -> r = [0.5, 1.75, -]
    """
    p_old = torch.tensor([[0.5, 0.2, 0.4], [0.5, 0.4, 0.5]], dtype=F64)
    p = torch.tensor([[0.75, 0.2, 0.3], [0.25, 0.7, 0.5]], dtype=F64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=F64)
    adv = torch.tensor([1.0, -1.0], dtype=F64)
    return torch.log(p), torch.log(p_old), adv, mask


def run(name, logp, old, adv, mask, clip):
    """``(out, dL_t/dlogp_t)``: the family's output and the gradient of its masked per-token sum."""
    x = logp.clone().requires_grad_()
    out = POLICY_LOSSES[name](x, old, adv, mask, clip)
    (grad,) = torch.autograd.grad(torch.where(mask.bool(), out.per_token, 0.0).sum(), x)
    return out, grad


def ints(t):
    return t.int().tolist()


def close(a, b, atol=1e-9):
    torch.testing.assert_close(torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64), rtol=0, atol=atol)


# --- hand-computed batches ------------------------------------------------------------------


def test_cispo_hand_computed():
    logp, old, adv, mask = hand_batch()
    out, grad = run("cispo", logp, old, adv, mask, ClipSpec(0.2, 0.2))
    # w = clip(r, 0.8, 1.2): row 0 [1.2, 1, 0.8], row 1 [0.8, 1.2]; dL/dlogp = -w A.
    close(grad, [[-1.2, -1.0, -0.8], [0.8, 1.2, 0.0]])
    # L_t = -w A logp: row 0 t0 = -1.2 ln 0.75, row 1 t1 = 1.2 ln 0.7.
    close(out.per_token[0, 0], -1.2 * math.log(0.75))
    close(out.per_token[1, 1], 1.2 * math.log(0.7))
    ev = out.events
    assert ints(ev.ratio_below) == [[0, 0, 1], [1, 0, 0]]
    assert ints(ev.ratio_above) == [[1, 0, 0], [0, 1, 0]]
    assert ints(ev.clip_low) == [[0, 0, 0], [1, 0, 0]]
    assert ints(ev.clip_high) == [[1, 0, 0], [0, 0, 0]]
    assert not ev.dual_clip.any() and ev.cov_low is None


def test_gspo_hand_computed():
    logp, old, adv, mask = hand_batch()
    # s_0 = (1.5 * 1 * 0.75)^(1/3) = 1.0400 > 1.02 with A > 0: clipped high, the whole row.
    # s_1 = (0.5 * 1.75)^(1/2) = 0.9354 > 0.8: kept; dL/dlogp_t = -A s_1.
    out, grad = run("gspo", logp, old, adv, mask, ClipSpec(0.2, 0.02))
    s1 = math.sqrt(0.5 * 1.75)
    close(grad, [[0.0, 0.0, 0.0], [s1, s1, 0.0]])
    close(out.per_token[1, :2], [s1, s1])
    close(out.per_token[0], [-1.02] * 3)  # -(1 + eps_high) A
    ev = out.events
    assert ints(ev.ratio_above) == [[1, 1, 1], [0, 0, 0]]
    assert ints(ev.clip_high) == [[1, 1, 1], [0, 0, 0]]
    assert not ev.ratio_below.any() and not ev.clip_low.any()
    # The statistics' weights stay the token ratios.
    close(out.log_ratio[0], [math.log(1.5), 0.0, math.log(0.75)])


def test_dppo_tv_hand_computed():
    logp, old, adv, mask = hand_batch()
    # p - p_old: row 0 [0.25, 0, -0.1], row 1 [-0.25, 0.3]. delta 0.2 / 0.2:
    # row 0 t0 rose 0.25 with A > 0 and row 1 t0 fell 0.25 with A < 0 are masked.
    out, grad = run("dppo_tv", logp, old, adv, mask, ClipSpec(0.2, 0.2))
    close(grad, [[0.0, -1.0, -0.75], [0.0, 1.75, 0.0]])  # -A r elsewhere
    ev = out.events
    assert ints(ev.ratio_below) == [[0, 0, 0], [1, 0, 0]]
    assert ints(ev.ratio_above) == [[1, 0, 0], [0, 1, 0]]
    assert ints(ev.clip_low) == [[0, 0, 0], [1, 0, 0]]
    assert ints(ev.clip_high) == [[1, 0, 0], [0, 0, 0]]
    assert not ev.dual_clip.any()
    # The cap c = 1.5 bounds row 1 t1's weight (r = 1.75, kept): gradient 1.5, one dual event.
    out, grad = run("dppo_tv", logp, old, adv, mask, ClipSpec(0.2, 0.2, 1.5))
    close(grad, [[0.0, -1.0, -0.75], [0.0, 1.5, 0.0]])
    assert ints(out.events.dual_clip) == [[0, 0, 0], [0, 1, 0]]


def test_binary_kl_and_dppo_kl_hand_computed():
    # KL(Bern(.5) || Bern(.75)) = .5 ln(.5/.75) + .5 ln(.5/.25) = 0.1438410362
    # KL(Bern(.4) || Bern(.3)) = .4 ln(.4/.3) + .6 ln(.6/.7) = 0.0225824211
    # KL(Bern(.4) || Bern(.7)) = .4 ln(.4/.7) + .6 ln(.6/.3) = 0.1920419932
    kl = binary_kl(torch.tensor([0.5, 0.4, 0.4, 0.5], dtype=F64), torch.tensor([0.75, 0.3, 0.7, 0.25], dtype=F64))
    close(kl, [0.1438410362, 0.0225824211, 0.1920419932, 0.1438410362], atol=1e-9)
    logp, old, adv, mask = hand_batch()
    out, grad = run("dppo_kl", logp, old, adv, mask, ClipSpec(0.1, 0.1))
    # Same masks as dppo_tv at 0.2: row 0 t2 fell, but only by KL 0.023 < 0.1.
    close(grad, [[0.0, -1.0, -0.75], [0.0, 1.75, 0.0]])
    assert ints(out.events.clip_low) == [[0, 0, 0], [1, 0, 0]]
    assert ints(out.events.clip_high) == [[1, 0, 0], [0, 0, 0]]
    assert ints(out.events.ratio_above) == [[1, 0, 0], [0, 1, 0]]


# cov_t = (A - 0.2)(logp - mean logp) with mean logp = ln(.75 * .2 * .3 * .25 * .7) / 5:
# row 0: [0.544904, -0.512501, -0.188129], row 1: [0.500978, -0.734564].
HAND_COV = [[0.5449037, -0.5125007, -0.1881292], [0.5009784, -0.7345644, 0.0]]


def test_token_covariance_hand_computed():
    logp, _, adv, mask = hand_batch()
    close(token_covariance(logp, adv, mask), HAND_COV, atol=1e-6)


def test_kl_cov_hand_computed():
    logp, old, adv, mask = hand_batch()
    # Top floor(0.4 * 5) = 2 covariances: row 0 t0 (A > 0) and row 1 t0 (A < 0), penalised by |l|.
    out, grad = run("kl_cov", logp, old, adv, mask, ClipSpec(1.0, INF, None, CovSpec(0.4, coef=1.0)))
    # -A r + coef sign(l): row 0 t0 -1.5 + 1, row 1 t0 0.5 - 1; elsewhere -A r.
    close(grad, [[-0.5, -1.0, -0.75], [-0.5, 1.75, 0.0]])
    close(out.per_token[0, 0], -1.5 + math.log(1.5))
    ev = out.events
    assert ints(ev.cov_high) == [[1, 0, 0], [0, 0, 0]]
    assert ints(ev.cov_low) == [[0, 0, 0], [1, 0, 0]]
    assert not any(getattr(ev, k).any() for k in MASKS)


def test_clip_cov_hand_computed():
    logp, old, adv, mask = hand_batch()
    # Vanilla 0.2/0.2 clips row 0 t0 (high) and row 1 t0 (low). Eligible: unclipped with
    # -0.6 < cov < 0: row 0 t1 and t2 (row 1 t1's -0.73 is below lb). k = 2: both, both A > 0.
    out, grad = run("clip_cov", logp, old, adv, mask, ClipSpec(0.2, 0.2, None, CovSpec(0.4, -0.6, 0.0)))
    close(grad, [[0.0, 0.0, 0.0], [0.0, 1.75, 0.0]])
    ev = out.events
    assert ints(ev.cov_high) == [[0, 1, 1], [0, 0, 0]]
    assert not ev.cov_low.any()
    assert ints(ev.clip_low) == [[0, 0, 0], [1, 0, 0]] and ints(ev.clip_high) == [[1, 0, 0], [0, 0, 0]]
    # k = 1 of the two: one of them, the same one on every call (a replay selects alike).
    picks = [ints(run("clip_cov", logp, old, adv, mask, ClipSpec(0.2, 0.2, None, CovSpec(0.2, -0.6, 0.0)))[0].events.cov_high)
             for _ in range(2)]
    assert picks[0] == picks[1] and sum(map(sum, picks[0])) == 1 and picks[0][0][0] == 0


# --- naive per-token loops ------------------------------------------------------------------


def random_batch(gen, n=5, t=6, scale=0.6):
    logp = torch.log(torch.rand(n, t, generator=gen, dtype=F64) * 0.9 + 0.05)
    old = torch.log(torch.rand(n, t, generator=gen, dtype=F64) * 0.9 + 0.05)
    old = torch.where(torch.rand(n, t, generator=gen) < 0.3, logp, old)  # some ratios exactly 1
    adv = torch.randn(n, generator=gen, dtype=F64) * scale
    adv[0] = 0.0
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).to(F64)
    return logp, old, adv, mask


def naive(name, logp, old, adv, mask, clip):
    """Per-token loss, gradient and event sets written with Python floats and ``if`` (docs/losses.md)."""
    n, t = logp.shape
    L, G = [[0.0] * t for _ in range(n)], [[0.0] * t for _ in range(n)]
    ev = {k: set() for k in (*MASKS, "cov_low", "cov_high")}
    lo, hi = clip.eps_low, clip.eps_high
    valid = [(i, j) for i in range(n) for j in range(t) if mask[i, j] > 0]
    lp = {(i, j): float(logp[i, j]) for i, j in valid}
    r = {(i, j): math.exp(max(-20.0, min(20.0, lp[i, j] - float(old[i, j])))) for i, j in valid}
    A = {(i, j): float(adv[i]) for i, j in valid}

    def side(key, below, above):
        if below and clip.low_on:
            ev["ratio_below"].add(key)
            if A[key] < 0:
                ev["clip_low"].add(key)
        if above and clip.high_on:
            ev["ratio_above"].add(key)
            if A[key] > 0:
                ev["clip_high"].add(key)
        return key in ev["clip_low"] or key in ev["clip_high"]

    if name == "cispo":
        for k in valid:
            side(k, r[k] < 1 - lo, r[k] > 1 + hi)
            w = min(max(r[k], 1 - lo), 1 + hi)
            L[k[0]][k[1]], G[k[0]][k[1]] = -w * A[k] * lp[k], -w * A[k]
    elif name == "gspo":
        for i in range(n):
            toks = [k for k in valid if k[0] == i]
            if not toks:
                continue
            s = math.exp(max(-20.0, min(20.0, sum(lp[k] - float(old[k]) for k in toks) / len(toks))))
            for k in toks:
                clipped = side(k, s < 1 - lo, s > 1 + hi)
                bound = 1 - lo if s < 1 - lo else 1 + hi
                L[i][k[1]] = -bound * A[k] if clipped else -s * A[k]
                G[i][k[1]] = 0.0 if clipped else -s * A[k]
    elif name in ("dppo_tv", "dppo_kl"):
        c = INF if clip.dual_clip_c is None else clip.dual_clip_c
        for k in valid:
            p, q = math.exp(lp[k]), math.exp(float(old[k]))
            if name == "dppo_tv":
                fell, rose = p - q < -lo, p - q > hi
            else:
                d = float(binary_kl(torch.tensor(q, dtype=F64), torch.tensor(p, dtype=F64)))
                fell, rose = p < q and d > lo, p > q and d > hi
            if side(k, fell, rose):
                continue
            if r[k] > c:
                ev["dual_clip"].add(k)
            w = min(r[k], c)
            L[k[0]][k[1]], G[k[0]][k[1]] = -A[k] * w * lp[k], -A[k] * w
    else:  # clip_cov, kl_cov
        mean_a = sum(A.values()) / len(valid)
        mean_lp = sum(lp.values()) / len(valid)
        cov = {k: (A[k] - mean_a) * (lp[k] - mean_lp) for k in valid}
        n_pick = max(1, math.floor(clip.cov.ratio * len(valid)))
        if name == "kl_cov":
            ranked = sorted(valid, key=lambda k: -cov[k])  # stable: ties keep row order
        else:
            clipped = {}
            for k in valid:
                clipped[k] = side(k, r[k] < 1 - lo, r[k] > 1 + hi)
            key = _hash_uniform(old)
            ranked = sorted(
                [k for k in valid if not clipped[k] and clip.cov.lb < cov[k] < clip.cov.ub], key=lambda k: -float(key[k])
            )
        for k in ranked[:n_pick]:
            if A[k] < 0 and clip.cov.low:
                ev["cov_low"].add(k)
            if A[k] > 0 and clip.cov.high:
                ev["cov_high"].add(k)
        for k in valid:
            treated = k in ev["cov_low"] or k in ev["cov_high"]
            if name == "kl_cov":
                l_ = math.log(r[k])
                pen = clip.cov.coef * abs(l_) if treated else 0.0
                L[k[0]][k[1]] = -r[k] * A[k] + pen
                G[k[0]][k[1]] = -r[k] * A[k] + (clip.cov.coef * math.copysign(1.0, l_) if treated and l_ != 0 else 0.0)
            elif treated or clipped[k]:
                bound = 1 - lo if r[k] < 1 - lo else 1 + hi
                L[k[0]][k[1]] = 0.0 if treated else -bound * A[k]
            else:
                L[k[0]][k[1]], G[k[0]][k[1]] = -r[k] * A[k], -r[k] * A[k]
    return L, G, ev


def family_clip(name, eps_low, eps_high, dual=None, cov_ratio=0.2):
    if name == "clip_cov":
        return ClipSpec(eps_low, eps_high, None, CovSpec(cov_ratio, -0.5, 0.5))
    if name == "kl_cov":
        return ClipSpec(1.0, INF, None, CovSpec(cov_ratio, coef=0.7))
    return ClipSpec(eps_low, eps_high, dual if name.startswith("dppo") else None)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("bounds", [(0.2, 0.28, None), (0.1, INF, 1.5), (1.0, 0.05, 2.0), (0.3, 0.3, None)])
def test_matches_naive_loop(name, seed, bounds):
    gen = torch.Generator().manual_seed(seed)
    logp, old, adv, mask = random_batch(gen)
    if name == "dppo_kl":
        bounds = (bounds[0] / 4, bounds[1] / 4, bounds[2])  # binary KLs are small
    clip = family_clip(name, *bounds)
    out, grad = run(name, logp, old, adv, mask, clip)
    L, G, ev = naive(name, logp, old, adv, mask, clip)
    valid = mask.bool()
    close(torch.where(valid, out.per_token, 0.0), L)
    close(grad, G)
    for k, where in ev.items():
        got = getattr(out.events, k)
        got = set() if got is None else {tuple(x) for x in got.nonzero().tolist()}
        assert got == where, k


# --- limits -----------------------------------------------------------------------------------


def vanilla_noclip_grad(logp, old, adv, mask):
    return run("vanilla", logp, old, adv, mask, ClipSpec(1.0, INF))[1]


@pytest.mark.parametrize("seed", range(3))
def test_infinite_bounds_reduce_to_reinforce_with_is(seed):
    """cispo, dppo_tv, dppo_kl without bounds (and kl_cov without penalty) take vanilla's unclipped gradient -r A."""
    gen = torch.Generator().manual_seed(seed)
    logp, old, adv, mask = random_batch(gen)
    ref = vanilla_noclip_grad(logp, old, adv, mask)
    for name, clip in (
        ("cispo", ClipSpec(1.0, INF)), ("dppo_tv", ClipSpec(1.0, INF)), ("dppo_kl", ClipSpec(1.0, INF)),
        ("kl_cov", ClipSpec(1.0, INF, None, CovSpec(0.5, coef=0.0))),
        # clip_cov with an empty covariance window and no ratio clip selects nothing
        ("clip_cov", ClipSpec(1.0, INF, None, CovSpec(0.5, 1e9, INF))),
    ):
        out, grad = run(name, logp, old, adv, mask, clip)
        close(grad, ref, atol=1e-12)
        assert not any(getattr(out.events, k).any() for k in MASKS), name


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("bounds", [(0.2, 0.28), (0.2, INF), (1.0, 0.28), (0.05, 0.05)])
def test_gspo_with_one_token_responses_is_vanilla(seed, bounds):
    gen = torch.Generator().manual_seed(seed)
    logp, old, adv, _ = random_batch(gen, n=8, t=1)
    mask = torch.ones_like(logp)
    clip = ClipSpec(*bounds)
    (a, ga), (b, gb) = run("gspo", logp, old, adv, mask, clip), run("vanilla", logp, old, adv, mask, clip)
    close(a.per_token, b.per_token, atol=1e-12)
    close(ga, gb, atol=1e-12)
    for k in MASKS:
        assert torch.equal(getattr(a.events, k), getattr(b.events, k)), k


def test_on_policy_every_family_takes_the_plain_policy_gradient():
    """At r = 1 (the first minibatch) no bound is crossed and every gradient is -A (kl_cov's |l| has gradient 0 at 0)."""
    gen = torch.Generator().manual_seed(0)
    logp, _, adv, mask = random_batch(gen)
    ref = vanilla_noclip_grad(logp, logp, adv, mask)
    for name in FAMILIES:
        _, grad = run(name, logp, logp, adv, mask, family_clip(name, 0.2, 0.2, 3.0, cov_ratio=0.2) if name != "clip_cov"
                      else ClipSpec(0.2, 0.2, None, CovSpec(0.2, 1e9, INF)))
        close(grad, ref, atol=1e-12)


# --- the probe's side switches ------------------------------------------------------------------


@pytest.mark.parametrize("name", list(POLICY_LOSSES))
@pytest.mark.parametrize("seed", range(3))
def test_sides_switch_each_family_side_off(name, seed):
    gen = torch.Generator().manual_seed(seed)
    logp, old, adv, mask = random_batch(gen)
    clip = family_clip(name, 0.2, 0.2, 1.5) if name != "vanilla" else ClipSpec(0.2, 0.2, 1.5)
    full, _ = run(name, logp, old, adv, mask, clip)

    def events(spec):
        ev = run(name, logp, old, adv, mask, spec)[0].events
        return {k: torch.zeros_like(mask, dtype=torch.bool) if getattr(ev, k) is None else getattr(ev, k)
                for k in (*MASKS, "cov_low", "cov_high")}

    off, low, high = events(clip.sides(False, False)), events(clip.sides(True, False)), events(clip.sides(False, True))
    assert not any(v.any() for v in off.values())  # mechanism off: nothing acts
    for k in ("ratio_above", "clip_high", "cov_high", "dual_clip"):
        assert not low[k].any(), k
    for k in ("ratio_below", "clip_low", "cov_low", "dual_clip"):
        assert not high[k].any(), k
    # The side left on acts as in the real run (Clip-Cov's eligible set may grow when a ratio side is off).
    same = ("clip_low",) if name == "clip_cov" else ("clip_low", "cov_low")
    for k in same:
        assert torch.equal(low[k], getattr(full.events, k) if getattr(full.events, k) is not None else low[k]), k
    same = ("clip_high",) if name == "clip_cov" else ("clip_high", "cov_high")
    for k in same:
        assert torch.equal(high[k], getattr(full.events, k) if getattr(full.events, k) is not None else high[k]), k
    if name not in COV_LOSSES:
        # noclip is the family with both bounds at their switches: the same gradient
        close(run(name, logp, old, adv, mask, clip.sides(False, False))[1],
              run(name, logp, old, adv, mask, ClipSpec(1.0, INF))[1], atol=0)


def test_sides_and_cov_spec_rules():
    spec = ClipSpec(0.2, 0.28, 3.0, CovSpec(0.1, -1.0, 1.0))
    assert spec.sides(True, True) is spec
    assert spec.sides(True, False) == ClipSpec(0.2, INF, None, CovSpec(0.1, -1.0, 1.0, high=False))
    assert spec.sides(False, False).cov == CovSpec(0.1, -1.0, 1.0, low=False, high=False)
    for bad, msg in (
        (dict(ratio=0.0), "ratio=0.0 must be in (0, 1]"),
        (dict(lb=1.0, ub=1.0), "lb=1.0 must be below ub=1.0"),
        (dict(coef=-1.0), "coef=-1.0 must be a finite number >= 0"),
    ):
        with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            CovSpec(**bad)


def test_cov_losses_need_a_cov_spec():
    logp, old, adv, mask = hand_batch()
    for name in COV_LOSSES:
        with pytest.raises(ValueError, match=f"policy loss '{name}' needs clip.cov"):
            policy_loss(logp, old, adv, mask, ClipSpec(0.2, 0.2), loss_mode=name)
