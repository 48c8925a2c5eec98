"""The paper's toy setting (arXiv 2509.26114, Section 2.1) simulated exactly.

One state, a tabular softmax policy ``pi = softmax(theta)`` over ``A`` actions,
random rewards with a symmetric advantage. Two tools:

1. ``check_theorems``: for random pairs ``(pi_old, pi_k)`` take one exact step
   on the *expected* clipped objective
   ``J(pi) = E_{a ~ pi_old} E_A [ C_eps(pi(a) / pi_old(a), A) ]``
   (``C_eps = -L_t`` of docs/definitions.md section 4, computed with ``clipctl.algo``) and compare the
   true entropy change with the first-order predictions of Theorems 1 and 2:

   - policy gradient (paper Eq. 5): ``theta' = theta + eta * grad_theta J``;
   - natural policy gradient (Eq. 6): ``pi' ∝ pi ∘ exp(eta * grad_pi J)``,
     ``grad_pi`` taken with the entries of ``pi`` as free variables.

   The advantage takes ``+mu`` and ``-mu`` with probability ``nu`` each (zero
   otherwise), so ``E[A] = 0``, ``P(A > 0) = P(A < 0) = nu``,
   ``E[A | A > 0] = mu``, exactly the paper's assumptions. With one state and
   one token per response, ``d(s) = 1``; Appendix A/B then give
   ``grad_theta J = mu nu pi_k (h - E_{pi_k} h)`` and ``grad_pi J = mu nu h``
   with ``h = 1_X - 1_Y``, so the predictions carry the factor ``mu nu eta``.
   Both gradients come from autograd on the library's loss; a test checks
   them against these closed forms.

2. ``run_dynamics``: a GRPO-like loop on the same tabular policy, written as
   clipctl run directories (``run.json`` + ``steps``/``updates`` Parquet
   parts) so ``analyze-clip-stats`` and ``plot`` read them like real runs.

Departures from the trainer (``clipctl.trainer``), each deliberate:

1. Every quantity is exact for the tabular policy: ``entropy`` is
   ``H(softmax(theta))``, not an estimate; a "response" is one token, so
   Eq. 4 and the token mean coincide.
2. The optimizer is plain SGD on the logits (the paper's Eq. 5 model), not
   AdamW; ``--optimizer adam`` is available.
3. Each table is written as one part after the run (its rows are all known
   then); ``read_run`` concatenates parts, so readers see the usual tables.
4. Every step is probed (docs/definitions.md section 8): the step's updates are replayed from the
   same logits and optimizer state with no clipping, clip-low only and
   clip-high only; replays are cheap here.
5. Next to each sampled estimator of the clip regions' probabilities and the
   Theorem 1/2 brackets (``ratio_*_frac``, ``thm*``, from
   ``algo.clip_stat_sums``), the run logs its exact value ``<name>_exact``
   (``exact_clip_sums``): the tabular policy is known in full, so the
   estimator can be checked against the quantity it estimates.

Run it::

    clipctl simulate check --actions 20 --eta 1e-3 --trials 20
    clipctl simulate dynamics --grid 0.2/0.2,0.2/inf,1.0/0.2 --out sim-runs
    clipctl analyze-clip-stats sim-runs
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from clipctl import algo, schema
from clipctl.clip import ClipSpec
from clipctl.errors import ClipctlError
from clipctl.rundir import LOCK_NAME, RunLock, ensure_output_dir
from clipctl.runlog import RunWriter

# The probe's shortcuts (shared first update, replays that retrace the real step); tests
# turn them off to check that the columns do not change.
_SHARE_PROBE_PREFIX = True

REWARD_KINDS = {"bernoulli": "random_bernoulli", "gaussian": "random_gaussian"}
OPTIMIZERS = ("sgd", "adam")


class SimulateError(ClipctlError):
    """Invalid simulation settings."""


# ---------------------------------------------------------------- exact tabular quantities


def entropy_of(logits: torch.Tensor) -> torch.Tensor:
    """``H = -sum_a pi(a) log pi(a)`` of ``softmax(logits)`` (float64 in, scalar out)."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def _entropy_of_probs(pi: torch.Tensor) -> float:
    return float(-(pi * torch.log(pi)).sum())


def expected_clipped_objective(
    logp: torch.Tensor, old_logp: torch.Tensor, clip: ClipSpec, *, mu: float = 1.0, nu: float = 0.5
) -> torch.Tensor:
    """``J = E_{a ~ pi_old} E_A [C_eps(r(a), A)]`` for one state, differentiable in ``logp``.

    Args:
        logp: ``[A]`` log pi(a) of every action (the policy being optimised).
        old_logp: ``[A]`` log pi_old(a).
        clip: the clip bounds of ``C_eps``.
        mu, nu: the advantage is ``+mu`` or ``-mu`` with probability ``nu`` each.
    ``C_eps = -L_t`` with ``L_t`` the per-token loss of ``clipctl.algo.policy_loss``.
    """
    n = logp.shape[0]
    adv = torch.tensor([mu, -mu], dtype=logp.dtype).expand(n, 2)
    _, out = algo.policy_loss(
        logp.unsqueeze(-1).expand(n, 2), old_logp.unsqueeze(-1).expand(n, 2), adv, torch.ones(n, 2), clip
    )
    return (old_logp.exp().unsqueeze(-1) * nu * -out.per_token).sum()


def region_masks(pi: torch.Tensor, pi_old: torch.Tensor, eps_low: float, eps_high: float):
    """Boolean ``[A]`` masks of X (``r < 1 - eps_low``) and Y (``r > 1 + eps_high``), ``r = pi / pi_old``."""
    r = pi / pi_old
    return r < 1.0 - eps_low, r > 1.0 + eps_high


def theory_brackets(pi: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> dict[str, float]:
    """Exact Theorem 1/2 terms at one state, expectations under ``pi`` (= pi_k).

    Returns ``p, q`` and the four brackets; an empty region's bracket is NaN and
    its contribution (``p * bracket``) is 0.
    """
    pi = pi.double()
    logp = torch.log(pi)
    H = float(-(pi * logp).sum())
    Q = pi * (logp + H)
    p, q = float(pi[X].sum()), float(pi[Y].sum())
    EQ = float((pi * Q).sum())

    def cond(x: torch.Tensor, m: torch.Tensor) -> float:
        w = float(pi[m].sum())
        return float((pi[m] * x[m]).sum()) / w if w > 0 else math.nan

    out = {
        "p": p,
        "q": q,
        "entropy": H,
        "thm1_low": EQ - cond(Q, X),
        "thm1_high": EQ - cond(Q, Y),
        "thm2_low": cond(-logp, X) - H,
        "thm2_high": cond(-logp, Y) - H,
    }
    for thm in ("thm1", "thm2"):
        low = p * out[f"{thm}_low"] if p > 0 else 0.0
        high = q * out[f"{thm}_high"] if q > 0 else 0.0
        out[f"{thm}_drift"] = low - high
    return out


def expected_q_of(logits: torch.Tensor) -> torch.Tensor:
    """The Theorem 1 centre ``E_pi[Q] = sum_a pi(a)^2 (log pi(a) + H)`` of ``softmax(logits)`` (float64 scalar)."""
    logp = torch.log_softmax(logits, dim=-1)
    pi = logp.exp()
    H = -(pi * logp).sum(-1)
    return (pi * pi * (logp + H)).sum(-1)


# The estimator columns that simulated runs also log exactly, as ``<name>_exact``.
EXACT_KEYS = (
    "ratio_below_frac", "ratio_above_frac",
    "thm1_low", "thm1_high", "thm2_low", "thm2_high", "thm1_drift", "thm2_drift",
)


def exact_clip_sums(
    logp_all: torch.Tensor, old_logp_all: torch.Tensor, n_tokens: float, clip: ClipSpec
) -> dict[str, torch.Tensor]:
    """What ``algo.clip_stat_sums`` adds up, in expectation, for ``n_tokens`` samples of one state.

    ``logp_all``, ``old_logp_all``: ``[A]`` log pi_k and log pi_old of every
    action. Each additive sum is ``n_tokens`` times the expectation under
    ``pi_old`` of its per-token term, e.g. ``E_old[r 1_X f] = E_k[1_X f]``, so
    ``finalize_clip_stats`` of the result is the exact bracket under ``pi_k``
    (``theory_brackets``), and adding the results of several minibatches pools
    them exactly as the sampled sums are pooled. The regions are the events
    of ``algo.policy_loss`` (same ratio, same clamp). Clip-event counts depend on
    the advantages and are NaN here: only the region and theory keys are exact.
    """
    logp_all, old_logp_all = logp_all.double(), old_logp_all.double()
    _, out = algo.policy_loss(
        logp_all.unsqueeze(0), old_logp_all.unsqueeze(0), torch.zeros(1, dtype=torch.float64),
        torch.ones(1, logp_all.shape[0]), clip,
    )
    X, Y = out.events.ratio_below[0], out.events.ratio_above[0]
    pi, pi_old = logp_all.exp(), old_logp_all.exp()
    H = -(pi * logp_all).sum()
    Q = pi * (logp_all + H)
    qdev = (pi * Q).sum() - Q
    gap = -logp_all - H
    n = torch.tensor(float(n_tokens), dtype=torch.float64)
    nan = torch.tensor(math.nan, dtype=torch.float64)

    def under_k(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return n * (pi * x)[m].sum()

    ones = torch.ones_like(pi)
    return {
        "n_tokens": n,
        "n_below": n * pi_old[X].sum(),
        "n_above": n * pi_old[Y].sum(),
        "n_clip_low": nan,
        "n_clip_high": nan,
        "n_dual_clip": nan,
        "n_cov_low": nan,
        "n_cov_high": nan,
        "w_sum": n * pi.sum(),
        "w_sum_below": under_k(ones, X),
        "w_sum_above": under_k(ones, Y),
        "qdev_wsum_below": under_k(qdev, X),
        "qdev_wsum_above": under_k(qdev, Y),
        "gap_wsum_below": under_k(gap, X),
        "gap_wsum_above": under_k(gap, Y),
    }


def exact_columns(exact_sums) -> dict[str, float]:
    """``<key>_exact`` for ``EXACT_KEYS`` from ``exact_clip_sums`` (or a sum of them)."""
    stats = schema.finalize_clip_stats(exact_sums)
    return {f"{k}_exact": stats[k] for k in EXACT_KEYS}


# ---------------------------------------------------------------- (a) check


@dataclass
class CheckResult:
    """One random (pi_old, pi_k) pair: actual entropy changes next to the predictions.

    ``*_rel_err = |actual - predicted| / |predicted|`` at step size ``eta``.
    ``*_order = log10(|error at eta| / |error at eta/10|)``: about 2 when
    the mismatch is the O(eta^2) remainder of a correct first-order formula;
    it stays meaningful where the first-order change itself is near zero and
    the relative error is therefore large.
    """

    trial: int
    p: float
    q: float
    entropy: float
    dH_pg: float
    thm1_pred: float
    thm1_rel_err: float
    thm1_order: float
    dH_npg: float
    thm2_pred: float
    thm2_rel_err: float
    thm2_order: float


def pg_step(theta: torch.Tensor, old_logp: torch.Tensor, eta: float, **kw) -> torch.Tensor:
    """Paper Eq. 5: ``theta + eta * grad_theta J(theta)`` (exact expected gradient)."""
    theta = theta.detach().clone().requires_grad_(True)
    J = expected_clipped_objective(torch.log_softmax(theta, -1), old_logp, **kw)
    (grad,) = torch.autograd.grad(J, theta)
    return (theta + eta * grad).detach()


def npg_step(pi: torch.Tensor, old_logp: torch.Tensor, eta: float, **kw) -> torch.Tensor:
    """Paper Eq. 6: ``pi ∘ exp(eta * grad_pi J(pi))``, renormalised; ``grad_pi`` treats ``pi(a)`` as free."""
    pi = pi.detach().clone().requires_grad_(True)
    J = expected_clipped_objective(torch.log(pi), old_logp, **kw)
    (grad,) = torch.autograd.grad(J, pi)
    new = pi.detach() * torch.exp(eta * grad)
    return new / new.sum()


def random_policy_pair(
    gen: torch.Generator, actions: int, *, eps_low: float, eps_high: float, spread: float = 1.0, shift: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(theta_old, theta_k)`` with ``theta_k = theta_old + N(0, shift^2)``, redrawn until X and Y are non-empty."""
    for _ in range(1000):
        old = torch.randn(actions, generator=gen, dtype=torch.float64) * spread
        new = old + torch.randn(actions, generator=gen, dtype=torch.float64) * shift
        X, Y = region_masks(torch.softmax(new, -1), torch.softmax(old, -1), eps_low, eps_high)
        if X.any() and Y.any():
            return old, new
    raise SimulateError(
        f"could not draw a policy pair with both clip regions non-empty for eps_low={eps_low}, "
        f"eps_high={eps_high}; use finite eps values below 1 or more actions"
    )


def check_theorems(
    *,
    actions: int = 20,
    eta: float = 1e-3,
    trials: int = 20,
    seed: int = 0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    mu: float = 1.0,
    nu: float = 0.5,
) -> list[CheckResult]:
    """Theorems 1 and 2 against one exact PG / NPG step on random policy pairs."""
    if actions < 2:
        raise SimulateError(f"actions must be at least 2, got {actions}")
    if not (eta > 0 and math.isfinite(eta)):
        raise SimulateError(f"eta must be a finite positive number, got {eta}")
    if not 0 <= seed <= 2**63 - 1:
        raise SimulateError(f"seed must be in [0, 2**63 - 1], got {seed}")
    if trials < 1:
        raise SimulateError(f"trials must be at least 1, got {trials}")
    clip = ClipSpec(eps_low, eps_high)
    if not (clip.low_on and clip.high_on):
        raise SimulateError("the check needs both clip regions: use eps_low < 1 and a finite eps_high")
    gen = torch.Generator().manual_seed(seed)
    kw = dict(clip=clip, mu=mu, nu=nu)
    results = []
    for trial in range(trials):
        theta_old, theta = random_policy_pair(gen, actions, eps_low=eps_low, eps_high=eps_high)
        old_logp = torch.log_softmax(theta_old, -1)
        pi = torch.softmax(theta, -1)
        X, Y = region_masks(pi, old_logp.exp(), eps_low, eps_high)
        t = theory_brackets(pi, X, Y)
        H0 = float(entropy_of(theta))
        row = {}
        for step_eta, tag in ((eta, ""), (eta / 10, "_small")):
            scale = mu * nu * step_eta  # mu nu eta d(s), d(s) = 1 for the single state
            row["dH_pg" + tag] = float(entropy_of(pg_step(theta, old_logp, step_eta, **kw))) - H0
            row["dH_npg" + tag] = _entropy_of_probs(npg_step(pi, old_logp, step_eta, **kw)) - H0
            row["thm1" + tag] = scale * t["thm1_drift"]
            row["thm2" + tag] = scale * t["thm2_drift"]
        results.append(
            CheckResult(
                trial=trial, p=t["p"], q=t["q"], entropy=H0,
                dH_pg=row["dH_pg"], thm1_pred=row["thm1"], thm1_rel_err=_rel_err(row["dH_pg"], row["thm1"]),
                thm1_order=_order(row["dH_pg"] - row["thm1"], row["dH_pg_small"] - row["thm1_small"]),
                dH_npg=row["dH_npg"], thm2_pred=row["thm2"], thm2_rel_err=_rel_err(row["dH_npg"], row["thm2"]),
                thm2_order=_order(row["dH_npg"] - row["thm2"], row["dH_npg_small"] - row["thm2_small"]),
            )
        )
    return results


def _rel_err(actual: float, predicted: float) -> float:
    return abs(actual - predicted) / abs(predicted) if predicted != 0 else math.inf


def _order(err: float, err_small: float) -> float:
    return math.log10(abs(err) / abs(err_small)) if err != 0 and err_small != 0 else math.nan


# ---------------------------------------------------------------- (b) dynamics


@dataclass(frozen=True)
class DynamicsConfig:
    """Settings of one simulated run (also written to ``run.json``)."""

    eps_low: float = 0.2
    eps_high: float = 0.2
    seed: int = 0
    actions: int = 50
    steps: int = 150
    samples: int = 64          # actions sampled per step (the rollout batch)
    group_size: int = 8        # samples per GRPO group (advantage = reward - group mean)
    minibatches: int = 4       # optimizer steps per epoch
    epochs: int = 1
    lr: float = 4.0            # SGD on logits: clips 1-9 % of tokens at eps 0.2 (a moderate regime)
    optimizer: str = "sgd"
    reward: str = "bernoulli"  # bernoulli (p = 0.5) | gaussian (N(0, 1))
    init_scale: float = 1.0    # initial logits ~ N(0, init_scale^2), drawn from the seed only
    probe_every: int = 1       # clip probe (docs/definitions.md section 8) every Nth step (0 = never)


DEFAULT_GRID = ((0.2, 0.2), (0.2, math.inf), (1.0, 0.2), (0.1, math.inf))


def parse_grid(text: str) -> list[tuple[float, float]]:
    """``'0.2/0.2,0.2/inf'`` -> ``[(0.2, 0.2), (0.2, inf)]``."""
    grid = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        parts = item.split("/")
        try:
            if len(parts) != 2:
                raise ValueError
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise SimulateError(
                f"grid entry {item!r} must look like eps_low/eps_high, e.g. 0.2/0.2 or 0.2/inf"
            ) from None
        ClipSpec(low, high)  # raises on a bound out of range
        grid.append((low, high))
    if not grid:
        raise SimulateError("the grid is empty; give settings like 0.2/0.2,0.2/inf")
    return grid


def validate(cfg: DynamicsConfig) -> None:
    ClipSpec(cfg.eps_low, cfg.eps_high)  # raises on a bound out of range
    if cfg.group_size < 1:  # before the checks below divide by it
        raise SimulateError(f"group_size={cfg.group_size} must be at least 1")
    checks = [
        (cfg.actions >= 2, f"actions={cfg.actions} must be at least 2"),
        (cfg.steps >= 1, f"steps={cfg.steps} must be at least 1"),
        (cfg.group_size >= 1, f"group_size={cfg.group_size} must be at least 1"),
        (cfg.samples >= 1 and cfg.samples % cfg.group_size == 0,
         f"samples={cfg.samples} must be a positive multiple of group_size={cfg.group_size}"),
        (1 <= cfg.minibatches <= cfg.samples,
         f"minibatches={cfg.minibatches} must be between 1 and samples={cfg.samples}"),
        (cfg.epochs >= 1, f"epochs={cfg.epochs} must be at least 1"),
        (cfg.lr > 0 and math.isfinite(cfg.lr), f"lr={cfg.lr} must be a finite positive number"),
        (0 <= cfg.seed <= 2**63 - 1, f"seed={cfg.seed} must be in [0, 2**63 - 1]"),
        (cfg.optimizer in OPTIMIZERS, f"optimizer={cfg.optimizer!r} is unknown; valid: {', '.join(OPTIMIZERS)}"),
        (cfg.reward in REWARD_KINDS, f"reward={cfg.reward!r} is unknown; valid: {', '.join(REWARD_KINDS)}"),
        (cfg.init_scale >= 0 and math.isfinite(cfg.init_scale), f"init_scale={cfg.init_scale} must be a finite number >= 0"),
        (cfg.probe_every >= 0, f"probe_every={cfg.probe_every} must be >= 0"),
    ]
    for ok, msg in checks:
        if not ok:
            raise SimulateError(msg)


def run_name(cfg: DynamicsConfig) -> str:
    return f"el{_num(cfg.eps_low)}-eh{_num(cfg.eps_high)}-s{cfg.seed}"


def _num(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:g}"


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(p) for p in parts]))


class _Optimizer:
    """``torch.optim`` SGD or Adam (betas 0.9 / 0.999, eps 1e-8: the trainer's AdamW defaults, no decay)
    on one logit vector; its state can be copied for replays."""

    def __init__(self, kind: str, lr: float, size: int):
        self.param = torch.zeros(size, dtype=torch.float64, requires_grad=True)
        self.opt = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[kind]([self.param], lr=lr)

    def snapshot(self) -> dict:
        return copy.deepcopy(self.opt.state_dict())

    def restore(self, snap: dict) -> None:
        self.opt.load_state_dict(copy.deepcopy(snap))

    def step(self, theta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The logits after one optimizer step from ``theta`` along ``grad``."""
        with torch.no_grad():
            self.param.copy_(theta)
        self.param.grad = grad.detach().clone()
        self.opt.step()
        return self.param.detach().clone()


def _update_epochs(
    theta, opt, actions, old_logp, adv, cfg: DynamicsConfig, clip: ClipSpec, *, with_stats, old_logp_all=None,
    first_update: int = 0, after_first: Optional[Callable[[torch.Tensor], None]] = None,
):
    """All minibatch updates of one step from ``theta``.

    Returns (theta, update rows, step totals, step exact sums); with
    ``with_stats`` each row carries the sampled estimators and, next to them,
    their exact values (``<key>_exact``, from ``old_logp_all``, the ``[A]``
    log pi_old of every action); the totals are empty without ``with_stats``.
    ``first_update = k`` starts at the ``k``-th update (``theta`` and ``opt``
    are then the state before it); ``after_first(theta)`` runs after the first.
    """
    n = actions.shape[0]
    bounds = np.linspace(0, n, cfg.minibatches + 1).round().astype(int)
    rows, totals, step_exact = [], schema.Totals(), None
    for epoch in range(cfg.epochs):
        for mb in range(cfg.minibatches):
            k = epoch * cfg.minibatches + mb
            if k < first_update:
                continue
            lo, hi = int(bounds[mb]), int(bounds[mb + 1])
            th = theta.detach().clone().requires_grad_(True)
            logp_all = torch.log_softmax(th, -1)
            logp = logp_all[actions[lo:hi]].unsqueeze(-1)  # [n, 1]: one token per response
            mask = torch.ones_like(logp)
            loss, out = algo.policy_loss(logp, old_logp[lo:hi], adv[lo:hi], mask, clip)
            (grad,) = torch.autograd.grad(loss, th)
            if with_stats:
                H = float(entropy_of(theta))
                sums = algo.clip_stat_sums(
                    out, mask, torch.full_like(logp, H), torch.full_like(logp, float(expected_q_of(theta)))
                )
                sums = {k: float(v) for k, v in sums.items()}
                exact = exact_clip_sums(logp_all.detach(), old_logp_all, hi - lo, clip)
                step_exact = exact if step_exact is None else algo.add_sums(step_exact, exact)
                update = dict(
                    loss=float(loss.detach()), kl_sum=float(algo.k3_kl(logp.detach(), old_logp[lo:hi]).sum()),
                    grad_norm=float(grad.norm()), sums=sums,
                )
                totals.add(**update, on_policy=k == 0)
                rows.append(schema.update_row(epoch, mb, k, cfg.lr, **update, extra=exact_columns(exact)))
            theta = opt.step(theta, grad)
            if k == 0 and after_first is not None:
                after_first(theta)
    return theta, rows, totals, step_exact


def simulate_run(cfg: DynamicsConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One simulated run: ``(steps, updates)`` DataFrames with the column names of docs/metrics.md."""
    validate(cfg)
    init_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0]))
    theta = torch.tensor(init_rng.normal(0.0, 1.0, cfg.actions) * cfg.init_scale, dtype=torch.float64)
    opt = _Optimizer(cfg.optimizer, cfg.lr, cfg.actions)
    steps, updates = [], []
    for step in range(1, cfg.steps + 1):
        t0 = time.perf_counter()
        # Sampling and rewards depend on (seed, step) only, so runs of different
        # clip settings with one seed share their random numbers.
        rng = _rng(cfg.seed, step, 1)
        pi_old = torch.softmax(theta, -1)
        actions = torch.as_tensor(rng.choice(cfg.actions, size=cfg.samples, p=pi_old.numpy() / float(pi_old.sum())))
        if cfg.reward == "bernoulli":
            rewards = torch.as_tensor((rng.random(cfg.samples) < 0.5).astype(np.float64))
        else:
            rewards = torch.as_tensor(rng.normal(0.0, 1.0, cfg.samples))
        adv = algo.group_advantages(rewards, cfg.group_size, "none")
        old_logp = torch.log_softmax(theta, -1)[actions].unsqueeze(-1)
        H0 = float(entropy_of(theta))
        probed = bool(cfg.probe_every and step % cfg.probe_every == 0)
        # Every replay starts from the state after the on-policy first update (ratio 1:
        # no clip acts there), as in the trainer; _SHARE_PROBE_PREFIX = False replays from the start.
        start = {"theta": theta.clone(), "opt": opt.snapshot(), "first": 0}

        def after_first(th: torch.Tensor) -> None:
            start.update(theta=th.clone(), opt=opt.snapshot(), first=1)

        t1 = time.perf_counter()
        theta, rows, totals, exact_sums = _update_epochs(
            theta, opt, actions, old_logp, adv, cfg, ClipSpec(cfg.eps_low, cfg.eps_high), with_stats=True,
            old_logp_all=torch.log_softmax(theta, -1),
            after_first=after_first if probed and _SHARE_PROBE_PREFIX else None,
        )
        t_update = time.perf_counter() - t1
        H1 = float(entropy_of(theta))
        t2 = time.perf_counter()
        probe = schema.unprobed_columns()
        if probed:
            real_opt = opt.snapshot()

            def replay(clip: ClipSpec) -> float:
                opt.restore(start["opt"])
                th, _, _, _ = _update_epochs(
                    start["theta"], opt, actions, old_logp, adv, cfg, clip, with_stats=False, first_update=start["first"],
                )
                return float(entropy_of(th))

            agreeing = algo.agreeing_replays(totals.sums) if _SHARE_PROBE_PREFIX else frozenset()
            probe = algo.clip_probe(replay, ClipSpec(cfg.eps_low, cfg.eps_high), H1, agreeing=agreeing)
            opt.restore(real_opt)
        t_probe = time.perf_counter() - t2
        step_seconds = time.perf_counter() - t0
        steps.append(
            schema.steps_row(
                step,
                entropy=schema.entropy_columns(H0, H0, H1, H1),
                totals=totals,
                probe=probe,
                batch={
                    # Actions are drawn from the exact policy; there is no separate engine to disagree with.
                    "rollout_logprob_diff_mean": math.nan,
                    "rollout_logprob_diff_max": math.nan,
                    "reward_mean": float(rewards.mean()),
                    "reward_std": float(rewards.std(unbiased=False)),
                    "accuracy": math.nan,  # random rewards are not verifiable
                    "zero_std_group_frac": float(algo.zero_std_group_frac(rewards, cfg.group_size)),
                    "adv_abs_mean": float(adv.abs().mean()),
                    "response_length_mean": 1.0,
                    "response_length_max": 1.0,
                    "truncated_frac": 0.0,
                    "n_tokens": float(cfg.samples),
                },
                lr=cfg.lr,
                n_updates=len(rows),
                # The trainer's knob columns: fixed clip bounds, no bonus, no controller here.
                knobs=schema.knob_columns(cfg.eps_low, cfg.eps_high, 0.0),
                # One action per sample, no prompt: each update pass sees every sample once.
                update_tokens=cfg.samples * cfg.epochs,
                timing=schema.timing_columns(
                    rollout=t1 - t0, update=t_update, probe=t_probe, step=step_seconds, n_tokens=cfg.samples
                ),
                extra=exact_columns(exact_sums),
            )
        )
        updates.extend({"step": step, **r} for r in rows)
    return pd.DataFrame(steps), pd.DataFrame(updates)


def run_config(cfg: DynamicsConfig) -> dict:
    """The nested ``{section: {key: value}}`` config written to ``run.json``."""
    return {
        "algo": {"eps_low": cfg.eps_low, "eps_high": cfg.eps_high, "dual_clip_c": None,
                 "adv_norm": "none", "loss_agg": "seq-mean-token-mean"},
        "reward": {"kind": REWARD_KINDS[cfg.reward], "p": 0.5},
        "train": {"seed": cfg.seed, "steps": cfg.steps, "ppo_epochs": cfg.epochs,
                  "minibatches": cfg.minibatches, "rollout_samples": cfg.samples},
        "rollout": {"n": cfg.group_size, "temperature": 1.0, "max_new_tokens": 1},
        "optim": {"lr": cfg.lr, "optimizer": cfg.optimizer},
        "model": {"path": f"tabular-softmax:{cfg.actions}"},
        "simulate": asdict(cfg),
        "log": {"clip_probe_every": cfg.probe_every},
    }


def write_run(run_dir: Path, cfg: DynamicsConfig, steps: pd.DataFrame, updates: pd.DataFrame) -> Path:
    """Write one simulated run as a clipctl run directory (replacing earlier parts there)."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        for table in ("steps", "updates"):
            folder = run_dir / table
            if folder.is_dir():  # a re-run may have fewer steps: stale parts must go
                for old in folder.glob("step-*.parquet"):
                    old.unlink()
        meta = {
            "name": run_dir.name,
            "preset": "simulate",
            "seed": cfg.seed,
            "config": run_config(cfg),
            "command": ["clipctl", "simulate", "dynamics"],
            "start_time": dt.datetime.now().isoformat(timespec="seconds"),
        }
        writer = RunWriter(extra=("simulated",))
        writer.meta(run_dir, meta)
        last = int(steps["step"].max())
        writer.part(run_dir, "updates", last, updates.to_dict("records"))
        writer.part(run_dir, "steps", last, steps.to_dict("records"))
    except OSError as e:
        raise SimulateError(f"cannot write run directory {run_dir}: {e.strerror or e}; choose a writable --out") from None
    return run_dir


def _check_ours(run_dir: Path) -> None:
    """``run_dir`` is new or a run this simulator wrote: never overwrite a training run's run.json."""
    meta_path = run_dir / "run.json"
    if not run_dir.exists():
        return
    if (run_dir / "checkpoints").exists():
        made_by = "has checkpoints/"
    elif meta_path.is_file():
        try:
            preset = json.loads(meta_path.read_text()).get("preset")
        except (OSError, ValueError, AttributeError):
            preset = "unreadable"
        if preset == "simulate":
            return
        made_by = f"its run.json says preset {preset!r}"
    elif any(f.name != LOCK_NAME for f in run_dir.iterdir()):  # a killed simulation may leave its .lock
        made_by = "it holds files but no run.json"
    else:
        return
    raise SimulateError(
        f"{run_dir} is not a simulated run ({made_by}), and simulate would replace it; "
        "choose another out folder (--out) or move that run away"
    )


def dynamics_configs(
    grid: Sequence[tuple[float, float]] = DEFAULT_GRID, seeds: int = 4, base: Optional[DynamicsConfig] = None
) -> list[DynamicsConfig]:
    """The checked config of every (clip setting, seed) of ``run_dynamics``: seeds ``base.seed ..``."""
    base = base or DynamicsConfig()
    if seeds < 1:
        raise SimulateError(f"seeds={seeds} must be at least 1")
    configs = [
        DynamicsConfig(**{**asdict(base), "eps_low": lo, "eps_high": hi, "seed": base.seed + s})
        for lo, hi in grid
        for s in range(seeds)
    ]
    for cfg in configs:
        validate(cfg)
    return configs


def run_dynamics(
    out: Path,
    *,
    grid: Sequence[tuple[float, float]] = DEFAULT_GRID,
    seeds: int = 4,
    base: Optional[DynamicsConfig] = None,
    on_run: Optional[Callable[[Path], None]] = None,
) -> list[Path]:
    """Simulate every (clip setting, seed) and write one run directory each under ``out``.

    Each run directory is locked (``rundir.RunLock``) from before the first simulation to
    the last write, and one that a training run (or anything but this simulator) made is
    refused before anything is written.
    """
    configs = dynamics_configs(grid, seeds, base)
    run_dirs = [Path(out) / run_name(cfg) for cfg in configs]
    seen: set[Path] = set()
    for cfg, run_dir in zip(configs, run_dirs):
        if run_dir in seen:  # one folder, two runs: the second would replace the first
            raise SimulateError(
                f"grid has {_num(cfg.eps_low)}/{_num(cfg.eps_high)} more than once (runs named {run_dir.name}); "
                "give each eps_low/eps_high setting once"
            )
        seen.add(run_dir)

    try:  # a file or a read-only place fails before any simulation
        ensure_output_dir(out, "--out")
    except ClipctlError as e:
        raise SimulateError(f"cannot write run directory: {e}") from None
    for run_dir in run_dirs:  # all before the first lock file is made in any of them
        _check_ours(run_dir)
    created: list[Path] = []
    try:
        with contextlib.ExitStack() as held:
            for run_dir in run_dirs:
                created += ensure_output_dir(run_dir, "--out")
                held.enter_context(RunLock(run_dir, "simulate dynamics"))
                _check_ours(run_dir)  # again under the lock: a training run may have started meanwhile
            paths = []
            for cfg, run_dir in zip(configs, run_dirs):
                steps, updates = simulate_run(cfg)
                paths.append(write_run(run_dir, cfg, steps, updates))
                if on_run:
                    on_run(run_dir)
    except BaseException:
        for folder in reversed(created):  # after the lock files are gone: only still-empty folders go
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
    return paths
