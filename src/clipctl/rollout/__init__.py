"""Generation engines behind one interface (``RolloutEngine``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from clipctl.rollout.base import RolloutBatch, RolloutEngine, SamplingParams

if TYPE_CHECKING:
    from clipctl.config import RolloutConfig

ENGINES = ("hf", "vllm")


def make_engine(name: str, model, tokenizer, rollout: Optional[RolloutConfig] = None) -> RolloutEngine:
    """The engine ``name`` over the trainer's ``model``; ``rollout`` carries the engine options."""
    if name == "hf":
        from clipctl.rollout.hf import HFEngine

        return HFEngine(model, tokenizer)
    if name == "vllm":
        # Imported here: clipctl works without vllm installed.
        from clipctl.rollout.vllm import VLLMEngine

        # Without ``rollout`` the engine's own defaults apply; they equal
        # RolloutConfig's (tests/test_imports.py checks), and config is not
        # imported here: config imports this package to validate engine names.
        options = {}
        if rollout is not None:
            options = dict(
                gpu_memory_utilization=rollout.vllm_gpu_memory_utilization,
                kv_cache_mb=rollout.vllm_kv_cache_mb,
                sleep_between_steps=rollout.vllm_sleep_between_steps,
                dtype=rollout.vllm_dtype,
            )
        return VLLMEngine(model, tokenizer, **options)
    raise ValueError(f"unknown rollout engine {name!r}; valid: {', '.join(ENGINES)}")


__all__ = ["ENGINES", "RolloutBatch", "RolloutEngine", "SamplingParams", "make_engine"]
