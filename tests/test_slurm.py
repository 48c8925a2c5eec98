"""Sweeps on Slurm: the [slurm] table, the job-array script, idempotent submission, status; a real Slurm.

The unmarked tests need no Slurm: ``--dry-run`` writes the script, and fake
``sbatch``/``squeue`` scripts on PATH answer as Slurm would. The tests marked
``slurm`` start a real one-node cluster (``slurm_cluster.py``; root and
Debian's slurm-wlm + munge), submit a 2-run tiny sweep as one array, requeue
one run mid-training (``scontrol requeue``) and send the other the walltime
warning (SIGUSR1 to the batch shell), and check both finish with the steps
tables of uninterrupted runs.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from clipctl import slurm
from clipctl import sweep as sw
from clipctl.cli import app
from runlogs import fake_run_folder

runner = CliRunner()
SRC = str(Path(__file__).resolve().parents[1] / "src")

SWEEP = """name = "{name}"
preset = "tiny-cpu"
seeds = [0]
[set]
"train.steps" = {steps}
"train.save_every" = 100
"log.samples_every" = 0
"log.clip_probe_every" = 0
{extra_set}
[grid]
"algo.eps_high" = [0.2, inf]
{slurm}
"""


def sweep_file(tmp_path: Path, *, name: str = "s", steps: int = 2, slurm_table: str = "", extra_set: str = "") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(SWEEP.format(name=name, steps=steps, slurm=slurm_table, extra_set=extra_set))
    return path


def assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code != 0
    out = result.output.strip()
    assert out.startswith("Error: "), out
    assert fragment in out, out
    assert "Traceback" not in out and len(out.splitlines()) == 1, out


# ---------------------------------------------------------------- the [slurm] table


def test_options_from_table_then_flags():
    opts = slurm.slurm_options(
        {"partition": "gpu", "time": "04:00:00", "gpus_per_run": 1, "sbatch": ["--exclusive"], "setup": "module load cuda"},
        ["time=1-00:00:00", "cpus_per_run=8", "mem=64G", "sbatch=['--nice=10', '--comment=x']"],
    )
    assert (opts.partition, opts.time, opts.gpus_per_run, opts.cpus_per_run, opts.mem) == ("gpu", "1-00:00:00", 1, 8, "64G")
    assert opts.sbatch == ("--nice=10", "--comment=x") and opts.setup == ("module load cuda",)
    assert slurm.slurm_options({}) == slurm.SlurmOptions()


BAD_TABLES = [
    ("partitions = \"gpu\"", "[slurm]: unknown key partitions; valid: partition, account"),
    ("cpus_per_run = 0", "cpus_per_run = 0 must be >= 1"),
    ("gpus_per_run = \"two\"", "gpus_per_run must be an integer, got 'two'"),
    ("time = \"four hours\"", "time = 'four hours' is not a Slurm time"),
    ("max_running = 0", "max_running = 0 must be >= 1"),
    ("setup = [1]", "setup must be a list of strings"),
    ("partition = \"a\\nb\"", "partition must be on one line"),
]


@pytest.mark.parametrize("line, fragment", BAD_TABLES)
@pytest.mark.parametrize("launcher", [["--launcher", "slurm", "--dry-run"], ["--dry-run"], []])
def test_bad_slurm_table_is_one_line_and_nothing_is_written(tmp_path, line, fragment, launcher, monkeypatch):
    monkeypatch.setattr(sw, "_launch", lambda *a, **k: pytest.fail("a run was launched"))
    path = sweep_file(tmp_path, slurm_table=f"[slurm]\n{line}\n")
    result = runner.invoke(app, ["sweep", str(path), "--out", str(tmp_path / "runs"), *launcher])
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--slurm", "nope=1"], "--slurm: unknown key nope"),
    (["--slurm", "partition"], "--slurm 'partition' must be KEY=VALUE"),
    (["--slurm", "time=soon"], "is not a Slurm time"),
    (["--jobs", "0"], "--jobs 0 must be >= 1"),
    (["--gpus", "0,1"], "--gpus is for --launcher local"),
])
def test_bad_slurm_flags(tmp_path, args, fragment):
    result = runner.invoke(app, ["sweep", str(sweep_file(tmp_path)), "--out", str(tmp_path / "runs"),
                                 "--launcher", "slurm", "--dry-run", *args])
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "runs").exists()


def test_slurm_flag_needs_the_slurm_launcher(tmp_path):
    result = runner.invoke(app, ["sweep", str(sweep_file(tmp_path)), "--out", str(tmp_path / "runs"), "--slurm", "qos=low"])
    assert_one_line_error(result, "--slurm needs --launcher slurm")


# ---------------------------------------------------------------- --dry-run: the script, without Slurm


TABLE = """[slurm]
partition = "gpu"
account = "lab"
qos = "normal"
time = "02:00:00"
gpus_per_run = 1
cpus_per_run = 4
mem = "32G"
constraint = "a100"
signal_seconds = 120
sbatch = ["--exclusive"]
setup = ["module load cuda", "source /opt/venv/bin/activate"]
python = "/opt/venv/bin/python"
"""


def test_dry_run_writes_the_script_and_submits_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch: a dry run needs none
    path = sweep_file(tmp_path, slurm_table=TABLE)
    out = tmp_path / "runs"
    result = runner.invoke(app, ["sweep", str(path), "--out", str(out), "--launcher", "slurm", "--dry-run", "--jobs", "3"])
    assert result.exit_code == 0, result.output
    sd = (out / "s").absolute()
    script = sd / "slurm" / "submit-1.sbatch"
    assert f"sbatch script: {script} (not submitted)" in result.output
    assert sorted(p.name for p in sd.iterdir()) == ["slurm"]  # the sweep is not claimed by a dry run
    text = script.read_text()
    head = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert head == [
        "#SBATCH --job-name=clipctl-s",
        "#SBATCH --array=0,1%3",
        f"#SBATCH --output={sd}/logs/slurm-%A_%a.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "#SBATCH --qos=normal",
        "#SBATCH --time=02:00:00",
        "#SBATCH --mem=32G",
        "#SBATCH --constraint=a100",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --exclusive",
    ]
    assert "module load cuda\nsource /opt/venv/bin/activate\n" in text
    runs = sw.expand(sw.load_sweep(path))
    for i, run in enumerate(runs):  # each task's new-run command is the printed command, with the cluster's Python
        printed = sw.train_command(sw.load_sweep(path), run, sd)
        assert f"  {i}) run={run.name}; new=({' '.join(['/opt/venv/bin/python', *printed[1:]])}) ;;" in text
    assert 'cmd=(/opt/venv/bin/python -m clipctl train --resume "$sweep/$run" -q)' in text
    assert subprocess.run(["/bin/bash", "-n", str(script)]).returncode == 0  # valid bash


def test_dry_run_skips_finished_runs(tmp_path, monkeypatch):
    path = sweep_file(tmp_path)
    out = tmp_path / "runs"
    finish_run(out / "s" / "eps_high=0.2,seed=0", sw.expand(sw.load_sweep(path))[0], steps=2)
    manifest = sw.submit_slurm(path, out=out, dry_run=True)
    assert list(manifest["status"]) == ["done", "pending"]
    assert "#SBATCH --array=1\n" in Path(manifest.attrs["script"]).read_text()


def finish_run(run_dir: Path, run: sw.RunSpec, steps: int, done: bool = True) -> None:
    """A run folder as the trainer leaves it after ``steps`` steps (a checkpoint there); unfinished unless ``done``."""
    fake_run_folder(run_dir, list(run.overrides), steps)


# ---------------------------------------------------------------- submitting, with a fake Slurm


def fake_slurm(tmp_path: Path, queue: str = "") -> Path:
    """sbatch that records its argument and answers job 4242 (then 4243, ...); squeue that prints ``queue``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sbatch").write_text(
        "#!/bin/sh\necho \"$@\" >> \"$(dirname \"$0\")/submitted\"\n"
        "n=$(wc -l < \"$(dirname \"$0\")/submitted\")\necho $((4241 + n))\n"
    )
    (bin_dir / "squeue").write_text(f"#!/bin/sh\nprintf '%s' '{queue}'\n")
    for tool in ("sbatch", "squeue"):
        (bin_dir / tool).chmod(stat.S_IRWXU)
    return bin_dir


def test_missing_sbatch_is_one_line_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = runner.invoke(app, ["sweep", str(sweep_file(tmp_path)), "--out", str(tmp_path / "runs"), "--launcher", "slurm"])
    assert_one_line_error(result, "--launcher slurm needs sbatch and squeue on PATH (not found)")
    assert not (tmp_path / "runs").exists()


def test_submit_then_resubmit_is_idempotent(tmp_path, monkeypatch):
    bin_dir = fake_slurm(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    path = sweep_file(tmp_path)
    out = tmp_path / "runs"
    sd = (out / "s").absolute()
    first = sw.submit_slurm(path, out=out)
    assert first.attrs["submitted"] == 2 and list(first["job"]) == ["4242_0", "4242_1"]
    assert (bin_dir / "submitted").read_text().split() == ["--parsable", str(sd / "slurm" / "submit-1.sbatch")]
    assert json.loads((sd / "slurm" / "jobs.json").read_text())[0]["runs"] == {"0": "eps_high=0.2,seed=0", "1": "eps_high=inf,seed=0"}
    assert (sd / "sweep.json").is_file() and (sd / "logs").is_dir()
    assert list(pd.read_parquet(sd / "manifest.parquet")["job"]) == ["4242_0", "4242_1"]

    # Task 0 runs, task 1 is still queued: nothing to submit.
    (bin_dir / "squeue").write_text("#!/bin/sh\nprintf '4242 0 RUNNING\\n4242 1 PENDING\\n'\n")
    again = sw.submit_slurm(path, out=out)
    assert again.attrs["submitted"] == 0 and list(again["status"]) == ["running", "pending"]
    assert len((bin_dir / "submitted").read_text().splitlines()) == 1

    # Both ended: run 0 finished, run 1 stopped for a requeue (exit 75) but was not requeued: it is resubmitted alone.
    (bin_dir / "squeue").write_text("#!/bin/sh\nexit 0\n")
    runs = sw.expand(sw.load_sweep(path))
    finish_run(sd / runs[0].name, runs[0], steps=2)
    finish_run(sd / runs[1].name, runs[1], steps=1, done=False)
    (sd / "logs" / f"{runs[1].name}.log").write_text("# 2026-01-01T00:00:00 job 4242_1 on n1: x\nstep 1\n# 2026-01-01T00:01:00 exit 75\n")
    third = sw.submit_slurm(path, out=out)
    assert list(third["status"]) == ["done", "pending"] and list(third["job"]) == ["4242_0", "4243_1"]
    assert "#SBATCH --array=1\n" in (sd / "slurm" / "submit-2.sbatch").read_text()

    # A failed attempt (exit 1) is not resubmitted until --retry-failed.
    (sd / "logs" / f"{runs[1].name}.log").write_text("# t job 4243_1 on n1: x\nTraceback ...\nRuntimeError: boom\n# t exit 1\n")
    fourth = sw.submit_slurm(path, out=out)
    assert fourth.attrs["submitted"] == 0 and list(fourth["status"]) == ["done", "failed"]
    status = runner.invoke(app, ["sweep", "status", str(path), "--out", str(out)])
    assert status.exit_code == 0, status.output
    assert "failed; last lines of" in status.output and "RuntimeError: boom" in status.output
    assert sw.submit_slurm(path, out=out, retry_failed=True).attrs["submitted"] == 1


def test_a_local_sweep_refuses_runs_queued_on_slurm(tmp_path, monkeypatch):
    bin_dir = fake_slurm(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    path = sweep_file(tmp_path)
    sw.submit_slurm(path, out=tmp_path / "runs")
    (bin_dir / "squeue").write_text("#!/bin/sh\nprintf '4242 1 PENDING\\n'\n")
    monkeypatch.setattr(sw, "_launch", lambda *a, **k: pytest.fail("a run was launched"))
    result = runner.invoke(app, ["sweep", str(path), "--out", str(tmp_path / "runs")])
    assert_one_line_error(result, "1 run(s) of")
    assert "are queued on Slurm (e.g. eps_high=inf,seed=0, job 4242_1)" in result.output


def test_another_sweeps_run_folders_are_refused_and_nothing_submitted(tmp_path, monkeypatch):
    bin_dir = fake_slurm(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    out = tmp_path / "runs"
    sw.submit_slurm(sweep_file(tmp_path), out=out)
    other = sweep_file(tmp_path / "o" if (tmp_path / "o").mkdir() is None else tmp_path, steps=3)
    result = runner.invoke(app, ["sweep", str(other), "--out", str(out), "--launcher", "slurm"])
    assert_one_line_error(result, "already exists in")
    assert len((bin_dir / "submitted").read_text().splitlines()) == 1


def test_status_of_a_sweep_never_started(tmp_path):
    result = runner.invoke(app, ["sweep", "status", str(sweep_file(tmp_path)), "--out", str(tmp_path / "runs")])
    assert_one_line_error(result, "has not been started in")


def test_last_exit_reads_the_last_attempt():
    assert slurm.last_exit("# t job 1_0 on n: c\nx\n# t exit 75\n# t job 1_0 on n: c\nstep\n") is None  # running again
    assert slurm.last_exit("# t job 1_0 on n: c\nx\n# t exit 75\n# t job 1_0 on n: c\n# t exit 0\n") == 0
    assert slurm.last_exit("") is None


# ---------------------------------------------------------------- a real Slurm


def _cluster_or_skip():
    from slurm_cluster import missing

    why = missing()
    if why and os.environ.get("CLIPCTL_REQUIRE_SLURM") == "1":  # make test-slurm: the suite must run
        pytest.fail(f"a real Slurm is required here (CLIPCTL_REQUIRE_SLURM=1): {why}")
    if why:
        pytest.skip(why)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    _cluster_or_skip()
    from slurm_cluster import SlurmCluster

    with SlurmCluster(tmp_path_factory.mktemp("slurm"), cpus=2) as c:
        yield c


def math_columns(df: pd.DataFrame) -> pd.DataFrame:
    from clipctl.trainer import TIMING_COLUMNS

    return df.drop(columns=[c for c in TIMING_COLUMNS if c in df]).reset_index(drop=True)


def _clipctl(cluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**cluster.env, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "clipctl", *args], env=env, capture_output=True, text=True, timeout=timeout)


def _wait(predicate, timeout: float, what: str, cluster=None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            queue = cluster.run("squeue", "--array").stdout if cluster else ""
            raise AssertionError(f"timed out waiting for {what}\n{queue}")
        time.sleep(0.5)


@pytest.mark.slurm
def test_real_slurm_array_survives_requeue_and_walltime_warning(cluster, quick_model_dir, tmp_path, monkeypatch):
    from conftest import FAST_OVERRIDES
    from clipctl.config import load_config
    from clipctl.runlog import logged_steps, read_run
    from clipctl.trainer import train

    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])  # for the in-process sweep_status calls
    steps = 12
    extra = "\n".join(f'"{key}" = {json.dumps(value)}' for key, value in
                      (o.split("=", 1) for o in [f"model.path={quick_model_dir}", *FAST_OVERRIDES]) if not key.startswith("log."))
    path = sweep_file(tmp_path, name="real", steps=steps, extra_set=extra,
                      slurm_table='[slurm]\ncpus_per_run = 1\nsignal_seconds = 0\n')
    out = tmp_path / "runs"
    sd = out / "real"
    spec = sw.load_sweep(path)
    runs = sw.expand(spec)
    configs = sw.check_runs(spec, runs)

    submitted = _clipctl(cluster, "sweep", str(path), "--out", str(out), "--launcher", "slurm", "--jobs", "2")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert "submitted job array" in submitted.stdout
    job = json.loads((sd / "slurm" / "jobs.json").read_text())[0]["job"]
    first, second = (sd / r.name for r in runs)

    _wait(lambda: 2 in logged_steps(first) and 2 in logged_steps(second), 300, "both runs at step 2", cluster)
    # Run 0: requeued by the scheduler (SIGTERM to every process of the job, then restarted).
    assert cluster.run("scontrol", "requeue", f"{job}_0").returncode == 0
    # Run 1: the walltime warning to the batch shell, as --signal=B:USR1 sends it; the task requeues itself.
    assert cluster.run("scancel", "--signal=USR1", "--batch", f"{job}_1").returncode == 0
    # While both are requeued or running, submitting again changes nothing.
    _wait(lambda: all("exit 75" in (sd / "logs" / f"{r.name}.log").read_text() for r in runs), 120, "both stops", cluster)
    again = _clipctl(cluster, "sweep", str(path), "--out", str(out), "--launcher", "slurm")
    assert again.returncode == 0 and "2 queued, 0 to submit" in again.stdout, again.stdout + again.stderr

    def both_finished() -> bool:  # done, and the array tasks have left the queue (their exit lines are written)
        status = sw.sweep_status(path, out)
        return list(status["status"]) == ["done", "done"] and status["queue"].isna().all()

    _wait(both_finished, 600, "both runs to finish after their requeues", cluster)
    for run, run_dir in zip(runs, (first, second)):
        log = (sd / "logs" / f"{run.name}.log").read_text()
        assert log.count(" job ") >= 2, log  # two attempts of the same array task
        assert f"# " in log and "exit 75" in log and log.rstrip().endswith("exit 0"), log
        assert f"stopped after step" in log
        reference = train(load_config("tiny-cpu", list(run.overrides)), out=tmp_path / "reference", name=run.name)
        got, want = math_columns(read_run(run_dir).steps), math_columns(read_run(reference.run_dir).steps)
        assert list(got["step"]) == list(range(1, steps + 1))
        np.testing.assert_array_equal(got.to_numpy(float), want.to_numpy(float))
    assert configs[runs[0].name].train.steps == steps

    status = _clipctl(cluster, "sweep", "status", str(path), "--out", str(out))
    assert status.returncode == 0 and status.stdout.count("done") >= 2, status.stdout
    final = _clipctl(cluster, "sweep", str(path), "--out", str(out), "--launcher", "slurm")
    assert final.returncode == 0 and "2 done, 0 queued, 0 to submit" in final.stdout, final.stdout
