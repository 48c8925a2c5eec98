import json
import os

import pandas as pd
import pytest

from clipctl.errors import RunDirError
from clipctl.runlog import (
    atomic_write_json,
    drop_parts_after,
    read_run,
    write_parquet_atomic,
)
from runlogs import write_part


def make_run(tmp_path, steps=3):
    run = tmp_path / "run"
    atomic_write_json(run / "run.json", {"config": {"algo": {"eps_low": 0.2}}})
    for s in range(1, steps + 1):
        write_part(run, "steps", s, [{"step": s, "entropy": 1.0 / s}])
        write_part(run, "updates", s, [{"step": s, "epoch": 0, "minibatch": m, "loss": float(m)} for m in (1, 0)])
    return run


def test_round_trip(tmp_path):
    run = read_run(make_run(tmp_path))
    assert list(run.steps["step"]) == [1, 2, 3]
    assert run.steps["entropy"].tolist() == pytest.approx([1.0, 0.5, 1 / 3])
    assert list(run.updates["minibatch"]) == [0, 1, 0, 1, 0, 1]
    assert run.samples.empty and run.tokens.empty
    assert run.config == {"algo": {"eps_low": 0.2}}


def test_drop_parts_after(tmp_path):
    path = make_run(tmp_path, steps=5)
    drop_parts_after(path, 2)
    run = read_run(path)
    assert list(run.steps["step"]) == [1, 2]
    assert set(run.updates["step"]) == {1, 2}


def test_atomic_write_leaves_no_temp_and_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "t.parquet"
    write_parquet_atomic(pd.DataFrame({"a": [1]}), target)

    class Boom:
        def to_parquet(self, *a, **k):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_parquet_atomic(Boom(), target)
    assert pd.read_parquet(target)["a"].tolist() == [1]
    assert os.listdir(tmp_path) == ["t.parquet"]


def test_stray_temp_files_are_ignored(tmp_path):
    path = make_run(tmp_path, steps=2)
    (path / "steps" / ".step-000003.parquet.abc.tmp").write_bytes(b"half a file")
    assert len(read_run(path).steps) == 2


@pytest.mark.parametrize("setup", ["missing", "no_run_json", "bad_json"])
def test_unreadable_run_dirs(tmp_path, setup):
    path = tmp_path / "r"
    if setup != "missing":
        path.mkdir()
    if setup == "bad_json":
        (path / "run.json").write_text("{not json")
    with pytest.raises(RunDirError) as e:
        read_run(path)
    assert "\n" not in str(e.value)


def test_json_written_atomically(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"a": float("inf")})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": float("inf")}


def test_read_columns_equals_the_frame_it_replaces(tmp_path):
    # Float arrays of the asked columns, rows by step, NaN where a file lacks a column,
    # a column no file has left out: what read_table gives, without the DataFrame.
    import numpy as np

    from clipctl.runlog import read_columns, read_table

    run = tmp_path / "r"
    write_part(run, "steps", 2, pd.DataFrame({"step": [2], "entropy": [1.5], "n": [7]}))
    write_part(run, "steps", 1, pd.DataFrame({"step": [1], "entropy": [2.0]}))
    write_part(run, "steps", 3, pd.DataFrame({"step": [3], "entropy": [None], "n": [9]}))
    cols = read_columns(run, "steps", ["step", "entropy", "n", "absent"])
    assert list(cols) == ["step", "entropy", "n"]
    np.testing.assert_array_equal(cols["step"], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(cols["entropy"], [2.0, 1.5, np.nan])
    np.testing.assert_array_equal(cols["n"], [np.nan, 7.0, 9.0])
    frame = read_table(run, "steps").sort_values("step")
    np.testing.assert_array_equal(cols["n"], frame["n"].to_numpy(dtype=float, na_value=np.nan))
