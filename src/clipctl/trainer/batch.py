"""Typed step data: the batch on the device, micro-batch plans, statistic accumulators.

``StepBatch`` is everything one step trains on, moved to the trainer's device
once: the rollout's token ids and masks, rewards, advantages and the old
log-probs / entropies. ``plan_micro_batches`` cuts a minibatch's rows into
forward/backward passes, either a fixed number of rows or a token budget
(padding included); each pass is trimmed to its own longest prompt and
response, so padding costs only what the pass needs. ``schema.Totals`` adds up
one optimizer step's loss, clip-statistic sums and KL on the device; they are
read back to the host once per optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from clipctl import algo, schema
from clipctl.rollout import RolloutBatch


@dataclass
class MicroBatch:
    """Rows of one forward/backward pass and the widths they are trimmed to."""

    rows: torch.Tensor  # [n] long, on the device
    prompt_width: int  # the last prompt_width prompt columns (prompts are left-padded)
    response_width: int  # the first response_width response columns (responses are right-padded)


@dataclass
class GlobalView:
    """The step's rows over all processes, on the host, in global order (the step's own rows in one process).

    Gathered once per step for the metrics and logs, never used for a forward pass.
    """

    rollout: RolloutBatch
    rewards: torch.Tensor  # [N]
    advantages: torch.Tensor  # [N]
    old_logp: torch.Tensor  # [N, Tr]

    @property
    def mask(self) -> torch.Tensor:
        return self.rollout.response_mask


@dataclass
class StepBatch:
    """One step's samples on the trainer's device (``N = P * G`` rows, prompt-major)."""

    rollout: RolloutBatch  # host copy: texts and ids for logs
    prompt_ids: torch.Tensor  # [N, Tp] left-padded
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor  # [N, Tr] right-padded
    response_mask: torch.Tensor
    prompt_lengths: list[int]  # host, for micro-batch plans
    response_lengths: list[int]
    rewards: torch.Tensor  # [N]
    advantages: torch.Tensor  # [N]
    old_logp: Optional[torch.Tensor] = None  # [N, Tr] log pi_old of the sampled tokens
    old_entropy: Optional[torch.Tensor] = None  # [N, Tr] H_t under pi_old
    view: Optional[GlobalView] = None  # set once pi_old's log-probs are known
    # Micro-batch plans by (lo, hi): a pure function of the lengths, so the
    # row indices reach the device once per step, not once per pass.
    _passes: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_rollout(cls, rollout: RolloutBatch, rewards: torch.Tensor, advantages: torch.Tensor, device) -> "StepBatch":
        return cls(
            rollout=rollout,
            prompt_ids=rollout.prompt_ids.to(device),
            prompt_mask=rollout.prompt_mask.to(device),
            response_ids=rollout.response_ids.to(device),
            response_mask=rollout.response_mask.to(device),
            prompt_lengths=rollout.prompt_mask.sum(-1).tolist(),
            response_lengths=rollout.response_mask.sum(-1).tolist(),
            rewards=rewards.to(device),
            advantages=advantages.to(device),
        )

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def n_tokens(self, lo: int, hi: int) -> int:
        """Valid response tokens of rows ``lo:hi`` (a host count: no device sync)."""
        return int(sum(self.response_lengths[lo:hi]))

    def micro_batches(self, lo: int, hi: int, *, rows_per_pass: int, tokens_per_pass: int) -> list[MicroBatch]:
        """The forward/backward passes over rows ``lo:hi`` (``plan_micro_batches``), made once per step."""
        key = (lo, hi, rows_per_pass, tokens_per_pass)
        if key not in self._passes:
            plans = plan_micro_batches(
                self.prompt_lengths, self.response_lengths, lo, hi,
                rows_per_pass=rows_per_pass, tokens_per_pass=tokens_per_pass,
            )
            device = self.response_ids.device
            self._passes[key] = [MicroBatch(torch.tensor(rows, device=device), wp, wr) for rows, wp, wr in plans]
        return self._passes[key]

    def model_inputs(self, mb: MicroBatch) -> tuple[dict, torch.Tensor]:
        """Model inputs of a micro-batch and its target tokens ``[n, response_width]``."""
        tp = self.prompt_ids.shape[1]
        p0, w = tp - mb.prompt_width, mb.response_width
        ids = torch.cat([self.prompt_ids[mb.rows, p0:], self.response_ids[mb.rows, :w]], dim=1)
        attn = torch.cat([self.prompt_mask[mb.rows, p0:], self.response_mask[mb.rows, :w]], dim=1)
        # Positions as generate() assigns them with left padding (trimmed columns are padding).
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        inputs = {"input_ids": ids, "attention_mask": attn, "position_ids": positions, "use_cache": False}
        return inputs, self.response_ids[mb.rows, :w]

    def take(self, t: torch.Tensor, mb: MicroBatch) -> torch.Tensor:
        """The micro-batch's rows of a ``[N]`` or ``[N, Tr]`` tensor (trimmed to its response width)."""
        return t[mb.rows] if t.dim() == 1 else t[mb.rows, : mb.response_width]


def plan_micro_batches(
    prompt_lengths: list[int],
    response_lengths: list[int],
    lo: int,
    hi: int,
    *,
    rows_per_pass: int,
    tokens_per_pass: int = 0,
) -> list[tuple[list[int], int, int]]:
    """Forward/backward passes over rows ``lo:hi`` as ``(rows, prompt_width, response_width)``.

    ``tokens_per_pass = 0``: consecutive runs of ``rows_per_pass`` rows. Otherwise
    rows are sorted by length (longest first, ties by row) and packed greedily
    while ``len(rows) * (prompt_width + response_width) <= tokens_per_pass``; a
    row longer than the budget gets a pass of its own. A pure function of the
    lengths, so the old log-probs and the updates use the same passes (ratio 1
    exactly on the first minibatch).
    """
    def widths(rows: list[int]) -> tuple[int, int]:
        return max(prompt_lengths[i] for i in rows), max(1, max(response_lengths[i] for i in rows))

    if tokens_per_pass <= 0:
        groups = [list(range(s, min(s + rows_per_pass, hi))) for s in range(lo, hi, rows_per_pass)]
        return [(g, *widths(g)) for g in groups]
    order = sorted(range(lo, hi), key=lambda i: (-(prompt_lengths[i] + response_lengths[i]), i))
    plans, current, wp, wr = [], [], 0, 0
    for i in order:
        np_, nr = max(wp, prompt_lengths[i]), max(wr, response_lengths[i], 1)
        if current and (len(current) + 1) * (np_ + nr) > tokens_per_pass:
            plans.append((current, wp, wr))
            current, np_, nr = [], prompt_lengths[i], max(1, response_lengths[i])
        current.append(i)
        wp, wr = np_, nr
    if current:
        plans.append((current, wp, wr))
    return plans


def to_host(totals: schema.Totals, grad_norm: torch.Tensor) -> tuple[float, float, dict[str, float], float]:
    """``(loss, kl_sum, sums, grad_norm)`` of a minibatch's device-side ``totals`` as Python floats: one copy."""
    keys = list(totals.sums)
    parts = [totals.loss, totals.kl_sum, *(totals.sums[k].double() for k in keys)]
    # The gradient norm joins the sums where they are (DeepSpeed reports it on the host).
    values = torch.stack([*parts, grad_norm.to(totals.loss.device, torch.float64)]).cpu().tolist()
    return values[0], values[1], dict(zip(keys, values[2:-1])), values[-1]


def k3_kl_sum(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over valid tokens of ``algo.k3_kl`` (the k3 estimator of KL(pi_old || pi_theta))."""
    k3 = algo.k3_kl(logp.detach(), old_logp)
    return torch.where(mask.bool(), k3, torch.zeros_like(k3)).sum().double()
