"""Mixed precision (trainer/precision.py): bf16 runs learn at the paper's lr, resume exactly, track float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipctl.config import load_config
from clipctl.runlog import read_run
from clipctl.trainer import build_trainer, train
from clipctl.trainer.precision import MASTER_FILE, MasterWeights, PlainWeights

from test_trainer import math_columns


def moved_share(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    changed = sum(int((a != b).sum()) for a, b in zip(before, after))
    return changed / sum(a.numel() for a in before)


def test_bf16_master_weights_move_at_paper_lr(fast_overrides):
    messages = []
    t = build_trainer(load_config("tiny-cpu", [*fast_overrides, "model.dtype=bfloat16", "optim.lr=5e-7"]), log=messages.append)
    assert isinstance(t.engine.weights, MasterWeights)
    assert all(p.dtype == torch.bfloat16 for p in t.model.parameters())
    master = t.engine.weights.params()
    assert all(m.dtype == torch.float32 for m in master)
    before = [m.clone() for m in master]
    for step in (1, 2):
        t.run_step(step)
    assert moved_share(before, master) >= 0.95
    # AdamW state is float32; the model holds the master weights rounded to bf16.
    state = next(iter(t.engine.optimizer.state.values()))
    assert state["exp_avg"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.float32
    for p, m in zip(t.model.parameters(), master):
        assert torch.equal(p, m.to(torch.bfloat16))
    assert not any("warning" in m for m in messages)


def test_pure_bf16_optimizer_warns_and_loses_updates(fast_overrides):
    messages = []
    cfg = load_config("tiny-cpu", [*fast_overrides, "model.dtype=bfloat16", "optim.lr=5e-7", "optim.master_weights=false"])
    t = build_trainer(cfg, log=messages.append)
    assert isinstance(t.engine.weights, PlainWeights)
    assert any("master_weights=false" in m for m in messages)
    before = [p.detach().clone() for p in t.model.parameters()]
    t.run_step(1)
    # What the issue measured: almost every update rounds away.
    assert moved_share(before, list(t.model.parameters())) < 0.05


def test_float32_has_no_master_copy(fast_overrides):
    t = build_trainer(load_config("tiny-cpu", fast_overrides))
    assert isinstance(t.engine.weights, PlainWeights)
    assert t.engine.weights.params()[0] is next(t.model.parameters())


def test_bf16_tracks_float32_entropy(tmp_path, fast_overrides):
    # Samples differ from step 2 on (bf16 logits sample other tokens), so the
    # trajectories are compared as trajectories. Measured here: max |diff|
    # 0.02-0.11 nats over 6-8 steps at entropy ~5.8 nats (lr 1e-3).
    base = [*fast_overrides, "train.steps=6", "optim.lr=1e-3"]
    f32 = read_run(train(load_config("tiny-cpu", base), out=tmp_path, name="f32").run_dir).steps
    b16 = read_run(train(load_config("tiny-cpu", [*base, "model.dtype=bfloat16"]), out=tmp_path, name="b16").run_dir).steps
    assert abs(f32["entropy"].iloc[0] - b16["entropy"].iloc[0]) < 0.02  # same samples at step 1
    np.testing.assert_allclose(b16["entropy_post"], f32["entropy_post"], atol=0.15)
    # Both moved away from where they started by more than rounding.
    assert abs(b16["entropy_post"].iloc[-1] - b16["entropy"].iloc[0]) > 0.01


def test_bf16_resume_equals_uninterrupted(tmp_path, fast_overrides):
    overrides = [*fast_overrides, "train.steps=4", "train.save_every=2", "model.dtype=bfloat16", "optim.lr=1e-3"]
    cfg = load_config("tiny-cpu", overrides)
    full = read_run(train(cfg, out=tmp_path, name="full").run_dir).steps
    partial = train(cfg, out=tmp_path, name="cut", stop_after=3)
    ckpt = partial.run_dir / "checkpoints" / "step-2"
    assert (ckpt / MASTER_FILE).is_file()
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(ckpt / "model.safetensors").values()} == {torch.bfloat16}  # HF export in bf16
    assert {t.dtype for t in load_file(ckpt / MASTER_FILE).values()} == {torch.float32}
    train(resume=partial.run_dir)
    steps = read_run(partial.run_dir).steps
    assert list(steps["step"]) == [1, 2, 3, 4]
    a, b = math_columns(full), math_columns(steps)
    np.testing.assert_allclose(a.to_numpy(float), b.to_numpy(float), rtol=0, atol=1e-6, equal_nan=True)


def test_resume_without_master_file_is_a_clear_error(tmp_path, fast_overrides):
    from clipctl.errors import RunDirError

    cfg = load_config("tiny-cpu", [*fast_overrides, "train.steps=1", "model.dtype=bfloat16"])
    run_dir = train(cfg, out=tmp_path, name="r").run_dir
    (run_dir / "checkpoints" / "step-1" / MASTER_FILE).unlink()
    with pytest.raises(RunDirError, match=MASTER_FILE):
        train(resume=run_dir, overrides=("train.steps=2",))


def attention_calls(overrides: list[str]) -> int:
    t = build_trainer(load_config("tiny-cpu", overrides))
    calls = []
    t.model.model.layers[0].self_attn.register_forward_pre_hook(lambda mod, args: calls.append(1))
    t.run_step(1)
    assert not t.model.model.layers[0].training  # the flag is set only during the forward
    return len(calls)


def test_gradient_checkpointing_recomputes_and_keeps_the_update(tmp_path, fast_overrides):
    base = [*fast_overrides, "train.steps=1"]
    # Each update pass runs the layer's attention once more, in backward.
    n_updates_passes = 4  # 2 minibatches x 2 micro-batches of 4 rows
    assert attention_calls([*base, "train.gradient_checkpointing=true"]) == attention_calls(base) + n_updates_passes
    plain = read_run(train(load_config("tiny-cpu", base), out=tmp_path, name="plain").run_dir).steps
    ckpt = read_run(train(load_config("tiny-cpu", [*base, "train.gradient_checkpointing=true"]), out=tmp_path, name="gc").run_dir).steps
    for col in ("entropy", "entropy_post", "loss", "grad_norm", "approx_kl"):
        assert ckpt[col].iloc[0] == pytest.approx(plain[col].iloc[0], rel=1e-5, abs=1e-7), col
