"""The dataset registry (data.registry): shipped entries, training examples, evaluation problems."""

import json

import pytest

from clipctl.config import load_config
from clipctl.data.prompts import fill_template
from clipctl.data.registry import (
    BENCHMARKS,
    DATASETS,
    Problem,
    load_benchmark,
    load_examples,
    read_table,
    step_prompt_indices,
)
from clipctl.data.rewards import GRADERS
from clipctl.errors import DataError


def test_local_jsonl_and_parquet(tmp_path, char_tokenizer):
    import pandas as pd

    rows = [{"q": f"problem {i}", "a": str(i)} for i in range(5)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.parquet"):
        cfg = load_config("tiny-cpu", [f"data.name={tmp_path / name}", "data.prompt_col=q", "data.answer_col=a"]).data
        ex = load_examples(cfg, char_tokenizer, need_gold=True)
        assert [e.gold for e in ex] == ["0", "1", "2", "3", "4"]
        assert ex[2].prompt == "Question: problem 2\nAnswer:"


def test_long_prompts_are_dropped(tmp_path, char_tokenizer):
    (tmp_path / "d.jsonl").write_text(json.dumps({"question": "x" * 500}) + "\n" + json.dumps({"question": "short"}) + "\n")
    cfg = load_config("tiny-cpu", [f"data.name={tmp_path / 'd.jsonl'}", "data.max_prompt_tokens=100"]).data
    assert [e.index for e in load_examples(cfg, char_tokenizer, need_gold=False)] == [1]


def test_empty_and_missing_column(tmp_path, char_tokenizer):
    (tmp_path / "empty.jsonl").write_text("")
    cfg = load_config("tiny-cpu", [f"data.name={tmp_path / 'empty.jsonl'}"]).data
    with pytest.raises(DataError, match="is empty"):
        load_examples(cfg, char_tokenizer, need_gold=False)
    cfg = load_config("tiny-cpu", ["data.name=math500", "data.split=test"]).data
    with pytest.raises(DataError, match=r"no column 'question' .*set data.prompt_col"):
        load_examples(cfg, char_tokenizer, need_gold=False)


def test_prompt_order_is_a_function_of_seed_and_step():
    a = [step_prompt_indices(10, 4, s, seed=0) for s in (1, 2, 3)]
    assert a == [step_prompt_indices(10, 4, s, seed=0) for s in (1, 2, 3)]
    flat = a[0] + a[1] + a[2][:2]  # stream positions 0..9: the first epoch, each example once
    assert sorted(flat) == list(range(10))
    assert step_prompt_indices(10, 4, 1, seed=1) != a[0]


# ---------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------

EXPECTED_ROWS = {"gsm8k": 1319, "math500": 500, "aime2024": 30, "aime2025": 30, "amc23": 40}


def test_registry_names_and_templates():
    assert set(BENCHMARKS) == set(EXPECTED_ROWS)
    assert set(DATASETS) == set(EXPECTED_ROWS) | {"dapo_math_17k"}
    for d in DATASETS.values():
        assert d.grader in GRADERS
        assert d.eval_split is None or d.eval_split in d.splits
    assert fill_template(BENCHMARKS["math500"].template, "P") == (
        "P\nPlease reason step by step, and put your final answer within \\boxed{}."
    )
    assert fill_template(BENCHMARKS["gsm8k"].template, "P") == (
        "P\nLet's think step by step and output the final answer after \"####\"."
    )


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_registry_columns_are_in_every_split(name):
    """Every row of every split has the columns training and eval-passk read by default."""
    d = DATASETS[name]
    for split in d.splits:
        rows = read_table(name, split)
        assert rows, (name, split)
        for col in (d.problem_col, d.answer_col, d.id_col):
            if col is not None:
                assert all(col in row for row in rows), (name, split, col)
        if d.id_col is not None:
            assert len({row[d.id_col] for row in rows}) == len(rows), (name, split)


def test_training_defaults_read_the_registry_columns_of_gsm8k():
    """data.prompt_col / data.answer_col defaults are gsm8k's registered columns."""
    data_cfg = load_config("tiny-cpu", []).data
    assert data_cfg.name == "gsm8k"
    assert (data_cfg.prompt_col, data_cfg.answer_col) == (DATASETS["gsm8k"].problem_col, DATASETS["gsm8k"].answer_col)


def test_gold_rule():
    assert DATASETS["gsm8k"].gold("She has 3 + 15 = 18.\n#### 18 ") == "18"
    assert DATASETS["gsm8k"].gold("18") == "18"
    assert DATASETS["math500"].gold("#### 1") == "#### 1"  # no marker: the answer itself


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_packaged_benchmarks_load(name):
    problems = load_benchmark(name)
    assert len(problems) == EXPECTED_ROWS[name]
    assert len({p.id for p in problems}) == len(problems)
    assert all(p.problem and p.answer for p in problems)
    assert all(isinstance(p, Problem) for p in problems)


def test_gsm8k_gold_is_text_after_marker_and_ids_are_row_numbers():
    problems = load_benchmark("gsm8k", limit=3)
    assert [p.id for p in problems] == ["0", "1", "2"]
    assert problems[0].answer == "18"  # Janet's ducks
    assert all("####" not in p.answer for p in load_benchmark("gsm8k"))


def test_ids_of_math_benchmarks():
    assert load_benchmark("math500", limit=1)[0].id == "test/precalculus/807.json"
    assert load_benchmark("aime2024", limit=1)[0].id == "2024-I-1"
    assert load_benchmark("amc23", limit=1)[0].id == "2023-12A-1"


def test_limit():
    assert len(load_benchmark("aime2025", limit=5)) == 5
    assert len(load_benchmark("aime2025", limit=1000)) == 30
    with pytest.raises(DataError, match="limit"):
        load_benchmark("aime2025", limit=0)


def test_unknown_name_lists_valid_names():
    with pytest.raises(DataError) as info:
        load_benchmark("mathh500")
    msg = str(info.value)
    assert "unknown dataset 'mathh500'" in msg
    assert "gsm8k, math500, aime2024, aime2025, amc23" in msg
    assert ".jsonl, .json or .parquet path also works" in msg
    assert "\n" not in msg


def test_missing_local_file(tmp_path):
    with pytest.raises(DataError, match="dataset file not found"):
        load_benchmark(str(tmp_path / "nope.jsonl"))


def test_missing_column_lists_available_columns(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "gold": "2"}) + "\n")
    with pytest.raises(DataError) as info:
        load_benchmark(str(path))
    msg = str(info.value)
    assert "column 'problem' not found" in msg
    assert "d.jsonl:1 has no column 'problem' (columns: question, gold)" in msg
    assert "--problem-col" in msg
    assert "\n" not in msg
    with pytest.raises(DataError, match=r"column 'answer' not found.*--answer-col"):
        load_benchmark(str(path), problem_col="question")
    problems = load_benchmark(str(path), problem_col="question", answer_col="gold")
    assert problems == [Problem(id="0", problem="1+1?", answer="2")]


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match="has no rows"):
        load_benchmark(str(path))


def test_local_files_as_problems(tmp_path):
    rows = [{"id": "a", "problem": "p1", "answer": 3}, {"id": "b", "problem": "p2", "answer": "x"}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    expected = [Problem("a", "p1", "3"), Problem("b", "p2", "x")]
    assert load_benchmark(str(path)) == expected
    pd = pytest.importorskip("pandas")
    pq = tmp_path / "d.parquet"
    pd.DataFrame({"id": ["a", "b"], "problem": ["p1", "p2"], "answer": ["3", "x"]}).to_parquet(pq)
    assert load_benchmark(str(pq), limit=1) == expected[:1]
    with pytest.raises(DataError, match=r"column 'uid' not found.*--id-col"):
        load_benchmark(str(path), id_col="uid")
