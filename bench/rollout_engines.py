"""Rollout tokens/s of the hf engine against the vLLM engine, side by side (issue 6b).

builtin:tiny, the first 8 tiny-cpu prompts x n = 8 samples, up to 48 new
tokens, temperature 1. Both engines are timed interleaved (so both see the
same machine load), 7 repeats after a warm-up; the median tokens/s and the
ratio vllm / hf are printed. vLLM is optional: run it with the venv that has
it (on CPU: `make .venv-vllm/.installed`, then `.venv-vllm/bin/python`).

    VLLM_ENABLE_V1_MULTIPROCESSING=0 OMP_NUM_THREADS=1 .venv-vllm/bin/python bench/rollout_engines.py
"""

from __future__ import annotations

import statistics
import time

from clipctl.config import RolloutConfig, load_config
from clipctl.data import load_examples
from clipctl.models import load_model, load_tokenizer, resolve_model_path
from clipctl.rollout import SamplingParams, make_engine

PROMPTS, N, NEW_TOKENS, REPEATS = 8, 8, 48, 7


def timed(engine, prompts, seed: int) -> tuple[int, float]:
    start = time.perf_counter()
    batch = engine.generate(prompts, SamplingParams(N, 1.0, 1.0, NEW_TOKENS, seed))
    return int(batch.response_mask.sum()), time.perf_counter() - start


def main() -> None:
    path = resolve_model_path("builtin:tiny")
    tokenizer, model = load_tokenizer(path), load_model(path)
    examples = load_examples(load_config("tiny-cpu").data, tokenizer, need_gold=False)
    prompts = [e.prompt_ids for e in examples[:PROMPTS]]
    engines = {"hf": make_engine("hf", model, tokenizer)}
    try:
        start = time.perf_counter()
        engines["vllm"] = make_engine("vllm", model, tokenizer, RolloutConfig(vllm_kv_cache_mb=128))
        print(f"vllm engine built in {time.perf_counter() - start:.1f}s")
    except ImportError:
        print("vllm not importable in this environment: timing hf only")
    for engine in engines.values():
        timed(engine, prompts, seed=100)  # warm-up
    results = {name: [] for name in engines}
    for repeat in range(REPEATS):
        for name, engine in engines.items():
            results[name].append(timed(engine, prompts, seed=repeat))
    print(f"{PROMPTS} prompts x {N} samples, <= {NEW_TOKENS} new tokens, one generate call per repeat")
    median = {}
    for name, runs in results.items():
        median[name] = statistics.median(tokens / seconds for tokens, seconds in runs)
        print(f"{name:>5}: {median[name]:8.0f} tokens/s (median of {REPEATS})")
    if "vllm" in median:
        print(f"ratio vllm / hf: {median['vllm'] / median['hf']:.2f}")


if __name__ == "__main__":
    main()
