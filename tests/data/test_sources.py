"""Readers (data.sources): one JSON-lines reader, one Parquet reader, one suffix list for every command."""

import json

import pandas as pd
import pytest

from clipctl.config import load_config
from clipctl.data.registry import BENCHMARKS, Problem, load_benchmark, load_examples, read_table
from clipctl.data.sources import LOCAL_SUFFIXES, read_jsonl, read_local
from clipctl.errors import DataError

ROWS = [{"id": f"p{i}", "question": f"problem {i}", "problem": f"problem {i}", "answer": str(i)} for i in range(3)]


def _write(path, rows):
    if path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    else:  # .jsonl and .json are both JSON lines
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_shipped_gsm8k():
    assert len(read_table("gsm8k", "train")) == 7473
    assert len(read_table("gsm8k", "test")) == 1319
    with pytest.raises(DataError, match="no split 'dev'"):
        read_table("gsm8k", "dev")


def test_one_suffix_list_for_training_and_eval(tmp_path, char_tokenizer):
    assert LOCAL_SUFFIXES == (".jsonl", ".json", ".parquet")
    for suffix in LOCAL_SUFFIXES:
        path = _write(tmp_path / f"d{suffix}", ROWS)
        assert read_local(path) == ROWS
        # Training reads it ...
        cfg = load_config("tiny-cpu", [f"data.name={path}"]).data
        assert [e.gold for e in load_examples(cfg, char_tokenizer, need_gold=True)] == ["0", "1", "2"]
        # ... and so does eval-passk's loader, a .json JSON-lines file included.
        assert load_benchmark(str(path)) == [Problem(f"p{i}", f"problem {i}", str(i)) for i in range(3)]


def test_unsupported_suffix_names_every_accepted_one(tmp_path):
    (tmp_path / "d.csv").write_text("problem,answer\n")
    with pytest.raises(DataError, match=r"use a \.jsonl/\.json \(JSON lines\) or \.parquet file"):
        load_benchmark(str(tmp_path / "d.csv"))
    with pytest.raises(DataError, match=r"a local \.jsonl, \.json or \.parquet path also works"):
        load_benchmark("nope")
    with pytest.raises(DataError, match=r"dataset file '.*missing\.json' not found"):
        read_table(str(tmp_path / "missing.json"))


def test_errors(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"question": 1}\n{oops\n')
    with pytest.raises(DataError, match="bad.jsonl:2 is not valid JSON"):
        read_table(str(tmp_path / "bad.jsonl"))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="cannot read Parquet file"):
        read_table(str(tmp_path / "bad.parquet"))
    (tmp_path / "blank.jsonl").write_text('\n{"a": 1}\n\n')
    assert read_jsonl(tmp_path / "blank.jsonl") == [{"a": 1}]


def test_training_and_evaluation_read_through_one_layer(tmp_path):
    # The benchmarks are shipped datasets like any other: trainable by name.
    for name, bench in BENCHMARKS.items():
        assert len(read_table(name, bench.eval_split)) == len(load_benchmark(name))
    # One JSON-lines reader, one message, whichever command reads the file.
    (tmp_path / "bad.jsonl").write_text('{"problem": "p", "answer": "1"}\n[1, 2]\n')
    for read in (lambda p: read_table(str(p)), lambda p: load_benchmark(str(p))):
        with pytest.raises(DataError, match=r"bad.jsonl:2 is not a JSON object"):
            read(tmp_path / "bad.jsonl")
