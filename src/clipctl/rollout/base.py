"""The rollout interface: prompts in, padded responses out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

import torch


@dataclass
class RolloutBatch:
    """``N = P * G`` sampled responses, stored group by group (prompt-major).

    prompt_ids / prompt_mask: ``[N, Tp]`` left-padded.
    response_ids / response_mask: ``[N, Tr]`` right-padded; the mask covers the
    generated tokens up to and including the first EOS.
    truncated: ``[N]`` True when no EOS was produced within ``max_new_tokens``.
    logprobs: ``[N, Tr]`` the engine's own log-probs of the sampled tokens, when
    it reports them (vLLM); the trainer never trains on them, it only logs how
    far they are from its recomputed ``log pi_old``.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    truncated: torch.Tensor
    response_text: list[str]
    logprobs: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.response_ids.shape[0]


@dataclass(frozen=True)
class SamplingParams:
    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int


class RolloutEngine(Protocol):
    """What the trainer needs from a generation engine."""

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> RolloutBatch:
        """Sample ``params.n`` responses for each prompt (token ids, no padding)."""

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from ``model``'s current weights."""


def pad_to(t: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
    """``t`` (``[rows, T]``) padded with ``value`` to ``width`` columns, on the left or the right."""
    extra = width - t.shape[1]
    if extra == 0:
        return t
    fill = torch.full((t.shape[0], extra), value, dtype=t.dtype)
    return torch.cat([fill, t] if left else [t, fill], dim=1)


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def response_masks(response_ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask, truncated)``: valid up to and including the first EOS."""
    is_eos = response_ids == eos_id
    # Count EOS tokens strictly before each position: valid while that is 0.
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    mask = (eos_before == 0).long()
    truncated = ~is_eos.any(dim=1)
    return mask, truncated
