"""DeepSpeed on CPU: 2-process ZeRO-2/ZeRO-3 runs equal the single-process trainer; resume; errors.

The tests marked ``deepspeed`` launch the real entry point under torchrun /
``clipctl train --nproc 2`` / the deepspeed launcher (2 processes over gloo)
and compare every logged number with a plain single-process run of the same
config. The first DeepSpeed start on a machine JIT-compiles a C++ op (~1 min).
The unmarked tests check config derivation and error messages without
starting processes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from clipctl.cli import app
from clipctl.config import load_config
from clipctl.errors import ConfigError
from clipctl.trainer import TIMING_COLUMNS
from clipctl.trainer.comm import DistributedComm, _reorder
from clipctl.trainer.deepspeed import check_launch, check_world, deepspeed_config

# Equivalence tolerance, absolute, on every logged number: measured differences
# are <= 5e-6 (float32 summation order: gradients all-reduced over ranks,
# different padding widths in the log-prob passes); samples are identical.
TOL = 1e-4

# Two optimizer steps per step (clipping bites), blocks of 2 prompts per rank
# per minibatch, two micro-batches per rank per minibatch (DeepSpeed gradient
# accumulation), a clip probe on even steps.
OVERRIDES = [
    "train.rollout_batch_prompts=8",
    "train.minibatch_prompts=4",
    "train.micro_batch_size=4",
    "rollout.n=3",
    "rollout.max_new_tokens=12",
    "log.samples_every=1",
    "log.clip_probe_every=2",
    "optim.lr=3e-3",
    "train.save_every=2",
    "train.keep_last=5",
]


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def run(cmd: list[str], timeout: int = 600) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


def torchrun(*args: str) -> str:
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "clipctl", *args])


def clipctl(*args: str) -> str:
    return run([sys.executable, "-m", "clipctl", *args])


def deepspeed_launcher(*args: str) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return run([sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(port),
                "--module", "clipctl", *args])


def math_columns(df: pd.DataFrame) -> pd.DataFrame:
    drop = [c for c in (*TIMING_COLUMNS, "probe_seconds") if c in df]
    return df.drop(columns=drop).reset_index(drop=True)


def assert_same_run(got: Path, ref: Path, steps: list[int]) -> None:
    from clipctl.runlog import read_run

    a, b = read_run(got), read_run(ref)
    sa, sb = math_columns(a.steps), math_columns(b.steps)
    sb = sb[sb["step"].isin(steps)].reset_index(drop=True)
    assert list(sa["step"]) == steps
    assert list(sa.columns) == list(sb.columns)
    np.testing.assert_allclose(sa.to_numpy(float), sb.to_numpy(float), rtol=0, atol=TOL, equal_nan=True)
    # Same samples, rewards and token counts: metrics cover every rank's rows.
    assert (sa["n_tokens"] == sb["n_tokens"]).all()
    keys = ["step", "prompt_index", "group", "sample", "response", "reward", "length"]
    pd.testing.assert_frame_equal(
        a.samples[keys].reset_index(drop=True), b.samples[b.samples["step"].isin(steps)][keys].reset_index(drop=True)
    )
    ua = a.updates.select_dtypes("number").reset_index(drop=True)
    ub = b.updates[b.updates["step"].isin(steps)].select_dtypes("number").reset_index(drop=True)
    np.testing.assert_allclose(ua.to_numpy(float), ub[ua.columns].to_numpy(float), rtol=0, atol=TOL, equal_nan=True)


def assert_same_weights(ckpt_a: Path, ckpt_b: Path) -> None:
    from safetensors.torch import load_file

    a, b = load_file(ckpt_a / "model.safetensors"), load_file(ckpt_b / "model.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].shape == b[k].shape, k
        assert (a[k] - b[k]).abs().max().item() < TOL, k


@pytest.fixture(scope="module")
def reference(quick_model_dir, tmp_path_factory) -> tuple[Path, list[str]]:
    """A plain single-process run of 5 steps: what every DeepSpeed run must reproduce."""
    from clipctl.trainer import train

    overrides = [f"model.path={quick_model_dir}", *OVERRIDES]
    out = tmp_path_factory.mktemp("reference")
    result = train(load_config("tiny-cpu", [*overrides, "train.steps=5"]), out=out, name="plain")
    return result.run_dir, overrides


@pytest.mark.deepspeed
def test_zero2_two_processes_equal_one_process_and_resume(reference, tmp_path):
    ref, overrides = reference
    # --nproc re-launches itself under torchrun.
    clipctl("train", *sets([*overrides, "train.steps=3"]), "--out", str(tmp_path), "--name", "z2", "-q",
            "--deepspeed", "zero2", "--nproc", "2")
    run_dir = tmp_path / "z2"
    assert_same_run(run_dir, ref, [1, 2, 3])
    assert_same_weights(run_dir / "checkpoints" / "step-2", ref / "checkpoints" / "step-2")
    ckpt = run_dir / "checkpoints" / "step-3"
    assert (ckpt / "trainer_state.pt").is_file() and (ckpt / "deepspeed" / "state").is_dir()
    assert not list((run_dir / "checkpoints").glob(".step-*"))

    # A resumed DeepSpeed run needs the same settings: one line, nothing written.
    result = CliRunner().invoke(app, ["train", "--resume", str(run_dir), "--set", "train.steps=4", "-q"])
    assert result.exit_code == 1 and "resume it the same way" in result.output

    # Resume to 5 steps with the deepspeed launcher (it passes --local_rank).
    deepspeed_launcher("train", "--resume", str(run_dir), "--set", "train.steps=5", "--deepspeed", "zero2", "-q")
    # Step 4 starts from the step-3 optimizer state: a fresh AdamW would move entropy_post by ~0.07.
    assert_same_run(run_dir, ref, [1, 2, 3, 4, 5])


@pytest.mark.deepspeed
def test_zero3_two_processes_equal_one_process_and_resume(reference, tmp_path):
    ref, overrides = reference
    # Four steps in one go: two probed steps (2, 4) in the same processes.
    torchrun("train", *sets([*overrides, "train.steps=4"]), "--out", str(tmp_path), "--name", "z3", "-q",
             "--deepspeed", "zero3")
    run_dir = tmp_path / "z3"
    assert_same_run(run_dir, ref, [1, 2, 3, 4])
    # ZeRO-3 partitions the weights; the HF checkpoint holds them whole.
    assert_same_weights(run_dir / "checkpoints" / "step-4", ref / "checkpoints" / "step-4")
    from clipctl.runlog import read_run

    meta = read_run(run_dir).meta
    assert meta["parallel"] == {"deepspeed": "zero3", "world_size": 2}
    torchrun("train", "--resume", str(run_dir), "--set", "train.steps=5", "--deepspeed", "zero3", "-q")
    assert_same_run(run_dir, ref, [1, 2, 3, 4, 5])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.deepspeed
def test_two_nodes_equal_one_node(reference, tmp_path):
    """Two torchrun agents of one process each, meeting at a c10d rendezvous (two "nodes" on one machine),
    compute the steps table of one agent with two processes, to the bit."""
    ref, overrides = reference
    args = [*sets([*overrides, "train.steps=3"]), "-q", "--deepspeed", "zero2"]
    clipctl("train", *args, "--out", str(tmp_path / "one"), "--name", "run", "--nproc", "2")
    endpoint = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    node = [sys.executable, "-m", "clipctl", "train", *args, "--out", str(tmp_path / "two"), "--name", "run",
            "--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", endpoint, "--rdzv-id", "test-2-nodes"]
    agents = [subprocess.Popen(node, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [a.communicate(timeout=600)[0] for a in agents]
    assert [a.returncode for a in agents] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    from clipctl.runlog import read_run

    one, two = read_run(tmp_path / "one" / "run"), read_run(tmp_path / "two" / "run")
    a, b = math_columns(two.steps), math_columns(one.steps)
    assert list(a["step"]) == [1, 2, 3] and list(a.columns) == list(b.columns)
    np.testing.assert_array_equal(a.to_numpy(float), b.to_numpy(float))
    assert two.meta["parallel"] == one.meta["parallel"] == {"deepspeed": "zero2", "world_size": 2}
    assert_same_run(tmp_path / "two" / "run", ref, [1, 2, 3])


@pytest.mark.parametrize("args, fragment", [
    (["--nnodes", "2", "--nproc", "1", "--deepspeed", "zero2"], "--nnodes 2 needs --rdzv-endpoint HOST:PORT"),
    (["--nnodes", "2", "--nproc", "1", "--deepspeed", "zero2", "--rdzv-endpoint", "node01"], "got 'node01'"),
    (["--rdzv-endpoint", "node01:29500", "--nproc", "2", "--deepspeed", "zero2"], "needs --nnodes N (N > 1)"),
    (["--nnodes", "2", "--rdzv-endpoint", "node01:29500"], "need --nproc N (processes per machine)"),
    (["--nnodes", "2", "--rdzv-endpoint", "node01:29500", "--nproc", "1"], "--nproc 1 needs --deepspeed"),
])
def test_multi_node_flags_are_checked_before_any_process_starts(tmp_path, args, fragment):
    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path), *args])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and fragment in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def fp32_master_weights(ckpt: Path) -> dict:
    """The float32 master weights DeepSpeed keeps in its ZeRO optimizer partitions."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt / "deepspeed"), tag="state")


@pytest.mark.deepspeed
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_bf16_master_weights_move_at_paper_lr(quick_model_dir, tmp_path, stage):
    import torch
    from safetensors.torch import load_file

    overrides = [f"model.path={quick_model_dir}", *OVERRIDES, "model.dtype=bfloat16", "optim.lr=5e-7",
                 "log.clip_probe_every=0", "train.steps=2", "train.save_every=1"]
    torchrun("train", *sets(overrides), "--out", str(tmp_path), "--name", "b", "-q", "--deepspeed", stage)
    ckpts = tmp_path / "b" / "checkpoints"
    one, two = fp32_master_weights(ckpts / "step-1"), fp32_master_weights(ckpts / "step-2")
    assert {t.dtype for t in two.values()} == {torch.float32}
    changed = sum(int((one[k] != two[k]).sum()) for k in one)
    assert changed / sum(t.numel() for t in one.values()) >= 0.95
    # The HF export is in the model's dtype (bf16) and equals the master weights rounded.
    export = load_file(ckpts / "step-2" / "model.safetensors")
    assert {t.dtype for t in export.values()} == {torch.bfloat16}
    for k, t in export.items():
        if k in two:
            assert torch.equal(t, two[k].to(torch.bfloat16)), k


def test_bf16_model_enables_deepspeed_bf16(tmp_path):
    ds = deepspeed_config("zero2", load_config("tiny-cpu", ["model.dtype=bfloat16"]), world=2)
    assert ds["bf16"] == {"enabled": True}
    assert "bf16" not in deepspeed_config("zero2", load_config("tiny-cpu"), world=2)
    off = tmp_path / "ds.json"
    off.write_text('{"zero_optimization": {"stage": 2}, "bf16": {"enabled": false}}')
    with pytest.raises(ConfigError, match="disables bf16 but model.dtype=bfloat16"):
        deepspeed_config(str(off), load_config("tiny-cpu", ["model.dtype=bfloat16"]), world=2)
    with pytest.raises(ConfigError, match="micro_batch_tokens=64 is not supported with --deepspeed"):
        check_world(load_config("tiny-cpu", ["train.micro_batch_tokens=64"]), 2, 2)


@pytest.mark.deepspeed
def test_indivisible_batch_is_one_line_error_under_torchrun(quick_model_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "clipctl",
           "train", "--set", f"model.path={quick_model_dir}", "--set", "train.rollout_batch_prompts=6",
           "--set", "train.minibatch_prompts=3", "--out", str(tmp_path), "-q", "--deepspeed", "zero2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Error: train.rollout_batch_prompts (6) and train.minibatch_prompts (3) must be divisible" in proc.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- no processes started


@pytest.mark.parametrize("world", [1, 2, 4])
def test_prompt_blocks_keep_minibatches_whole(world):
    P, M = 16, 8
    ranks = []
    for r in range(world):  # no process group needed for the layout
        ranks.append(DistributedComm(r, world, "cpu").for_minibatches(M).positions(P, M))
    assert sorted(j for pos in ranks for j in pos) == list(range(P))
    per = M // world
    for r, pos in enumerate(ranks):
        for k in range(P // M):  # local minibatch k is rank r's block of global minibatch k
            assert pos[k * per : (k + 1) * per] == list(range(k * M + r * per, k * M + (r + 1) * per))
    assert _reorder(ranks, per) == list(range(P))


def test_builtin_config_matches_our_batching():
    cfg = load_config("tiny-cpu", ["train.minibatch_prompts=4", "rollout.n=8", "train.micro_batch_size=6"])
    ds = deepspeed_config("zero2", cfg, world=2)
    # 2 prompts x 8 responses = 16 rows per rank per minibatch -> 3 micro-batches of <= 6.
    assert ds["gradient_accumulation_steps"] == 3
    assert ds["train_micro_batch_size_per_gpu"] == 6
    assert ds["train_batch_size"] == 6 * 3 * 2
    assert ds["gradient_clipping"] == cfg.optim.grad_clip
    assert ds["zero_optimization"] == {"stage": 2}
    small = deepspeed_config("zero3", load_config("tiny-cpu", ["train.micro_batch_size=64"]), world=2)
    assert small["gradient_accumulation_steps"] == 1 and small["train_micro_batch_size_per_gpu"] == 16


def test_json_config_is_merged_and_checked(tmp_path):
    cfg = load_config("tiny-cpu")
    good = tmp_path / "ds.json"
    good.write_text('{"zero_optimization": {"stage": 3, "overlap_comm": false}, "gradient_accumulation_steps": "auto"}')
    ds = deepspeed_config(str(good), cfg, world=2)
    assert ds["zero_optimization"]["overlap_comm"] is False and ds["gradient_accumulation_steps"] == 1
    cases = {
        '{"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": 4}': "sets gradient_accumulation_steps=4 but clipctl derives 1",
        '{"zero_optimization": {"stage": 2}, "optimizer": {"type": "Adam"}}': "has an 'optimizer' section",
        '{"zero_optimization": {"stage": 2}, "fp16": {"enabled": true}}': "enables fp16",
        '{"train_batch_size": 32}': "zero_optimization.stage=0 must be 1, 2 or 3",
        "[1, 2]": "must hold a JSON object",
        "{": "is not valid JSON",
    }
    for text, fragment in cases.items():
        good.write_text(text)
        with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
            deepspeed_config(str(good), cfg, world=2)
    with pytest.raises(ConfigError, match="is unknown; use zero1|zero2"):
        deepspeed_config("zero4", cfg, world=2)
    with pytest.raises(ConfigError, match="not found"):
        deepspeed_config(str(tmp_path / "missing.json"), cfg, world=2)


def test_world_checks_name_values_and_fix():
    cfg = load_config("tiny-cpu", ["train.rollout_batch_prompts=6", "train.minibatch_prompts=3"])
    with pytest.raises(ConfigError) as e:
        check_launch(cfg, 2, "zero2")
    assert str(e.value) == (
        "train.rollout_batch_prompts (6) and train.minibatch_prompts (3) must be divisible by the number of "
        "processes (2); pick batch sizes that are multiples of 2 or use fewer processes"
    )
    check_world(cfg, 3, 2)  # 6 and 3 split over 3 processes
    with pytest.raises(ConfigError, match="eval.every is not supported with --deepspeed zero3"):
        check_world(load_config("tiny-cpu", ["eval.every=5"]), 2, 3)
    check_world(load_config("tiny-cpu", ["eval.every=5"]), 2, 2)


@pytest.mark.parametrize(
    "args, env, fragment",
    [
        (["--nproc", "2"], {}, "--nproc 2 needs --deepspeed zero1|zero2|zero3|FILE.json"),
        (["--deepspeed", "zero4"], {}, "--deepspeed 'zero4' is unknown"),
        (["--deepspeed", "zero2", "--nproc", "2", "--set", "train.minibatch_prompts=3", "--set",
          "train.rollout_batch_prompts=9"], {}, "must be divisible by the number of processes (2)"),
        ([], {"WORLD_SIZE": "2"}, "started with 2 processes (WORLD_SIZE=2) but without --deepspeed"),
    ],
)
def test_cli_errors_before_any_process_starts(tmp_path, monkeypatch, args, env, fragment):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path), "-q", *args])
    assert result.exit_code == 1
    out = result.output.strip()
    assert out.startswith("Error: ") and fragment in out and len(out.splitlines()) == 1, out
    assert list(tmp_path.iterdir()) == []


def test_deepspeed_launcher_local_rank_is_ignored(monkeypatch):
    from clipctl import cli

    seen = {}
    monkeypatch.setattr(cli, "app", lambda: seen.setdefault("argv", list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["clipctl", "--local_rank=1", "train", "--deepspeed", "zero2"])
    cli.main()
    assert seen["argv"] == ["clipctl", "train", "--deepspeed", "zero2"]
    result = CliRunner().invoke(app, ["train", "--help"])
    assert "--local_rank" not in result.output and "--deepspeed" in result.output

