"""clipctl.schema: the single definition of the logged columns, and docs/metrics.md generated from it."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

from clipctl import schema
from clipctl import simulate as sim
from clipctl.config import load_config
from clipctl.runlog import read_run
from clipctl.trainer import train

DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
DTYPES = {"float64", "int64", "bool", "string"}


def test_metrics_doc_is_generated_from_the_schema():
    assert DOC.read_text() == schema.render_metrics_md(), (
        "docs/metrics.md is out of date: run `python -m clipctl.schema > docs/metrics.md`"
    )


def test_schema_records_are_well_formed():
    for table in schema.TABLES:
        names = table.names
        assert len(names) == len(set(names)), table.name
        for col in table.columns:
            assert col.dtype in DTYPES and col.meaning.strip() and "|" not in col.name, col
    assert set(schema.column_names("simulated")) == {f"{k}_exact" for k in sim.EXACT_KEYS}
    assert set(schema.SUM_KEYS) <= set(schema.column_names("updates"))
    assert set(schema.STAT_KEYS) <= set(schema.column_names("updates")) & set(schema.column_names("steps"))
    assert set(schema.PROBE_KEYS) <= set(schema.column_names("steps"))


def test_schema_import_is_torch_free():
    code = "import sys, clipctl.schema; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def _read_dtype(series) -> str:
    kind = str(series.dtype)
    return "string" if kind in ("object", "str", "string") else kind


def _assert_dtypes(df, table: str, extra: tuple[str, ...] = ()):
    cols = {c.name: c.dtype for t in (table, *extra) for c in schema.TABLE[t].columns}
    assert set(df.columns) == set(cols), table
    wrong = {c: (_read_dtype(df[c]), cols[c]) for c in df.columns if _read_dtype(df[c]) != cols[c]}
    assert not wrong, f"{table}: (read, documented) dtypes differ: {wrong}"


def test_simulated_run_dtypes_match_the_schema(tmp_path):
    base = sim.DynamicsConfig(steps=2, samples=16, minibatches=2, actions=8)
    (path,) = sim.run_dynamics(tmp_path, grid=[(0.2, 0.2)], seeds=1, base=base)
    run = read_run(path)
    _assert_dtypes(run.steps, "steps", ("simulated",))
    _assert_dtypes(run.updates, "updates", ("simulated",))


def test_trained_run_dtypes_match_the_schema(tmp_path, fast_overrides):
    cfg = load_config(
        "tiny-cpu", [*fast_overrides, "train.steps=1", "log.token_sample_rate=0.2", "log.clip_probe_every=1"]
    )
    run = read_run(train(cfg, out=tmp_path, name="dtypes").run_dir)
    for table in ("steps", "updates", "samples", "tokens"):
        _assert_dtypes(getattr(run, table), table)


def test_update_rows_and_step_totals_by_hand():
    from clipctl import schema

    sums = {k: 0.0 for k in schema.SUM_KEYS}
    sums.update(n_tokens=4.0, n_clip_low=1.0)
    row = schema.update_row(0, 1, 2, 1e-3, loss=0.5, kl_sum=0.2, grad_norm=3.0, sums=sums, extra={"x_exact": 7.0})
    assert (row["epoch"], row["minibatch"], row["update"], row["lr"]) == (0, 1, 2, 1e-3)
    assert row["approx_kl"] == 0.2 / 4 and row["clip_low_frac"] == 0.25 and row["x_exact"] == 7.0
    assert row["skipped"] is False and row["n_tokens"] == 4.0
    skipped = schema.skipped_update_row(0, 0, 0, 1e-3)
    assert skipped["skipped"] is True and math.isnan(skipped["loss"]) and math.isnan(skipped["clip_low_frac"])
    assert set(skipped) == set(row) - {"x_exact"}
    totals = schema.Totals()
    totals.add(0.5, 0.2, sums, 3.0)
    totals.add(1.5, 0.6, {**sums, "n_clip_low": 0.0}, 1.0)
    m = totals.metrics()
    # loss and grad norm: means over optimizer steps; KL and fractions: over the step's 8 tokens.
    assert (m["loss"], m["grad_norm"], m["approx_kl"], m["clip_low_frac"]) == (1.0, 2.0, 0.1, 0.125)
    assert math.isnan(schema.Totals(skipped=2).metrics()["loss"])


def _valid_row(table: str, extra: tuple[str, ...] = ()) -> dict:
    values = {"float64": 0.5, "int64": 3, "bool": False, "string": "x"}
    return {c.name: values[c.dtype] for c in schema.columns_of(table, extra)}


def test_checked_writer_refuses_a_wrong_row_and_writes_nothing(tmp_path):
    import pytest

    from clipctl.runlog import RunWriter, part_path

    writer = RunWriter()
    good = _valid_row("updates")
    writer.part(tmp_path, "updates", 1, [good, good])
    assert part_path(tmp_path, "updates", 1).is_file()
    missing = {k: v for k, v in good.items() if k != "grad_norm"}
    cases = [
        ([good, missing], r"updates row 1: missing columns \['grad_norm'\], undocumented columns none"),
        ([{**good, "grad_nrom": 1.0}], r"updates row 0: missing columns none, undocumented columns \['grad_nrom'\]"),
        ([{**good, "loss": "0.5"}], r"updates row 0: loss='0.5' is not float64"),
        ([{**good, "epoch": 1.0}], r"updates row 0: epoch=1.0 is not int64"),
        ([{**good, "loss": True}], r"updates row 0: loss=True is not float64"),
        ([{**good, "skipped": 0}], r"updates row 0: skipped=0 is not bool"),
    ]
    for rows, message in cases:
        with pytest.raises(schema.RowError, match=message):
            writer.part(tmp_path, "updates", 2, rows)
        assert not part_path(tmp_path, "updates", 2).exists()
        assert [p.name for p in (tmp_path / "updates").iterdir()] == ["step-000001.parquet"]
    # The simulator's writer expects the exact columns too.
    with pytest.raises(schema.RowError, match="missing columns .*thm1_drift_exact"):
        RunWriter(extra=("simulated",)).part(tmp_path, "updates", 3, [good])
    RunWriter(extra=("simulated",)).part(tmp_path, "updates", 3, [_valid_row("updates", ("simulated",))])


def test_checked_rows_read_back_with_documented_dtypes(tmp_path):
    from clipctl.runlog import RunWriter, read_table

    row = _valid_row("samples")
    RunWriter().part(tmp_path, "samples", 1, [row, {**row, "gold": None}])
    df = read_table(tmp_path, "samples")
    _assert_dtypes(df, "samples")
    assert df["gold"].isna().tolist() == [False, True]


def test_steps_row_groups_cover_the_steps_table_once():
    groups = ("step", *schema.ENTROPY_KEYS, *schema.BATCH_KEYS, *schema.TOTALS_KEYS, *schema.KNOB_KEYS,
              *schema.PROBE_KEYS, *schema.TIMING_KEYS, "lr", "n_updates", "update_tokens")
    assert len(groups) == len(set(groups))
    assert set(groups) == set(schema.column_names("steps"))


def test_steps_row_by_hand_and_a_wrong_group_fails():
    import pytest

    batch = dict.fromkeys(schema.BATCH_KEYS, 0.0)
    kw = dict(
        entropy=schema.entropy_columns(2.0, 1.5, 1.9, 1.4), batch=batch, totals=schema.Totals(skipped=1),
        knobs=schema.knob_columns(0.2, math.inf, 0.0), probe=schema.unprobed_columns(), lr=1e-3, n_updates=1,
        update_tokens=40.0, timing=schema.timing_columns(rollout=1.0, update=2.0, probe=0.0, step=4.0, n_tokens=20.0),
    )
    row = schema.steps_row(3, **kw)
    assert set(row) == set(schema.column_names("steps"))
    assert (row["step"], row["entropy_post"], row["tokens_per_second"], row["skipped_updates"]) == (3, 1.9, 5.0, 1)
    assert math.isnan(row["entropy_target"]) and math.isnan(row["loss"]) and math.isinf(row["eps_high"])
    with pytest.raises(schema.RowError, match="the batch columns are"):
        schema.steps_row(3, **{**kw, "batch": {**batch, "reward_mean_typo": 0.0}})


def _sums(**values) -> dict:
    return {**schema.empty_sums(), "n_tokens": 1.0, **values}


def test_off_policy_fractions_by_hand():
    totals = schema.Totals()
    totals.add(0.0, 0.0, _sums(n_tokens=4.0, w_sum=4.0))  # the on-policy first update: r = 1, X and Y empty
    totals.add(0.0, 0.0, _sums(n_tokens=2.0, w_sum=2.0, w_sum_below=0.5, w_sum_above=0.25, n_below=1.0, n_above=1.0),
               on_policy=False)
    m = totals.metrics()
    assert m["ratio_below_frac_offpolicy"] == 0.25 and m["ratio_above_frac_offpolicy"] == 0.125  # 0.5 / 2, 0.25 / 2
    assert m["ratio_below_frac"] == 0.5 / 6 and m["ratio_above_frac"] == 0.25 / 6
    only_first = schema.Totals()
    only_first.add(0.0, 0.0, _sums(n_tokens=4.0, w_sum=4.0))
    assert math.isnan(only_first.metrics()["ratio_below_frac_offpolicy"])  # no off-policy update


def test_off_policy_fractions_match_a_naive_loop():
    import random

    rng = random.Random(3)
    for _ in range(20):
        pieces = [
            (k > 0, _sums(n_tokens=5.0, w_sum=w, w_sum_below=w * rng.random() / 2, w_sum_above=w * rng.random() / 2,
                          n_below=1.0, n_above=1.0))
            for k, w in enumerate(rng.uniform(1, 5) for _ in range(rng.randint(1, 6)))
        ]
        totals = schema.Totals()
        for off, s in pieces:
            totals.add(0.0, 0.0, s, on_policy=not off)
        num_b = num_a = den = 0.0
        for off, s in pieces:
            if off:
                num_b, num_a, den = num_b + s["w_sum_below"], num_a + s["w_sum_above"], den + s["w_sum"]
        m = totals.metrics()
        if den == 0:
            assert math.isnan(m["ratio_below_frac_offpolicy"])
        else:
            assert math.isclose(m["ratio_below_frac_offpolicy"], num_b / den, rel_tol=1e-12)
            assert math.isclose(m["ratio_above_frac_offpolicy"], num_a / den, rel_tol=1e-12)
