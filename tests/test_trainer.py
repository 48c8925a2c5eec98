"""The real trainer on a quick tiny model: smoke, determinism, resume, probe."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from clipctl.config import load_config
from clipctl.runlog import read_run
from clipctl.trainer import TIMING_COLUMNS, Trainer, build_trainer, train
from clipctl.trainer.batch import StepBatch
from clipctl.schema import PROBE_KEYS as PROBE_COLUMNS

LOGGED_COLUMNS = (
    "step", "entropy", "entropy_token_mean", "entropy_post", "clip_low_frac", "clip_high_frac",
    "dual_clip_frac", "ratio_below_frac", "ratio_above_frac", "thm1_low", "thm1_high", "thm2_low",
    "thm2_high", "thm1_drift", "thm2_drift", *PROBE_COLUMNS,
)


def math_columns(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in TIMING_COLUMNS if c in df]).reset_index(drop=True)


def test_smoke_three_steps(tmp_path, fast_overrides):
    cfg = load_config("tiny-cpu", [*fast_overrides, "train.steps=3"])
    trainer_params = {}

    def snapshot_first(run_dir, first, total):
        trainer_params["start"] = first

    result = train(cfg, out=tmp_path, name="smoke", on_start=snapshot_first)
    run = read_run(result.run_dir)
    steps = run.steps
    assert list(steps["step"]) == [1, 2, 3]
    for col in LOGGED_COLUMNS:
        assert col in steps, col
    vocab = 512
    assert ((steps["entropy"] > 0) & (steps["entropy"] < math.log(vocab))).all()
    for col in ("clip_low_frac", "clip_high_frac", "ratio_below_frac", "ratio_above_frac"):
        assert steps[col].between(0, 1).all()
    # Two minibatches per step: the second is off-policy, so the ratio leaves 1.
    assert (steps["ratio_below_frac"] + steps["ratio_above_frac"]).gt(0).any()
    assert (steps["n_updates"] == 2).all()
    # updates: one row per (step, epoch, minibatch); the first minibatch is on-policy.
    assert len(run.updates) == 6
    first = run.updates[run.updates["minibatch"] == 0]
    assert (first["n_below"] == 0).all() and (first["n_above"] == 0).all()
    assert first["approx_kl"].abs().max() == 0.0
    assert len(run.samples) == 3 * 4 * 4
    assert run.checkpoints == [3]
    # Parameters changed.
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(cfg.model.path).state_dict()
    after = AutoModelForCausalLM.from_pretrained(result.run_dir / "checkpoints" / "step-3").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert run.meta["config"]["algo"]["eps_low"] == 0.2
    assert run.meta["versions"]["torch"] == torch.__version__


def test_same_seed_same_metrics(tmp_path, fast_overrides):
    cfg = load_config("tiny-cpu", [*fast_overrides, "train.steps=2"])
    a = read_run(train(cfg, out=tmp_path, name="a").run_dir).steps
    b = read_run(train(cfg, out=tmp_path, name="b").run_dir).steps
    pd.testing.assert_frame_equal(math_columns(a), math_columns(b))
    c = read_run(train(load_config("tiny-cpu", [*fast_overrides, "train.steps=2", "train.seed=1"]), out=tmp_path, name="c").run_dir).steps
    assert not np.allclose(a["entropy"], c["entropy"])


def test_resume_equals_uninterrupted(tmp_path, fast_overrides):
    overrides = [*fast_overrides, "train.steps=4", "train.save_every=2"]
    cfg = load_config("tiny-cpu", overrides)
    full = read_run(train(cfg, out=tmp_path, name="full").run_dir).steps
    # Stop after step 3: step 3 is logged but not checkpointed, so resume must
    # drop it and recompute it from the step-2 checkpoint.
    partial = train(cfg, out=tmp_path, name="cut", stop_after=3)
    assert list(read_run(partial.run_dir).steps["step"]) == [1, 2, 3]
    resumed = train(resume=partial.run_dir)
    assert resumed.first_step == 3
    steps = read_run(partial.run_dir).steps
    assert list(steps["step"]) == [1, 2, 3, 4]
    a, b = math_columns(full), math_columns(steps)
    np.testing.assert_allclose(a.to_numpy(float), b.to_numpy(float), rtol=0, atol=1e-6, equal_nan=True)
    assert len(read_run(partial.run_dir).updates) == 8


def test_resume_may_extend_steps_only(tmp_path, fast_overrides):
    from clipctl.errors import ConfigError

    cfg = load_config("tiny-cpu", [*fast_overrides, "train.steps=1"])
    run_dir = train(cfg, out=tmp_path, name="r").run_dir
    with pytest.raises(ConfigError, match="only train.steps"):
        train(resume=run_dir, overrides=("algo.eps_low=0.1",))
    train(resume=run_dir, overrides=("train.steps=2",))
    assert list(read_run(run_dir).steps["step"]) == [1, 2]


def test_probe_is_exact_and_changes_nothing(tmp_path, fast_overrides):
    base = [*fast_overrides, "train.steps=2"]
    on = read_run(train(load_config("tiny-cpu", [*base, "log.clip_probe_every=1"]), out=tmp_path, name="on").run_dir).steps
    off = read_run(train(load_config("tiny-cpu", base), out=tmp_path, name="off").run_dir).steps
    cols = [c for c in math_columns(off).columns if c not in PROBE_COLUMNS]
    pd.testing.assert_frame_equal(on[cols], off[cols])
    assert off[list(PROBE_COLUMNS)].isna().all().all()
    measured = [c for c in PROBE_COLUMNS if c != "probe_noise_sd"]  # NaN with log.probe_repeats = 1
    assert on[measured].notna().all().all() and on["probe_noise_sd"].isna().all()
    # On a CPU the replay with the run's own settings is the real step, bit for bit.
    assert (on["probe_noise"] == 0).all()
    np.testing.assert_array_equal(on["entropy_post_replay"], on["entropy_post"])
    np.testing.assert_allclose(
        on["clip_attributed_dH"], on["entropy_post_replay"] - on["entropy_post_noclip"], atol=1e-12
    )
    np.testing.assert_allclose(
        on["clip_low_alone_dH"], on["entropy_post_lowonly"] - on["entropy_post_noclip"], atol=1e-12
    )
    # The Shapley split adds up to the total, on a real probed run.
    np.testing.assert_allclose(
        on["clip_low_attributed_dH"] + on["clip_high_attributed_dH"], on["clip_attributed_dH"], rtol=0, atol=1e-12
    )


@pytest.mark.parametrize(
    "knobs",
    [
        ["algo.eps_high=0.1", "optim.lr=1e-2"],
        ["algo.eps_low=0.1", "algo.eps_high=inf", "train.ppo_epochs=2"],
        # bf16 weights through float32 masters (precision.py): the snapshot holds the masters too.
        ["model.dtype=bfloat16", "algo.eps_high=0.1", "algo.dual_clip_c=3.0", "optim.lr=1e-2"],
        # Other policy losses (docs/losses.md): cispo's regions count for either sign of A;
        # clip_cov selects tokens at ratio 1, so its replays must not share the first update.
        ["algo.policy_loss=cispo", "algo.cispo_eps_low=0.1", "algo.cispo_eps_high=0.05", "optim.lr=1e-2"],
        ["algo.policy_loss=dppo_tv", "algo.dppo_tv_low=0.01", "algo.dppo_tv_high=0.01", "optim.lr=1e-2"],
        ["algo.policy_loss=clip_cov", "algo.clip_cov_ratio=0.05", "algo.clip_cov_lb=-5", "optim.lr=1e-2"],
    ],
)
def test_probe_columns_unchanged_by_the_shared_prefix(tmp_path, fast_overrides, monkeypatch, knobs):
    # The shortcuts (start every replay after the shared on-policy first update, share
    # replays that retrace the real step) against full replays from the step's start.
    over = [*fast_overrides, "train.steps=2", "log.clip_probe_every=1", *knobs]
    fast = read_run(train(load_config("tiny-cpu", over), out=tmp_path, name="shared").run_dir).steps
    monkeypatch.setattr(Trainer, "_share_probe_prefix", False)
    full = read_run(train(load_config("tiny-cpu", over), out=tmp_path, name="full").run_dir).steps
    assert (fast["clip_low_frac"] + fast["clip_high_frac"] > 0).any()  # the clips acted: the replays differ
    pd.testing.assert_frame_equal(math_columns(fast), math_columns(full))


def test_probe_repeats_log_a_noise_floor(tmp_path, fast_overrides, monkeypatch):
    calls = []
    real = Trainer.update_epochs

    def counting(self, step, sb, **kw):
        calls.append(kw.get("first_update", 0))
        return real(self, step, sb, **kw)

    monkeypatch.setattr(Trainer, "update_epochs", counting)
    over = [*fast_overrides, "train.steps=1", "log.clip_probe_every=1", "log.probe_repeats=3"]
    steps = read_run(train(load_config("tiny-cpu", over), out=tmp_path, name="r").run_dir).steps
    assert steps["probe_noise_sd"].iloc[0] == 0.0  # a CPU replays exactly
    assert calls[0] == 0 and set(calls[1:]) == {1}  # replays start after the shared first update
    assert len(calls) >= 1 + 1 + 2  # the real step, the identity replay and its two repeats


def test_probe_repeats_zero_lets_the_real_step_stand_in(tmp_path, fast_overrides, monkeypatch):
    # One replay fewer per probed step, the same columns (the identity replay is the real step on a CPU).
    calls = []
    real = Trainer.update_epochs

    def counting(self, step, sb, **kw):
        calls.append(step)
        return real(self, step, sb, **kw)

    monkeypatch.setattr(Trainer, "update_epochs", counting)
    over = [*fast_overrides, "train.steps=2", "log.clip_probe_every=1", "algo.eps_high=0.1", "optim.lr=1e-2"]
    one = read_run(train(load_config("tiny-cpu", over), out=tmp_path, name="one").run_dir).steps
    n_one, calls[:] = len(calls), []
    zero = read_run(train(load_config("tiny-cpu", [*over, "log.probe_repeats=0"]), out=tmp_path, name="zero").run_dir).steps
    assert len(calls) == n_one - 2  # no identity replay on either step
    assert (one["probe_noise"] == 0).all() and zero["probe_noise"].isna().all()
    cols = [c for c in math_columns(one).columns if c not in ("probe_noise", "probe_seconds")]
    pd.testing.assert_frame_equal(math_columns(zero)[cols], math_columns(one)[cols])


def test_tokens_table_recomputes_the_clip_statistics(tmp_path, fast_overrides):
    # Every token logged (rate 1): the clip fractions and the Thm 2 clip-low sum of
    # the steps and updates tables follow from the tokens table alone.
    over = [*fast_overrides, "train.steps=2", "log.token_sample_rate=1.0", "train.ppo_epochs=2",
            "algo.eps_high=0.1", "optim.lr=1e-2"]
    run = read_run(train(load_config("tiny-cpu", over), out=tmp_path, name="t").run_dir)
    tok, steps, upd = run.tokens, run.steps, run.updates
    assert len(tok) == 2 * steps["n_tokens"].sum()  # one row per token and epoch
    l32 = np.clip(tok["logp_update"].to_numpy(np.float32) - tok["logp_old"].to_numpy(np.float32), -20, 20)
    ratio = np.exp(l32.astype(np.float32))
    eps = steps.set_index("step").loc[tok["step"]]
    lo = ratio < (np.float32(1) - eps["eps_low"].to_numpy(np.float32))
    hi = ratio > (np.float32(1) + eps["eps_high"].to_numpy(np.float32))
    adv = tok["advantage"].to_numpy()
    tok = tok.assign(clip_low=lo & (adv < 0), clip_high=hi & (adv > 0), below=lo, r=ratio.astype(np.float64),
                     gap=-tok["logp_update"] - tok["entropy_update"])
    assert (tok["clip_low"].sum() + tok["clip_high"].sum()) > 0
    by_step = tok.groupby("step")
    np.testing.assert_array_equal(by_step["clip_low"].mean().to_numpy(), steps["clip_low_frac"].to_numpy())
    np.testing.assert_array_equal(by_step["clip_high"].mean().to_numpy(), steps["clip_high_frac"].to_numpy())
    by_update = tok.groupby(["step", "update"])
    got = by_update.apply(lambda g: float((g["r"] * g["gap"])[g["below"]].sum()), include_groups=False)
    want = upd.set_index(["step", "update"])["gap_wsum_below"].loc[got.index]
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(by_update["clip_low"].sum().to_numpy(), upd["n_clip_low"].to_numpy())


def test_probe_runs_identical_replays_once(tmp_path, fast_overrides, monkeypatch):
    # eps_high = inf: highonly is noclip and replay is lowonly, so two replays, not four.
    calls = []
    real = Trainer.update_epochs

    def counting(self, step, sb, **kw):
        calls.append((kw["clip"].eps_low, kw["clip"].eps_high))
        return real(self, step, sb, **kw)

    monkeypatch.setattr(Trainer, "update_epochs", counting)
    over = [*fast_overrides, "train.steps=1", "algo.eps_high=inf", "log.clip_probe_every=1"]
    steps = read_run(train(load_config("tiny-cpu", over), out=tmp_path, name="p").run_dir).steps
    # The real step, then two replays, or one when no clip-low event happened (noclip retraces the step).
    expected = [(0.2, math.inf), (0.2, math.inf)] + ([(1.0, math.inf)] if steps["clip_low_frac"].iloc[0] > 0 else [])
    assert calls == expected
    assert steps["clip_high_attributed_dH"].iloc[0] == 0 == steps["clip_high_alone_dH"].iloc[0]
    assert steps["entropy_post_replay"].iloc[0] == steps["entropy_post_lowonly"].iloc[0]


def test_probe_of_a_step_without_clip_events_attributes_zero(tmp_path, fast_overrides):
    # One minibatch, one epoch: ratio is exactly 1, no token can clip, so the
    # replay without clipping must land on the same weights.
    cfg = load_config(
        "tiny-cpu", [*fast_overrides, "train.steps=1", "train.minibatch_prompts=4", "log.clip_probe_every=1"]
    )
    steps = read_run(train(cfg, out=tmp_path, name="p").run_dir).steps
    assert steps["ratio_below_frac"].iloc[0] == 0 and steps["ratio_above_frac"].iloc[0] == 0
    for col in ("clip_attributed_dH", "clip_low_attributed_dH", "clip_high_attributed_dH", "clip_interaction_dH"):
        assert abs(steps[col].iloc[0]) < 1e-6


def test_micro_batches_do_not_change_the_update(tmp_path, fast_overrides):
    a = read_run(train(load_config("tiny-cpu", [*fast_overrides, "train.steps=1", "train.micro_batch_size=8"]), out=tmp_path, name="m8").run_dir).steps
    b = read_run(train(load_config("tiny-cpu", [*fast_overrides, "train.steps=1", "train.micro_batch_size=3"]), out=tmp_path, name="m3").run_dir).steps
    for col in ("entropy", "entropy_post", "loss", "grad_norm", "approx_kl"):
        assert a[col].iloc[0] == pytest.approx(b[col].iloc[0], rel=1e-5, abs=1e-7), col


def test_on_policy_config_warns(fast_overrides):
    messages = []
    build_trainer(load_config("tiny-cpu", [*fast_overrides, "train.minibatch_prompts=4"]), log=messages.append)
    assert any("clipping cannot bite" in m for m in messages)


def test_old_logprobs_match_full_softmax(fast_overrides):
    trainer = build_trainer(load_config("tiny-cpu", fast_overrides))
    _, batch, rewards = trainer.rollout(1)
    logp, ent = trainer.policy_stats(StepBatch.from_rollout(batch, rewards, rewards, trainer.device))
    with torch.no_grad():
        ids = torch.cat([batch.prompt_ids, batch.response_ids], 1)
        attn = torch.cat([batch.prompt_mask, batch.response_mask], 1)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = trainer.model(input_ids=ids, attention_mask=attn, position_ids=pos).logits.float()
        tp = batch.prompt_ids.shape[1]
        full = torch.log_softmax(logits[:, tp - 1 : -1], -1)
        ref = full.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
        ref_ent = -(full.exp() * full).sum(-1)
    m = batch.response_mask.bool()
    torch.testing.assert_close(logp[m], ref[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent[m], ref_ent[m], atol=1e-5, rtol=1e-5)


def test_fused_lm_head_leaves_metrics_unchanged(tmp_path, fast_overrides):
    base = [*fast_overrides, "train.steps=2"]
    fused = read_run(train(load_config("tiny-cpu", [*base, "train.lm_head=fused", "train.lm_head_budget_mb=1"]), out=tmp_path, name="f").run_dir).steps
    chunked = read_run(train(load_config("tiny-cpu", [*base, "train.lm_head=chunked"]), out=tmp_path, name="c").run_dir).steps
    cols = [c for c in math_columns(fused).columns if c not in PROBE_COLUMNS]
    np.testing.assert_allclose(
        fused[cols].to_numpy(float), chunked[cols].to_numpy(float), rtol=1e-5, atol=1e-5, equal_nan=True
    )


def test_evaluation_during_training(tmp_path, fast_overrides):
    cfg = load_config(
        "tiny-cpu",
        [*fast_overrides, "train.steps=2", "eval.every=2", "eval.n=2", "eval.k=1,2", "eval.limit=2", "eval.max_new_tokens=8"],
    )
    plain = read_run(train(load_config("tiny-cpu", [*fast_overrides, "train.steps=2"]), out=tmp_path, name="plain").run_dir).steps
    run_dir = train(cfg, out=tmp_path, name="ev").run_dir
    summary = pd.read_parquet(run_dir / "eval" / "summary.parquet")
    assert sorted(set(summary["step"])) == [0, 2]
    assert set(summary["k"]) == {1, 2} and set(summary["dataset"]) == {"gsm8k"}
    # Evaluation draws no randomness from the training stream.
    steps = read_run(run_dir).steps
    pd.testing.assert_frame_equal(math_columns(steps), math_columns(plain))
