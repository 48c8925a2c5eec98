"""The entropy controller in the trainer: off changes nothing, it moves the knob the right way, resume is exact."""

from __future__ import annotations


import numpy as np
import pytest

from clipctl.config import load_config
from clipctl.errors import ConfigError
from clipctl.runlog import read_run
from clipctl.trainer import build_trainer, train

from test_trainer import math_columns


def test_off_logs_the_config_bounds(tmp_path, fast_overrides):
    steps = read_run(train(load_config("tiny-cpu", [*fast_overrides, "train.steps=2", "algo.eps_high=inf"]),
                           out=tmp_path, name="off").run_dir).steps
    assert (steps["eps_low"] == 0.2).all() and np.isinf(steps["eps_high"]).all()
    assert (steps["entropy_coef"] == 0).all() and steps["entropy_target"].isna().all()


def test_clip_controller_moves_eps_low_the_right_way(fast_overrides):
    # The quick model's entropy is ~5.7 nats: a target of 7 is too high (strengthen
    # clip-low: eps_low falls), a target of 3 too low (relax it, up to eps_low_max).
    up = build_trainer(load_config("tiny-cpu", [*fast_overrides, "algo.entropy_target=7.0"]))
    lows = [up.run_step(s).metrics["eps_low"] for s in (1, 2, 3)]
    assert lows[0] < 0.2 and lows[2] < lows[1] < lows[0]
    down = build_trainer(load_config("tiny-cpu", [*fast_overrides, "algo.entropy_target=3.0", "algo.eps_low_max=0.5"]))
    highs = [down.run_step(s).metrics["eps_low"] for s in (1, 2, 3)]
    assert highs[0] > 0.2 and highs[-1] <= 0.5
    assert all(m <= 0.5 for m in highs)


def test_bonus_controller_raises_the_coefficient_below_target(fast_overrides):
    # 9 nats is above log(512): the error never closes, so the integral keeps raising the coefficient.
    t = build_trainer(load_config("tiny-cpu", [*fast_overrides, "algo.entropy_target=9.0", "algo.entropy_controller=bonus"]))
    coefs = [t.run_step(s).metrics["entropy_coef"] for s in (1, 2)]
    assert 0 < coefs[0] < coefs[1] <= 0.1


def test_entropy_bonus_raises_entropy(fast_overrides):
    plain = build_trainer(load_config("tiny-cpu", fast_overrides)).run_step(1).metrics
    bonus = build_trainer(load_config("tiny-cpu", [*fast_overrides, "algo.entropy_coef=0.1"])).run_step(1).metrics
    assert bonus["entropy"] == plain["entropy"]  # same samples, same start
    assert bonus["entropy_post"] > plain["entropy_post"]


def test_controller_resume_is_exact(tmp_path, fast_overrides):
    overrides = [*fast_overrides, "train.steps=4", "train.save_every=2", "algo.entropy_target=7.0"]
    cfg = load_config("tiny-cpu", overrides)
    full = read_run(train(cfg, out=tmp_path, name="full").run_dir).steps
    cut = train(cfg, out=tmp_path, name="cut", stop_after=3)
    train(resume=cut.run_dir)
    steps = read_run(cut.run_dir).steps
    np.testing.assert_allclose(
        math_columns(full).to_numpy(float), math_columns(steps).to_numpy(float), rtol=0, atol=1e-6, equal_nan=True
    )
    assert steps["eps_low"].is_monotonic_decreasing


def test_bad_controller_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="entropy_target=-1.0 must be a positive"):
        load_config("tiny-cpu", ["algo.entropy_target=-1"])
    with pytest.raises(ConfigError, match="entropy_controller='pid' is unknown; valid: clip, bonus"):
        load_config("tiny-cpu", ["algo.entropy_target=2", "algo.entropy_controller=pid"])
    with pytest.raises(ConfigError, match="needs the entropy's gradient"):
        load_config("tiny-cpu", ["algo.entropy_coef=0.01", "train.lm_head=chunked"])
    with pytest.raises(ConfigError, match="must satisfy 0 < min <= max <= 1"):
        load_config("tiny-cpu", ["algo.eps_low_min=0.5", "algo.eps_low_max=0.1"])
