"""Generation engines behind one interface (``RolloutEngine``)."""

from clipctl.rollout.base import RolloutBatch, RolloutEngine, SamplingParams

ENGINES = ("hf",)


def make_engine(name: str, model, tokenizer) -> RolloutEngine:
    if name == "hf":
        from clipctl.rollout.hf import HFEngine

        return HFEngine(model, tokenizer)
    raise ValueError(f"unknown rollout engine {name!r}; valid: {', '.join(ENGINES)}")


__all__ = ["ENGINES", "RolloutBatch", "RolloutEngine", "SamplingParams", "make_engine"]
