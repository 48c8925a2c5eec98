"""Compaction of the Parquet run log: merged segments, every kill point, resume on top of them."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from clipctl import runlog
from clipctl.runlog import (
    TABLES,
    atomic_write_json,
    compact,
    damaged_parts,
    drop_parts_after,
    logged_steps,
    read_run,
    table_files,
)
from runlogs import write_part


class Killed(Exception):
    pass


def write_steps(run, first, last):
    for s in range(first, last + 1):
        write_part(run, "updates", s, [{"step": s, "epoch": 0, "minibatch": m, "loss": float(s * 10 + m)} for m in (0, 1)])
        if s % 2 == 0:
            write_part(run, "samples", s, [{"step": s, "response": f"r{s}-{g}", "reward": float(g)} for g in range(3)])
        write_part(run, "steps", s, [{"step": s, "entropy": 1.0 / s, "n_updates": 2}])


def make_run(tmp_path, steps, name="run"):
    run = tmp_path / name
    atomic_write_json(run / "run.json", {"config": {}})
    write_steps(run, 1, steps)
    return run


def tables(run):
    r = read_run(run)
    out = {}
    for t in TABLES:
        df = getattr(r, t)
        out[t] = df if df.empty else df.sort_values(["step", *(["minibatch"] if t == "updates" else [])]).reset_index(drop=True)
    return out


def assert_tables(run, expected, upto=None):
    got = tables(run)
    for t in TABLES:
        want = expected[t]
        if upto is not None and not want.empty:
            want = want[want["step"] <= upto].reset_index(drop=True)
        if want.empty:
            assert got[t].empty, t
        else:
            pd.testing.assert_frame_equal(got[t], want, check_dtype=True)


def n_crash_points(monkeypatch, action) -> int:
    calls = []
    monkeypatch.setattr(runlog, "_crash_point", lambda what: calls.append(what))
    action()
    monkeypatch.setattr(runlog, "_crash_point", lambda what: None)
    return len(calls)


def crash_at(monkeypatch, k):
    seen = []

    def point(what):
        seen.append(what)
        if len(seen) == k:
            raise Killed(what)

    monkeypatch.setattr(runlog, "_crash_point", point)


def test_compaction_keeps_every_row_and_leaves_few_files(tmp_path):
    run = make_run(tmp_path, 8)
    expected = tables(run)
    for upto in (2, 4, 6):
        compact(run, upto)
    # Binary-counter growth: 1-4 (absorbed 1-2), 5-6, then the unmerged parts 7, 8.
    assert [(f.lo, f.hi) for f in table_files(run, "steps")] == [(1, 4), (5, 6), (7, 7), (8, 8)]
    assert_tables(run, expected)
    compact(run, 8, final=True)
    for t in ("steps", "updates", "samples"):
        assert [(f.lo, f.hi) for f in table_files(run, t)] == [(1, 8) if t != "samples" else (2, 8)]
        assert len(list((run / t).iterdir())) == 1
    assert_tables(run, expected)
    assert logged_steps(run) == list(range(1, 9))
    assert damaged_parts(run, 8) == []


def test_superseded_files_are_skipped_by_readers(tmp_path):
    run = make_run(tmp_path, 4)
    expected = tables(run)
    # What a kill right after the rename leaves: the segment and the parts it holds.
    merged = pd.concat([pd.read_parquet(runlog.part_path(run, "steps", s)) for s in (1, 2, 3)], ignore_index=True)
    runlog.write_parquet_atomic(merged, runlog.segment_path(run, "steps", 1, 3))
    assert_tables(run, expected)
    assert logged_steps(run) == [1, 2, 3, 4]
    (run / "steps" / ".steps-000001-000004.parquet.x.tmp").write_bytes(b"half")
    compact(run, 4, final=True)
    assert sorted(p.name for p in (run / "steps").iterdir()) == ["steps-000001-000004.parquet"]
    assert_tables(run, expected)


def test_overlapping_files_are_refused(tmp_path):
    run = make_run(tmp_path, 4)
    for lo, hi in ((1, 2), (2, 3)):
        frame = pd.read_parquet(runlog.part_path(run, "steps", lo))
        runlog.write_parquet_atomic(frame, runlog.segment_path(run, "steps", lo, hi))
    with pytest.raises(runlog.RunDirError, match="overlaps"):
        read_run(run)


def test_no_merge_over_a_gap_in_the_steps_table(tmp_path):
    run = make_run(tmp_path, 4)
    runlog.part_path(run, "steps", 3).unlink()
    compact(run, 4, final=True)
    assert [(f.lo, f.hi) for f in table_files(run, "steps")] == [(1, 1), (2, 2), (4, 4)]
    assert [s for s, _, why in damaged_parts(run, 4) if why == "missing"] == [3]


def test_a_damaged_part_is_left_for_resume(tmp_path):
    run = make_run(tmp_path, 4)
    runlog.part_path(run, "updates", 3).write_bytes(b"not parquet")
    compact(run, 4, final=True)
    assert len(table_files(run, "updates")) == 4  # untouched
    assert [(s, why.split()[0]) for s, _, why in damaged_parts(run, 4)] == [(3, "unreadable")]


def test_drop_after_truncates_a_segment(tmp_path):
    run = make_run(tmp_path, 6)
    expected = tables(run)
    compact(run, 6, final=True)
    drop_parts_after(run, 3)
    assert [(f.lo, f.hi) for f in table_files(run, "steps")] == [(1, 3)]
    assert_tables(run, expected, upto=3)
    drop_parts_after(run, 1)
    assert_tables(run, expected, upto=1)
    assert [(f.lo, f.hi) for f in table_files(run, "samples")] == []


# Each action is what the writer does at one moment: a checkpoint's compaction,
# the end of a run, a resume that goes back into a segment.
ACTIONS = {
    "checkpoint": (lambda run: compact(run, 4), None),
    "second-checkpoint": (lambda run: (compact(run, 2), compact(run, 4))[-1], None),
    "final": (lambda run: compact(run, 6, final=True), None),
    "drop-into-segment": (lambda run: drop_parts_after(run, 3), 3),
}


@pytest.mark.parametrize("action", list(ACTIONS))
def test_a_kill_at_any_point_loses_nothing_and_repeats_nothing(tmp_path, monkeypatch, action):
    act, upto = ACTIONS[action]
    base = make_run(tmp_path, 6, "base")
    expected = tables(base)
    if action == "drop-into-segment":
        compact(base, 4)
        compact(base, 6, final=True)
    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    n = n_crash_points(monkeypatch, lambda: act(probe))
    assert n >= 3
    for k in range(1, n + 1):
        run = tmp_path / f"k{k}"
        shutil.copytree(base, run)
        crash_at(monkeypatch, k)
        with pytest.raises(Killed):
            act(run)
        monkeypatch.setattr(runlog, "_crash_point", lambda what: None)
        # Killed here: a reader sees every row once (the action's own target after a drop, or all rows).
        got = tables(run)
        for t in TABLES:
            rows = got[t]
            if rows.empty:
                continue
            assert not rows.duplicated().any(), (k, t)
            want = expected[t]
            if upto is None:
                pd.testing.assert_frame_equal(rows, want)
            else:  # a drop deletes later rows file by file, as before compaction: a prefix of them may remain
                pd.testing.assert_frame_equal(rows[rows["step"] <= upto].reset_index(drop=True), want[want["step"] <= upto].reset_index(drop=True))
        # The next resume (drop) or compaction finishes the job.
        act(run)
        assert_tables(run, expected, upto=upto)
        drop_parts_after(run, 2)
        assert_tables(run, expected, upto=2)
        write_steps(run, 3, 6)
        compact(run, 6, final=True)
        assert_tables(run, expected)
        assert all(len(list((run / t).iterdir())) == 1 for t in ("steps", "updates", "samples"))


def test_train_resumes_exactly_after_a_kill_during_compaction(tmp_path, fast_overrides, monkeypatch):
    from clipctl.config import load_config
    from clipctl.trainer import TIMING_COLUMNS, train

    cfg = load_config("tiny-cpu", [*fast_overrides, "train.steps=4", "train.save_every=2"])

    # The reference: the same run with compaction switched off (today's layout).
    with monkeypatch.context() as m:
        m.setattr(runlog, "compact_table", lambda *a, **k: None)
        plain = read_run(train(cfg, out=tmp_path, name="plain").run_dir)
    assert len(list((plain.path / "steps").iterdir())) == 4

    # Killed in the final compaction, right after the steps segment is renamed in.
    seen = []

    def point(what):
        seen.append(what)
        if what == "compact steps: delete step-000003.parquet":
            raise Killed(what)

    monkeypatch.setattr(runlog, "_crash_point", point)
    with pytest.raises(Killed):
        train(cfg, out=tmp_path, name="killed")
    monkeypatch.setattr(runlog, "_crash_point", lambda what: None)
    run_dir = tmp_path / "killed"
    assert {f.path.name for f in table_files(run_dir, "steps")} == {"steps-000001-000004.parquet"}
    assert (run_dir / "steps" / "step-000003.parquet").exists()  # superseded, not yet deleted
    killed = read_run(run_dir)
    for t in ("steps", "updates", "samples"):
        a, b = getattr(plain, t), getattr(killed, t)
        drop = [c for c in TIMING_COLUMNS if c in a]
        pd.testing.assert_frame_equal(a.drop(columns=drop), b.drop(columns=drop))

    # Resume goes back to a checkpoint inside the segment (as after a damaged part) and rebuilds exactly.
    shutil.rmtree(run_dir / "checkpoints" / "step-4")
    resumed = train(resume=run_dir)
    assert resumed.first_step == 3
    again = read_run(run_dir)
    for t in ("steps", "updates", "samples"):
        assert len(list((run_dir / t).iterdir())) == 1, t
        a, b = getattr(plain, t), getattr(again, t)
        drop = [c for c in TIMING_COLUMNS if c in a]
        a, b = a.drop(columns=drop), b.drop(columns=drop)
        assert list(a.columns) == list(b.columns) and (a.dtypes == b.dtypes).all()
        num = [c for c in a if pd.api.types.is_numeric_dtype(a[c])]
        np.testing.assert_allclose(a[num].to_numpy(float), b[num].to_numpy(float), rtol=0, atol=1e-6, equal_nan=True)


def test_files_read_back_as_pandas_reads_them(tmp_path):
    frame = pd.DataFrame({
        "step": [1, 2], "s": ["a", None], "b": [True, False], "g": [None, None], "f": [1.0, float("nan")],
        "i": np.array([3, 4], dtype=np.int32),
    })
    path = tmp_path / "x.parquet"
    runlog.write_parquet_atomic(frame, path)
    pd.testing.assert_frame_equal(runlog._read_rows(path), pd.read_parquet(path))
