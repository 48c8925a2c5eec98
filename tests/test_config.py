import re
import math

import pytest

from clipctl.config import (
    Config,
    EvalConfig,
    available_presets,
    check_section,
    check_seed,
    config_from_dict,
    config_to_dict,
    is_on_policy,
    load_config,
    parse_override,
)
from clipctl.errors import ConfigError


def test_every_preset_loads_and_validates():
    names = available_presets()
    assert {"tiny-cpu", "paper-random-reward", "paper-gsm8k", "paper-dapo-math", "dapo-clip-higher"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert isinstance(cfg, Config)


def test_paper_presets_match_the_paper():
    cfg = load_config("paper-random-reward")
    assert cfg.model.path == "Qwen/Qwen2.5-1.5B-Instruct"
    assert (cfg.train.rollout_batch_prompts, cfg.rollout.n, cfg.train.minibatch_prompts) == (512, 8, 256)
    assert cfg.optim.lr == 5e-7 and cfg.rollout.temperature == 1.0
    assert (cfg.algo.eps_low, cfg.algo.eps_high, cfg.algo.adv_norm) == (0.2, 0.2, "none")
    assert cfg.reward.kind == "random_bernoulli" and cfg.reward.p == 0.5
    gsm = load_config("paper-gsm8k")
    assert gsm.model.path == "Qwen/Qwen2.5-3B-Instruct"
    assert gsm.algo.eps_low == 0.15 and math.isinf(gsm.algo.eps_high) and gsm.reward.kind == "gsm8k"
    dapo = load_config("dapo-clip-higher")
    assert (dapo.algo.eps_low, dapo.algo.eps_high) == (0.2, 0.28)


def test_overrides_are_typed():
    cfg = load_config("tiny-cpu", ["algo.eps_high=inf", "train.steps=7", "optim.betas=0.8,0.9", "log.entropy_post=false"])
    assert math.isinf(cfg.algo.eps_high)
    assert cfg.train.steps == 7
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.log.entropy_post is False
    assert load_config("tiny-cpu", ["algo.dual_clip_c=3"]).algo.dual_clip_c == 3.0
    assert load_config("tiny-cpu", ["algo.dual_clip_c=none"]).algo.dual_clip_c is None


def test_round_trip_through_dict():
    cfg = load_config("tiny-cpu", ["algo.eps_high=inf"])
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("algo.foo=1", "unknown config key 'algo.foo'"),
        ("nosuch.key=1", "unknown config section 'nosuch'"),
        ("algo.eps_low=0", "algo.eps_low=0.0 must be in (0, 1]"),
        ("algo.eps_low=1.5", "algo.eps_low=1.5 must be in (0, 1]"),
        ("algo.eps_high=-0.1", "algo.eps_high=-0.1 must be in (0, inf]"),
        ("train.minibatch_prompts=3", "must be divisible by train.minibatch_prompts (3)"),
        ("algo.dual_clip_c=0.5", "algo.dual_clip_c=0.5 must be > 1"),
        ("algo.loss_agg=sum", "valid: seq-mean-token-mean, token-mean"),
        ("reward.kind=oracle", "reward.kind='oracle' is unknown"),
        ("train.steps=abc", "train.steps must be an integer"),
        ("algo.eps_high", "must look like section.key=value"),
    ],
)
def test_bad_values_name_value_rule_and_fix(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config("tiny-cpu", [override])
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ConfigError, match="unknown preset 'nope'; valid presets: .*tiny-cpu"):
        load_config("nope")


def test_preset_file_with_unknown_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[algo]\neps_lo = 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key 'algo.eps_lo'"):
        load_config(str(path))


def test_inf_in_toml(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[algo]\neps_high = inf\n[train]\nsteps = 2\n")
    cfg = load_config(str(path))
    assert math.isinf(cfg.algo.eps_high) and cfg.train.steps == 2


def test_on_policy_detection():
    assert not is_on_policy(load_config("tiny-cpu"))
    assert is_on_policy(load_config("tiny-cpu", ["train.minibatch_prompts=8"]))
    assert not is_on_policy(load_config("tiny-cpu", ["train.minibatch_prompts=8", "train.ppo_epochs=2"]))


def test_parse_override():
    assert parse_override("algo.eps_high=inf") == ("algo", "eps_high", "inf")
    assert parse_override("data.prompt_template=Q: {prompt} = ?") == ("data", "prompt_template", "Q: {prompt} = ?")


def test_choice_types_equal_their_registries():
    from clipctl import algo, models, trackers
    from clipctl.config import choices
    from clipctl.rollout import ENGINES
    from clipctl.rollout.vllm import VLLM_DTYPES

    from clipctl.data import GRADERS, REWARDS

    assert choices("model", "dtype") == tuple(models.DTYPES)
    assert choices("rollout", "engine") == tuple(ENGINES)
    assert choices("rollout", "vllm_dtype") == tuple(VLLM_DTYPES)
    assert choices("algo", "adv_norm") == tuple(algo.ADV_NORMS)
    assert choices("algo", "loss_agg") == tuple(algo.LOSS_AGGS)
    assert choices("algo", "policy_loss") == tuple(algo.POLICY_LOSSES)
    assert choices("algo", "entropy_controller") == tuple(algo.CONTROLLERS)
    assert choices("reward", "kind") == tuple(sorted(REWARDS))
    assert choices("log", "trackers") == tuple(trackers.TRACKERS)
    assert choices("eval", "grader") == tuple(GRADERS)


def test_config_loads_without_torch():
    import subprocess
    import sys

    code = "import clipctl.config as c, sys; c.load_config('tiny-cpu'); assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "override, value",
    [
        ('log.trackers=["tensorboard"]', ("tensorboard",)),
        ("log.trackers=tensorboard,wandb", ("tensorboard", "wandb")),
        ("log.trackers=none", ()),
        ("optim.betas=[0.8, 0.9]", (0.8, 0.9)),
        ("optim.betas=0.8,0.9", (0.8, 0.9)),
        ("eval.k=[1, 2]", (1, 2)),
        ("data.split=2024", "2024"),
        ('data.split="test"', "test"),
        ("train.steps=1e1", 10),
        ("algo.eps_high=inf", math.inf),
    ],
)
def test_overrides_parse_as_toml_literals(override, value):
    section, key, _ = parse_override(override)
    assert getattr(getattr(load_config("tiny-cpu", [override]), section), key) == value


@pytest.mark.parametrize(
    "override, message",
    [
        ("rollout.n=1", "rollout.n=1 must be >= 2; a group of one response has advantage 0"),
        ("train.steps=[1, 2]", "train.steps must be an integer, got [1, 2]"),
        ('algo.eps_low="x"', "algo.eps_low must be a number (or 'inf'), got 'x'"),
        ("log.trackers=[1]", "log.trackers must be a string, got 1"),
        ("log.trackers=foo", "log.trackers=['foo'] must name each item at most once; valid: tensorboard, wandb"),
        ("optim.betas=0.9,1.0", "optim.betas=(0.9, 1.0) must be in [0, 1) (each)"),
        ("algo.policy_loss=sapo", "algo.policy_loss='sapo' is unknown; valid: vanilla, cispo, gspo, dppo_tv, dppo_kl, clip_cov, kl_cov"),
    ],
)
def test_wrong_typed_overrides_give_one_line(override, message):
    with pytest.raises(ConfigError) as e:
        load_config("tiny-cpu", [override])
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_bounds_live_with_their_fields():
    import dataclasses

    from clipctl.config import SECTIONS

    bounded = {
        f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls) if f.metadata.get("bounds")
    }
    assert {"rollout.n", "train.steps", "optim.lr", "reward.p", "log.token_sample_rate", "eval.limit",
            "eval.top_p", "eval.batch_prompts", "eval.grader_processes"} <= bounded


def test_clip_spec_is_validated_once_and_used_by_the_config():
    from clipctl.clip import ClipSpec

    assert load_config("tiny-cpu", ["algo.eps_high=inf"]).algo.clip == ClipSpec(0.2, math.inf, None)
    for bad, message in [((0.0, 0.2), "eps_low=0.0 must be in (0, 1]"), ((0.2, 0.0), "eps_high=0.0 must be in (0, inf]"),
                         ((0.2, 0.2, 1.0), "dual_clip_c=1.0 must be > 1")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            ClipSpec(*bad)


def test_every_eval_bound_is_checked():
    """A value just outside each declared bound of ``EvalConfig`` fails ``check_section`` with its key."""
    import dataclasses

    bounded = [f for f in dataclasses.fields(EvalConfig) if f.metadata.get("bounds")]
    assert {"every", "n", "temperature", "top_p", "max_new_tokens", "limit", "batch_prompts", "grader_processes"} <= {
        f.name for f in bounded
    }
    for f in bounded:
        b = f.metadata["bounds"]
        bad = b.lo - 1 if b.lo is not None else b.hi + 1
        bad = type(f.default)(bad)
        with pytest.raises(ConfigError) as e:
            check_section("eval", dataclasses.replace(EvalConfig(), **{f.name: bad}))
        assert str(e.value) == f"eval.{f.name}={bad} must be {b.describe()}{b.fix}"
        if b.hi is not None:  # the upper bound too
            with pytest.raises(ConfigError, match=f"^eval.{f.name}="):
                check_section("eval", dataclasses.replace(EvalConfig(), **{f.name: type(f.default)(b.hi + 1)}))
    check_section("eval", EvalConfig())


def test_check_section_on_a_bad_eval_section_gives_one_line():
    message = "eval.k=[1, 8] must lie in [1, eval.n=4]; lower eval.k or raise eval.n"
    with pytest.raises(ConfigError) as e:
        check_section("eval", EvalConfig(n=4, k=(1, 8)))
    assert str(e.value) == message
    # validate() runs the same rules: the same line from a preset override.
    with pytest.raises(ConfigError) as e:
        load_config("tiny-cpu", ["eval.n=4", "eval.k=1,8"])
    assert str(e.value) == message
    with pytest.raises(ConfigError) as e:
        check_section("eval", EvalConfig(k=()))
    assert "\n" not in str(e.value) and str(e.value).startswith("eval.k is empty")
    with pytest.raises(ConfigError, match=re.escape("eval.grader='exact' is unknown; valid: gsm8k, math_verify")):
        check_section("eval", EvalConfig(grader="exact"))


def test_check_section_refuses_the_wrong_object():
    with pytest.raises(ConfigError, match="unknown config section 'evals'"):
        check_section("evals", EvalConfig())
    with pytest.raises(TypeError, match="must be of type EvalConfig, got TrainConfig"):
        check_section("eval", Config().train)


def test_eval_seed_is_an_argument_checked_against_max_seed():
    from clipctl.config import MAX_SEED

    check_seed(0)
    check_seed(MAX_SEED)
    for bad in (-1, MAX_SEED + 1):
        with pytest.raises(ConfigError, match=re.escape(f"seed={bad} must be in [0, 2**63 - 1]; pick a smaller seed")):
            check_seed(bad)
