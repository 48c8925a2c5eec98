"""The ``hf`` engine: batched ``model.generate`` on the trainer's own model.

Sampling is row-seeded: response ``r`` of a call draws its uniforms from a
counter-based generator keyed by ``(params.seed + r, token position)``, so what
a prompt's responses are does not depend on which other prompts share the
batch. That lets the trainer sample all of a step's prompts in one batched
call and still get the samples a per-prompt (or per-rank) call would give.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic is defined for numpy uint64)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def row_uniforms(row_seeds: np.ndarray, position: int) -> np.ndarray:
    """One uniform in [0, 1) per row, a pure function of (row seed, position)."""
    with np.errstate(over="ignore"):
        key = _splitmix64(row_seeds.astype(np.uint64)) ^ (np.uint64(position) * np.uint64(0xD1B54A32D192ED03))
    bits = _splitmix64(key) >> np.uint64(11)  # 53 random bits
    return bits.astype(np.float64) / float(2**53)


class RowSeededSampler:
    """A logits processor that samples each row itself; ``generate`` then picks it greedily.

    Scores are turned into ``softmax(scores / tau)`` (after nucleus filtering when
    ``top_p < 1``) and sampled by inverse CDF with the row's own uniform. Every
    other score is set to ``-inf``, so greedy decoding returns the sampled token.
    """

    def __init__(self, row_seeds: np.ndarray, temperature: float, top_p: float, prompt_width: int):
        self.row_seeds = row_seeds
        self.temperature = temperature
        self.top_p = top_p
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        x = scores.float() / self.temperature
        probs = torch.softmax(x, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (the top token always).
            drop = (sorted_p.cumsum(-1) - sorted_p) >= self.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        cdf = probs.cumsum(-1)
        u = torch.from_numpy(row_uniforms(self.row_seeds, input_ids.shape[1] - self.prompt_width))
        target = (u.to(cdf.device, torch.float32) * cdf[:, -1]).unsqueeze(-1)
        token = torch.searchsorted(cdf, target).clamp(max=cdf.shape[-1] - 1)
        out = torch.full_like(scores, -torch.inf)
        return out.scatter(-1, token, 0.0)

from clipctl.rollout.base import RolloutBatch, SamplingParams, left_pad, response_masks


class HFEngine:
    """Samples with the training model itself, so weight sync is a no-op."""

    def __init__(self, model: torch.nn.Module, tokenizer, batch_size: int = 0):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size  # sequences per generate call; 0 = all at once
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.model = model

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> RolloutBatch:
        from transformers import GenerationConfig, LogitsProcessorList

        # A fresh config: an instruct model's shipped generation_config (top_k,
        # repetition_penalty, ...) would silently change the sampling distribution
        # away from softmax(logits / tau) that the trainer's log-probs assume.
        # Greedy decoding over the scores RowSeededSampler leaves = its sample.
        gen_cfg = GenerationConfig(
            do_sample=False,
            max_new_tokens=params.max_new_tokens,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
        )
        expanded = [list(p) for p in prompts for _ in range(params.n)]
        prompt_ids, prompt_mask = left_pad(expanded, self.pad_id)
        was_training = self.model.training
        self.model.eval()
        step = self.batch_size or len(expanded)
        chunks = []
        device = next(self.model.parameters()).device
        for start in range(0, len(expanded), step):
            rows = np.arange(start, min(start + step, len(expanded)), dtype=np.int64)
            sampler = RowSeededSampler(params.seed + rows, params.temperature, params.top_p, prompt_ids.shape[1])
            out = self.model.generate(
                input_ids=prompt_ids[start : start + step].to(device),
                attention_mask=prompt_mask[start : start + step].to(device),
                generation_config=gen_cfg,
                logits_processor=LogitsProcessorList([sampler]),
            )
            chunks.append(out[:, prompt_ids.shape[1] :].cpu())
        self.model.train(was_training)
        width = max(c.shape[1] for c in chunks)
        response_ids = torch.full((len(expanded), width), self.pad_id, dtype=torch.long)
        row = 0
        for c in chunks:
            response_ids[row : row + c.shape[0], : c.shape[1]] = c
            row += c.shape[0]
        mask, truncated = response_masks(response_ids, self.eos_id)
        response_ids = torch.where(mask.bool(), response_ids, torch.full_like(response_ids, self.pad_id))
        texts = self.tokenizer.batch_decode(
            [ids[m.bool()].tolist() for ids, m in zip(response_ids, mask)], skip_special_tokens=True
        )
        return RolloutBatch(prompt_ids, prompt_mask, response_ids, mask, truncated, texts)
