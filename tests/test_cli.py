"""The command line: help for every command, one-line errors, the train entry point."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from clipctl.cli import app

runner = CliRunner()


def command_names() -> list[str]:
    import typer.main

    group = typer.main.get_command(app)
    return sorted(group.commands)


def test_every_command_has_help():
    names = command_names()
    assert {"train", "presets"} <= set(names)
    for name in names:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Usage" in result.output


def all_commands() -> list[list[str]]:
    """Every command path of the app, groups (``simulate``) and their sub-commands included."""
    import typer.main

    def walk(group, path):
        for name, cmd in sorted(group.commands.items()):
            yield [*path, name]
            if hasattr(cmd, "commands"):
                yield from walk(cmd, [*path, name])

    return list(walk(typer.main.get_command(app), []))


def test_every_command_has_an_example():
    paths = all_commands()
    assert ["simulate", "check"] in paths and ["simulate", "dynamics"] in paths
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, path
        assert "Example:" in result.output and "clipctl " + " ".join(path) in result.output, path


def test_usage_errors_are_one_line():
    result = runner.invoke(app, ["plot", "runs", "--out", "p.png", "--kind", "bogus"])
    assert_one_line_error(result, "'bogus' is not one of 'entropy'")
    assert_one_line_error(runner.invoke(app, ["bogus"]), "No such command 'bogus'")
    assert_one_line_error(runner.invoke(app, ["simulate", "dynamics"]), "Missing option '--out'")


def test_choices_are_the_registries_names():
    from clipctl import analysis, cli, plotting, simulate

    assert tuple(cli.PlotKind) == plotting.KINDS and tuple(cli.Band) == plotting.BANDS
    assert tuple(cli.XAxis) == analysis.X_AXES and tuple(cli.TableFormat) == analysis.TABLE_FORMATS
    assert tuple(cli.Optimizer) == simulate.OPTIMIZERS and tuple(cli.SimReward) == tuple(simulate.REWARD_KINDS)
    assert {"hf", "vllm"} <= set(cli.Engine) and "float32" in tuple(cli.Dtype) and "gsm8k" in tuple(cli.Grader)


STARTUP_PROBE = """
import sys
from typer.testing import CliRunner
from clipctl.cli import app
for args in (["--help"], ["presets"], ["simulate", "--help"]):
    assert CliRunner().invoke(app, args).exit_code == 0, args
print(",".join(m for m in ("torch", "matplotlib") if m in sys.modules))
"""


def test_help_and_presets_do_not_import_torch():
    """Choices read their registries when parsed or shown, so a light command starts fast."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", STARTUP_PROBE], capture_output=True, text=True, env=env, timeout=300, check=True)
    assert out.stdout.strip() == "", out.stdout


def assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code != 0
    out = result.output.strip()
    assert out.startswith("Error: "), out
    assert fragment in out, out
    assert "Traceback" not in out
    assert len(out.splitlines()) == 1, out


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--set", "algo.nope=1"], "unknown config key 'algo.nope'"),
        (["--preset", "missing-preset"], "unknown preset 'missing-preset'"),
        (["--set", "algo.eps_low=0"], "algo.eps_low=0.0 must be in (0, 1]"),
        (["--set", "algo.eps_low=1.2"], "must be in (0, 1]"),
        (["--set", "algo.eps_high=-1"], "algo.eps_high=-1.0 must be in (0, inf]"),
        (["--set", "train.minibatch_prompts=3"], "must be divisible by train.minibatch_prompts (3)"),
        (["--set", "data.name=/nonexistent/file.jsonl"], "dataset file '/nonexistent/file.jsonl' not found"),
    ],
)
def test_train_bad_input(tmp_path, args, fragment):
    result = runner.invoke(app, ["train", "--out", str(tmp_path), "-q", *args])
    assert_one_line_error(result, fragment)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_missing_column(tmp_path, quick_model_dir):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    result = runner.invoke(
        app,
        ["train", "--out", str(tmp_path / "runs"), "-q", "--set", f"model.path={quick_model_dir}",
         "--set", f"data.name={data}", "--set", "reward.kind=gsm8k"],
    )
    assert_one_line_error(result, "has no column 'question' (columns: problem, answer); set data.prompt_col")


def test_unreadable_resume_dir(tmp_path):
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "nope"), "-q"])
    assert_one_line_error(result, "does not exist")
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "empty"), "-q"])
    assert_one_line_error(result, "has no run.json")


def test_unloadable_model(tmp_path):
    result = runner.invoke(app, ["train", "--out", str(tmp_path), "-q", "--set", f"model.path={tmp_path / 'nomodel'}"])
    assert_one_line_error(result, "cannot load tokenizer")


def test_debug_shows_traceback(tmp_path):
    result = runner.invoke(app, ["train", "--debug", "--set", "algo.nope=1"])
    assert result.exit_code != 0
    assert result.exception is not None and "algo.nope" in str(result.exception)


def test_presets_list_and_show():
    result = runner.invoke(app, ["presets"])
    assert result.exit_code == 0 and "tiny-cpu" in result.output and "paper-random-reward" in result.output
    result = runner.invoke(app, ["presets", "tiny-cpu", "--set", "algo.eps_high=inf"])
    assert result.exit_code == 0
    assert "eps_high = inf" in result.output


def test_train_writes_a_run_and_prints_summary(tmp_path, fast_overrides):
    args = ["train", "--out", str(tmp_path), "--name", "cli", "-q", "--set", "train.steps=2"]
    for o in fast_overrides:
        args += ["--set", o]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "entropy" in result.output and "clip_low_frac" in result.output
    assert sorted(p.name for p in (tmp_path / "cli" / "steps").iterdir()) == ["steps-000001-000002.parquet"]  # compacted
    # The same name again is refused, pointing at --resume.
    again = runner.invoke(app, args)
    assert_one_line_error(again, "--resume")
