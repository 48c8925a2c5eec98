"""scripts/control_table.py: the paired arm tables of docs/entropy-control.md, on constructed per-seed rows."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest

_spec = importlib.util.spec_from_file_location(
    "control_table", Path(__file__).resolve().parents[1] / "scripts" / "control_table.py"
)
control_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(control_table)


def rows(arm: str, errs: list[float], target="1.9") -> list[dict]:
    return [dict(reward="random_bernoulli", target=target, seed=s, arm=arm, track_err_pct=e, overshoot_pct=0.0,
                 settling_steps=math.nan, reward_last_half=0.5, collapsed=False, exploded=False)
            for s, e in zip((2, 3, 4), errs)]


def test_versus_is_the_paired_difference_by_hand():
    df = pd.DataFrame(rows("new", [10.0, 20.0, 15.0]) + rows("old", [14.0, 23.0, 20.0]) + rows("fixed 0.2/0.2", [1, 2, 3]))
    vs = control_table.versus_table(df, "new", "old").iloc[0]
    # differences -4, -3, -5: mean -4, sd 1, SE 1/sqrt(3); t(0.975, 2) = 4.303
    assert vs["n_pairs"] == 3 and vs["mean"] == pytest.approx(-4.0)
    assert vs["se"] == pytest.approx(1 / math.sqrt(3))
    assert vs["ci_high"] == pytest.approx(-4.0 + 4.302653 / math.sqrt(3), abs=1e-5)
    assert vs["reading"] == "better" and (vs["n_pos"], vs["n_neg"]) == (0, 3)
    text = control_table.versus_markdown(control_table.versus_table(df, "new", "old"))
    assert "| random_bernoulli, 1.9 | 3 | -4.0 [-6.5, -1.5] | 0+/3- | better |" in text
    assert control_table.versus_table(df, "new", "nobody").empty


def test_a_table_without_fixed_arms_has_no_baseline():
    df = pd.DataFrame(rows("new", [10.0, 20.0, 15.0]) + rows("old", [14.0, 23.0, 20.0]))
    table = control_table.arm_table(df)
    assert table["best_fixed"].isna().all()
    assert control_table.markdown(table).count("(no fixed arm)") == 2
