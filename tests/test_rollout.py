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


def test_device_uniforms_equal_the_numpy_ones_bit_for_bit():
    from clipctl.rollout.hf import row_uniforms_torch

    seeds = np.concatenate([np.arange(50), [2**31 - 1, 2**40 + 7, 2**62 + 3, 2**63 - 1]]).astype(np.int64)
    positions = np.array([0, 1, 2, 17, 255, 1023, 4095])
    got = row_uniforms_torch(torch.from_numpy(seeds), torch.from_numpy(positions)).numpy()
    want = np.stack([row_uniforms(seeds, int(p)) for p in positions], 1)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("top_p, batch_size, new_tokens", [(1.0, 0, 10), (0.9, 5, 10), (1.0, 4, 60)])
def test_static_decoder_samples_what_generate_samples(quick_model_dir, top_p, batch_size, new_tokens):
    """The static-cache loop (the CUDA default) against HF generate: same tokens, masks, widths."""
    from clipctl.models import load_model, load_tokenizer

    tok = load_tokenizer(str(quick_model_dir))
    model = load_model(str(quick_model_dir))
    prompts = [tok("Question: How many apples?\nAnswer:")["input_ids"], tok("Question: A?\nAnswer:")["input_ids"],
               tok("Q: 2 + 2?")["input_ids"]]
    params = SamplingParams(n=3, temperature=0.9, top_p=top_p, max_new_tokens=new_tokens, seed=11)
    ref = HFEngine(model, tok, batch_size=batch_size, decode="generate").generate(prompts, params)
    got = HFEngine(model, tok, batch_size=batch_size, decode="static").generate(prompts, params)
    assert torch.equal(got.response_ids, ref.response_ids)
    assert torch.equal(got.response_mask, ref.response_mask)
    assert torch.equal(got.truncated, ref.truncated)
    assert got.response_text == ref.response_text
    # resumed / re-split: a later call for the second prompt alone samples its rows again
    part = HFEngine(model, tok, decode="static").generate(prompts[1:2], SamplingParams(
        3, 0.9, top_p, new_tokens, seed=11 + 3))
    m = part.response_mask.bool()
    assert torch.equal(got.response_ids[3:6, : part.response_ids.shape[1]][m], part.response_ids[m])


def test_decoder_choice():
    class Tok:
        eos_token_id, pad_token_id = 0, 0

    assert HFEngine(None, Tok())._decoder(torch.device("cpu")) == "generate"
    assert HFEngine(None, Tok())._decoder(torch.device("cuda")) == "static"
    assert HFEngine(None, Tok(), decode="static")._decoder(torch.device("cpu")) == "static"
    with pytest.raises(ValueError, match="decode"):
        HFEngine(None, Tok(), decode="fast")
