"""The ``hf`` engine: batched ``model.generate`` on the trainer's own model."""

from __future__ import annotations

from typing import Sequence

import torch

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
        from transformers import GenerationConfig

        # A fresh config: an instruct model's shipped generation_config (top_k,
        # repetition_penalty, ...) would silently change the sampling distribution
        # away from softmax(logits / tau) that the trainer's log-probs assume.
        gen_cfg = GenerationConfig(
            do_sample=True,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=0,
            max_new_tokens=params.max_new_tokens,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
        )
        expanded = [list(p) for p in prompts for _ in range(params.n)]
        prompt_ids, prompt_mask = left_pad(expanded, self.pad_id)
        was_training = self.model.training
        self.model.eval()
        torch.manual_seed(params.seed)
        step = self.batch_size or len(expanded)
        chunks = []
        device = next(self.model.parameters()).device
        for start in range(0, len(expanded), step):
            out = self.model.generate(
                input_ids=prompt_ids[start : start + step].to(device),
                attention_mask=prompt_mask[start : start + step].to(device),
                generation_config=gen_cfg,
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
