"""Row checks (data.sources.check_rows): every row of every reader, for training and evaluation alike.

Each bad row is one ``DataError`` naming the file, the line (JSON lines,
1-based) or row (Parquet, 0-based), the column and the fix; good files load
the rows they loaded before.
"""

import json

import pandas as pd
import pytest

from clipctl.config import load_config
from clipctl.data.registry import Example, Problem, load_benchmark, load_examples
from clipctl.data.sources import read_jsonl
from clipctl.errors import DataError


def _lines(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _train(path, char_tokenizer, *, need_gold=True, prompt_col="problem"):
    cfg = load_config("tiny-cpu", [f"data.name={path}", f"data.prompt_col={prompt_col}", "data.answer_col=answer"]).data
    return load_examples(cfg, char_tokenizer, need_gold=need_gold)


def _both(path, char_tokenizer):
    """The two loaders: training (verifiable rewards) and eval-passk."""
    return [lambda: _train(path, char_tokenizer), lambda: load_benchmark(str(path))]


GOOD = {"problem": "1+1?", "answer": "2"}


def test_bad_bytes_name_the_line_and_offset(tmp_path, char_tokenizer):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"problem": "ok", "answer": "1"}\n{"problem": "caf\xe9", "answer": "2"}\n')
    for load in _both(path, char_tokenizer):
        with pytest.raises(DataError) as info:
            load()
        msg = str(info.value)
        assert msg == f"{path}:2 is not UTF-8 (byte 0xe9 at byte offset 49); re-save the file as UTF-8", msg


def test_a_utf8_bom_and_crlf_lines_are_read(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"a": "\xc3\xa9"}\r\n\r\n{"a": "x"}\r\n')
    rows = read_jsonl(path)
    assert rows == [{"a": "é"}, {"a": "x"}] and rows.lines == [1, 3]


@pytest.mark.parametrize(
    "row, fragment",
    [
        ({"answer": "2"}, "column 'problem' not found: {path}:3 has no column 'problem' (columns: answer)"),
        ({"problem": None, "answer": "2"}, "{path}:3: the problem (column 'problem') is null"),
        ({"problem": "", "answer": "2"}, "{path}:3: the problem (column 'problem') is empty"),
        ({"problem": "  ", "answer": "2"}, "{path}:3: the problem (column 'problem') is empty"),
        ({"problem": 7, "answer": "2"}, "{path}:3: the problem (column 'problem') is a number, not a string"),
        ({"problem": ["a"], "answer": "2"}, "{path}:3: the problem (column 'problem') is a list, not a string"),
        ({"problem": {"t": "a"}, "answer": "2"}, "(column 'problem') is a dict, not a string"),
        ({"problem": True, "answer": "2"}, "(column 'problem') is a boolean, not a string"),
        ({"problem": "p"}, "column 'answer' not found: {path}:3 has no column 'answer'"),
        ({"problem": "p", "answer": None}, "{path}:3: the answer (column 'answer') is null"),
        ({"problem": "p", "answer": ""}, "{path}:3: the answer (column 'answer') is empty"),
        ({"problem": "p", "answer": [1, 2]}, "the answer (column 'answer') is a list, not a string or a number"),
    ],
)
def test_a_bad_later_row_is_named(tmp_path, char_tokenizer, row, fragment):
    path = _lines(tmp_path / "d.jsonl", [GOOD, GOOD])
    path.write_text(path.read_text() + "\n" + json.dumps(row) + "\n")  # a blank line 3 counts: the row is line 4
    fragment = fragment.replace("{path}:3", f"{path}:4")
    problem = "'problem'" in fragment
    fixes = ["data.prompt_col" if problem else "data.answer_col", "--problem-col" if problem else "--answer-col"]
    for load, fix in zip(_both(path, char_tokenizer), fixes):
        with pytest.raises(DataError) as info:
            load()
        msg = str(info.value)
        assert fragment in msg and fix in msg and "\n" not in msg, msg


def test_parquet_rows_are_counted_from_zero(tmp_path, char_tokenizer):
    path = tmp_path / "d.parquet"
    pd.DataFrame({"problem": ["p0", None, "p2"], "answer": ["1", "2", "3"]}).to_parquet(path)
    for load in _both(path, char_tokenizer):
        with pytest.raises(DataError, match=r"d\.parquet row 1 \(0-based\): the problem \(column 'problem'\) is null"):
            load()
    # A missing number in a Parquet column is NaN: null too, not the text "nan".
    pd.DataFrame({"problem": ["p0", "p1"], "answer": [1.0, float("nan")]}).to_parquet(path)
    for load in _both(path, char_tokenizer):
        with pytest.raises(DataError, match=r"row 1 \(0-based\): the answer \(column 'answer'\) is null"):
            load()


def test_random_rewards_need_no_answer(tmp_path, char_tokenizer):
    """Without verifiable rewards the answer may be absent or null in any row (gold None)."""
    path = _lines(tmp_path / "d.jsonl", [{"problem": "a", "answer": "1"}, {"problem": "b"}, {"problem": "c", "answer": None}])
    assert [e.gold for e in _train(path, char_tokenizer, need_gold=False)] == ["1", None, None]
    # The prompt is needed whatever the reward.
    path = _lines(tmp_path / "e.jsonl", [{"problem": "a"}, {"problem": None}])
    with pytest.raises(DataError, match=r"e\.jsonl:2: the problem \(column 'problem'\) is null.*data\.prompt_col"):
        _train(path, char_tokenizer, need_gold=False)


def test_ids_are_checked_too(tmp_path):
    path = _lines(tmp_path / "d.jsonl", [{"id": "a", **GOOD}, {"id": None, **GOOD}])
    with pytest.raises(DataError, match=r"d\.jsonl:2: the id \(column 'id'\) is null.*--id-col"):
        load_benchmark(str(path))
    path = _lines(tmp_path / "e.jsonl", [{"id": "a", **GOOD}, GOOD])
    with pytest.raises(DataError, match=r"column 'id' not found: .*e\.jsonl:2 has no column 'id'"):
        load_benchmark(str(path))


def test_good_files_load_the_same_rows(tmp_path, char_tokenizer):
    """Numbers are read as their text in answers and ids; strings as they are; in both formats."""
    rows = [
        {"id": 1, "problem": "What is 1+1?", "answer": 2, "extra": [1]},
        {"id": "b", "problem": "Café: x = ?", "answer": "\\frac{1}{2}", "extra": None},
        {"id": 3, "problem": "p3", "answer": 0.5, "extra": {"k": 1}},
    ]
    path = _lines(tmp_path / "d.jsonl", rows)
    expected = [Problem("1", "What is 1+1?", "2"), Problem("b", "Café: x = ?", "\\frac{1}{2}"), Problem("3", "p3", "0.5")]
    assert load_benchmark(str(path)) == expected
    assert load_benchmark(str(path), limit=2) == expected[:2]
    examples = _train(path, char_tokenizer)
    assert [(e.index, e.prompt, e.gold) for e in examples] == [
        (0, "Question: What is 1+1?\nAnswer:", "2"),
        (1, "Question: Café: x = ?\nAnswer:", "\\frac{1}{2}"),
        (2, "Question: p3\nAnswer:", "0.5"),
    ]
    assert all(isinstance(e, Example) for e in examples)
    pq = tmp_path / "d.parquet"
    pd.DataFrame({"id": ["1", "b"], "problem": ["What is 1+1?", "Café: x = ?"], "answer": [2, 3]}).to_parquet(pq)
    assert load_benchmark(str(pq)) == [Problem("1", "What is 1+1?", "2"), Problem("b", "Café: x = ?", "3")]
    assert [e.gold for e in _train(pq, char_tokenizer)] == ["2", "3"]


def test_every_row_is_checked_whatever_the_limit(tmp_path):
    path = _lines(tmp_path / "d.jsonl", [GOOD, GOOD, {"problem": None, "answer": "1"}])
    with pytest.raises(DataError, match=r"d\.jsonl:3"):
        load_benchmark(str(path), limit=1)
