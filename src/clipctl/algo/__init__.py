"""Pure math of clipctl: advantages, the clipped loss, entropy, clip/theory statistics.

Functions here take tensors and a few floats (the clip bounds as one
``ClipSpec``); no config, no logging, no ``.item()`` in the hot path, no rank
logic. Each docstring names its section of docs/definitions.md.
"""

from clipctl.algo.advantages import ADV_NORMS, group_advantages, zero_std_group_frac
from clipctl.algo.control import CONTROLLERS, ControlSettings, control_output, control_step
from clipctl.algo.entropy import (
    sequence_mean_entropy,
    token_entropy,
    token_logprobs,
    token_logprobs_and_entropy,
    token_mean_entropy,
)
from clipctl.algo.fused_head import choose_tiles, fused_logprobs_entropy
from clipctl.algo.losses import (
    LOSS_AGGS,
    COV_LOSSES,
    POLICY_LOSSES,
    ClipEvents,
    PolicyLossOutput,
    agg_loss,
    k3_kl,
    log_ratio,
    policy_loss,
    vanilla_policy_loss,
)
from clipctl.algo.stats import (
    add_sums,
    agreeing_replays,
    attributed_entropy_changes,
    clip_probe,
    clip_stat_sums,
    pooled_expected_q,
    probe_replays,
    shares_first_update,
)
from clipctl.clip import ClipSpec, CovSpec  # the policy losses' argument

__all__ = [
    "CONTROLLERS",
    "ControlSettings",
    "control_output",
    "control_step",
    "ADV_NORMS",
    "LOSS_AGGS",
    "COV_LOSSES",
    "POLICY_LOSSES",
    "ClipEvents",
    "ClipSpec",
    "CovSpec",
    "PolicyLossOutput",
    "add_sums",
    "agreeing_replays",
    "attributed_entropy_changes",
    "probe_replays",
    "clip_probe",
    "shares_first_update",
    "agg_loss",
    "clip_stat_sums",
    "choose_tiles",
    "fused_logprobs_entropy",
    "group_advantages",
    "k3_kl",
    "log_ratio",
    "policy_loss",
    "pooled_expected_q",
    "vanilla_policy_loss",
    "sequence_mean_entropy",
    "token_entropy",
    "token_logprobs",
    "token_logprobs_and_entropy",
    "token_mean_entropy",
    "zero_std_group_frac",
]
