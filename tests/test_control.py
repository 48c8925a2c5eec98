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
    rows = [down.run_step(s).metrics for s in (1, 2, 3)]
    lows = [r["eps_low"] for r in rows]
    assert lows[0] > 0.2 and all(m <= 0.5 for m in lows)
    # Split range: with clip-low fully returned (0.5), clip-high tightens (eps_high falls from 0.2 toward 0.05).
    highs = [r["eps_high"] for r in rows]
    assert lows[-1] == 0.5 and 0.05 <= highs[-1] < 0.2
    # One-sided (eps_high_min = none): eps_high never moves.
    one = build_trainer(load_config("tiny-cpu", [*fast_overrides, "algo.entropy_target=3.0", "algo.eps_high_min=none"]))
    assert [one.run_step(s).metrics["eps_high"] for s in (1, 2)] == [0.2, 0.2]


def test_schedule_sets_each_steps_target(fast_overrides):
    t = build_trainer(load_config("tiny-cpu", [*fast_overrides, "algo.entropy_target=5.0",
                                                "algo.entropy_target_schedule=6.0@2,4.0@3"]))
    assert [t.run_step(s).metrics["entropy_target"] for s in (1, 2, 3)] == [5.0, 6.0, 4.0]


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


def test_entropy_penalty_lowers_entropy_and_the_signed_controller_sets_one(fast_overrides):
    # A negative coefficient is a penalty: the same first step, with less entropy after it than with no bonus.
    plain = build_trainer(load_config("tiny-cpu", fast_overrides)).run_step(1).metrics
    bonus = ["algo.entropy_controller=bonus", "algo.entropy_coef_scale=0.05"]
    # The quick model's entropy is ~5.7 nats: a target of 3 is far below, so the coefficient goes to its floor.
    t = build_trainer(load_config("tiny-cpu", [*fast_overrides, *bonus, "algo.entropy_target=3.0",
                                                "algo.entropy_coef_min=-0.1"]))
    m = t.run_step(1).metrics
    assert m["entropy_coef"] == -0.1 and m["entropy"] == plain["entropy"]
    assert m["entropy_post"] < plain["entropy_post"]
    # One-sided by default: the coefficient stays at 0 above target.
    one = build_trainer(load_config("tiny-cpu", [*fast_overrides, *bonus, "algo.entropy_target=3.0"]))
    assert one.run_step(1).metrics["entropy_coef"] == 0.0
    with pytest.raises(ConfigError, match="entropy_coef_min=0.1 must be a number <= 0"):
        load_config("tiny-cpu", ["algo.entropy_coef_min=0.1"])


def test_model_step_reads_the_previous_steps_row(fast_overrides):
    # Step 1 has no observation: the model holds v = 0, so with no PI gains the bounds stay at the start.
    # From step 2 it reads step 1's p, q, brackets and entropy change and moves eps_low (the quick model is
    # far below a target of 7 nats).
    t = build_trainer(load_config("tiny-cpu", [*fast_overrides, "algo.entropy_target=7.0", "algo.controller_kp=0",
                                                "algo.controller_ki=0", "algo.controller_model=thm2"]))
    rows = [t.run_step(s).metrics for s in (1, 2)]
    assert rows[0]["eps_low"] == 0.2 and rows[1]["eps_low"] < 0.2
    assert t.control.state.observed.b_low == rows[1]["thm2_low"]
    assert t.control.state.observed.dH == pytest.approx(rows[1]["entropy_post"] - rows[1]["entropy"])


@pytest.mark.parametrize("extra", [
    # The filter and a schedule make the state more than the integral: all of it must come back.
    ["algo.entropy_ema=0.3", "algo.entropy_target_schedule=8.0@3"],
    # The observation of the step before the checkpoint drives the first resumed step: it must be saved.
    ["algo.controller_model=thm2", "algo.controller_kp=0.5", "algo.controller_ki=0.1"],
], ids=["filter-schedule", "model-step"])
def test_controller_resume_is_exact(tmp_path, fast_overrides, extra):
    cfg = load_config("tiny-cpu", [*fast_overrides, "train.steps=4", "train.save_every=2", "algo.entropy_target=7.0",
                                   *extra])
    full = read_run(train(cfg, out=tmp_path, name="full").run_dir).steps
    cut = train(cfg, out=tmp_path, name="cut", stop_after=3)
    train(resume=cut.run_dir)
    steps = read_run(cut.run_dir).steps
    np.testing.assert_allclose(
        math_columns(full).to_numpy(float), math_columns(steps).to_numpy(float), rtol=0, atol=1e-6, equal_nan=True
    )
    np.testing.assert_array_equal(full["eps_low"].to_numpy(), steps["eps_low"].to_numpy())
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
    with pytest.raises(ConfigError, match=r"entropy_target_schedule='3@1': piece '3@1': steps must be at least 2"):
        load_config("tiny-cpu", ["algo.entropy_target=2", "algo.entropy_target_schedule=3@1"])
    with pytest.raises(ConfigError, match="entropy_target_schedule needs algo.entropy_target"):
        load_config("tiny-cpu", ["algo.entropy_target_schedule=3@5"])
    with pytest.raises(ConfigError, match=r"eps_high_min=0.3 must lie in \(0, 0.2\)"):
        load_config("tiny-cpu", ["algo.entropy_target=2", "algo.eps_high_min=0.3"])
    with pytest.raises(ConfigError, match="starts at algo.eps_low=0.2, outside"):
        load_config("tiny-cpu", ["algo.entropy_target=2", "algo.eps_low_max=0.1", "algo.eps_low_min=0.05"])
    with pytest.raises(ConfigError, match="entropy_ema"):
        load_config("tiny-cpu", ["algo.entropy_target=2", "algo.entropy_ema=0"])
    with pytest.raises(ConfigError, match="controller_model='kalman' is unknown; valid: none, thm2"):
        load_config("tiny-cpu", ["algo.controller_model=kalman"])
    with pytest.raises(ConfigError, match="steers the clip bounds, but algo.entropy_controller='bonus'"):
        load_config("tiny-cpu", ["algo.entropy_target=2", "algo.entropy_controller=bonus", "algo.controller_model=thm2"])
    with pytest.raises(ConfigError, match="needs log.entropy_post=true"):
        load_config("tiny-cpu", ["algo.controller_model=thm2", "log.entropy_post=false"])
    with pytest.raises(ConfigError, match=r"controller_model_frac=0.0 must be in \(0, 1\]"):
        load_config("tiny-cpu", ["algo.controller_model_frac=0"])
