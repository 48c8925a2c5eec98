import json

import pytest

from clipctl.config import load_config
from clipctl.data import fill_template, format_prompt, load_examples, read_table, step_prompt_indices
from clipctl.errors import DataError


class CharTokenizer:
    """Enough of a tokenizer for data loading: one id per character."""

    chat_template = None

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) % 97 for c in t] for t in texts]}


def test_shipped_gsm8k():
    assert len(read_table("gsm8k", "train")) == 7473
    assert len(read_table("gsm8k", "test")) == 1319
    with pytest.raises(DataError, match="no split 'dev'"):
        read_table("gsm8k", "dev")


def test_local_jsonl_and_parquet(tmp_path):
    import pandas as pd

    rows = [{"q": f"problem {i}", "a": str(i)} for i in range(5)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.parquet"):
        cfg = load_config("tiny-cpu", [f"data.name={tmp_path / name}", "data.prompt_col=q", "data.answer_col=a"]).data
        ex = load_examples(cfg, CharTokenizer(), need_gold=True)
        assert [e.gold for e in ex] == ["0", "1", "2", "3", "4"]
        assert ex[2].prompt == "Question: problem 2\nAnswer:"


def test_long_prompts_are_dropped(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"question": "x" * 500}) + "\n" + json.dumps({"question": "short"}) + "\n")
    cfg = load_config("tiny-cpu", [f"data.name={tmp_path / 'd.jsonl'}", "data.max_prompt_tokens=100"]).data
    assert [e.index for e in load_examples(cfg, CharTokenizer(), need_gold=False)] == [1]


def test_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    cfg = load_config("tiny-cpu", [f"data.name={tmp_path / 'empty.jsonl'}"]).data
    with pytest.raises(DataError, match="is empty"):
        load_examples(cfg, CharTokenizer(), need_gold=False)
    (tmp_path / "bad.jsonl").write_text('{"question": 1}\n{oops\n')
    with pytest.raises(DataError, match="bad.jsonl:2 is not valid JSON"):
        read_table(str(tmp_path / "bad.jsonl"))


def test_training_and_evaluation_read_through_one_layer(tmp_path):
    from clipctl.evaluation import BENCHMARKS, load_benchmark

    # The benchmarks are shipped datasets like any other: trainable by name.
    for name, bench in BENCHMARKS.items():
        assert len(read_table(name, "test")) == len(load_benchmark(name))
    # One JSON-lines reader, one message, whichever command reads the file.
    (tmp_path / "bad.jsonl").write_text('{"problem": "p", "answer": "1"}\n[1, 2]\n')
    for read in (lambda p: read_table(str(p)), lambda p: load_benchmark(str(p))):
        with pytest.raises(DataError, match=r"bad.jsonl:2 is not a JSON object"):
            read(tmp_path / "bad.jsonl")


def test_templates_by_hand():
    # Training: '{prompt}' replaced literally (braces stay as written).
    assert fill_template("Q: {prompt} in \\boxed{}", "1+1?") == "Q: 1+1? in \\boxed{}"
    # Evaluation: '{problem}' is a str.format field (a literal brace is doubled).
    assert fill_template("{problem}\nin \\boxed{{}}.", "1+1?") == "1+1?\nin \\boxed{}."

    class Chat(CharTokenizer):
        chat_template = "yes"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return f"<user>{messages[0]['content']}</user><assistant>"

    assert format_prompt("2+2?", "Q: {prompt}", Chat(), "auto") == "<user>Q: 2+2?</user><assistant>"
    assert format_prompt("2+2?", "Q: {prompt}", Chat(), "false") == "Q: 2+2?"
    assert format_prompt("2+2?", "Q: {prompt}", CharTokenizer(), "auto") == "Q: 2+2?"  # no chat template


def test_prompt_order_is_a_function_of_seed_and_step():
    a = [step_prompt_indices(10, 4, s, seed=0) for s in (1, 2, 3)]
    assert a == [step_prompt_indices(10, 4, s, seed=0) for s in (1, 2, 3)]
    flat = a[0] + a[1] + a[2][:2]  # stream positions 0..9: the first epoch, each example once
    assert sorted(flat) == list(range(10))
    assert step_prompt_indices(10, 4, 1, seed=1) != a[0]
