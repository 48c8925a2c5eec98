import pytest
import torch

from clipctl.models import TinySpec, build_tiny, load_tokenizer


def test_tokenizer_survives_reload_through_auto_classes(quick_model_dir):
    from transformers import AutoTokenizer

    tok = load_tokenizer(str(quick_model_dir))
    text = "Question: Natalia sold 48 clips in April, and half as many in May.\nAnswer: 72 ünïcode"
    ids = tok(text)["input_ids"]
    again = AutoTokenizer.from_pretrained(quick_model_dir)
    assert again(text)["input_ids"] == ids
    assert tok.decode(ids) == text
    assert tok.eos_token == "<|endoftext|>" and tok.padding_side == "left"


def test_quick_model_is_peaked_and_reloads(quick_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(quick_model_dir)
    assert model.config.model_type == "qwen2"
    assert model.config.hidden_size // model.config.num_attention_heads >= 32


@pytest.mark.slow
def test_build_is_deterministic(tmp_path):
    spec = TinySpec(vocab_size=300, intermediate_size=128, pretrain_steps=3, batch_size=2, seq_len=32)
    a = build_tiny(spec, tmp_path / "a")
    b = build_tiny(spec, tmp_path / "b")
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
