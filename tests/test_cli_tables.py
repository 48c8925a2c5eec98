"""Terminal tables of analyze-clip-stats read in 80 columns: nothing split, 3 significant digits."""

from __future__ import annotations

import io
import math
import re

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from clipctl import analysis
from clipctl.cli import app
from clipctl.render import analysis_tables, cell, print_all


def _short(value) -> str:
    """A value as the analysis tables print it: 3 significant digits."""
    return cell(float(value), ".3g")


NUMBER = re.compile(r"-?(?:\d+\.?\d*(?:e[+-]\d+)?|nan|inf)")


def _check(text: str, width: int, metrics, numbers) -> None:
    lines = text.splitlines()
    assert max(map(len, lines)) <= width, "\n" + text
    words = set(re.findall(r"[A-Za-z0-9_.+\-]+", text))
    for m in metrics:
        # Whole on one line: either in the table or in the legend.
        assert any(re.search(rf"(?<![\w]){re.escape(m)}(?![\w])", line) for line in lines), f"{m} split:\n{text}"
    for value in numbers:
        assert value in words or any(value in w for w in words), f"{value} split:\n{text}"


@pytest.fixture(scope="module")
def sim_runs(tmp_path_factory):
    from clipctl.simulate import DynamicsConfig, run_dynamics

    out = tmp_path_factory.mktemp("sim")
    run_dynamics(out, seeds=2, base=DynamicsConfig(steps=12))
    return out


@pytest.mark.parametrize("per_run", [False, True])
def test_cli_table_fits_80_columns(sim_runs, per_run):
    args = ["analyze-clip-stats", str(sim_runs)] + (["--per-run"] if per_run else [])
    result = CliRunner().invoke(app, args, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    per_run_df, per_group_df = analysis.analyze_runs([sim_runs])
    frame = per_run_df if per_run else per_group_df
    shown = [m for m in analysis.TABLE_METRICS if m in per_run_df]
    cols = shown if per_run else [f"{m}_mean" for m in shown]
    numbers = [_short(v) for c in cols for v in frame[c]]
    _check(result.output, 80, shown, numbers)
    # The old layout split "avg_clip_low_frac" and "entropy_change" at 80 columns.
    assert "avg_clip_low_frac" in result.output and "entropy_change " in result.output


def test_short_has_3_significant_digits():
    assert _short(0.091345) == "0.0913"
    assert _short(-1.23456) == "-1.23"
    assert _short(0.00123456) == "0.00123"
    assert _short(1.23456e-7) == "1.23e-07"
    assert _short(math.nan) == "nan" and _short(math.inf) == "inf"


def _frame(n_groups: int) -> tuple[pd.DataFrame, list[str]]:
    metrics = ["clip_high_attributed_dH_avg", "entropy_change", "avg_clip_low_frac"]
    rows = []
    for g in range(n_groups):
        row = {"group": f"eps_low=0.{g + 1}, eps_high=inf, reward=random_bernoulli", "n_runs": 3}
        for i, m in enumerate(metrics):
            row[f"{m}_mean"] = -0.000123456 * (g + 1) * (i + 1)
            row[f"{m}_std"] = 0.0000456789 * (g + 1) if g else math.nan
        rows.append(row)
    return pd.DataFrame(rows), metrics


@pytest.mark.parametrize("width", [40, 60, 80, 120, 200])
@pytest.mark.parametrize("n_groups", [1, 4, 12])
def test_layout_fits_any_width(width, n_groups):
    frame, metrics = _frame(n_groups)
    console = Console(file=io.StringIO(), width=width, record=True)
    print_all(console, analysis_tables(frame, per_run=False, metrics=metrics, title="t", width=width))
    text = console.export_text()
    numbers = [_short(v) for m in metrics for v in frame[f"{m}_mean"]]
    if width >= 60:
        _check(text, width, metrics, numbers)
    else:  # metric names may be abbreviated, with a legend naming them in full
        assert max(map(len, text.splitlines())) <= width, "\n" + text
        for n in numbers:
            assert n in text, f"{n} split:\n{text}"
    if width >= 120 and n_groups == 1:
        assert "reward=random_bernoulli" in text and "G1" not in text  # full headers when they fit
