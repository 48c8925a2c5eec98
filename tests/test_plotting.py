"""plotting.py: series, legends and axis labels through matplotlib objects; every kind writes a file."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from clipctl import plotting
from clipctl.cli import app
from clipctl.runlog import write_parquet_atomic

from test_analysis import default_steps, make_run, probe_cols

runner = CliRunner()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def runs(tmp_path):
    """Two clip settings x two seeds, with probe columns and an eval summary."""
    for eps_high in (0.2, math.inf):
        for seed in range(2):
            steps = probe_cols(default_steps(entropy=[2.0 + seed, 1.9, 1.8, 1.7]))
            run_dir = make_run(tmp_path / "runs", f"eh{eps_high}-s{seed}", eps_high=eps_high, seed=seed, steps=steps)
            summary = pd.DataFrame(
                {"step": [0, 4, 0, 4], "dataset": ["gsm8k", "gsm8k", "math500", "math500"], "n": 8, "k": 8,
                 "temperature": 0.6, "pass_at_k": [0.5, 0.6, 0.2, 0.25], "mean_at_n": [0.2, 0.3, 0.1, 0.1],
                 "ci_low": 0.0, "ci_high": 1.0}
            )
            write_parquet_atomic(summary, run_dir / "eval" / "summary.parquet")
    return tmp_path / "runs"


def labelled_lines(ax):
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_entropy_figure(runs):
    fig = plotting.plot_runs([str(runs)], "entropy")
    (ax,) = fig.axes
    assert len(labelled_lines(ax)) == 2  # one mean line per group, not per run
    assert legend_texts(ax) == ["eps_low=0.2, eps_high=0.2", "eps_low=0.2, eps_high=inf"]
    assert ax.get_ylabel() == "entropy (nats)"
    assert ax.get_xlabel() == "training step"
    line = labelled_lines(ax)[0]
    assert list(line.get_ydata()) == pytest.approx([2.5, 1.9, 1.8, 1.7])  # mean of the two seeds
    assert len(ax.collections) == 2  # one band per group


def test_normalize_smooth_and_tokens_axis(runs):
    fig = plotting.plot_runs([str(runs)], "entropy", normalize=True, smooth=2, x="tokens", band="sd")
    (ax,) = fig.axes
    assert "initial entropy" in ax.get_ylabel()
    assert ax.get_xlabel().startswith("tokens")
    line = labelled_lines(ax)[1]  # eps_high=inf, seeds start at 2.0 and 3.0
    assert list(line.get_xdata()) == [10.0, 30.0, 60.0, 100.0]  # cumulative n_tokens
    first = (1.0 + 1.0) / 2
    second = ((1.0 + 1.9 / 2.0) / 2 + (1.0 + 1.9 / 3.0) / 2) / 2  # rolling mean of 2 per run, then mean
    assert list(line.get_ydata())[:2] == pytest.approx([first, second])


def test_group_by_another_key_labels_with_it(runs):
    fig = plotting.plot_runs([str(runs)], "reward", group_by="train.seed")
    (ax,) = fig.axes
    assert legend_texts(ax) == ["train.seed=0", "train.seed=1"]
    assert ax.get_ylabel() == "mean reward"


@pytest.mark.parametrize(
    "kind, n_axes, series_per_axes",
    [
        ("clip", 2, [2, 2]),
        ("theory", 4, [2, 2, 2, 0]),  # thm2_high is all NaN in the fixture
        ("attribution", 3, [4, 4, 2]),
        ("dashboard", 4, [2, 4, 2, 2]),
        ("passk", 2, [4, 4]),  # per dataset: pass@k and mean@n for two groups
    ],
)
def test_multi_panel_kinds(runs, kind, n_axes, series_per_axes):
    fig = plotting.plot_runs([str(runs)], kind)
    axes = fig.axes
    assert len(axes) == n_axes
    assert [len(labelled_lines(ax)) for ax in axes] == series_per_axes
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()


def test_axis_units(runs):
    clip = plotting.plot_runs([str(runs)], "clip")
    assert {ax.get_ylabel() for ax in clip.axes} == {"fraction of tokens"}
    attribution = plotting.plot_runs([str(runs)], "attribution")
    assert [ax.get_ylabel() for ax in attribution.axes] == [
        "entropy change per step (nats)", "cumulative entropy change (nats)", "entropy (nats)",
    ]
    labels = legend_texts(attribution.axes[0])
    assert "eps_low=0.2, eps_high=inf (clip-low)" in labels and "eps_low=0.2, eps_high=0.2 (clip-high)" in labels
    passk = plotting.plot_runs([str(runs)], "passk")
    assert "eps_low=0.2, eps_high=0.2: pass@8" in legend_texts(passk.axes[0])
    gsm8k_pass = labelled_lines(passk.axes[0])[0]
    assert list(gsm8k_pass.get_xdata()) == [0.0, 4.0] and list(gsm8k_pass.get_ydata()) == pytest.approx([0.5, 0.6])
    assert passk.axes[0].get_ylabel() == "score (fraction of problems)"


def test_cumulative_attribution_sums_probed_steps(runs):
    fig = plotting.plot_runs([str(runs)], "attribution")
    cum = labelled_lines(fig.axes[1])[0]  # eps_high=0.2, clip-low; both seeds planted alike
    # Shapley clip-low recomputed from the replays (tests/test_analysis.py): 0.15625, (not probed), -0.25, 0
    assert list(cum.get_ydata()) == pytest.approx([0.15625, 0.15625, -0.09375, -0.09375])


@pytest.mark.parametrize("kind", plotting.KINDS)
def test_every_kind_writes_a_png(runs, tmp_path, kind):
    out = tmp_path / "fig" / f"{kind}.png"
    result = runner.invoke(app, ["plot", str(runs), "--kind", kind, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_svg_and_pdf(runs, tmp_path):
    plotting.plot_to_file([str(runs)], "entropy", tmp_path / "e.svg")
    plotting.plot_to_file([str(runs)], "entropy", tmp_path / "e.pdf")
    assert b"<svg" in (tmp_path / "e.svg").read_bytes()[:500]
    assert (tmp_path / "e.pdf").read_bytes()[:5] == b"%PDF-"


def test_plot_errors(runs, tmp_path):
    bare = make_run(tmp_path / "bare", "r")  # no probe columns, no eval summary
    cases = [
        (["--kind", "nope", "--out", str(tmp_path / "x.png")], "'nope' is not one of 'entropy', 'clip'"),
        (["--kind", "entropy", "--out", str(tmp_path / "x.jpg")], "must end in one of .png, .svg, .pdf"),
        (["--kind", "entropy", "--out", "/proc/clipctl/x.png"], "cannot write"),
        (["--kind", "entropy", "--out", str(tmp_path / "x.png"), "-g", "nope.key"], "unknown group key"),
        (["--kind", "entropy", "--out", str(tmp_path / "x.png"), "--x", "time"], "'--x': 'time' is not one of 'step', 'tokens'"),
        (["--kind", "entropy", "--out", str(tmp_path / "x.png"), "--smooth", "0"], "--smooth must be at least 1"),
    ]
    for args, needle in cases:
        result = runner.invoke(app, ["plot", str(runs), *args])
        out = result.output.strip()
        assert result.exit_code != 0 and out.startswith("Error:") and needle in out, out
        assert "Traceback" not in out and len(out.splitlines()) == 1
    for kind, needle in (("attribution", "no probed steps"), ("passk", "eval/summary.parquet")):
        result = runner.invoke(app, ["plot", str(bare), "--kind", kind, "--out", str(tmp_path / "y.png")])
        assert result.exit_code != 0 and result.output.startswith("Error:") and needle in result.output
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()


def test_long_legend_labels_wrap_at_part_boundaries():
    short = "eps_low=0.2, eps_high=0.2"
    assert plotting.wrap_label(short) == short  # fits: unchanged
    long = "eps_low=0.2, eps_high=0.2, algo.controller_ki=1, algo.controller_kp=4, controller=clip"
    wrapped = plotting.wrap_label(long, width=30)
    assert wrapped == "eps_low=0.2, eps_high=0.2,\nalgo.controller_ki=1,\nalgo.controller_kp=4,\ncontroller=clip"
    assert wrapped.replace(",\n", ", ") == long  # nothing lost, only line breaks added
    one_part = "x" * 80
    assert plotting.wrap_label(one_part, width=30) == one_part  # never broken inside a part
