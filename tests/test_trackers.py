"""log.trackers: TensorBoard and offline W&B mirror the steps table; failures never touch the Parquet log."""

from __future__ import annotations

import glob
import importlib.util
import json
import math
import struct

import pytest

from clipctl.errors import ConfigError
from clipctl.runlog import read_run

HAS_TB = importlib.util.find_spec("tensorboard") is not None
HAS_WANDB = importlib.util.find_spec("wandb") is not None
needs_tb = pytest.mark.skipif(not HAS_TB, reason="tensorboard not installed: pip install 'clipctl[tensorboard]'")
needs_wandb = pytest.mark.skipif(not HAS_WANDB, reason="wandb not installed: pip install 'clipctl[wandb]'")


def tensorboard_scalars(folder) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def wandb_history(path) -> list[dict]:
    """The history rows of an offline ``.wandb`` file (LevelDB log format: 7-byte header, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, buf, rows = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a record header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            if rec.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return rows


def numeric_columns(steps):
    return [c for c in steps.columns if c != "step" and steps[c].dtype.kind in "fiu"]


@needs_tb
@needs_wandb
def test_two_steps_mirrored_to_tensorboard_and_offline_wandb(tmp_path, fast_overrides, monkeypatch):
    from clipctl.config import load_config
    from clipctl.trainer import train

    monkeypatch.setenv("WANDB_MODE", "offline")  # never a server
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config("tiny-cpu", [*fast_overrides, "train.steps=2", "log.trackers=tensorboard,wandb"])
    run_dir = train(cfg, out=tmp_path, name="tracked").run_dir
    steps = read_run(run_dir).steps
    cols = numeric_columns(steps)
    assert {"entropy", "clip_low_frac", "thm2_drift", "reward_mean"} <= set(cols)

    tb = tensorboard_scalars(run_dir / "tensorboard")
    assert set(cols) <= set(tb)
    for col in cols:
        for step, value in zip(steps["step"], steps[col]):
            got = tb[col][int(step)]  # float32 in the event file
            assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value, rel=1e-6, abs=1e-30), col

    [wfile] = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "*.wandb"))
    rows = {int(r["step"]): r for r in wandb_history(wfile)}
    assert sorted(rows) == [1, 2]
    for col in cols:
        for step, value in zip(steps["step"], steps[col]):
            got = float(rows[int(step)][col])
            assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value, rel=1e-12), col
    run_id = (run_dir / "wandb" / "clipctl-run-id").read_text().strip()
    assert wfile.endswith(f"run-{run_id}.wandb")

    # Resume continues the same tracker runs: same W&B id, same TensorBoard folder.
    train(resume=run_dir, overrides=("train.steps=3",))
    assert 3 in tensorboard_scalars(run_dir / "tensorboard")["entropy"]
    assert all(p.endswith(f"run-{run_id}.wandb") for p in glob.glob(str(run_dir / "wandb" / "offline-run-*" / "*.wandb")))


def test_unknown_tracker_names_the_valid_ones():
    from clipctl.config import load_config

    with pytest.raises(ConfigError, match="valid: tensorboard, wandb"):
        load_config("tiny-cpu", ["log.trackers=mlflow"])
    assert load_config("tiny-cpu", []).log.trackers == ()
    assert load_config("tiny-cpu", ["log.trackers=none"]).log.trackers == ()


def test_missing_package_is_one_config_error_before_any_folder(tmp_path, monkeypatch):
    from clipctl import trackers
    from clipctl.config import load_config
    from clipctl.trainer import train

    monkeypatch.setattr(trackers, "_has", lambda module: False)
    cfg = load_config("tiny-cpu", ["log.trackers=wandb"])
    with pytest.raises(ConfigError) as e:
        train(cfg, out=tmp_path / "runs", name="x")
    assert str(e.value) == (
        "log.trackers includes wandb, but wandb is not installed; pip install 'clipctl[wandb]'"
    )
    assert not (tmp_path / "runs" / "x").exists()


def test_a_failing_tracker_never_loses_parquet_rows(tmp_path, fast_overrides, monkeypatch):
    from clipctl import trackers
    from clipctl.config import load_config
    from clipctl.trainer import train

    class Broken:
        name = "tensorboard"

        def __init__(self, *a):
            pass

        def log(self, row):
            raise OSError("disk of the tracker is gone")

        def close(self):
            raise OSError("still gone")

    monkeypatch.setitem(trackers._MAKERS, "tensorboard", Broken)
    monkeypatch.setattr(trackers, "_has", lambda module: True)
    cfg = load_config("tiny-cpu", [*fast_overrides, "train.steps=2", "log.trackers=tensorboard"])
    messages = []
    run_dir = train(cfg, out=tmp_path, name="r", log=messages.append).run_dir
    assert list(read_run(run_dir).steps["step"]) == [1, 2]
    assert sum("tracker tensorboard failed" in m for m in messages) == 1


@needs_tb
def test_toml_list_override_from_the_command_line(tmp_path, fast_overrides):
    """`--set 'log.trackers=["tensorboard"]'`, as written in a preset file, works on the command line."""
    from typer.testing import CliRunner

    from clipctl.cli import app

    sets = [a for o in [*fast_overrides, "train.steps=1", 'log.trackers=["tensorboard"]'] for a in ("--set", o)]
    result = CliRunner().invoke(app, ["train", "-q", *sets, "--out", str(tmp_path), "--name", "tb"])
    assert result.exit_code == 0, result.output
    run = read_run(tmp_path / "tb")
    assert run.config["log"]["trackers"] == ["tensorboard"]
    assert tensorboard_scalars(tmp_path / "tb" / "tensorboard")["entropy"].keys() == {1}
