"""Sweeps: expansion, naming, validation, commands, scheduling and resume.

Fast tests replace the training subprocess with a fake (``sweep._launch``)
that writes a finished or partial run folder; the slow ones run the real
``clipctl train`` on the built-in tiny model.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from clipctl import sweep as sw
from clipctl.cli import app
from clipctl.config import load_config
from runlogs import fake_run_folder

runner = CliRunner()

GRID_2X2 = """
name = "{name}"
preset = "tiny-cpu"
seeds = [0]

[set]
"train.steps" = {steps}
"log.samples_every" = 0
"log.clip_probe_every" = 0
{extra_set}

[grid]
"algo.eps_low" = [0.2, 1.0]
"algo.eps_high" = [0.2, inf]
"""


def write_sweep(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def grid_file(tmp_path: Path, name: str = "g", steps: int = 2, extra_set: str = "") -> Path:
    return write_sweep(tmp_path, GRID_2X2.format(name=name, steps=steps, extra_set=extra_set), f"{name}.toml")


# ---------------------------------------------------------------- expansion and naming


def test_expand_grid_names_order_and_overrides(tmp_path):
    spec = sw.load_sweep(grid_file(tmp_path))
    runs = sw.expand(spec)
    assert [r.name for r in runs] == [
        "eps_low=0.2,eps_high=0.2,seed=0",
        "eps_low=0.2,eps_high=inf,seed=0",
        "eps_low=1.0,eps_high=0.2,seed=0",
        "eps_low=1.0,eps_high=inf,seed=0",
    ]
    assert runs[1].overrides == (
        "train.steps=2", "log.samples_every=0", "log.clip_probe_every=0",
        "algo.eps_low=0.2", "algo.eps_high=inf", "train.seed=0",
    )
    assert runs[1].values == {"algo.eps_low": 0.2, "algo.eps_high": math.inf, "train.seed": 0}
    cfg = sw.check_runs(spec, runs)[runs[1].name]
    assert cfg.algo.eps_high == math.inf and cfg.train.steps == 2


def test_seeds_are_the_outer_loop(tmp_path):
    path = write_sweep(tmp_path, 'preset = "tiny-cpu"\nseeds = [3, 4]\n[grid]\n"algo.eps_low" = [0.1, 0.2]\n')
    names = [r.name for r in sw.expand(sw.load_sweep(path))]
    assert names == ["eps_low=0.1,seed=3", "eps_low=0.2,seed=3", "eps_low=0.1,seed=4", "eps_low=0.2,seed=4"]


def test_nested_and_quoted_keys_and_both_infs_agree(tmp_path):
    quoted = write_sweep(tmp_path, 'name = "x"\npreset = "tiny-cpu"\n[set]\n"train.steps" = 3\n[grid]\n"algo.eps_high" = [inf]\n', "a.toml")
    nested = write_sweep(tmp_path, 'name = "x"\npreset = "tiny-cpu"\n[set.train]\nsteps = 3\n[grid.algo]\neps_high = ["inf"]\n', "b.toml")
    dotted = write_sweep(tmp_path, 'name = "x"\npreset = "tiny-cpu"\n[set]\ntrain.steps = 3\n[grid]\nalgo.eps_high = ["inf"]\n', "c.toml")
    expanded = [sw.expand(sw.load_sweep(p)) for p in (quoted, nested, dotted)]
    assert expanded[0] == expanded[1] == expanded[2]
    assert expanded[0][0].name == "eps_high=inf"
    assert expanded[0][0].overrides == ("train.steps=3", "algo.eps_high=inf")


def test_cases_are_explicit_points(tmp_path):
    path = write_sweep(tmp_path, """preset = "tiny-cpu"
seeds = [0, 1]
cases = [{ "algo.eps_low" = 0.2, "algo.eps_high" = 0.2 }, { algo.eps_low = 0.1, algo.eps_high = inf }]
""")
    runs = sw.expand(sw.load_sweep(path))
    assert [r.name for r in runs] == [
        "eps_low=0.2,eps_high=0.2,seed=0", "eps_low=0.1,eps_high=inf,seed=0",
        "eps_low=0.2,eps_high=0.2,seed=1", "eps_low=0.1,eps_high=inf,seed=1",
    ]


def test_name_template_fields_and_sanitising(tmp_path):
    path = write_sweep(tmp_path, """preset = "tiny-cpu"
seeds = [0]
name_template = "lo{eps_low:g} hi/{algo.eps_high}-s{seed}-#{index}"
[grid]
"algo.eps_low" = [0.1, 1.0]
"algo.eps_high" = [inf]
""")
    assert [r.name for r in sw.expand(sw.load_sweep(path))] == ["lo0.1_hi_inf-s0-_0", "lo1_hi_inf-s0-_1"]


def test_no_varied_key_gives_one_run_named_run(tmp_path):
    path = write_sweep(tmp_path, 'preset = "tiny-cpu"\n[set]\n"train.steps" = 2\n')
    runs = sw.expand(sw.load_sweep(path))
    assert [(r.name, r.overrides) for r in runs] == [("run", ("train.steps=2",))]


def test_short_names_fall_back_to_full_keys_on_a_clash():
    assert sw.short_names(["a.x", "b.x", "c.y"]) == {"a.x": "a.x", "b.x": "b.x", "c.y": "y"}


def test_to_text():
    assert [sw.to_text(v) for v in (math.inf, 0.1, 1.0, 3, True, None, [0.9, 0.95], "a b")] == [
        "inf", "0.1", "1.0", "3", "true", "none", "0.9,0.95", "a b"
    ]


def test_preset_path_is_resolved_next_to_the_sweep_file(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "mine.toml").write_text('[train]\nsteps = 4\n')
    path = write_sweep(sub, 'preset = "mine.toml"\n')
    spec = sw.load_sweep(path)
    assert spec.preset == str((sub / "mine.toml").resolve())
    assert sw.check_runs(spec, sw.expand(spec))["run"].train.steps == 4


# ---------------------------------------------------------------- validation (nothing created)


def assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code != 0
    out = result.output.strip()
    assert out.startswith("Error: "), out
    assert fragment in out, out
    assert "Traceback" not in out
    assert len(out.splitlines()) == 1, out


BAD_SWEEPS = [
    ('preset = "tiny-cpu"\n[grid]\n"algo.eps_lo" = [0.1]\n', "unknown config key 'algo.eps_lo'"),
    ('preset = "tiny-cpu"\n[set]\n"algox.eps_low" = 0.1\n', "unknown config section 'algox'"),
    ('preset = "tiny-cpu"\n[set]\nsteps = 3\n', "override key 'steps' must be section.key"),
    ('preset = "tiny-cpu"\n[grid]\n"algo.eps_low" = []\n', "[grid] algo.eps_low is an empty list"),
    ('preset = "tiny-cpu"\n[grid]\n"algo.eps_low" = 0.1\n', "[grid] algo.eps_low must be a list of values"),
    ('preset = "tiny-cpu"\n[grid]\n"algo.eps_low" = [0.1, "abc"]\n', "algo.eps_low must be a number (or 'inf'), got 'abc'"),
    ('preset = "tiny-cpu"\n[grid]\n"train.steps" = [2, 2.5]\n', "train.steps must be an integer, got 2.5"),
    ('preset = "tiny-cpu"\n[grid]\n"data.split" = [5]\n', "data.split must be a string, got 5"),
    # Only load_config of the last grid point catches this: it must fail before anything runs.
    ('preset = "tiny-cpu"\n[grid]\n"algo.eps_low" = [0.2, 1.5]\n', "run eps_low=1.5: algo.eps_low=1.5 must be in (0, 1]"),
    ('preset = "tiny-cpu"\n[grid]\n"train.minibatch_prompts" = [4, 3]\n', "must be divisible by train.minibatch_prompts (3)"),
    ('preset = "tiny-cpu"\n[grid]\n"algo.eps_low" = [0.2, 0.20]\n', "lists 0.2 twice"),
    ('preset = "tiny-cpu"\n[grid]\n"algo.eps_high" = [inf, "inf"]\n', "lists inf twice"),
    ('preset = "tiny-cpu"\nname_template = "same"\n[grid]\n"algo.eps_low" = [0.1, 0.2]\n', "two runs get the name 'same'"),
    ('preset = "tiny-cpu"\nname_template = "{nope}"\n[grid]\n"algo.eps_low" = [0.1]\n', "name_template '{nope}' cannot be filled"),
    ('preset = "tiny-cpu"\nname_template = "..{eps_low}"\n[grid]\n"algo.eps_low" = [0.1]\n', "is not a usable folder name"),
    ('preset = "tiny-cpu"\ngrids = 1\n', "unknown key(s) grids"),
    ('preset = "tiny-cpu"\n[grid]\n"algo.eps_low" = [0.1]\nseeds = [0]\n', "seeds is a top-level key; move it above"),
    ('preset = "tiny-cpu"\n[set]\n"algo.eps_low" = 0.1\n[grid]\n"algo.eps_low" = [0.2]\n', "algo.eps_low is in both [set] and [grid]"),
    ('preset = "tiny-cpu"\n[set]\n"algo.eps_low" = 0.1\n"algo".eps_low = 0.2\n', "[set] sets algo.eps_low twice"),
    ('preset = "tiny-cpu"\nseeds = [0]\n[set]\n"train.seed" = 1\n', "train.seed is in [set] and seeds is given"),
    ('preset = "tiny-cpu"\nseeds = [0, 0]\n', "repeat a seed"),
    ('preset = "tiny-cpu"\nseeds = [-1]\n', "seeds must be integers >= 0"),
    ('preset = "tiny-cpu"\nseeds = []\n', "seeds must be a non-empty list"),
    ('preset = "tiny-cpu"\ncases = [{ "algo.eps_low" = 0.1 }, { "algo.eps_high" = 0.1 }]\n', "every case must set the same keys"),
    ('preset = "tiny-cpu"\ncases = [{ "algo.eps_low" = 0.1 }, { "algo.eps_low" = 0.1 }]\n', "cases[1] repeats cases[0]"),
    ('preset = "no-such-preset"\n', "unknown preset 'no-such-preset'"),
    ('[set]\n"train.steps" = 2\n', "no preset"),
    ('name = "../up"\npreset = "tiny-cpu"\n', "name '../up' must be letters"),
    ('preset = "tiny-cpu"\n[set]\n"train.steps" = 2\nwhat\n', "not valid TOML"),
]


@pytest.mark.parametrize("text, fragment", BAD_SWEEPS)
@pytest.mark.parametrize("mode", [[], ["--dry-run"], ["--print-commands"]])
def test_bad_sweep_file_is_one_line_error_and_creates_nothing(tmp_path, text, fragment, mode):
    path = write_sweep(tmp_path, text)
    out = tmp_path / "runs"
    result = runner.invoke(app, ["sweep", str(path), "--out", str(out), *mode])
    assert_one_line_error(result, fragment)
    assert not out.exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--gpus", "0,1", "--gpus-per-run", "4"], "--gpus-per-run 4 is more than the 2 GPU(s)"),
        (["--gpus", "0,1,2,3", "--gpus-per-run", "2", "--jobs", "3"], "--jobs 3 needs 6 GPUs"),
        (["--gpus", "0,0"], "lists a GPU twice"),
        (["--gpus-per-run", "2"], "--gpus-per-run 2 needs --gpus"),
        (["--jobs", "0"], "--jobs 0 must be >= 1"),
    ],
)
def test_bad_scheduling_options(tmp_path, args, fragment):
    out = tmp_path / "runs"
    result = runner.invoke(app, ["sweep", str(grid_file(tmp_path)), "--out", str(out), *args])
    assert_one_line_error(result, fragment)
    assert not out.exists()


def test_missing_sweep_file_and_unknown_shipped_name(tmp_path):
    assert_one_line_error(runner.invoke(app, ["sweep", str(tmp_path / "nope.toml")]), "sweep file")
    result = runner.invoke(app, ["sweep", "no-such-sweep", "--out", str(tmp_path / "runs")])
    assert_one_line_error(result, "unknown sweep 'no-such-sweep'; pass a .toml file or a shipped sweep: cpu-random-reward")


# ---------------------------------------------------------------- print-commands and dry-run


def test_print_commands_are_absolute_and_complete(tmp_path, monkeypatch):
    path = grid_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["sweep", path.name, "--out", "rel/runs", "--print-commands"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 4
    sweep_dir = (tmp_path / "rel" / "runs" / "g").absolute()
    runs = sw.expand(sw.load_sweep(path))
    for line, run in zip(lines, runs):
        argv = shlex.split(line)
        assert argv[:4] == [sys.executable, "-m", "clipctl", "train"]
        assert argv[argv.index("--out") + 1] == str(sweep_dir)
        assert argv[argv.index("--name") + 1] == run.name
        assert [argv[i + 1] for i, a in enumerate(argv) if a == "--set"] == list(run.overrides)
        assert argv[-1] == "-q"
    assert not (tmp_path / "rel").exists()


def test_dry_run_prints_the_plan_and_creates_nothing(tmp_path):
    out = tmp_path / "runs"
    result = runner.invoke(app, ["sweep", str(grid_file(tmp_path)), "--out", str(out), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "plan: 4 runs" in result.output and result.output.count(" new ") == 4
    assert not out.exists()


def test_shipped_sweeps_validate():
    names = sw.available_sweeps()
    assert {"cpu-random-reward", "paper-random-reward-ablation", "paper-gsm8k-clip-low"} <= set(names)
    sizes = {}
    for name in names:
        spec = sw.load_sweep(name)
        runs = sw.expand(spec)
        configs = sw.check_runs(spec, runs)
        for run in runs:  # the same config as the command line would build
            assert configs[run.name] == load_config(spec.preset, list(run.overrides))
        sizes[name] = len(runs)
    assert sizes["cpu-random-reward"] == 12
    assert sizes["paper-random-reward-ablation"] == 12
    assert sizes["paper-gsm8k-clip-low"] == 5
    cpu = [(r.values["algo.eps_low"], r.values["algo.eps_high"]) for r in sw.expand(sw.load_sweep("cpu-random-reward"))]
    assert cpu[:4] == [(0.2, 0.2), (0.2, math.inf), (1.0, 0.2), (0.1, math.inf)]


# ---------------------------------------------------------------- scheduling with a fake trainer


class FakeTrainer:
    """Stands in for ``sweep._launch``: writes the run folder the real trainer would, then
    starts a trivial process (``true``/``false``/``sleep``) for the sweep to wait on."""

    def __init__(self, finish: bool = True, exit_code: int = 0, sleep: float = 0.0):
        self.finish, self.exit_code, self.sleep = finish, exit_code, sleep
        self.calls: list[tuple[list[str], dict]] = []
        self.procs: list[subprocess.Popen] = []

    def __call__(self, cmd, log_path, env, pass_fds):
        self.calls.append((cmd, env))
        if "--resume" in cmd:
            run_dir = Path(cmd[cmd.index("--resume") + 1])
            overrides = json.loads((run_dir / "run.json").read_text())["overrides"]
        else:
            run_dir = Path(cmd[cmd.index("--out") + 1]) / cmd[cmd.index("--name") + 1]
            overrides = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
        steps = int(next(o for o in overrides if o.startswith("train.steps=")).split("=")[1])
        fake_run_folder(run_dir, overrides, steps if self.finish else 1)
        argv = ["sleep", str(self.sleep)] if self.sleep else ["sh", "-c", f"exit {self.exit_code}"]
        proc = subprocess.Popen(argv, env=env, pass_fds=pass_fds)
        self.procs.append(proc)
        return proc


def test_fake_sweep_manifest_then_no_work(tmp_path, monkeypatch):
    fake = FakeTrainer()
    monkeypatch.setattr(sw, "_launch", fake)
    path, out = grid_file(tmp_path), tmp_path / "runs"
    manifest = sw.run_sweep(path, out=out)
    assert len(fake.calls) == 4
    assert list(manifest["status"]) == ["done"] * 4
    assert list(manifest["exit_code"]) == [0] * 4 and list(manifest["last_step"]) == [2] * 4
    assert list(manifest["algo.eps_high"]) == [0.2, math.inf, 0.2, math.inf]
    sweep_dir = out / "g"
    on_disk = pd.read_parquet(sweep_dir / "manifest.parquet")
    assert list(on_disk["run"]) == list(manifest["run"])
    assert (sweep_dir / "sweep.toml").read_text() == path.read_text()
    before = (sweep_dir / "manifest.parquet").stat().st_mtime_ns

    fake.calls.clear()
    again = sw.run_sweep(path, out=out)
    assert fake.calls == []
    assert (sweep_dir / "manifest.parquet").stat().st_mtime_ns == before
    assert list(again["status"]) == ["done"] * 4


def test_summary_without_finished_runs_is_the_manifest_view(tmp_path, monkeypatch):
    monkeypatch.setattr(sw, "_launch", FakeTrainer(finish=False, exit_code=1))
    manifest = sw.run_sweep(grid_file(tmp_path), out=tmp_path / "runs")
    summary = sw.summarize(manifest, tmp_path / "runs" / "g")
    assert list(summary.columns) == ["run", "status", "exit_code", "wall_seconds", "last_step", "steps"]


def test_failed_runs_are_skipped_until_retry_failed(tmp_path, monkeypatch):
    path, out = grid_file(tmp_path), tmp_path / "runs"
    monkeypatch.setattr(sw, "_launch", FakeTrainer(finish=False, exit_code=1))
    manifest = sw.run_sweep(path, out=out)
    assert list(manifest["status"]) == ["failed"] * 4 and list(manifest["exit_code"]) == [1] * 4

    fake = FakeTrainer()
    monkeypatch.setattr(sw, "_launch", fake)
    result = runner.invoke(app, ["sweep", str(path), "--out", str(out)])
    assert result.exit_code == 1 and fake.calls == []
    assert "Error: 4 of 4 runs failed" in result.output and "--retry-failed" in result.output

    manifest = sw.run_sweep(path, out=out, retry_failed=True)
    assert list(manifest["status"]) == ["done"] * 4
    assert all("--resume" in cmd for cmd, _ in fake.calls)  # the failed runs had a run.json
    assert list(manifest["attempts"]) == [2] * 4


def test_a_trainer_stopped_by_a_signal_stays_pending_and_resumes(tmp_path, monkeypatch):
    path, out = grid_file(tmp_path), tmp_path / "runs"
    monkeypatch.setattr(sw, "_launch", FakeTrainer(finish=False, exit_code=75))  # REQUEUE_EXIT: checkpointed
    manifest = sw.run_sweep(path, out=out)
    assert list(manifest["status"]) == ["pending"] * 4 and manifest["exit_code"].isna().all()
    fake = FakeTrainer()
    monkeypatch.setattr(sw, "_launch", fake)
    assert list(sw.run_sweep(path, out=out)["status"]) == ["done"] * 4
    assert len(fake.calls) == 4 and all("--resume" in cmd for cmd, _ in fake.calls)


def test_status_of_a_local_sweep_shows_failed_runs_with_their_log(tmp_path, monkeypatch):
    path, out = grid_file(tmp_path), tmp_path / "runs"
    monkeypatch.setattr(sw, "_launch", FakeTrainer(finish=False, exit_code=1))
    sw.run_sweep(path, out=out)
    (out / "g" / "logs").mkdir(exist_ok=True)
    (out / "g" / "logs" / "eps_low=0.2,eps_high=0.2,seed=0.log").write_text("".join(f"line {i}\n" for i in range(9)))
    status = sw.sweep_status(path, out)
    assert list(status["status"]) == ["failed"] * 4 and list(status["exit_code"]) == [1] * 4
    assert status.attrs["tails"]["eps_low=0.2,eps_high=0.2,seed=0"] == [f"line {i}" for i in range(4, 9)]
    result = runner.invoke(app, ["sweep", "status", str(path), "--out", str(out)])
    assert result.exit_code == 0 and "line 8" in result.output and "line 3" not in result.output, result.output


def test_interrupted_run_is_resumed_and_running_rows_become_pending(tmp_path, monkeypatch):
    path, out = grid_file(tmp_path), tmp_path / "runs"
    monkeypatch.setattr(sw, "_launch", FakeTrainer())
    sw.run_sweep(path, out=out)
    sweep_dir = out / "g"
    # As after a SIGKILL: one run half done, its manifest row stuck at "running".
    victim = sweep_dir / "eps_low=1.0,eps_high=0.2,seed=0"
    (victim / "steps" / "step-000002.parquet").unlink()
    (victim / "checkpoints" / "step-2").rename(victim / "checkpoints" / "step-1")
    df = pd.read_parquet(sweep_dir / "manifest.parquet")
    df.loc[df["run"] == victim.name, "status"] = "running"
    df.to_parquet(sweep_dir / "manifest.parquet", index=False)

    plan = sw.run_sweep(path, out=out, dry_run=True)
    row = plan.set_index("run").loc[victim.name]
    assert row["status"] == "pending" and row["action"] == "resume from step 2"
    assert "--resume" in row["command"]

    fake = FakeTrainer()
    monkeypatch.setattr(sw, "_launch", fake)
    manifest = sw.run_sweep(path, out=out)
    assert [cmd[cmd.index("--resume") + 1] for cmd, _ in fake.calls] == [str(victim.absolute())]
    assert list(manifest["status"]) == ["done"] * 4


def test_a_different_spec_under_the_same_name_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(sw, "_launch", FakeTrainer())
    out = tmp_path / "runs"
    sw.run_sweep(grid_file(tmp_path), out=out)
    snapshot = sorted(p.name for p in (out / "g").iterdir())
    changed = write_sweep(tmp_path, GRID_2X2.format(name="g", steps=3, extra_set=""), "changed.toml")
    result = runner.invoke(app, ["sweep", str(changed), "--out", str(out)])
    assert_one_line_error(result, "sweep 'g' already exists in")
    assert "with a different spec (run eps_low=0.2,eps_high=0.2,seed=0 has other overrides)" in result.output
    assert "give this one another name" in result.output
    assert sorted(p.name for p in (out / "g").iterdir()) == snapshot


def test_runs_made_from_printed_commands_are_adopted(tmp_path, monkeypatch):
    path, out = grid_file(tmp_path), tmp_path / "runs"
    by_hand = FakeTrainer()
    for line in sw.print_commands(path, out):  # as if run by xargs or SLURM
        by_hand(shlex.split(line), None, None, ()).wait()
    assert not (out / "g" / "sweep.json").exists()
    assert list(sw.run_sweep(path, out=out, dry_run=True)["status"]) == ["done"] * 4
    fake = FakeTrainer()
    monkeypatch.setattr(sw, "_launch", fake)
    assert list(sw.run_sweep(path, out=out)["status"]) == ["done"] * 4
    assert fake.calls == [] and (out / "g" / "sweep.json").is_file()


def test_a_foreign_folder_is_not_taken_over(tmp_path):
    out = tmp_path / "runs"
    (out / "g").mkdir(parents=True)
    (out / "g" / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["sweep", str(grid_file(tmp_path)), "--out", str(out)])
    assert_one_line_error(result, "is not a sweep folder (no sweep.json; holds notes.txt)")
    assert sorted(p.name for p in (out / "g").iterdir()) == ["notes.txt"]


def test_busy_sweep_folder_is_refused(tmp_path, monkeypatch):
    import fcntl

    fake = FakeTrainer(finish=False, exit_code=1)
    monkeypatch.setattr(sw, "_launch", fake)
    path, out = grid_file(tmp_path), tmp_path / "runs"
    sw.run_sweep(path, out=out)
    fake.calls.clear()
    with open(out / "g" / ".lock", "a") as held:  # as another sweep holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        result = runner.invoke(app, ["sweep", str(path), "--out", str(out), "--retry-failed"])
    assert_one_line_error(result, "is in use by another clipctl process")
    assert fake.calls == []


def test_gpu_sets_are_disjoint_and_jobs_run_in_parallel(tmp_path, monkeypatch):
    fake = FakeTrainer(sleep=0.3)
    seen: list[tuple[str, set]] = []

    def launch(cmd, log_path, env, pass_fds):
        live = {e["CUDA_VISIBLE_DEVICES"] for (_, e), p in zip(fake.calls, fake.procs) if p.poll() is None}
        seen.append((env["CUDA_VISIBLE_DEVICES"], live))
        return fake(cmd, log_path, env, pass_fds)

    monkeypatch.setattr(sw, "_launch", launch)
    manifest = sw.run_sweep(grid_file(tmp_path), out=tmp_path / "runs", gpus="0,1,2,3", gpus_per_run=2)
    assert list(manifest["status"]) == ["done"] * 4
    assert [gpu for gpu, _ in seen][:2] == ["0,1", "2,3"]
    for gpu, live in seen:
        assert gpu not in live  # never handed out while another run holds it
    assert max(len(live) for _, live in seen) == 1  # two at once: jobs defaults to one per GPU set


def test_parallel_cpu_jobs_get_one_thread_share(tmp_path, monkeypatch):
    fake = FakeTrainer()
    monkeypatch.setattr(sw, "_launch", fake)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    sw.run_sweep(grid_file(tmp_path), out=tmp_path / "runs", jobs=2)
    assert {env["OMP_NUM_THREADS"] for _, env in fake.calls} == {str(max(1, (os.cpu_count() or 1) // 2))}


def test_ctrl_c_stops_children_and_leaves_a_resumable_manifest(tmp_path, monkeypatch):
    fake = FakeTrainer(finish=False, sleep=30)
    calls = []

    def launch(cmd, log_path, env, pass_fds):
        if calls:  # Ctrl-C arrives while the first run trains
            raise KeyboardInterrupt
        calls.append(cmd)
        return fake(cmd, log_path, env, pass_fds)

    monkeypatch.setattr(sw, "_launch", launch)
    path, out = grid_file(tmp_path), tmp_path / "runs"
    t0 = time.monotonic()
    result = runner.invoke(app, ["sweep", str(path), "--out", str(out), "--jobs", "2"])
    assert result.exit_code == 130
    assert "Run the same command again to resume" in result.output
    assert time.monotonic() - t0 < 10
    assert fake.procs[0].poll() is not None  # the trainer was stopped, not orphaned
    manifest = pd.read_parquet(out / "g" / "manifest.parquet")
    assert set(manifest["status"]) == {"pending"}
    assert manifest["attempts"].tolist() == [1, 0, 0, 0]


def test_sigterm_stops_children_cleanly(tmp_path, monkeypatch):
    fake = FakeTrainer(finish=False, sleep=30)
    monkeypatch.setattr(sw, "_launch", fake)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            sw.run_sweep(grid_file(tmp_path), out=tmp_path / "runs", jobs=2)
    finally:
        timer.cancel()
    assert len(fake.procs) == 2 and all(p.poll() is not None for p in fake.procs)
    manifest = pd.read_parquet(tmp_path / "runs" / "g" / "manifest.parquet")
    assert set(manifest["status"]) == {"pending"}
    assert signal.getsignal(signal.SIGTERM) is not sw._raise_interrupt  # handler restored


# ---------------------------------------------------------------- the real trainer (slow)


def steps_table(run_dir: Path) -> pd.DataFrame:
    from clipctl.runlog import read_run

    return read_run(run_dir).steps


def math_columns(df: pd.DataFrame) -> pd.DataFrame:
    from clipctl.trainer import TIMING_COLUMNS

    return df.drop(columns=[c for c in TIMING_COLUMNS if c in df]).reset_index(drop=True)


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """A 2 x 2 grid x 1 seed of 2-step tiny runs, run for real with two jobs."""
    tmp = tmp_path_factory.mktemp("sweep")
    path, out = grid_file(tmp), tmp / "runs"
    manifest = sw.run_sweep(path, out=out, jobs=2)
    return path, out, manifest


@pytest.mark.slow
def test_real_sweep_finishes_with_a_correct_manifest(finished_sweep):
    path, out, manifest = finished_sweep
    assert list(manifest["status"]) == ["done"] * 4, manifest
    assert list(manifest["exit_code"]) == [0] * 4
    assert list(manifest["last_step"]) == [2] * 4 and list(manifest["steps"]) == [2] * 4
    assert list(manifest["algo.eps_low"]) == [0.2, 0.2, 1.0, 1.0]
    assert list(manifest["train.seed"]) == [0] * 4
    assert (manifest["wall_seconds"] > 0).all()
    for name in manifest["run"]:
        run_dir = out / "g" / name
        assert list(steps_table(run_dir)["step"]) == [1, 2]
        meta = json.loads((run_dir / "run.json").read_text())
        assert meta["config"]["algo"]["eps_low"] == manifest.set_index("run").loc[name, "algo.eps_low"]
        assert (out / "g" / "logs" / f"{name}.log").is_file()
    assert pd.read_parquet(out / "g" / "manifest.parquet")["status"].tolist() == ["done"] * 4
    summary = sw.summarize(manifest, out / "g")
    assert list(summary["run"]) == list(manifest["run"])
    assert summary[list(sw.SUMMARY_METRICS)].notna().all().all()


@pytest.mark.slow
def test_real_sweep_again_does_no_work(finished_sweep, monkeypatch):
    path, out, _ = finished_sweep
    manifest_file = out / "g" / "manifest.parquet"
    before = (manifest_file.read_bytes(), manifest_file.stat().st_mtime_ns)

    def no_launch(*args, **kwargs):
        raise AssertionError("a finished sweep launched a run")

    monkeypatch.setattr(sw, "_launch", no_launch)
    result = runner.invoke(app, ["sweep", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "4 done, 0 to run" in result.output
    assert (manifest_file.read_bytes(), manifest_file.stat().st_mtime_ns) == before


@pytest.mark.slow
def test_printed_commands_run_by_hand_give_the_same_runs(finished_sweep, tmp_path):
    path, out, manifest = finished_sweep
    by_hand = tmp_path / "by-hand"
    result = runner.invoke(app, ["sweep", str(path), "--out", str(by_hand), "--print-commands"])
    assert result.exit_code == 0, result.output
    # The documented way to run them: xargs, two at a time, from another folder.
    subprocess.run(
        ["xargs", "-d", "\n", "-P", "2", "-I", "CMD", "sh", "-c", "CMD"],
        input=result.output, text=True, check=True, cwd="/", capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
    )
    for name in manifest["run"]:
        swept, manual = steps_table(out / "g" / name), steps_table(by_hand / "g" / name)
        pd.testing.assert_frame_equal(math_columns(swept), math_columns(manual))
    # The sweep itself accepts the hand-made runs as done.
    again = sw.run_sweep(path, out=by_hand, dry_run=True)
    assert list(again["status"]) == ["done"] * 4


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _lock_free(path: Path) -> bool:
    from clipctl.rundir import lock_held

    return not lock_held(path.parent)


@pytest.mark.slow
def test_killed_sweep_resumes_and_logs_every_step_once(tmp_path):
    path = write_sweep(tmp_path, """name = "k"
preset = "tiny-cpu"
[set]
"train.steps" = 5
"train.save_every" = 2
"log.samples_every" = 0
"log.clip_probe_every" = 0
[grid]
"algo.eps_high" = [0.2, inf]
""")
    out = tmp_path / "runs"
    first, second = out / "k" / "eps_high=0.2", out / "k" / "eps_high=inf"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "clipctl", "sweep", str(path), "--out", str(out)],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: (first / "checkpoints" / "step-2" / "trainer_state.pt").is_file(), 240, "a checkpoint")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its trainer, with no chance to clean up
        proc.wait()
    # The trainer dies asynchronously; until it has, it holds the sweep's lock.
    _wait_for(lambda: _lock_free(out / "k" / ".lock"), 30, "the killed trainer to exit")
    from clipctl.runlog import latest_checkpoint

    assert not (second / "run.json").exists()
    ckpt = latest_checkpoint(first)[0]
    assert 2 <= ckpt < 5  # killed mid-run
    # The steps up to the checkpoint are logged (parts, or a segment after the checkpoint's compaction).
    before = steps_table(first)
    kept = before[before["step"] <= ckpt].reset_index(drop=True)
    assert list(kept["step"]) == list(range(1, ckpt + 1))
    stale = pd.read_parquet(out / "k" / "manifest.parquet").set_index("run")
    assert stale.loc["eps_high=0.2", "status"] == "running"

    manifest = sw.run_sweep(path, out=out)
    assert list(manifest["status"]) == ["done", "done"]
    assert list(manifest["attempts"]) == [2, 1]
    for run_dir in (first, second):
        assert list(steps_table(run_dir)["step"]) == [1, 2, 3, 4, 5]
    # Only what was missing ran: the first run resumed after its checkpoint (the rows up
    # to it, wall times included, are the ones logged before the kill).
    after = steps_table(first)
    pd.testing.assert_frame_equal(after[after["step"] <= ckpt].reset_index(drop=True), kept)
    assert len(json.loads((first / "run.json").read_text()).get("resumed", [])) == 1
    assert "resumed" not in json.loads((second / "run.json").read_text())
