"""The ``hf`` engine: batched decoding on the trainer's own model.

Sampling is row-seeded: response ``r`` of a call draws its uniforms from a
counter-based generator keyed by ``(params.seed + r, token position)``, so what
a prompt's responses are does not depend on which other prompts share the
batch. That lets the trainer sample all of a step's prompts in one batched
call and still get the samples a per-prompt (or per-rank) call would give.

Two decoders give the same tokens (up to floating-point ties):

- ``generate``: HF ``model.generate`` with ``RowSeededSampler`` as a logits
  processor (the CPU default).
- ``static``: clipctl's own loop over a static KV cache (the CUDA default):
  all uniforms of the call are made on the device up front
  (``row_uniforms_torch``, bit-identical to ``row_uniforms``), each decoded
  token is sampled on the device, and the host looks at the batch only every
  ``SYNC_EVERY`` tokens (to stop once every row has ended). On CUDA the
  one-token forward is compiled (``torch.compile``; ``$CLIPCTL_HF_COMPILE``:
  ``default`` (default), ``reduce-overhead`` (CUDA graphs) or ``0`` for eager).

``$CLIPCTL_HF_DECODE`` (``generate`` / ``static``) or ``HFEngine(decode=...)``
forces one. vLLM stays the engine for GPU clusters (docs/vllm.md).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

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


def _i64(c: int) -> int:
    """A uint64 constant as the int64 with the same bits."""
    return c - 2**64 if c >= 2**63 else c


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's ``>>`` is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _splitmix64_torch(x: torch.Tensor) -> torch.Tensor:
    """``_splitmix64`` on int64 tensors holding uint64 bits (int64 arithmetic wraps like uint64)."""
    x = x + _i64(0x9E3779B97F4A7C15)
    x = (x ^ _shr(x, 30)) * _i64(0xBF58476D1CE4E5B9)
    x = (x ^ _shr(x, 27)) * _i64(0x94D049BB133111EB)
    return x ^ _shr(x, 31)


def row_uniforms_torch(row_seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``[rows, positions]`` float64 uniforms on the seeds' device, equal bit for bit to ``row_uniforms``."""
    key = _splitmix64_torch(row_seeds.long()).unsqueeze(1) ^ (positions.long() * _i64(0xD1B54A32D192ED03))
    bits = _shr(_splitmix64_torch(key), 11)  # 53 random bits, non-negative
    return bits.double() / float(2**53)


def sample_tokens(scores: torch.Tensor, u: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """``[rows]`` tokens drawn from ``softmax(scores / tau)`` (nucleus-filtered) by inverse CDF at ``u``."""
    x = scores.float() / temperature
    probs = torch.softmax(x, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the top token always).
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    cdf = probs.cumsum(-1)
    target = (u.to(cdf.device, torch.float32) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target).clamp(max=cdf.shape[-1] - 1).squeeze(-1)


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
        u = torch.from_numpy(row_uniforms(self.row_seeds, input_ids.shape[1] - self.prompt_width))
        token = sample_tokens(scores, u, self.temperature, self.top_p)
        out = torch.full_like(scores, -torch.inf)
        return out.scatter(-1, token.unsqueeze(-1), 0.0)

from clipctl.rollout.base import RolloutBatch, SamplingParams, left_pad, response_masks


def _cache_kwarg(model) -> str:
    """The forward's KV-cache argument: ``cache`` in newer transformers, ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _static_cache(model, rows: int, length: int):
    from transformers import StaticCache

    try:
        return StaticCache(config=model.config, max_cache_len=length)
    except TypeError:  # transformers < 4.56: sized and placed up front
        p = next(model.parameters())
        return StaticCache(config=model.config, max_batch_size=rows, max_cache_len=length, device=p.device,
                           dtype=p.dtype)


DECODERS = ("auto", "generate", "static")
SYNC_EVERY = 16  # decoded tokens between the host's checks for "every row has ended"


class HFEngine:
    """Samples with the training model itself, so weight sync is a no-op."""

    def __init__(self, model: torch.nn.Module, tokenizer, batch_size: int = 0, decode: Optional[str] = None):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size  # sequences per generate call; 0 = all at once
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.decode = decode or os.environ.get("CLIPCTL_HF_DECODE", "") or "auto"
        if self.decode not in DECODERS:
            raise ValueError(f"hf engine decode={self.decode!r} must be one of {DECODERS}")
        self._step_fn = None  # the (compiled) one-token forward of the static decoder

    def sync_weights(self, model: torch.nn.Module) -> None:
        if model is not self.model:
            self._step_fn = None
        self.model = model

    def _decoder(self, device: torch.device) -> str:
        if self.decode != "auto":
            return self.decode
        return "static" if device.type == "cuda" else "generate"

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> RolloutBatch:
        expanded = [list(p) for p in prompts for _ in range(params.n)]
        prompt_ids, prompt_mask = left_pad(expanded, self.pad_id)
        was_training = self.model.training
        self.model.eval()
        step = self.batch_size or len(expanded)
        chunks = []
        device = next(self.model.parameters()).device
        decoder = self._decoder(device)
        try:
            for start in range(0, len(expanded), step):
                rows = np.arange(start, min(start + step, len(expanded)), dtype=np.int64)
                ids = prompt_ids[start : start + step].to(device)
                mask = prompt_mask[start : start + step].to(device)
                if decoder == "static":
                    out = self._static_decode(ids, mask, params.seed + rows, params)
                else:
                    out = self._hf_generate(ids, mask, params.seed + rows, params)
                chunks.append(out.cpu())
        finally:
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

    def _hf_generate(self, ids, mask, row_seeds: np.ndarray, params: SamplingParams) -> torch.Tensor:
        """``[rows, <= max_new_tokens]`` new tokens from HF ``generate`` + ``RowSeededSampler``."""
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
        sampler = RowSeededSampler(row_seeds, params.temperature, params.top_p, ids.shape[1])
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, generation_config=gen_cfg,
            logits_processor=LogitsProcessorList([sampler]),
        )
        return out[:, ids.shape[1] :]

    def _one_token_forward(self):
        """The static decoder's per-token forward, compiled on CUDA unless ``$CLIPCTL_HF_COMPILE=0``."""
        if self._step_fn is None:
            model = self.model
            cache_kw = _cache_kwarg(model)

            def step(tok, pos, cache_position, attention_mask, cache):
                return model(
                    input_ids=tok, position_ids=pos, cache_position=cache_position, attention_mask=attention_mask,
                    use_cache=True, **{cache_kw: cache},
                ).logits[:, -1]

            mode = os.environ.get("CLIPCTL_HF_COMPILE", "default")
            on_cuda = next(model.parameters()).is_cuda
            self._step_fn = torch.compile(step, mode=mode, dynamic=False) if on_cuda and mode != "0" else step
        return self._step_fn

    def _static_decode(self, ids, mask, row_seeds: np.ndarray, params: SamplingParams) -> torch.Tensor:
        """``[rows, <= max_new_tokens]`` new tokens from a static KV cache; no host work per token.

        The same tokens as ``_hf_generate`` (same uniforms, same sampler; rows
        that ended get ``pad_id``; the width is that of the longest response).
        """
        rows, width = ids.shape
        steps = params.max_new_tokens
        dev = ids.device
        cache = _static_cache(self.model, rows, width + steps)
        cache_kw = _cache_kwarg(self.model)
        # One mask over the whole cache (prompt padding 0, every new position 1):
        # a fixed shape for every step; causality hides positions not yet written.
        full_mask = torch.cat([mask, torch.ones(rows, steps, dtype=mask.dtype, device=dev)], 1)
        uniforms = row_uniforms_torch(torch.from_numpy(row_seeds).to(dev), torch.arange(steps, device=dev))
        prompt_len = mask.sum(1, keepdim=True)
        new_positions = torch.arange(width, width + steps, device=dev)  # cache slots of the new tokens
        logits = self.model(
            input_ids=ids, attention_mask=full_mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
            cache_position=torch.arange(width, device=dev), use_cache=True, logits_to_keep=1, **{cache_kw: cache},
        ).logits[:, -1]
        out = torch.full((rows, steps), self.pad_id, dtype=torch.long, device=dev)
        done = torch.zeros(rows, dtype=torch.bool, device=dev)
        step_fn = self._one_token_forward()
        compiled_graphs = os.environ.get("CLIPCTL_HF_COMPILE", "default") == "reduce-overhead"
        for t in range(steps):
            if t > 0:
                if compiled_graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                logits = step_fn(out[:, t - 1 : t], prompt_len + (t - 1), new_positions[t - 1 : t], full_mask, cache)
            tok = sample_tokens(logits, uniforms[:, t], params.temperature, params.top_p)
            out[:, t] = torch.where(done, self.pad_id, tok)
            done = done | (tok == self.eos_id)
            if (t + 1) % SYNC_EVERY == 0 and bool(done.all()):
                break
        is_eos = out == self.eos_id
        # generate()'s width: up to the last row's first EOS, or every step when a row never ended
        ended = is_eos.any(1)
        if bool(ended.all()):
            used = int(is_eos.int().argmax(1).max()) + 1
        else:
            used = steps
        return out[:, :used]
