"""The policy-loss families through the config and the trainer (docs/losses.md).

Fast: the family keys equal the registry, each family's ``ClipSpec``, another
family's bound refused in one line. Slow: ``algo.policy_loss=NAME`` trains
for every name with finite losses and its events logged, probe on every step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from typer.testing import CliRunner

from clipctl import algo
from clipctl.cli import app
from clipctl.clip import ClipSpec, CovSpec
from clipctl.config import FAMILY_KEYS, load_config
from clipctl.errors import ConfigError

INF = math.inf


def test_family_keys_equal_the_registry():
    assert tuple(FAMILY_KEYS) == tuple(algo.POLICY_LOSSES)
    assert set(algo.COV_LOSSES) <= set(algo.POLICY_LOSSES)


@pytest.mark.parametrize(
    "name, spec",
    [
        ("vanilla", ClipSpec(0.2, 0.2)),
        ("cispo", ClipSpec(1.0, 5.0)),
        ("gspo", ClipSpec(3e-4, 4e-4)),
        ("dppo_tv", ClipSpec(0.15, 0.15, 20.0)),
        ("dppo_kl", ClipSpec(0.05, 0.05, 20.0)),
        ("clip_cov", ClipSpec(0.2, 0.2, None, CovSpec(2e-4, 1.0, 5.0))),
        ("kl_cov", ClipSpec(1.0, INF, None, CovSpec(2e-4, coef=1.0))),
    ],
)
def test_each_family_gets_its_default_bounds(name, spec):
    # tiny-cpu writes eps_low = eps_high = 0.2 (the defaults): usable with every family.
    assert load_config("tiny-cpu", [f"algo.policy_loss={name}"]).algo.clip == spec


def test_family_keys_reach_the_spec():
    a = load_config("tiny-cpu", ["algo.policy_loss=gspo", "algo.gspo_eps_low=1e-3", "algo.gspo_eps_high=inf"]).algo
    assert a.clip == ClipSpec(1e-3, INF)
    a = load_config("tiny-cpu", ["algo.policy_loss=dppo_tv", "algo.dppo_ratio_cap=none"]).algo
    assert a.clip == ClipSpec(0.15, 0.15, None)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["algo.policy_loss=gspo", "algo.eps_high=0.28"],
         "algo.eps_high=0.28 is a bound of vanilla and clip_cov, which algo.policy_loss=gspo does not use; "
         "drop it, or set algo.gspo_eps_low, algo.gspo_eps_high instead (docs/losses.md)"),
        (["algo.cispo_eps_high=3"],
         "algo.cispo_eps_high=3.0 is a bound of cispo, which algo.policy_loss=vanilla does not use"),
        (["algo.policy_loss=kl_cov", "algo.dual_clip_c=3"], "algo.dual_clip_c=3.0 is a bound of vanilla"),
        (["algo.policy_loss=cispo", "algo.dppo_ratio_cap=none"], "algo.dppo_ratio_cap=None is a bound of dppo_tv and dppo_kl"),
        (["algo.policy_loss=gspo", "algo.gspo_eps_low=0"], "algo.gspo_eps_low=0.0 must be in (0, 1]; 1 turns this side off"),
        (["algo.policy_loss=clip_cov", "algo.clip_cov_lb=6"], "algo.clip_cov_lb=6.0 must be below algo.clip_cov_ub=5.0"),
        (["algo.policy_loss=kl_cov", "algo.kl_cov_ratio=0"], "algo.kl_cov_ratio=0.0 must be in (0, 1]"),
        (["algo.policy_loss=gspo", "algo.entropy_target=3"],
         "the clip entropy controller sets algo.eps_low, which algo.policy_loss=gspo does not use"),
    ],
)
def test_bounds_a_family_does_not_use_are_refused(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config("tiny-cpu", overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_cli_refuses_another_familys_bound_in_one_line(tmp_path):
    result = CliRunner().invoke(
        app, ["train", "--set", "algo.policy_loss=dppo_tv", "--set", "algo.eps_low=0.1", "--out", str(tmp_path), "-q"]
    )
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: algo.eps_low=0.1 is a bound of vanilla and clip_cov")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(algo.POLICY_LOSSES))
def test_every_family_trains_tiny_with_finite_losses_and_its_events(name, fast_overrides, tmp_path):
    from clipctl.runlog import read_run
    from clipctl.trainer import train

    # A share of 0.05 makes the covariance selection touch a few tokens of this small batch.
    extra = {"clip_cov": ["algo.clip_cov_ratio=0.05", "algo.clip_cov_lb=-5"], "kl_cov": ["algo.kl_cov_ratio=0.05"],
             "gspo": [], "cispo": ["algo.cispo_eps_high=0.05"]}.get(name, [])
    cfg = load_config("tiny-cpu", [*fast_overrides, f"algo.policy_loss={name}", "train.steps=3",
                                   "log.clip_probe_every=1", *extra])
    run = read_run(train(cfg, out=tmp_path, name=name).run_dir)
    steps, updates = run.steps, run.updates
    assert len(steps) == 3 and np.isfinite(steps["loss"]).all() and np.isfinite(updates["loss"]).all()
    assert (steps["probe_noise"] == 0).all()  # a replay of the real settings is the real step on a CPU
    events = steps[["clip_low_frac", "clip_high_frac", "dual_clip_frac", "cov_low_frac", "cov_high_frac"]]
    assert np.isfinite(events.to_numpy()).all()
    if name in algo.COV_LOSSES:
        assert (steps["cov_low_frac"] + steps["cov_high_frac"] > 0).all()
    else:
        assert (steps["cov_low_frac"] == 0).all() and (steps["cov_high_frac"] == 0).all()
    if name == "kl_cov":
        assert (events[["clip_low_frac", "clip_high_frac"]] == 0).all().all()
    if name in ("gspo", "vanilla", "clip_cov"):  # their bounds bite on this batch from the second minibatch on
        assert (steps["clip_low_frac"] + steps["clip_high_frac"] > 0).all()


@pytest.mark.deepspeed
def test_gspo_two_processes_equal_one_process(quick_model_dir, tmp_path):
    """A non-vanilla family under ZeRO-2 with 2 processes logs the steps table of one process (test_deepspeed's check)."""
    from test_deepspeed import OVERRIDES, assert_same_run, clipctl, sets

    from clipctl.trainer import train

    overrides = [f"model.path={quick_model_dir}", *OVERRIDES, "algo.policy_loss=gspo", "train.steps=2"]
    ref = train(load_config("tiny-cpu", overrides), out=tmp_path / "ref", name="plain").run_dir
    clipctl("train", *sets(overrides), "--out", str(tmp_path), "--name", "z2", "-q", "--deepspeed", "zero2", "--nproc", "2")
    assert_same_run(tmp_path / "z2", ref, [1, 2])
