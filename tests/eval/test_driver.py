"""The pass@k evaluation driver (docs/definitions.md section 9): files, scores, seeding, resume.

Fast tests use a random 1-layer Qwen2 (hidden 64, 2 heads of 32) saved in a tmp
folder with the tokenizer files of the cached ``builtin:tiny``; when that model
is not cached yet, they are marked slow (building it takes about a minute).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from clipctl.config import EvalConfig
from clipctl.data import fill_template
from clipctl.errors import ConfigError, DataError, ModelError, RunDirError
from clipctl.eval import driver
from clipctl.eval.driver import (
    EXTRA_SUMMARY_COLUMNS,
    SAMPLE_COLUMNS,
    SUMMARY_COLUMNS,
    batch_seed,
    evaluate,
    evaluate_checkpoint,
    load_eval_set,
    merge_summary,
    model_label,
    select_checkpoints,
    summarize,
)
from clipctl.models import TinySpec, cache_dir
from clipctl.rollout.base import RolloutBatch
from clipctl.rollout.hf import HFEngine

TINY_CACHED = (cache_dir() / TinySpec().key() / "tokenizer.json").is_file()
needs_tiny = (lambda test: test) if TINY_CACHED else pytest.mark.slow
FAST = dict(n=2, k=(1, 2), max_new_tokens=4, batch_prompts=2)


def _fast(**kw) -> EvalConfig:
    """Small, quick evaluation settings; ``kw`` overrides ``FAST``."""
    return EvalConfig(**{**FAST, **kw})


def _make_run_dir(root: Path, model_dir: Path, steps=(1, 2)) -> Path:
    """A run directory with ``checkpoints/step-N`` copies of ``model_dir``."""
    run = root / "r"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"name": "r", "config": {}}))
    for step in steps:
        ckpt = run / "checkpoints" / f"step-{step}"
        shutil.copytree(model_dir, ckpt)
        torch.save({"step": step}, ckpt / "trainer_state.pt")
    return run


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _no_generation(monkeypatch) -> None:
    """Any model load or generate call fails the test."""

    def boom(*args, **kwargs):
        raise AssertionError("no model load or generation expected")

    monkeypatch.setattr(HFEngine, "generate", boom)
    monkeypatch.setattr("clipctl.models.load_model", boom)


class ScriptedEngine:
    """A rollout engine whose sample j of a problem is correct iff j < correct[problem]."""

    def __init__(self, correct: dict[str, int], answers: dict[str, str], order: list[str]):
        self.correct, self.answers, self.order = correct, answers, order
        self.calls: list[tuple[int, int]] = []  # (prompts, seed)
        self.next = 0

    def sync_weights(self, model) -> None:
        pass

    def generate(self, prompts, params) -> RolloutBatch:
        ids = self.order[self.next : self.next + len(prompts)]
        self.next += len(prompts)
        self.calls.append((len(prompts), params.seed))
        texts = []
        for pid in ids:  # prompt-major: all n samples of a prompt, then the next
            for j in range(params.n):
                right = j < self.correct[pid]
                texts.append(f"so #### {self.answers[pid] if right else '-1'}")
        N = len(texts)
        zeros = torch.zeros((N, 1), dtype=torch.long)
        mask = torch.ones((N, 3), dtype=torch.long)
        return RolloutBatch(zeros, zeros, mask.clone(), mask, torch.zeros(N, dtype=torch.bool), texts)


# ---------------------------------------------------------------------------
# Pure parts
# ---------------------------------------------------------------------------


def _samples(counts: list[int], n: int) -> pd.DataFrame:
    rows = [
        {"problem_id": f"p{i}", "sample_index": j, "response": "", "prediction": None,
         "correct": j < c, "response_tokens": 3, "truncated": j == 0}
        for i, c in enumerate(counts) for j in range(n)
    ]
    return pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS))


def test_summarize_hand_computed():
    out = summarize(_samples([1, 4], 4), step=3, dataset="d", cfg=EvalConfig(n=4, k=(1, 2, 4)), seed=0)
    assert list(out.columns) == list(SUMMARY_COLUMNS + EXTRA_SUMMARY_COLUMNS)
    # problem 0: c=1 of 4 -> pass@1 1/4, pass@2 1 - C(3,2)/C(4,2) = 1/2, pass@4 1; problem 1: all 1.
    np.testing.assert_allclose(out["pass_at_k"], [(0.25 + 1) / 2, (0.5 + 1) / 2, 1.0])
    np.testing.assert_allclose(out["mean_at_n"], 0.625)
    assert out["k"].tolist() == [1, 2, 4] and (out["step"] == 3).all() and (out["n_problems"] == 2).all()
    assert (out["ci_low"] <= out["pass_at_k"] + 1e-12).all() and (out["pass_at_k"] <= out["ci_high"] + 1e-12).all()
    # pass@1 is mean@n, and the bootstrap uses the same resamples for both.
    assert out.loc[0, "ci_low"] == out.loc[0, "mean_at_n_ci_low"] and out.loc[0, "ci_high"] == out.loc[0, "mean_at_n_ci_high"]
    assert out.loc[0, "truncated_frac"] == 0.25 and out.loc[0, "response_tokens_mean"] == 3


def test_summarize_rejects_wrong_sample_count():
    with pytest.raises(RunDirError, match="expected n=4"):
        summarize(_samples([1, 2], 3), step=1, dataset="d", cfg=EvalConfig(n=4, k=(1,)), seed=0)


def test_summarize_scores_each_k_once_in_order():
    out = summarize(_samples([1, 4], 8), step=0, dataset="d", cfg=EvalConfig(n=8, k=(8, 1, 8, 2)), seed=3)
    assert out["k"].tolist() == [1, 2, 8] and (out["seed"] == 3).all()


def test_merge_summary_latest_row_wins(tmp_path):
    cfg = EvalConfig(n=4, k=(1, 2))
    path = tmp_path / "summary.parquet"
    first = summarize(_samples([1, 2], 4), step=1, dataset="d", cfg=cfg, seed=0)
    merge_summary(path, first)
    again = summarize(_samples([4, 4], 4), step=1, dataset="d", cfg=cfg, seed=0)
    merged = merge_summary(path, again)
    assert len(merged) == 2 and (merged["pass_at_k"] == 1.0).all()
    other = summarize(_samples([1, 2], 4), step=2, dataset="d", cfg=EvalConfig(n=4, k=(1,)), seed=0)
    merged = merge_summary(path, other)
    assert sorted(zip(merged["step"], merged["k"])) == [(1, 1), (1, 2), (2, 1)]
    pd.testing.assert_frame_equal(pd.read_parquet(path), merged)


def test_batch_seed_is_a_pure_function_of_seed_step_batch():
    seeds = {batch_seed(s, t, b) for s in range(3) for t in range(3) for b in range(3)}
    assert len(seeds) == 27
    assert batch_seed(1, 2, 3) == batch_seed(1, 2, 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n=4, k=(1, 8)), "eval.k=[1, 8] must lie in [1, eval.n=4]; lower eval.k or raise eval.n"),
        (dict(n=4, k=()), "eval.k is empty; give at least one k"),
        (dict(n=4, k=(0, 1)), "eval.k=[0, 1] must lie in [1, eval.n=4]"),
        (dict(n=0, k=(1,)), "eval.n=0 must be >= 1"),
        (dict(temperature=0.0), "eval.temperature=0.0 must be a finite number > 0 (the paper uses 0.6)"),
        (dict(top_p=0.0), "eval.top_p=0.0 must be in (0, 1]"),
        (dict(max_new_tokens=0), "eval.max_new_tokens=0 must be >= 1"),
        (dict(batch_prompts=0), "eval.batch_prompts=0 must be >= 1"),
        (dict(grader_processes=-1), "eval.grader_processes=-1 must be >= 0 (0 = grade inline)"),
        (dict(limit=-1), "eval.limit=-1 must be >= 0 (0 = all)"),
        (dict(grader="exact"), "eval.grader='exact' is unknown; valid: gsm8k, math_verify"),
    ],
)
def test_bad_settings_fail_before_any_work(kwargs, message, tmp_path):
    """``evaluate`` and ``evaluate_checkpoint`` check the section (``config.check_section``) first."""
    with pytest.raises(ConfigError) as e:
        evaluate("x", "nope", EvalConfig(**kwargs), out=tmp_path / "out")
    assert str(e.value).startswith(message)
    with pytest.raises(ConfigError) as e:
        evaluate_checkpoint(None, None, tmp_path / "run", 1, "nope", EvalConfig(**kwargs))
    assert str(e.value).startswith(message)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("seed", [-1, 2**63])
def test_seed_is_checked_against_max_seed(seed, tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"seed={seed} must be in [0, 2**63 - 1]; pick a smaller seed")):
        evaluate("x", "nope", _fast(), seed=seed, out=tmp_path / "out")


def test_work_key_keeps_its_keys_and_values(tmp_path):
    """``settings.json`` written before EvalConfig held these same keys and values: finished steps are reused."""
    path = _write_jsonl(tmp_path / "toy.jsonl", [{"id": "a", "problem": "1+1", "answer": "2"}])
    es = load_eval_set(str(path))
    key = driver._work_key("m", 3, es, EvalConfig(n=4, k=(4, 1), temperature=0.7, max_new_tokens=16, limit=0), 5)
    assert key == {
        "model": "m", "step": 3, "dataset": "toy", "fingerprint": es.fingerprint, "grader": "math_verify",
        "template": es.template, "n": 4, "temperature": 0.7, "top_p": 1.0, "max_new_tokens": 16, "seed": 5,
        "limit": None, "n_problems": 1,
    }
    assert driver._work_key("m", 3, es, EvalConfig(limit=5), 0)["limit"] == 5


def test_select_checkpoints(tmp_path):
    found = [(1, tmp_path / "step-1"), (2, tmp_path / "step-2"), (10, tmp_path / "step-10")]
    assert select_checkpoints(found, "all", tmp_path) == found
    assert select_checkpoints(found, "last", tmp_path) == found[2:]
    assert select_checkpoints(found, "step-10, 1", tmp_path) == [found[0], found[2]]
    with pytest.raises(RunDirError, match="checkpoint 'step-7' not found .*available: step-1, step-2, step-10"):
        select_checkpoints(found, "step-7", tmp_path)
    with pytest.raises(ConfigError, match="use all, last or step-N"):
        select_checkpoints(found, "first", tmp_path)


def test_model_label(tmp_path):
    assert model_label("builtin:tiny") == "builtin-tiny"
    assert model_label("Qwen/Qwen2.5-Math-1.5B") == "Qwen--Qwen2.5-Math-1.5B"
    (tmp_path / "my model").mkdir()
    assert model_label(str(tmp_path / "my model") + "/") == "my-model"


def test_load_eval_set_local_defaults_and_errors(tmp_path):
    path = _write_jsonl(tmp_path / "toy set.jsonl", [{"id": "a", "problem": "1+1", "answer": "2"}])
    es = load_eval_set(str(path))
    assert es.name == "toy-set" and es.grader == "math_verify" and es.template.endswith("\\boxed{}.")
    assert load_eval_set(str(path), grader="gsm8k").fingerprint != es.fingerprint
    with pytest.raises(ConfigError, match="unknown grader 'nope'; valid: gsm8k, math_verify"):
        load_eval_set(str(path), grader="nope")
    with pytest.raises(ConfigError, match=r"must contain \{prompt\} \(or its alias \{problem\}\)"):
        load_eval_set(str(path), template="no field")
    # One dialect: other braces are literal; "{problem}" is an alias of "{prompt}" (same fingerprint).
    literal = load_eval_set(str(path), template="{problem} {x} \\boxed{}")
    assert literal.template == "{prompt} {x} \\boxed{}"
    assert load_eval_set(str(path), template="{prompt} {x} \\boxed{}").fingerprint == literal.fingerprint
    dup = _write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "problem": "p", "answer": "1"}] * 2)
    with pytest.raises(DataError, match="problem id 'a' appears twice.*--id-col"):
        load_eval_set(str(dup))
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        load_eval_set("nope")
    with pytest.raises(DataError, match="problem 'a' of .*not a number.*--grader math_verify"):
        load_eval_set(str(path), answer_col="problem", grader="gsm8k")


# ---------------------------------------------------------------------------
# The driver on a scripted engine: grading and scores end to end
# ---------------------------------------------------------------------------


@needs_tiny
def test_scripted_engine_end_to_end(tmp_path, tiny_model):
    from clipctl.models import load_tokenizer

    rows = [{"id": f"q{i}", "question": f"what is {i}+{i}?", "answer": f"so #### {2 * i}"} for i in range(5)]
    data = _write_jsonl(tmp_path / "toy.jsonl", rows)
    correct = {"q0": 0, "q1": 1, "q2": 2, "q3": 4, "q4": 3}
    engine = ScriptedEngine(correct, {r["id"]: str(2 * int(r["id"][1:])) for r in rows}, [r["id"] for r in rows])
    before = torch.get_rng_state()
    out = evaluate_checkpoint(
        None, load_tokenizer(str(tiny_model)), tmp_path / "run", 7, str(data),
        EvalConfig(n=4, k=(1, 2, 4), problem_col="question", grader="gsm8k", batch_prompts=2), seed=5,
        engine=engine,
    )
    assert torch.equal(torch.get_rng_state(), before)
    assert engine.calls == [(2, batch_seed(5, 7, 0)), (2, batch_seed(5, 7, 1)), (1, batch_seed(5, 7, 2))]
    c = np.array([0, 1, 2, 4, 3])
    # pass@2 per problem: 1 - C(4-c, 2) / C(4, 2) = 0, 1/2, 5/6, 1, 1; pass@4: 0 for c=0, else 1.
    np.testing.assert_allclose(out["pass_at_k"], [c.mean() / 4, (0 + 0.5 + 5 / 6 + 1 + 1) / 5, 0.8])
    np.testing.assert_allclose(out["mean_at_n"], 0.5)
    step_dir = tmp_path / "run" / "eval" / "toy" / "step-7"
    samples = pd.read_parquet(step_dir / "samples.parquet")
    assert list(samples.columns) == list(SAMPLE_COLUMNS)
    assert samples.groupby("problem_id", sort=False)["correct"].sum().tolist() == c.tolist()
    assert samples.loc[samples["correct"], "prediction"].tolist() == [
        str(2 * int(p[1:])) for p in samples.loc[samples["correct"], "problem_id"]
    ]
    assert not (step_dir / "parts").exists()
    summary = pd.read_parquet(tmp_path / "run" / "eval" / "summary.parquet")
    assert summary[list(SUMMARY_COLUMNS)].shape == (3, len(SUMMARY_COLUMNS))


# ---------------------------------------------------------------------------
# The driver on a real (random) model
# ---------------------------------------------------------------------------


@needs_tiny
def test_model_target_writes_files(tmp_path, tiny_model):
    out = evaluate(str(tiny_model), "gsm8k", _fast(limit=3), out=tmp_path / "ev")
    assert out["step"].tolist() == [0, 0] and out["k"].tolist() == [1, 2]
    step_dir = tmp_path / "ev" / "gsm8k" / "step-0"
    samples = pd.read_parquet(step_dir / "samples.parquet")
    assert list(samples.columns) == list(SAMPLE_COLUMNS) and len(samples) == 3 * 2
    assert samples["problem_id"].tolist() == ["0", "0", "1", "1", "2", "2"]
    assert samples["sample_index"].tolist() == [0, 1] * 3
    assert (samples["response_tokens"] <= 4).all()
    assert (samples.loc[samples["truncated"], "response_tokens"] == 4).all()
    for path in (step_dir / "summary.parquet", tmp_path / "ev" / "summary.parquet"):
        table = pd.read_parquet(path)
        assert list(table.columns[: len(SUMMARY_COLUMNS)]) == list(SUMMARY_COLUMNS) and len(table) == 2
    settings = json.loads((step_dir / "settings.json").read_text())
    assert settings["model"] == str(tiny_model) and settings["n"] == 2 and settings["limit"] == 3


@needs_tiny
def test_default_out_is_runs_eval_model(tmp_path, tiny_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evaluate(str(tiny_model), "gsm8k", _fast(limit=1))
    assert (tmp_path / "runs" / "eval" / "tiny-random" / "gsm8k" / "step-0" / "samples.parquet").is_file()
    assert (tmp_path / "runs" / "eval" / "tiny-random" / "summary.parquet").is_file()


@needs_tiny
def test_results_are_reproducible(tmp_path, tiny_model):
    def responses(out, seed):
        evaluate(str(tiny_model), "gsm8k", _fast(limit=3), seed=seed, out=tmp_path / out)
        return pd.read_parquet(tmp_path / out / "gsm8k" / "step-0" / "samples.parquet")

    a, b, c = responses("a", 0), responses("b", 0), responses("c", 1)
    pd.testing.assert_frame_equal(a, b)
    assert a["response"].tolist() != c["response"].tolist()


@needs_tiny
def test_second_call_does_no_generation(tmp_path, tiny_model, monkeypatch):
    first = evaluate(str(tiny_model), "gsm8k", _fast(limit=3), out=tmp_path)
    _no_generation(monkeypatch)
    again = evaluate(str(tiny_model), "gsm8k", _fast(limit=3), out=tmp_path)
    pd.testing.assert_frame_equal(first, again)
    # New k from the same samples: still no generation; the summary gains the row.
    evaluate(str(tiny_model), "gsm8k", _fast(limit=3, k=(1,)), out=tmp_path)
    assert len(pd.read_parquet(tmp_path / "summary.parquet")) == 2
    # Another seed is new work.
    with pytest.raises(AssertionError, match="no model load"):
        evaluate(str(tiny_model), "gsm8k", _fast(limit=3), seed=1, out=tmp_path)


@needs_tiny
def test_interrupted_step_resumes_with_the_same_samples(tmp_path, tiny_model, monkeypatch):
    kw = EvalConfig(limit=3, n=2, k=(1,), max_new_tokens=4, batch_prompts=1)
    evaluate(str(tiny_model), "gsm8k", kw, out=tmp_path / "whole")

    calls = []
    real = HFEngine.generate

    def flaky(self, prompts, params):
        calls.append(params.seed)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, prompts, params)

    monkeypatch.setattr(HFEngine, "generate", flaky)
    with pytest.raises(KeyboardInterrupt):
        evaluate(str(tiny_model), "gsm8k", kw, out=tmp_path / "cut")
    step_dir = tmp_path / "cut" / "gsm8k" / "step-0"
    assert not (step_dir / "samples.parquet").exists() and not (tmp_path / "cut" / "summary.parquet").exists()
    assert [p.name for p in (step_dir / "parts").iterdir()] == ["batch-000000.parquet"]

    evaluate(str(tiny_model), "gsm8k", kw, out=tmp_path / "cut")
    assert len(calls) == 4  # batch 0 was kept: the rerun drew batches 1 and 2 only
    pd.testing.assert_frame_equal(
        pd.read_parquet(step_dir / "samples.parquet"),
        pd.read_parquet(tmp_path / "whole" / "gsm8k" / "step-0" / "samples.parquet"),
    )
    assert not (step_dir / "parts").exists()


@needs_tiny
def test_changed_settings_regenerate_and_summary_keeps_both(tmp_path, tiny_model):
    evaluate(str(tiny_model), "gsm8k", _fast(limit=2), out=tmp_path)
    evaluate(str(tiny_model), "gsm8k", _fast(limit=2, n=3), out=tmp_path)
    summary = pd.read_parquet(tmp_path / "summary.parquet")
    assert sorted(zip(summary["n"], summary["k"])) == [(2, 1), (2, 2), (3, 1), (3, 2)]
    samples = pd.read_parquet(tmp_path / "gsm8k" / "step-0" / "samples.parquet")
    assert len(samples) == 2 * 3  # the step folder holds the latest settings


@needs_tiny
def test_run_directory_every_checkpoint(tmp_path, tiny_model, monkeypatch):
    run = _make_run_dir(tmp_path, tiny_model)
    out = evaluate(str(run), "gsm8k", _fast(limit=2))
    assert sorted(zip(out["step"], out["k"])) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    summary = pd.read_parquet(run / "eval" / "summary.parquet")
    assert sorted(zip(summary["step"], summary["k"])) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for step in (1, 2):
        assert len(pd.read_parquet(run / "eval" / "gsm8k" / f"step-{step}" / "samples.parquet")) == 4
    # Different steps draw different seeds, even from identical weights.
    r1, r2 = (pd.read_parquet(run / "eval" / "gsm8k" / f"step-{s}" / "samples.parquet")["response"] for s in (1, 2))
    assert r1.tolist() != r2.tolist()
    _no_generation(monkeypatch)
    last = evaluate(str(run), "gsm8k", _fast(limit=2), checkpoints="last")
    assert last["step"].tolist() == [2, 2]


@needs_tiny
def test_in_memory_checkpoint_is_reused_by_evaluate(tmp_path, tiny_model, monkeypatch):
    from clipctl.models import load_model, load_tokenizer

    run = _make_run_dir(tmp_path, tiny_model, steps=(1,))
    model, tok = load_model(str(tiny_model)), load_tokenizer(str(tiny_model))
    model.train()
    before = torch.get_rng_state()
    first = evaluate_checkpoint(model, tok, run, 1, "gsm8k", _fast(limit=2))
    assert torch.equal(torch.get_rng_state(), before) and model.training
    assert (run / "eval" / "gsm8k" / "step-1" / "samples.parquet").is_file()
    _no_generation(monkeypatch)
    again = evaluate(str(run), "gsm8k", _fast(limit=2))
    pd.testing.assert_frame_equal(first, again)


def test_run_directory_errors(tmp_path):
    run = tmp_path / "empty-run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    with pytest.raises(RunDirError, match="has no checkpoints"):
        evaluate(str(run), "gsm8k", _fast(limit=1))
    (tmp_path / "some-model").mkdir()
    with pytest.raises(ConfigError, match="needs a run directory"):
        evaluate(str(tmp_path / "some-model"), "gsm8k", _fast(limit=1), checkpoints="step-1")


def test_bad_model_path_is_a_model_error_and_writes_nothing(tmp_path):
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(ModelError, match="cannot load"):
        evaluate(str(tmp_path / "not-a-model"), "gsm8k", _fast(limit=1), out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ModelError, match="does not exist"):
        evaluate(str(tmp_path / "nowhere"), "gsm8k", _fast(limit=1), out=tmp_path / "out")


def test_bad_engine_and_dtype(tmp_path):
    with pytest.raises(ConfigError, match="unknown engine 'nope'; valid: hf"):
        evaluate("x", "gsm8k", _fast(), engine="nope")
    with pytest.raises(ConfigError, match="unknown dtype"):
        evaluate("x", "gsm8k", _fast(), dtype="int8")


@needs_tiny
def test_prompts_use_the_chat_template_when_there_is_one(tiny_model):
    from clipctl.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    es = load_eval_set("gsm8k", limit=1)
    plain = tok.decode(driver._prompt_ids(es, tok)[0])
    assert plain == fill_template(es.template, es.problems[0].problem)
    tok.chat_template = "{% for m in messages %}<U>{{ m['content'] }}{% endfor %}<A>"
    chat = tok.decode(driver._prompt_ids(es, tok)[0])
    assert chat == f"<U>{plain}<A>"
