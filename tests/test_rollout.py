"""The hf engine's row-seeded sampling and response masks."""

import numpy as np
import pytest
import torch

from clipctl.rollout import SamplingParams
from clipctl.rollout.base import left_pad, response_masks
from clipctl.rollout.hf import HFEngine, RowSeededSampler, row_uniforms


def test_row_uniforms_are_deterministic_uniform_and_row_independent():
    seeds = np.arange(20000, dtype=np.int64)
    u = row_uniforms(seeds, 3)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
    assert np.array_equal(u[5:9], row_uniforms(seeds[5:9], 3))
    assert not np.array_equal(u, row_uniforms(seeds, 4))
    # Histogram: each of 10 bins within 8 % of its expected count.
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    assert (np.abs(counts - 2000) < 160).all()


def test_sampler_follows_softmax_over_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 3.0]])
    rows = 40000
    tau = 0.7
    sampler = RowSeededSampler(np.arange(rows, dtype=np.int64), tau, 1.0, prompt_width=0)
    scores = sampler(torch.zeros(rows, 0, dtype=torch.long), logits.expand(rows, -1))
    picked = scores.argmax(-1)
    assert torch.isinf(scores).sum(-1).eq(4).all()  # exactly one finite score per row
    freq = torch.bincount(picked, minlength=5).double() / rows
    expected = torch.softmax(logits[0].double() / tau, -1)
    assert (freq - expected).abs().max() < 0.01


def test_top_p_never_samples_outside_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    sampler = RowSeededSampler(np.arange(5000, dtype=np.int64), 1.0, 0.7, prompt_width=0)
    picked = sampler(torch.zeros(5000, 0, dtype=torch.long), logits.expand(5000, -1)).argmax(-1)
    # Nucleus for top_p 0.7: {0.5, 0.3}; renormalised 0.625 / 0.375.
    assert set(picked.tolist()) == {0, 1}
    assert abs((picked == 0).double().mean().item() - 0.625) < 0.02


def test_response_masks_cover_through_first_eos():
    ids = torch.tensor([[5, 6, 0, 7], [5, 6, 7, 8], [0, 9, 0, 9]])
    mask, truncated = response_masks(ids, eos_id=0)
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_left_pad():
    ids, mask = left_pad([[1, 2], [3]], pad_id=0)
    assert ids.tolist() == [[1, 2], [0, 3]] and mask.tolist() == [[1, 1], [0, 1]]


def test_batched_call_equals_per_prompt_calls(quick_model_dir):
    from clipctl.models import load_model, load_tokenizer

    tok = load_tokenizer(str(quick_model_dir))
    model = load_model(str(quick_model_dir))
    engine = HFEngine(model, tok)
    prompts = [tok("Question: How many apples?\nAnswer:")["input_ids"], tok("Question: A?\nAnswer:")["input_ids"]]
    params = SamplingParams(n=3, temperature=1.0, top_p=1.0, max_new_tokens=10, seed=123)
    both = engine.generate(prompts, params)
    first = engine.generate(prompts[:1], params)
    second = engine.generate(prompts[1:], SamplingParams(3, 1.0, 1.0, 10, seed=123 + 3))
    for rows, part in ((slice(0, 3), first), (slice(3, 6), second)):
        w = part.response_ids.shape[1]
        m = part.response_mask.bool()
        assert torch.equal(both.response_ids[rows][:, :w][m], part.response_ids[m])
        assert both.response_text[rows] == part.response_text
    again = engine.generate(prompts, params)
    assert torch.equal(again.response_ids, both.response_ids)
