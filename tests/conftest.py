"""Shared fixtures: a fast, offline environment and small local models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# Small enough for the default (fast) test run: same tokenizer pipeline and
# architecture as builtin:tiny, but only a few pre-training steps.
FAST_OVERRIDES = [
    "train.rollout_batch_prompts=4",
    "train.minibatch_prompts=2",
    "train.micro_batch_size=4",
    "rollout.n=4",
    "rollout.max_new_tokens=12",
    "log.samples_every=1",
    "log.clip_probe_every=0",
    "optim.lr=3e-3",
]


@pytest.fixture(scope="session")
def quick_model_dir(tmp_path_factory) -> Path:
    """A briefly pre-trained tiny Qwen2 (+ tokenizer) in a temp folder, built once per session."""
    import torch

    from clipctl.models import TinySpec, build_tiny

    torch.set_num_threads(1)
    spec = TinySpec(vocab_size=512, intermediate_size=256, pretrain_steps=30, batch_size=8, seq_len=64)
    return build_tiny(spec, tmp_path_factory.mktemp("models") / "quick")


@pytest.fixture
def fast_overrides(quick_model_dir) -> list[str]:
    return [f"model.path={quick_model_dir}", *FAST_OVERRIDES]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random 1-layer Qwen2 (hidden 64, 2 heads of 32) with builtin:tiny's tokenizer files, built once."""
    import shutil

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from clipctl.models import load_tokenizer, resolve_model_path

    src = Path(resolve_model_path("builtin:tiny"))  # a cache hit unless the tests are marked slow
    folder = tmp_path_factory.mktemp("tiny") / "tiny-random"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, folder / name)
    tok = load_tokenizer(str(folder))
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
    )
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return folder
