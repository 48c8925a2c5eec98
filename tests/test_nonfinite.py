"""A diverging run (train.on_nonfinite): never applied, never checkpointed, one clear error or a logged skip."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from clipctl.cli import app
from clipctl.config import load_config
from clipctl.errors import NonFiniteError
from clipctl.runlog import read_run
from clipctl.trainer import Trainer, build_trainer, train

DIVERGE = ["optim.lr=10", "optim.grad_clip=0", "train.steps=6", "train.save_every=1", "train.keep_last=10"]


def test_lr_10_stops_with_the_step_and_last_good_checkpoint(tmp_path, fast_overrides):
    cfg = load_config("tiny-cpu", [*fast_overrides, *DIVERGE])
    with pytest.raises(NonFiniteError) as e:
        train(cfg, out=tmp_path, name="boom")
    message = str(e.value)
    assert "\n" not in message and "diverged" in message and "optim.lr" in message
    run = read_run(tmp_path / "boom")
    logged = list(run.steps["step"])
    assert e.value.step == logged[-1] + 1 if logged else e.value.step == 1
    # Every logged step is finite and every checkpoint holds finite weights.
    assert run.steps[["loss", "grad_norm", "entropy", "entropy_post"]].notna().all().all()
    from safetensors.torch import load_file

    for step in run.checkpoints:
        weights = load_file(tmp_path / "boom" / "checkpoints" / f"step-{step}" / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values()), step
    if run.checkpoints:
        assert f"step-{run.checkpoints[-1]}" in message


def test_cli_prints_one_error_line(tmp_path, fast_overrides):
    args = ["train", "--out", str(tmp_path), "--name", "boom", "-q"]
    for o in [*fast_overrides, *DIVERGE]:
        args += ["--set", o]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith("Error: step ") and "diverged" in errors[0], result.output
    assert "Traceback" not in result.output


def poison_advantages(t: Trainer, value: float) -> list[torch.Tensor]:
    """Make every advantage ``value`` (so every loss is non-finite); returns the weights before."""
    original = t.update_epochs

    def poisoned(step, sb, **kw):
        sb.advantages = torch.full_like(sb.advantages, value)
        return original(step, sb, **kw)

    t.update_epochs = poisoned
    return [p.detach().clone() for p in t.model.parameters()]


def test_skip_drops_nonfinite_updates_and_goes_on(fast_overrides):
    messages = []
    t = build_trainer(load_config("tiny-cpu", [*fast_overrides, "train.on_nonfinite=skip"]), log=messages.append)
    before = poison_advantages(t, math.nan)  # both optimizer steps are dropped
    out = t.run_step(1)
    assert out.metrics["skipped_updates"] == 2
    assert math.isnan(out.metrics["loss"]) and math.isnan(out.metrics["clip_low_frac"])
    assert all(u["skipped"] for u in out.updates) and all(math.isnan(u["loss"]) for u in out.updates)
    assert all(torch.equal(a, b) for a, b in zip(before, t.model.parameters()))
    assert math.isfinite(out.metrics["entropy_post"])
    assert sum("update skipped" in m for m in messages) == 2


def test_stop_is_the_default_and_raises_before_applying(fast_overrides):
    t = build_trainer(load_config("tiny-cpu", fast_overrides))
    before = poison_advantages(t, math.inf)
    with pytest.raises(NonFiniteError, match="step 1 diverged"):
        t.run_step(1)
    assert all(torch.equal(a, b) for a, b in zip(before, t.model.parameters()))
