"""The logged tables' columns (name, dtype, unit, meaning) and the step-level clip statistics, without torch.

``TABLES`` holds every column of the steps, updates, samples and tokens tables
(and the simulator's extra ``*_exact`` columns); docs/metrics.md is generated
from it (``python -m clipctl.schema > docs/metrics.md``).

The names here are what the trainer and the simulator write and what
``clipctl.analysis`` reads. Importing this module
loads neither torch nor any other part of clipctl, so analysis of finished
runs starts fast. Definitions: docs/definitions.md sections 6-8, columns:
docs/metrics.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

# Additive quantities produced per update minibatch (``clipctl.algo.clip_stat_sums``);
# all float64 scalars. Counts are of sampled tokens (pi_old measure); ``*wsum*`` are
# ratio-weighted (pi_k measure).
SUM_KEYS = (
    "n_tokens",         # valid tokens
    "n_below",          # ratio_below: r < 1 - eps_low        (region X)
    "n_above",          # ratio_above: r > 1 + eps_high       (region Y)
    "n_clip_low",       # ratio_below and A < 0
    "n_clip_high",      # ratio_above and A > 0
    "n_dual_clip",      # A < 0 and r > c
    "n_cov_low",        # covariance selection (clip_cov, kl_cov), A < 0
    "n_cov_high",       # covariance selection, A > 0
    "w_sum",            # sum over valid tokens of r_t
    "w_sum_below",      # sum over X of r_t
    "w_sum_above",      # sum over Y of r_t
    "qdev_wsum_below",  # sum over X of r_t (E[Q|s_t] - Q_t), Q_t = pi(y_t) (log pi(y_t) + H_t)
    "qdev_wsum_above",  # sum over Y of r_t (E[Q|s_t] - Q_t)
    "gap_wsum_below",   # sum over X of r_t (-log pi(y_t) - H_t)
    "gap_wsum_above",   # sum over Y of r_t (-log pi(y_t) - H_t)
)

# Clip fractions and Theorem 1/2 brackets, in the steps and updates tables.
STAT_KEYS = (
    "clip_low_frac",
    "clip_high_frac",
    "dual_clip_frac",
    "cov_low_frac",
    "cov_high_frac",
    "ratio_below_frac",
    "ratio_above_frac",
    "thm1_low",
    "thm1_high",
    "thm2_low",
    "thm2_high",
    "thm1_drift",
    "thm2_drift",
)

# Clip-probe columns of the steps table (docs/definitions.md section 8; NaN on
# steps that are not probed).
PROBE_KEYS = (
    "entropy_post_replay",
    "entropy_post_noclip",
    "entropy_post_lowonly",
    "entropy_post_highonly",
    "clip_attributed_dH",
    "clip_low_attributed_dH",
    "clip_high_attributed_dH",
    "clip_low_alone_dH",
    "clip_high_alone_dH",
    "clip_interaction_dH",
    "probe_noise",
    "probe_noise_sd",
)


def unprobed_columns() -> dict[str, float]:
    """The clip-probe columns (``PROBE_KEYS``) of a step that is not probed: all NaN."""
    return dict.fromkeys(PROBE_KEYS, math.nan)


def knob_columns(
    eps_low: float, eps_high: float, entropy_coef: float, entropy_target: float | None = None
) -> dict[str, float]:
    """The steps-table columns of the knobs a step trained with; ``entropy_target`` NaN when no controller runs."""
    return {
        "eps_low": eps_low,
        "eps_high": eps_high,
        "entropy_coef": entropy_coef,
        "entropy_target": math.nan if entropy_target is None else entropy_target,
    }


# The steps row in groups, each made by one builder below (or by the caller, for the
# batch's reward/length columns); ``steps_row`` joins them in this order.
ENTROPY_KEYS = ("entropy", "entropy_token_mean", "entropy_post", "entropy_post_token_mean")
BATCH_KEYS = (
    "rollout_logprob_diff_mean", "rollout_logprob_diff_max", "reward_mean", "reward_std", "accuracy",
    "zero_std_group_frac", "adv_abs_mean", "response_length_mean", "response_length_max", "truncated_frac", "n_tokens",
)
# p and q pooled over the step's off-policy updates only: every update but the first
# minibatch of the first epoch, whose ratio is exactly 1 (its X and Y are empty).
OFF_POLICY_KEYS = ("ratio_below_frac_offpolicy", "ratio_above_frac_offpolicy")
TOTALS_KEYS = (*STAT_KEYS, *OFF_POLICY_KEYS, "loss", "approx_kl", "grad_norm", "skipped_updates")
KNOB_KEYS = ("eps_low", "eps_high", "entropy_coef", "entropy_target")
TIMING_KEYS = ("rollout_seconds", "update_seconds", "probe_seconds", "step_seconds", "tokens_per_second")


def entropy_columns(pre: float, pre_token_mean: float, post: float, post_token_mean: float) -> dict[str, float]:
    """Eq. 4 and token-mean entropy before the step's updates (``pi_old``) and after them (NaN when not measured)."""
    return dict(zip(ENTROPY_KEYS, (pre, pre_token_mean, post, post_token_mean)))


def timing_columns(*, rollout: float, update: float, probe: float, step: float, n_tokens: float) -> dict[str, float]:
    """Wall times of the step's phases (seconds) and its throughput in response tokens per second."""
    return {
        "rollout_seconds": rollout, "update_seconds": update, "probe_seconds": probe, "step_seconds": step,
        "tokens_per_second": n_tokens / step if step > 0 else math.nan,
    }


def _group(name: str, values: Mapping, keys: tuple[str, ...]) -> Mapping:
    if tuple(values) != keys and set(values) != set(keys):
        raise RowError(
            f"steps row: the {name} columns are {sorted(values)}, expected {sorted(keys)} (clipctl.schema)"
        )
    return values


def steps_row(
    step: int, *, entropy: Mapping[str, float], batch: Mapping[str, float], totals: Totals,
    knobs: Mapping[str, float], probe: Mapping[str, float], lr: float, n_updates: int, update_tokens: float,
    timing: Mapping[str, float], extra: Mapping[str, float] | None = None,
) -> dict:
    """The one builder of a steps-table row, for trainer and simulator alike.

    Each argument is one group of columns (``entropy_columns``, ``BATCH_KEYS``,
    ``Totals.metrics``, ``knob_columns``, the probe's ``PROBE_KEYS`` or
    ``unprobed_columns``, ``timing_columns``); a group with a missing or
    unknown column raises ``RowError`` here. ``extra``: the simulator's
    ``*_exact`` columns.
    """
    return {
        "step": step,
        **_group("entropy", entropy, ENTROPY_KEYS),
        **totals.metrics(),
        **_group("probe", probe, PROBE_KEYS),
        **_group("batch", batch, BATCH_KEYS),
        "lr": lr,
        "n_updates": n_updates,
        **_group("knob", knobs, KNOB_KEYS),
        "update_tokens": update_tokens,
        **_group("timing", timing, TIMING_KEYS),
        **(extra or {}),
    }


def empty_sums() -> dict[str, float]:
    """The statistic sums of no tokens (every fraction and mean of them is NaN)."""
    return dict.fromkeys(SUM_KEYS, 0.0)


def update_row(
    epoch: int, minibatch: int, update: int, lr: float, *, loss: float, kl_sum: float, grad_norm: float,
    sums: Mapping[str, float], extra: Mapping[str, float] | None = None,
) -> dict:
    """One updates-table row (without ``step``): one optimizer step's loss, k3 KL, gradient norm,
    clip statistics and their sums; ``extra``: the simulator's ``*_exact`` columns."""
    n_tok = sums["n_tokens"]
    return {
        "epoch": epoch, "minibatch": minibatch, "update": update, "lr": lr,
        "loss": loss, "approx_kl": kl_sum / n_tok if n_tok else math.nan, "grad_norm": grad_norm,
        **finalize_clip_stats(sums), **(extra or {}), **sums, "skipped": False,
    }


def skipped_update_row(epoch: int, minibatch: int, update: int, lr: float) -> dict:
    """The row of an optimizer step dropped for a non-finite loss or gradient: nothing was measured."""
    none = empty_sums()
    return {
        "epoch": epoch, "minibatch": minibatch, "update": update, "lr": lr,
        "loss": math.nan, "approx_kl": math.nan, "grad_norm": math.nan,
        **finalize_clip_stats(none), **none, "skipped": True,
    }


@dataclass
class Totals:
    """The one accumulator of update quantities: loss, k3 KL sum, gradient norm and the statistic sums.

    Only ``+`` touches the values, so the same class adds a minibatch's
    micro-batches on the device (0-d tensors; ``trainer.batch.to_host`` reads
    them back in one copy) and a step's optimizer steps on the host (floats).
    ``count`` is how many pieces were added (optimizer steps, for a step).
    """

    loss: Any = 0.0
    kl_sum: Any = 0.0
    grad_norm: Any = 0.0
    sums: dict | None = None
    count: int = 0
    skipped: int = 0  # optimizer steps dropped for a non-finite loss or gradient (train.on_nonfinite=skip)
    off_sums: dict | None = None  # the sums of the off-policy pieces only (``add(..., on_policy=False)``)

    def add(self, loss, kl_sum, sums: Mapping, grad_norm=0.0, *, on_policy: bool = True) -> None:
        """Add one piece; ``on_policy=False`` (an update after the step's first) also adds its sums to ``off_sums``."""
        self.loss = self.loss + loss
        self.kl_sum = self.kl_sum + kl_sum
        self.grad_norm = self.grad_norm + grad_norm
        self.sums = _add(self.sums, sums)
        if not on_policy:
            self.off_sums = _add(self.off_sums, sums)
        self.count += 1

    def metrics(self) -> dict:
        """Step metrics: loss and gradient norm averaged over optimizer steps, KL and fractions over
        tokens; NaN where nothing was measured (every update skipped)."""
        sums = self.sums if self.sums is not None else empty_sums()
        off = finalize_clip_stats(self.off_sums if self.off_sums is not None else empty_sums())
        n_tok, n = sums["n_tokens"], self.count
        return {
            **finalize_clip_stats(sums),
            "ratio_below_frac_offpolicy": off["ratio_below_frac"],
            "ratio_above_frac_offpolicy": off["ratio_above_frac"],
            "loss": self.loss / n if n else math.nan,
            "approx_kl": self.kl_sum / n_tok if n_tok else math.nan,
            "grad_norm": self.grad_norm / n if n else math.nan,
            "skipped_updates": self.skipped,
        }


def _add(total: dict | None, sums: Mapping) -> dict:
    return dict(sums) if total is None else {k: total[k] + sums[k] for k in sums}


def _div(num: float, den: float) -> float:
    # An empty region has no conditional mean: NaN, never 0 (docs/definitions.md section 7).
    return num / den if den > 0 else math.nan


def finalize_clip_stats(sums: Mapping[str, float]) -> dict[str, float]:
    """Fractions and Theorem 1/2 brackets (``STAT_KEYS``) from additive sums (``SUM_KEYS``).

    ``sums`` may hold floats or scalar tensors. With ``W``, ``W_X``, ``W_Y`` the
    ratio-weight sums (all tokens, X, Y):

    - ``clip_*_frac = n_clip_* / n_tokens``: plain shares of sampled tokens
      (the share of the loss's tokens whose gradient a clip zeroed);
    - ``ratio_below_frac = W_X / W`` and ``ratio_above_frac = W_Y / W``:
      estimates of ``p = P_k(X)`` and ``q = P_k(Y)``;
    - ``thm1_low = sum_X r (E[Q|s] - Q) / W_X`` (estimates ``E[Q] - E[Q|X]``),
      ``thm1_high`` the same over Y;
    - ``thm2_low = sum_X r (-log pi - H) / W_X`` (estimates ``E[-log pi|X] - H``),
      ``thm2_high`` the same over Y;
    - ``thmK_drift = ratio_below_frac * thmK_low - ratio_above_frac * thmK_high``,
      with an empty region's term counted as 0 (its probability is 0) and NaN
      only when there are no valid tokens at all.
    """
    s = {k: float(sums[k]) for k in SUM_KEYS}
    n, w = s["n_tokens"], s["w_sum"]
    p_below = _div(s["w_sum_below"], w) if n > 0 else math.nan
    p_above = _div(s["w_sum_above"], w) if n > 0 else math.nan
    out = {
        "clip_low_frac": _div(s["n_clip_low"], n),
        "clip_high_frac": _div(s["n_clip_high"], n),
        "dual_clip_frac": _div(s["n_dual_clip"], n),
        "cov_low_frac": _div(s["n_cov_low"], n),
        "cov_high_frac": _div(s["n_cov_high"], n),
        "ratio_below_frac": p_below,
        "ratio_above_frac": p_above,
        "thm1_low": _div(s["qdev_wsum_below"], s["w_sum_below"]) if s["n_below"] > 0 else math.nan,
        "thm1_high": _div(s["qdev_wsum_above"], s["w_sum_above"]) if s["n_above"] > 0 else math.nan,
        "thm2_low": _div(s["gap_wsum_below"], s["w_sum_below"]) if s["n_below"] > 0 else math.nan,
        "thm2_high": _div(s["gap_wsum_above"], s["w_sum_above"]) if s["n_above"] > 0 else math.nan,
    }
    for thm in ("thm1", "thm2"):
        low = p_below * out[f"{thm}_low"] if s["n_below"] > 0 else 0.0
        high = p_above * out[f"{thm}_high"] if s["n_above"] > 0 else 0.0
        out[f"{thm}_drift"] = (low - high) if n > 0 else math.nan
    return out


# ---------------------------------------------------------------- table columns
#
# Every column of every logged table: name, dtype (of the column as read back
# with ``clipctl.runlog.read_run``), unit and meaning. docs/metrics.md is
# generated from these records (``python -m clipctl.schema > docs/metrics.md``)
# and tests/test_schema.py checks that it is up to date. Order is reading
# order, not the order of the columns in the Parquet files.


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # "float64", "int64", "bool" or "string"
    unit: str  # "nats", "fraction", "seconds", "tokens", "tokens/s" or "" (a count, an index, a text, ...)
    meaning: str


@dataclass(frozen=True)
class Table:
    name: str
    title: str  # the heading's parenthesis in docs/metrics.md
    columns: tuple[Column, ...]
    before: str = ""  # prose between the heading and the column table
    after: str = ""  # prose after the column table

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


PAGE_INTRO = """\
Every column that `clipctl train` writes, by table. Definitions follow
[definitions.md](definitions.md) (section numbers in brackets). This page is
generated from `src/clipctl/schema.py` (`python -m clipctl.schema > docs/metrics.md`);
tests check that it is up to date (`tests/test_schema.py`) and that it and the
Parquet schema list the same columns (`tests/test_metrics_doc.py`). Type is the
column's dtype as read back with `read_run`.
"Step-level" clip and theory values pool every update minibatch of the step:
their additive sums (see the `updates` table) are added, then divided, so a
conditional mean is weighted by the size of its region, not averaged as a mean
of means. Read any table with `clipctl.runlog.read_run(path)`.
The files behind each table (per-step parts merged into segments at each
checkpoint) are described in [run-directory.md](run-directory.md), "The run log";
`log.trackers` mirrors every numeric `steps` column to TensorBoard or W&B
("Live trackers" there).
"""

_UPDATES_AFTER = """\
The `n_*`, `w_sum*`, `qdev_wsum*` and `gap_wsum*` columns are additive:
summing them over any set of minibatches (or ranks) and applying
`clipctl.schema.finalize_clip_stats` gives that set's pooled statistics. Runs
written before the ratio-weighted estimators have `q_sum*`/`gap_sum*` columns
instead; their `thm*` and `ratio_*_frac` columns are the unweighted versions
described below, and `combine_updates` refuses them.

### How the theorem statistics are estimated

Theorems 1 and 2 are statements about the policy being updated, `pi_k`: the
region probabilities `p = P(X)`, `q = P(Y)` and every conditional expectation
are taken over actions drawn from `pi_k` at each state. The tokens of a
minibatch were drawn from `pi_old`, so a plain average over them answers a
different question, and a biased one: tokens in X have `r < 1 - eps_low`
(`pi_k` gives them less mass than `pi_old` did) and tokens in Y have
`r > 1 + eps_high`, so plain shares overstate `p` and understate `q`.
Each valid token is therefore weighted by its ratio
`r_t = exp(log pi_k(y_t) - log pi_old(y_t))` (the same clamped log-ratio the
loss uses), and every mean is self-normalised by the weights it uses:
`W = sum r_t` over all valid tokens, `W_X`, `W_Y` over X and Y. Then
`ratio_below_frac = W_X / W` estimates `p`, and `sum_X r_t f_t / W_X`
estimates `E_k[f | X]`.

Theorem 1 compares `Q(a) = pi(a)(log pi(a) + H)` with its mean at the same
state, `E[Q|s] = sum_a pi(a)^2 (log pi(a) + H(s))`. clipctl computes that
mean exactly per token position, in the same pass over the vocabulary as the
entropy (`token_entropy(..., with_expected_q=True)`, `fused_logprobs_entropy(...,
with_expected_q=True)`), and passes it to `clip_stat_sums(..., expected_q=...)`.
When a caller does not pass it, each token is centred instead on the
ratio-weighted mean of `Q_t` over all tokens of that call (`pooled_expected_q`),
an average over states: exact when every token comes from one state, only an
approximation otherwise. Theorem 2 needs no extra input, since
`E[-log pi | s] = H(s)` is already per state.

The clip-event fractions (`clip_low_frac`, `clip_high_frac`,
`dual_clip_frac`) stay plain shares of sampled tokens: they count how many of
the tokens the loss actually averaged over had their gradient zeroed, which
is a property of the batch, not an expectation under `pi_k`, and it is the
number other trainers report. The unweighted estimator (every weight 1, i.e.
the brackets under `pi_old`) is available as
`clip_stat_sums(..., importance_weighted=False)` for comparisons with older
runs; it is not logged.
"""

_SIMULATED_BEFORE = """\
The tabular simulation knows the whole policy, so next to each estimator it
logs the exact value of the quantity that estimator targets, pooled over the
step's minibatches in the same way (per minibatch, the exact brackets under
that minibatch's `pi_k`; pooled with weight = the minibatch's token count).
"""

STEPS_COLUMNS = (
    Column("step", "int64", "", "1-based step number (one rollout batch of `P` prompts x `G` responses)"),
    Column(
        "entropy", "float64", "nats",
        "Eq. 4 under `pi_old`: mean over responses of the per-response mean token entropy, nats [5]",
    ),
    Column("entropy_token_mean", "float64", "nats", "token-weighted mean of the same token entropies [5]"),
    Column(
        "entropy_post", "float64", "nats",
        "Eq. 4 on the same batch after the step's last update (NaN if `log.entropy_post = false`) [5]",
    ),
    Column("entropy_post_token_mean", "float64", "nats", "token-weighted version of `entropy_post`"),
    Column(
        "clip_low_frac", "float64", "fraction",
        "share of valid sampled tokens with `r < 1 - eps_low` and `A < 0` (gradient zeroed by clip-low), "
        "pooled over the step's updates; a plain count, not ratio-weighted (see below) [6]",
    ),
    Column("clip_high_frac", "float64", "fraction", "share with `r > 1 + eps_high` and `A > 0` [6]"),
    Column(
        "dual_clip_frac", "float64", "fraction",
        "share with `A < 0` and `r > c` (0 when dual clip is off); for `dppo_tv` / `dppo_kl`, kept tokens of "
        "either sign whose IS weight was capped at `c` [6]",
    ),
    Column(
        "cov_low_frac", "float64", "fraction",
        "share of valid tokens a covariance selection treated with `A < 0` (`clip_cov`: detached; `kl_cov`: "
        "penalised); not ratio-triggered, so outside the regions and brackets; 0 for the other losses [6]",
    ),
    Column("cov_high_frac", "float64", "fraction", "the same with `A > 0` [6]"),
    Column(
        "ratio_below_frac", "float64", "fraction",
        "estimate of `p = P(X)` under the current policy `pi_k`: `W_X / W`, the ratio-weighted mass of region"
        " X (`r < 1 - eps_low`) [6, 7]",
    ),
    Column(
        "ratio_above_frac", "float64", "fraction",
        "estimate of `q = P(Y)` under `pi_k`: `W_Y / W`, region Y (`r > 1 + eps_high`) [6, 7]",
    ),
    Column(
        "thm1_low", "float64", "",
        "estimate of `E[Q] - E[Q|X]` under `pi_k`: `sum_X r_t (E[Q|s_t] - Q_t) / W_X`, `Q_t = pi(y_t)(log "
        "pi(y_t) + H_t)`; NaN if X is empty [7]",
    ),
    Column("thm1_high", "float64", "", "the same over Y: `sum_Y r_t (E[Q|s_t] - Q_t) / W_Y`; NaN if Y is empty [7]"),
    Column(
        "thm2_low", "float64", "nats",
        "estimate of `E[-log pi|X] - H`: `sum_X r_t (-log pi(y_t) - H_t) / W_X`; NaN if X is empty [7]",
    ),
    Column("thm2_high", "float64", "nats", "the same over Y; NaN if Y is empty [7]"),
    Column(
        "thm1_drift", "float64", "",
        "`ratio_below_frac * thm1_low - ratio_above_frac * thm1_high`; an empty region's term is 0 (its "
        "probability is 0) [7]",
    ),
    Column(
        "thm2_drift", "float64", "nats",
        "`ratio_below_frac * thm2_low - ratio_above_frac * thm2_high`, same convention [7]",
    ),
    Column(
        "ratio_below_frac_offpolicy", "float64", "fraction",
        "`ratio_below_frac` pooled over the step's off-policy updates only: all but minibatch 0 of epoch 0, "
        "whose ratio is exactly 1 (X, Y empty there) and which would dilute `p` by its share of the weight; "
        "NaN when the step has no off-policy update [6, 7]",
    ),
    Column(
        "ratio_above_frac_offpolicy", "float64", "fraction",
        "`ratio_above_frac` (`q`) pooled over the same off-policy updates [6, 7]",
    ),
    Column(
        "entropy_post_replay", "float64", "nats",
        "Eq. 4 after replaying the step's updates from the same start with the run's own clip settings (and "
        "dual clip): the real step again; NaN on steps not probed [8]",
    ),
    Column(
        "entropy_post_noclip", "float64", "nats",
        "Eq. 4 after replaying the step's updates from the same start with `eps_low = 1`, `eps_high = inf`, "
        "no dual clip; NaN on steps not probed [8]",
    ),
    Column(
        "entropy_post_lowonly", "float64", "nats",
        "the same replay with the run's `eps_low` and `eps_high = inf` [8]",
    ),
    Column(
        "entropy_post_highonly", "float64", "nats",
        "the same replay with `eps_low = 1` and the run's `eps_high` [8]",
    ),
    Column(
        "clip_attributed_dH", "float64", "nats",
        "`entropy_post_replay - entropy_post_noclip`: entropy change caused by clipping on this step (replay "
        "minus replay, like all the changes below) [8]",
    ),
    Column(
        "clip_low_attributed_dH", "float64", "nats",
        "clip-low's additive (Shapley) share of `clip_attributed_dH`: `((lowonly - noclip) + (replay - "
        "highonly)) / 2` of the `entropy_post_*` replays; with `clip_high_attributed_dH` it sums to "
        "`clip_attributed_dH` exactly [8]",
    ),
    Column(
        "clip_high_attributed_dH", "float64", "nats",
        "clip-high's share: `((highonly - noclip) + (replay - lowonly)) / 2` [8]",
    ),
    Column(
        "clip_low_alone_dH", "float64", "nats",
        "`entropy_post_lowonly - entropy_post_noclip`: clip-low with clip-high off (before issue 27 this was "
        "`clip_low_attributed_dH`) [8]",
    ),
    Column("clip_high_alone_dH", "float64", "nats", "`entropy_post_highonly - entropy_post_noclip` [8]"),
    Column(
        "clip_interaction_dH", "float64", "nats",
        "`clip_attributed_dH - clip_low_alone_dH - clip_high_alone_dH`: what the two clips do together beyond "
        "their one-sided effects [8]",
    ),
    Column(
        "probe_noise", "float64", "nats",
        "`entropy_post - entropy_post_replay`: how far a replay of the same step lands from the real one "
        "(non-deterministic kernels, e.g. GPU atomics); exactly 0 on a CPU. The replays share the real "
        "step's first update, so its noise is in neither; NaN with `log.probe_repeats = 0` (the real step "
        "stands in for the replay) [8]",
    ),
    Column(
        "probe_noise_sd", "float64", "nats",
        "sample standard deviation of `entropy_post_replay` over `log.probe_repeats` runs of the identity "
        "replay (all from the same shared start): the noise floor of each replay, hence of every attributed "
        "change (a difference of two replays: about `sqrt(2)` times it); NaN when `probe_repeats` is 0 or 1, "
        "0 on a CPU [8]",
    ),
    Column(
        "rollout_logprob_diff_mean", "float64", "nats",
        "mean over sampled tokens of abs(engine log-prob - trainer's `log pi_old`); NaN for engines that "
        "report none (`hf` samples with the trainer's own model)",
    ),
    Column("rollout_logprob_diff_max", "float64", "nats", "the largest such difference"),
    Column("reward_mean", "float64", "", "mean reward over the batch's `P * G` responses [2]"),
    Column("reward_std", "float64", "", "population standard deviation of those rewards"),
    Column(
        "accuracy", "float64", "fraction",
        "share of responses with reward 1 for verifiable rewards (`gsm8k`, `math_verify`); NaN for random "
        "rewards",
    ),
    Column(
        "zero_std_group_frac", "float64", "fraction",
        "share of prompts whose `G` rewards are all equal (all advantages 0) [3]",
    ),
    Column("adv_abs_mean", "float64", "", "mean absolute advantage over responses [3]"),
    Column("response_length_mean", "float64", "tokens", "mean valid response length in tokens (EOS included)"),
    Column("response_length_max", "float64", "tokens", "longest valid response length in tokens"),
    Column("truncated_frac", "float64", "fraction", "share of responses that hit `max_new_tokens` without EOS"),
    Column("loss", "float64", "", "mean over the step's optimizer steps of the minibatch loss [4]"),
    Column(
        "approx_kl", "float64", "nats",
        "token mean of `r - 1 - log r` (k3 estimator of KL(pi_old ‖ pi_theta)) over the step's updates",
    ),
    Column(
        "grad_norm", "float64", "",
        "mean over the step's optimizer steps of the global gradient norm before clipping",
    ),
    Column("lr", "float64", "", "learning rate after the step's last optimizer step"),
    Column("n_updates", "int64", "", "optimizer steps in this step (`ppo_epochs * P / M`)"),
    Column(
        "eps_low", "float64", "",
        "the lower clip bound this step's updates used: the config's, or (with `algo.entropy_target`, clip"
        " controller) as set by the entropy controller from this step's `entropy`",
    ),
    Column("eps_high", "float64", "", "the upper clip bound this step's updates used: the config's"),
    Column(
        "entropy_coef", "float64", "",
        "the entropy-bonus coefficient this step's loss used (`loss - coef x entropy`): `algo.entropy_coef`, "
        "or the bonus controller's value (below 0, down to `algo.entropy_coef_min`: an entropy penalty)",
    ),
    Column(
        "entropy_target", "float64", "nats",
        "`algo.entropy_target` (nats, Eq. 4) when an entropy controller runs; NaN otherwise",
    ),
    Column(
        "update_tokens", "int64", "tokens",
        "tokens (prompt + response, padding excluded) through forward and backward in this step's updates, "
        "over all processes: `ppo_epochs x` the batch's tokens; with `update_seconds` it gives update "
        "throughput and MFU (`bench/gpu_check.py`)",
    ),
    Column(
        "skipped_updates", "int64", "",
        "optimizer steps of this step dropped because their loss or gradient norm was NaN/inf "
        '(`train.on_nonfinite = "skip"`; always 0 under `"stop"`, which ends the run instead). Loss, KL, '
        "gradient norm and clip statistics cover the applied updates only, and are NaN when none was applied",
    ),
    Column("n_tokens", "float64", "tokens", "valid response tokens in the batch"),
    Column("rollout_seconds", "float64", "seconds", "wall time of generation and rewards"),
    Column("update_seconds", "float64", "seconds", "wall time of the optimizer steps"),
    Column(
        "probe_seconds", "float64", "seconds",
        "wall time of the clip probe: its replays and their entropy measurements (0 on steps not probed)",
    ),
    Column("step_seconds", "float64", "seconds", "wall time of the whole step, logging excluded"),
    Column("tokens_per_second", "float64", "tokens/s", "`n_tokens / step_seconds`"),
)

UPDATES_COLUMNS = (
    Column("step", "int64", "", "training step"),
    Column("epoch", "int64", "", "PPO epoch within the step (0-based)"),
    Column(
        "minibatch", "int64", "",
        "minibatch within the epoch (0-based); minibatch 0 of epoch 0 is on-policy (ratio exactly 1)",
    ),
    Column("update", "int64", "", "optimizer step within the training step (0-based)"),
    Column("loss", "float64", "", "the minibatch loss (sum of its micro-batch losses) [4]"),
    Column("approx_kl", "float64", "nats", "token mean of `r - 1 - log r` on this minibatch"),
    Column("grad_norm", "float64", "", "global gradient norm before clipping"),
    Column(
        "skipped", "bool", "",
        'True when this optimizer step was dropped (`train.on_nonfinite = "skip"`): its loss, statistics and '
        "sums are NaN / 0, nothing was measured",
    ),
    Column("lr", "float64", "", "learning rate used by this optimizer step"),
    Column("clip_low_frac", "float64", "fraction", "as in `steps`, for this minibatch [6]"),
    Column("clip_high_frac", "float64", "fraction", "as in `steps`, for this minibatch [6]"),
    Column("dual_clip_frac", "float64", "fraction", "as in `steps`, for this minibatch [6]"),
    Column("cov_low_frac", "float64", "fraction", "as in `steps`, for this minibatch [6]"),
    Column("cov_high_frac", "float64", "fraction", "as in `steps`, for this minibatch [6]"),
    Column("ratio_below_frac", "float64", "fraction", "as in `steps`, for this minibatch [6]"),
    Column("ratio_above_frac", "float64", "fraction", "as in `steps`, for this minibatch [6]"),
    Column("thm1_low", "float64", "", "as in `steps`, for this minibatch [7]"),
    Column("thm1_high", "float64", "", "as in `steps`, for this minibatch [7]"),
    Column("thm2_low", "float64", "nats", "as in `steps`, for this minibatch [7]"),
    Column("thm2_high", "float64", "nats", "as in `steps`, for this minibatch [7]"),
    Column("thm1_drift", "float64", "", "as in `steps`, for this minibatch [7]"),
    Column("thm2_drift", "float64", "nats", "as in `steps`, for this minibatch [7]"),
    Column("n_tokens", "float64", "tokens", "valid tokens in the minibatch"),
    Column(
        "n_below", "float64", "tokens",
        "sampled tokens in region X (`r < 1 - eps_low`); `n_below / n_tokens` is the unweighted share",
    ),
    Column("n_above", "float64", "tokens", "sampled tokens in region Y (`r > 1 + eps_high`)"),
    Column("n_clip_low", "float64", "tokens", "tokens clipped low (X and `A < 0`)"),
    Column("n_clip_high", "float64", "tokens", "tokens clipped high (Y and `A > 0`)"),
    Column("n_dual_clip", "float64", "tokens", "tokens bounded by the dual clip"),
    Column("n_cov_low", "float64", "tokens", "tokens a covariance selection treated with `A < 0`"),
    Column("n_cov_high", "float64", "tokens", "tokens a covariance selection treated with `A > 0`"),
    Column("w_sum", "float64", "", "`W`: sum of the ratios `r_t` over valid tokens"),
    Column("w_sum_below", "float64", "", "`W_X`: sum of `r_t` over X"),
    Column("w_sum_above", "float64", "", "`W_Y`: sum of `r_t` over Y"),
    Column("qdev_wsum_below", "float64", "", "sum over X of `r_t (E[Q|s_t] - Q_t)`"),
    Column("qdev_wsum_above", "float64", "", "sum over Y of `r_t (E[Q|s_t] - Q_t)`"),
    Column("gap_wsum_below", "float64", "nats", "sum over X of `r_t (-log pi(y_t) - H_t)`"),
    Column("gap_wsum_above", "float64", "nats", "sum over Y of `r_t (-log pi(y_t) - H_t)`"),
)

SIMULATED_COLUMNS = (
    Column("ratio_below_frac_exact", "float64", "fraction", "exact `p = P_k(X)`"),
    Column("ratio_above_frac_exact", "float64", "fraction", "exact `q = P_k(Y)`"),
    Column("thm1_low_exact", "float64", "", "exact `E[Q] - E[Q|X]` under `pi_k`; NaN for an empty region"),
    Column("thm1_high_exact", "float64", "", "exact `E[Q] - E[Q|Y]` under `pi_k`; NaN for an empty region"),
    Column("thm2_low_exact", "float64", "nats", "exact `E[-log pi|X] - H`"),
    Column("thm2_high_exact", "float64", "nats", "exact `E[-log pi|Y] - H`"),
    Column(
        "thm1_drift_exact", "float64", "",
        "exact `p * low - q * high` of Theorem 1 (the theorems' bracket, without the factor `mu nu eta d(s)`)",
    ),
    Column("thm2_drift_exact", "float64", "nats", "exact `p * low - q * high` of Theorem 2, the same way"),
)

SAMPLES_COLUMNS = (
    Column("step", "int64", "", "training step"),
    Column("prompt_index", "int64", "", "row of the prompt in the source dataset"),
    Column("group", "int64", "", "prompt position in the step's batch"),
    Column("sample", "int64", "", "response index within its group"),
    Column("prompt", "string", "", "the prompt text fed to the model"),
    Column("response", "string", "", "the decoded response (special tokens removed)"),
    Column("gold", "string", "", "the gold answer (null when the dataset has none)"),
    Column("reward", "float64", "", "the response's reward"),
    Column("advantage", "float64", "", "its advantage"),
    Column("length", "int64", "tokens", "valid response tokens (EOS included)"),
    Column("truncated", "bool", "", "true when no EOS came within `max_new_tokens`"),
)

TOKENS_COLUMNS = (
    Column("step", "int64", "", "training step"),
    Column("row", "int64", "", "response row in the step's batch"),
    Column("position", "int64", "", "token position within the response"),
    Column("token_id", "int64", "", "the sampled token"),
    Column("logp_old", "float64", "nats", "its log-prob under `pi_old`"),
    Column("entropy", "float64", "nats", "the token entropy `H_t` under `pi_old`"),
    Column("advantage", "float64", "", "the response's advantage"),
    Column(
        "epoch", "int64", "",
        "PPO epoch of this row: each sampled token has one row per epoch (the pi_old columns above repeat)",
    ),
    Column(
        "update", "int64", "",
        "the optimizer step (`updates.update`) whose minibatch holds the token in this epoch; join on "
        "(`step`, `update`) for that update's `skipped` flag",
    ),
    Column(
        "logp_update", "float64", "nats",
        "`log pi_k(y_t)` the loss saw at that update (float32 in the trainer): "
        "`l_t = clamp(logp_update - logp_old, -20, 20)` and `r_t = exp(l_t)`, both in float32, give the ratio "
        "and so the clip events `r_t < 1 - eps_low`, `r_t > 1 + eps_high` (float32 bounds) with `advantage` [6]",
    ),
    Column(
        "entropy_update", "float64", "nats",
        "the token entropy `H_t` under `pi_k` at that update (the Thm 2 bracket's `H_t`) [7]",
    ),
)

TABLES = (
    Table("steps", "one row per training step", STEPS_COLUMNS),
    Table("updates", "one row per step, epoch and minibatch", UPDATES_COLUMNS, after=_UPDATES_AFTER),
    Table(
        "simulated",
        "extra columns of `clipctl simulate dynamics` runs, in both `steps` and `updates`",
        SIMULATED_COLUMNS,
        before=_SIMULATED_BEFORE,
    ),
    Table("samples", "every `log.samples_every` steps; one row per response", SAMPLES_COLUMNS),
    Table("tokens", "when `log.token_sample_rate > 0`; sampled valid tokens", TOKENS_COLUMNS),
)

TABLE = {t.name: t for t in TABLES}


def column_names(table: str) -> tuple[str, ...]:
    """The documented columns of ``table`` ("steps", "updates", "samples", "tokens" or "simulated")."""
    return TABLE[table].names


class RowError(ValueError):
    """A row that does not match its table's documented columns: a bug in the code that built it."""


def columns_of(table: str, extra: tuple[str, ...] = ()) -> tuple[Column, ...]:
    """The columns a writer must write for ``table``, plus those of the ``extra`` tables (e.g. "simulated")."""
    return tuple(c for t in (table, *extra) for c in TABLE[t].columns)


def _is(dtype: str, v) -> bool:
    # bool is an int in Python: a True in a float or int column is a bug, not a 1.
    if dtype == "float64":
        return isinstance(v, (float, int, np.floating, np.integer)) and not isinstance(v, (bool, np.bool_))
    if dtype == "int64":
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
    if dtype == "bool":
        return isinstance(v, (bool, np.bool_))
    return v is None or isinstance(v, str)  # string (a missing gold answer is null)


def arrow_table(table: str, rows: Sequence[Mapping], extra: tuple[str, ...] = ()):
    """``rows`` as a ``pyarrow.Table`` with the documented columns and dtypes of ``table``.

    Raises ``RowError`` naming the table, the row and the columns when a row
    lacks a column, has an undocumented one, or holds a value of another type,
    so a wrong row fails when it is written, not when it is read.
    """
    import pyarrow as pa

    cols = columns_of(table, extra)
    names = [c.name for c in cols]
    want = set(names)
    for i, row in enumerate(rows):
        if set(row) != want:
            missing, unexpected = sorted(want - set(row)), sorted(set(row) - want)
            raise RowError(
                f"{table} row {i}: missing columns {missing or 'none'}, undocumented columns {unexpected or 'none'} "
                f"(clipctl.schema lists every column)"
            )
        for c in cols:
            if not _is(c.dtype, row[c.name]):
                raise RowError(f"{table} row {i}: {c.name}={row[c.name]!r} is not {c.dtype}")
    types = {"float64": pa.float64(), "int64": pa.int64(), "bool": pa.bool_(), "string": pa.string()}
    arrow = pa.schema([pa.field(c.name, types[c.dtype]) for c in cols])
    return pa.Table.from_pydict({n: [row[n] for row in rows] for n in names}, schema=arrow)


def _cell(text: str) -> str:
    return text.replace("\n", " ")


def render_metrics_md() -> str:
    """docs/metrics.md: the page intro, then per table its heading, prose and column table."""
    out = ["# Logged columns", "", PAGE_INTRO.rstrip("\n"), ""]
    for t in TABLES:
        out += [f"## {t.name} ({t.title})", ""]
        if t.before:
            out += [t.before.rstrip("\n"), ""]
        out += ["| column | type | unit | meaning |", "|---|---|---|---|"]
        out += [f"| `{c.name}` | {c.dtype} | {c.unit} | {_cell(c.meaning)} |" for c in t.columns]
        out.append("")
        if t.after:
            out += [t.after.rstrip("\n"), ""]
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    sys.stdout.write(render_metrics_md())
