"""Group-relative, outcome-level advantages (docs/definitions.md section 3).

GRPO samples ``G`` responses per prompt; each response's advantage is its
reward relative to the other responses of the same prompt, broadcast to every
token of the response by the caller.
"""

from __future__ import annotations

from typing import Callable

import torch

GROUP_STD_EPS = 1e-6


def _centered(grouped: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO (the paper's choice): ``A_i = r_i - mean_j r_j``."""
    return grouped - grouped.mean(dim=1, keepdim=True)


def _group_std(grouped: torch.Tensor) -> torch.Tensor:
    """Original GRPO: ``A_i = (r_i - mean) / (std + 1e-6)``, unbiased ``std``."""
    centered = _centered(grouped)
    if grouped.shape[1] < 2:
        # The unbiased std of one sample is undefined; a single response has no
        # group to compare with, so its centred advantage (0) is kept.
        return centered
    std = grouped.std(dim=1, unbiased=True, keepdim=True)
    return centered / (std + GROUP_STD_EPS)


ADV_NORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": _centered,
    "group_std": _group_std,
}


def group_advantages(rewards: torch.Tensor, group_size: int, norm: str = "none") -> torch.Tensor:
    """Advantages of ``N = P * G`` responses stored group by group.

    Args:
        rewards: ``[N]`` scalar reward per response; responses ``g*G .. g*G+G-1``
            belong to prompt ``g``.
        group_size: ``G``, responses per prompt.
        norm: ``"none"`` (Dr. GRPO) or ``"group_std"`` (GRPO), see ``ADV_NORMS``.

    Returns:
        ``[N]`` float tensor of advantages (same dtype as ``rewards`` if floating).
    """
    if norm not in ADV_NORMS:
        raise ValueError(f"unknown advantage norm {norm!r}; valid: {', '.join(ADV_NORMS)}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"number of rewards ({rewards.numel()}) must be a multiple of group_size ({group_size})"
        )
    if not rewards.is_floating_point():
        rewards = rewards.float()
    grouped = rewards.view(-1, group_size)
    return ADV_NORMS[norm](grouped).reshape(-1)


def zero_std_group_frac(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Share of groups whose rewards are all equal (their advantages are all 0)."""
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"number of rewards ({rewards.numel()}) must be a multiple of group_size ({group_size})"
        )
    grouped = rewards.view(-1, group_size)
    same = (grouped == grouped[:, :1]).all(dim=1)
    return same.float().mean()
