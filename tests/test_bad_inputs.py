"""Bad input over every subcommand: one ``Error:`` line, a non-zero exit, no traceback, nothing damaged.

``BAD`` lists the malformed inputs (issue 11). Each runs in a folder holding a
finished-looking run, a run without steps, a plain file and sweep files; the
folder must be byte-for-byte the same afterwards (nothing written, nothing
removed). Further tests: two trainers on one name, a truncated part and
resume, a full disk (simulated ENOSPC) and resume.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from clipctl.cli import app
from clipctl.runlog import atomic_write_json
from runlogs import write_part

runner = CliRunner()
BIG = str(2**63)
HUGE = str(2**64 + 1)

CONFIG = {
    "algo": {"eps_low": 0.2, "eps_high": 0.2, "dual_clip_c": None},
    "reward": {"kind": "random_bernoulli", "p": 0.5},
    "train": {"seed": 0, "steps": 3},
    "optim": {"lr": 1e-4},
}
SWEEP = 'name = "{name}"\npreset = "tiny-cpu"\n{extra}\n[set]\n"train.steps" = 2\n[grid]\n"algo.eps_high" = [0.2, inf]\n'
SWEEPS = {
    "big-seed": 'seeds = [0, {big}]'.format(big=BIG),
    "neg-seed": "seeds = [-1]",
    "dup-seed": "seeds = [1, 1]",
    "set-seed": "",  # with [set] train.seed below
    "ok": "",
}


def _jsonl(*rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# Dataset files with one bad row after a good one (columns question/answer, training's defaults).
OK_ROW = {"question": "1+1?", "answer": "2"}
DATA = {
    "missing-question.jsonl": _jsonl(OK_ROW, {"answer": "2"}),
    "null-question.jsonl": _jsonl(OK_ROW, {"question": None, "answer": "2"}),
    "empty-question.jsonl": _jsonl(OK_ROW, {"question": "", "answer": "2"}),
    "list-question.jsonl": _jsonl(OK_ROW, {"question": ["1+1?"], "answer": "2"}),
    "number-question.jsonl": _jsonl(OK_ROW, {"question": 7, "answer": "2"}),
    "null-answer.jsonl": _jsonl(OK_ROW, {"question": "2+2?", "answer": None}),
    "missing-answer.jsonl": _jsonl(OK_ROW, {"question": "2+2?"}),
}


def make_world(root: Path) -> Path:
    """Pre-existing things the bad commands must leave alone."""
    data = root / "data"
    data.mkdir()
    for name, text in DATA.items():
        (data / name).write_text(text)
    (data / "latin1.jsonl").write_bytes(_jsonl(OK_ROW).encode() + '{"question": "café?", "answer": "2"}\n'.encode("latin-1"))
    pd.DataFrame({"question": ["1+1?", None], "answer": ["2", "4"]}).to_parquet(data / "null-question.parquet")
    good = root / "runs" / "good"
    atomic_write_json(good / "run.json", {"name": "good", "config": CONFIG})
    for s in (1, 2, 3):
        write_part(good, "steps", s, [{"step": s, "entropy": 2.0 - s / 10, "clip_low_frac": 0.1, "clip_high_frac": 0.0}])
    atomic_write_json(root / "runs" / "nosteps" / "run.json", {"name": "nosteps", "config": CONFIG})
    broken = root / "runs-broken" / "r"
    atomic_write_json(broken / "run.json", {"name": "r", "config": CONFIG})
    write_part(broken, "steps", 1, [{"step": 1, "entropy": 1.0}])
    (broken / "steps" / "step-000002.parquet").write_bytes(b"PAR1 truncated")
    atomic_write_json(root / "noconfig" / "run.json", {"name": "noconfig"})
    # A training run named like a simulated one: simulate dynamics must not replace it.
    atomic_write_json(root / "trained" / "el0.2-eh0.2-s0" / "run.json", {"name": "x", "preset": "tiny-cpu", "config": CONFIG})
    (root / "file.txt").write_text("not a folder\n")
    (root / "bad.toml").write_text("this is [not toml\n")
    for name, extra in SWEEPS.items():
        text = SWEEP.format(name=name, extra=extra)
        if name == "set-seed":
            text = text.replace("[set]\n", f'[set]\n"train.seed" = {BIG}\n')
        (root / f"sweep-{name}.toml").write_text(text)
    return root


def snapshot(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return make_world(tmp_path_factory.mktemp("world"))


T = ["train", "-q"]
E = ["eval-passk"]
TD = T + ["--set", "data.name={world}/data/"]  # + a file name: training on a dataset file
ED = E + ["builtin:tiny", "--problem-col", "question", "-d", "{world}/data/"]  # + a file name: evaluating one
SIM_D = ["simulate", "dynamics", "--steps", "2", "--seeds", "1", "--out", "{world}/simout"]
PLOT = ["plot", "{world}/runs/good", "--kind", "entropy", "--out", "{world}/p.png"]


def _data(args: list[str], name: str, *sets: str) -> list[str]:
    """``args`` (ending in a ``{world}/data/`` prefix) with the file ``name`` appended, then ``--set`` each of ``sets``."""
    out = [*args[:-1], args[-1] + name]
    for s in sets:
        out += ["--set", s]
    return out


# Dataset files, checked row by row by train and eval-passk alike (JSON lines: 1-based line; Parquet:
# 0-based row): (file, the Error: line after the file's path, then training's fix or eval-passk's).
PROBLEM_FIX = ("set data.prompt_col to one of them", "choose another with --problem-col")
ANSWER_FIX = ("set data.answer_col to one of them", "choose another with --answer-col")
DATA_BAD = [
    ("latin1.jsonl", ":2 is not UTF-8 (byte 0xe9 at byte offset 53); re-save the file as UTF-8", ("", "")),
    ("missing-question.jsonl", ":2 has no column 'question' (columns: answer); ", PROBLEM_FIX),
    ("null-question.jsonl", ":2: the problem (column 'question') is null; fill it in or remove that row, or ", PROBLEM_FIX),
    ("empty-question.jsonl", ":2: the problem (column 'question') is empty; fill it in or remove that row, or ", PROBLEM_FIX),
    ("list-question.jsonl", ":2: the problem (column 'question') is a list, not a string; write it as text, or ", PROBLEM_FIX),
    ("number-question.jsonl", ":2: the problem (column 'question') is a number, not a string; write it as text, or ", PROBLEM_FIX),
    ("null-question.parquet", " row 1 (0-based): the problem (column 'question') is null; fill it in or remove that row, or ", PROBLEM_FIX),
    ("null-answer.jsonl", ":2: the answer (column 'answer') is null; fill it in or remove that row, or ", ANSWER_FIX),
    ("missing-answer.jsonl", ":2 has no column 'answer' (columns: question); ", ANSWER_FIX),
]


# (args, fragment of the one Error: line). {world}, {file}: paths in the world folder.
BAD = [
    # ---- train: config values
    (T + ["--set", "algo.nope=1"], "unknown config key 'algo.nope'"),
    (T + ["--set", "nosection.x=1"], "unknown config section 'nosection'"),
    (T + ["--set", "algo.eps_low"], "must look like section.key=value"),
    (T + ["--set", "algo=1"], "must be section.key"),
    (T + ["--preset", "missing-preset"], "unknown preset 'missing-preset'"),
    (T + ["--preset", "{world}/missing.toml"], "preset file"),
    (T + ["--preset", "{world}/bad.toml"], "is not valid TOML"),
    (T + ["--set", "algo.eps_low=0"], "algo.eps_low=0.0 must be in (0, 1]"),
    (T + ["--set", "rollout.n=1"], "rollout.n=1 must be >= 2; a group of one response has advantage 0"),
    (T + ["--set", "train.steps=[1, 2]"], "train.steps must be an integer, got [1, 2]"),
    (T + ["--set", 'algo.eps_high="wide"'], "algo.eps_high must be a number (or 'inf'), got 'wide'"),
    (T + ["--set", "log.trackers=[1]"], "log.trackers must be a string, got 1"),
    (T + ["--set", "algo.policy_loss=sapo"], "algo.policy_loss='sapo' is unknown; valid: vanilla, cispo, gspo, dppo_tv, dppo_kl, clip_cov, kl_cov"),
    (T + ["--set", "algo.eps_low=1.5"], "algo.eps_low=1.5"),
    (T + ["--set", "algo.eps_low=nan"], "algo.eps_low=nan"),
    (T + ["--set", "algo.eps_low=abc"], "algo.eps_low must be a number"),
    (T + ["--set", "algo.eps_high=0"], "algo.eps_high=0.0"),
    (T + ["--set", "algo.eps_high=-1"], "algo.eps_high=-1.0"),
    (T + ["--set", "algo.eps_high=nan"], "algo.eps_high=nan"),
    (T + ["--set", "algo.dual_clip_c=0.5"], "algo.dual_clip_c=0.5"),
    (T + ["--set", "algo.dual_clip_c=nan"], "algo.dual_clip_c=nan"),
    (T + ["--set", "algo.adv_norm=bogus"], "algo.adv_norm='bogus'"),
    (T + ["--set", "algo.loss_agg=bogus"], "algo.loss_agg='bogus'"),
    (T + ["--set", "rollout.temperature=inf"], "rollout.temperature=inf must be a finite number > 0"),
    (T + ["--set", "rollout.temperature=nan"], "rollout.temperature=nan"),
    (T + ["--set", "rollout.temperature=0"], "rollout.temperature=0.0"),
    (T + ["--set", "rollout.temperature=-1"], "rollout.temperature=-1.0"),
    (T + ["--set", "rollout.top_p=0"], "rollout.top_p=0.0"),
    (T + ["--set", "rollout.top_p=nan"], "rollout.top_p=nan"),
    (T + ["--set", "rollout.top_p=1.5"], "rollout.top_p=1.5"),
    (T + ["--set", "rollout.n=0"], "rollout.n=0"),
    (T + ["--set", "rollout.max_new_tokens=0"], "rollout.max_new_tokens=0"),
    (T + ["--set", "rollout.engine=bogus"], "rollout.engine='bogus'"),
    (T + ["--set", "optim.eps=nan"], "optim.eps=nan must be a finite number > 0"),
    (T + ["--set", "optim.eps=inf"], "optim.eps=inf"),
    (T + ["--set", "optim.eps=0"], "optim.eps=0.0"),
    (T + ["--set", "optim.eps=-1e-8"], "optim.eps=-1e-08"),
    (T + ["--set", "optim.lr=inf"], "optim.lr=inf"),
    (T + ["--set", "optim.lr=nan"], "optim.lr=nan"),
    (T + ["--set", "optim.lr=0"], "optim.lr=0.0"),
    (T + ["--set", "optim.lr=-1"], "optim.lr=-1.0"),
    (T + ["--set", "optim.betas=0.9"], "optim.betas must be a list of 2 values"),
    (T + ["--set", "optim.betas=0.9,1.0"], "optim.betas=(0.9, 1.0)"),
    (T + ["--set", "optim.betas=nan,0.9"], "optim.betas=(nan, 0.9)"),
    (T + ["--set", "optim.betas=0.9,inf"], "optim.betas=(0.9, inf)"),
    (T + ["--set", "optim.weight_decay=inf"], "optim.weight_decay=inf"),
    (T + ["--set", "optim.weight_decay=nan"], "optim.weight_decay=nan"),
    (T + ["--set", "optim.weight_decay=-1"], "optim.weight_decay=-1.0"),
    (T + ["--set", "optim.grad_clip=inf"], "optim.grad_clip=inf"),
    (T + ["--set", "optim.grad_clip=nan"], "optim.grad_clip=nan"),
    (T + ["--set", "optim.grad_clip=-1"], "optim.grad_clip=-1.0"),
    (T + ["--set", "optim.warmup_steps=-1"], "optim.warmup_steps=-1"),
    (T + ["--set", f"train.seed={BIG}"], f"train.seed={BIG} must be in [0, 2**63 - 1]"),
    (T + ["--set", f"train.seed={HUGE}"], f"train.seed={HUGE}"),
    (T + ["--set", "train.seed=-1"], "train.seed=-1"),
    (T + ["--set", "train.steps=0"], "train.steps=0"),
    (T + ["--set", "train.steps=abc"], "train.steps must be an integer"),
    (T + ["--set", "train.steps=1.5"], "train.steps must be an integer"),
    (T + ["--set", "train.rollout_batch_prompts=0"], "train.rollout_batch_prompts=0"),
    (T + ["--set", "train.minibatch_prompts=3"], "must be divisible by train.minibatch_prompts (3)"),
    (T + ["--set", "train.micro_batch_size=0"], "train.micro_batch_size=0"),
    (T + ["--set", "train.ppo_epochs=0"], "train.ppo_epochs=0"),
    (T + ["--set", "train.keep_last=0"], "train.keep_last=0"),
    (T + ["--set", "train.save_every=0"], "train.save_every=0"),
    (T + ["--set", "train.lm_head=bogus"], "train.lm_head='bogus'"),
    (T + ["--set", "train.lm_head_budget_mb=0"], "train.lm_head_budget_mb=0"),
    (T + ["--set", "train.logit_chunk_rows=0"], "train.logit_chunk_rows=0"),
    (T + ["--set", "model.dtype=int8"], "model.dtype='int8'"),
    (T + ["--set", "model.device=tpu"], "model.device='tpu'"),
    (T + ["--set", "data.chat_template=maybe"], "data.chat_template='maybe'"),
    (T + ["--set", "data.prompt_template=no placeholder"], "data.prompt_template must contain '{prompt}'"),
    (T + ["--set", "data.max_prompt_tokens=0"], "data.max_prompt_tokens=0"),
    (T + ["--set", "reward.kind=bogus"], "reward.kind='bogus'"),
    (T + ["--set", "reward.p=2"], "reward.p=2.0"),
    (T + ["--set", "reward.p=nan"], "reward.p=nan"),
    (T + ["--set", "log.samples_every=-1"], "log.samples_every=-1"),
    (T + ["--set", "log.clip_probe_every=-1"], "log.clip_probe_every=-1"),
    (T + ["--set", "log.token_sample_rate=2"], "log.token_sample_rate=2.0"),
    (T + ["--set", "log.token_sample_rate=nan"], "log.token_sample_rate=nan"),
    (T + ["--set", "log.entropy_post=maybe"], "log.entropy_post must be true or false"),
    (T + ["--set", "eval.every=-1"], "eval.every=-1"),
    (T + ["--set", "eval.n=0"], "eval.n=0"),
    (T + ["--set", "eval.k=1,16"], "eval.k=[1, 16]"),
    (T + ["--set", "eval.temperature=inf"], "eval.temperature=inf"),
    (T + ["--set", "eval.temperature=0"], "eval.temperature=0.0"),
    (T + ["--set", "eval.limit=-1"], "eval.limit=-1"),
    # ---- train: names, output places, resume
    (T + ["--out", "{world}/runs", "--name", ""], "--name '' must be a plain folder name"),
    (T + ["--out", "{world}/runs", "--name", "a/b"], "--name 'a/b'"),
    (T + ["--out", "{world}/runs", "--name", "."], "--name '.'"),
    (T + ["--out", "{world}/runs", "--name", ".."], "--name '..'"),
    (T + ["--out", "{world}/runs", "--name", ".hidden"], "--name '.hidden'"),
    (T + ["--out", "{world}/runs", "--name", "x" * 300], "at most 200 bytes"),
    (T + ["--out", "{world}/runs", "--name", "a\nb"], "--name 'a\\nb' must be a plain folder name (not empty, no '/', '\\' or control character"),
    (T + ["--out", "{world}/runs", "--name", "a\tb"], "control character such as a newline"),
    (T + ["--out", "{world}/runs", "--name", "good"], "already exists; continue it with --resume"),
    (T + ["--out", "{world}/file.txt", "--name", "r"], "is a file, not a folder"),
    (T + ["--out", "{world}/file.txt/sub", "--name", "r"], "is a file"),
    (T + ["--out", "/proc/clipctl-test", "--name", "r"], "--out /proc/clipctl-test"),
    (T + ["--out", "/proc/self", "--name", "r"], "/proc/self"),
    (T + ["--resume", "{world}/nope"], "does not exist"),
    (T + ["--resume", "{world}/runs"], "has no run.json"),
    (T + ["--resume", "{world}/file.txt"], "does not exist"),
    (T + ["--resume", "{world}/runs/good", "--set", "algo.eps_low=0.1"], "cannot change a resumed run"),
    (T + ["--resume", "{world}/noconfig"], "has no config"),
    (T + ["--nproc", "2"], "--nproc 2 needs --deepspeed"),
    (T + ["--nproc", "2", "--set", "algo.eps_low=0"], "--nproc 2 needs --deepspeed"),
    # ---- train and eval-passk: dataset files (DATA_BAD); training needs the answer for verifiable rewards only
    *[
        (_data(TD, name, *(["reward.kind=gsm8k"] if "answer" in name else [])), "{world}/data/" + name + text + fix[0])
        for name, text, fix in DATA_BAD
    ],
    *[(_data(ED, name), "{world}/data/" + name + text + fix[1]) for name, text, fix in DATA_BAD],
    # ---- eval-passk: the flags become an EvalConfig, whose messages name config keys
    (E + ["builtin:tiny", "-d", "gsm8k", "--n", "0", "--k", "1"], "eval.n=0 must be >= 1"),
    (E + ["builtin:tiny", "-d", "gsm8k", "--k", "0"], "eval.k=[0] must lie in [1, eval.n=32]"),
    (E + ["builtin:tiny", "-d", "gsm8k", "--k", "a,b"], "--k 'a,b' must be comma-separated integers"),
    (E + ["builtin:tiny", "-d", "gsm8k", "--k", ""], "eval.k is empty; give at least one k"),
    (E + ["builtin:tiny", "-d", "gsm8k", "--n", "4", "--k", "8"], "eval.k=[8] must lie in [1, eval.n=4]; lower eval.k or raise eval.n"),
    (E + ["builtin:tiny", "-d", "gsm8k", "--temperature", "0"], "eval.temperature=0.0 must be a finite number > 0"),
    (E + ["builtin:tiny", "-d", "gsm8k", "--temperature", "inf"], "eval.temperature=inf"),
    (E + ["builtin:tiny", "-d", "gsm8k", "--temperature", "nan"], "eval.temperature=nan"),
    (E + ["builtin:tiny", "-d", "gsm8k", "--top-p", "0"], "eval.top_p=0.0 must be in (0, 1]"),
    (E + ["builtin:tiny", "-d", "gsm8k", "--top-p", "1.5"], "eval.top_p=1.5"),
    (E + ["builtin:tiny", "-d", "gsm8k", "--max-new-tokens", "0"], "eval.max_new_tokens=0 must be >= 1"),
    (E + ["builtin:tiny", "-d", "gsm8k", "--seed", "-1"], "seed=-1 must be in [0, 2**63 - 1]"),
    (E + ["builtin:tiny", "-d", "gsm8k", "--seed", BIG], f"seed={BIG} must be in [0, 2**63 - 1]"),
    (E + ["builtin:tiny", "-d", "gsm8k", "--limit", "-1"], "eval.limit=-1 must be >= 0 (0 = all)"),
    (E + ["builtin:tiny", "-d", "gsm8k", "--batch-prompts", "0"], "eval.batch_prompts=0 must be >= 1"),
    (E + ["builtin:tiny", "-d", "gsm8k", "--grader-processes", "-1"], "eval.grader_processes=-1 must be >= 0"),
    (E + ["builtin:tiny", "-d", "gsm8k", "--engine", "bogus"], "'--engine': 'bogus' is not one of 'hf', 'vllm'"),
    (E + ["builtin:tiny", "-d", "gsm8k", "--dtype", "int8"], "'--dtype': 'int8' is not one of 'float32'"),
    (E + ["builtin:tiny", "-d", "nosuchset"], "nosuchset"),
    (E + ["builtin:tiny", "-d", "{world}/missing.jsonl"], "missing.jsonl"),
    (E + ["builtin:tiny", "-d", "gsm8k", "--checkpoints", "step-1"], "needs a run directory"),
    (E + ["./no-such-model", "-d", "gsm8k"], "model folder ./no-such-model does not exist"),
    (E + ["{world}/runs/good", "-d", "gsm8k"], "has no checkpoints"),
    (E + ["builtin:tiny", "-d", "gsm8k", "--limit", "1", "--out", "{world}/file.txt"], "is a file, not a folder"),
    (E + ["builtin:tiny", "-d", "gsm8k", "--limit", "1", "--out", "/proc/clipctl-test"], "--out /proc/clipctl-test"),
    # ---- analyze-clip-stats
    (["analyze-clip-stats", "{world}/nomatch*"], "no runs matched"),
    (["analyze-clip-stats", "{world}/missing"], "does not exist"),
    (["analyze-clip-stats", "{world}/runs/nosteps"], "has no steps yet"),
    (["analyze-clip-stats", "{world}/runs-broken/*"], "keep the file and run clipctl train --resume"),
    (["analyze-clip-stats", "{world}/runs/good", "-f", "xml"], "'--format' / '-f': 'xml' is not one of 'table'"),
    (["analyze-clip-stats", "{world}/runs/good", "-f", "parquet"], "--out"),
    (["analyze-clip-stats", "{world}/runs/good", "-g", "algo.nope"], "unknown group key 'algo.nope'"),
    (["analyze-clip-stats", "{world}/runs/good", "-m", "nope"], "unknown metric 'nope'"),
    (["analyze-clip-stats", "{world}/runs/good", "-f", "csv", "-o", "/proc/clipctl/x.csv"], "cannot write"),
    (["analyze-clip-stats", "{world}/runs/good", "-f", "csv", "-o", "{world}/file.txt/x.csv"], "cannot write"),
    # ---- plot
    (PLOT + ["--kind", "bogus"], "'--kind' / '-k': 'bogus' is not one of 'entropy'"),
    (["plot", "{world}/runs/good", "--out", "{world}/p.txt"], "--out"),
    (PLOT + ["--smooth", "0"], "--smooth must be at least 1 and at most"),
    (PLOT + ["--smooth", "-3"], "--smooth must be at least 1 and at most"),
    (PLOT + ["--smooth", "100000000000000000000"], "--smooth must be at least 1 and at most"),
    (PLOT + ["--x", "bogus"], "'--x': 'bogus' is not one of 'step', 'tokens'"),
    (PLOT + ["--band", "bogus"], "'--band': 'bogus' is not one of 'minmax', 'sd'"),
    (PLOT + ["-g", "algo.nope"], "unknown group key 'algo.nope'"),
    (["plot", "{world}/missing", "--out", "{world}/p.png"], "does not exist"),
    (["plot", "{world}/runs/nosteps", "--out", "{world}/p.png"], "has no steps yet"),
    (["plot", "{world}/runs/good", "-k", "entropy", "--out", "/proc/clipctl/p.png"], "cannot write"),
    (["plot", "{world}/runs/good", "-k", "entropy", "--out", "{world}/file.txt/p.png"], "cannot write"),
    # ---- simulate
    (["simulate", "bogus"], "No such command 'bogus'"),
    (["simulate", "--check"], "No such option: --check"),
    (["simulate", "dynamics"], "Missing option '--out'"),
    (["simulate", "check", "--actions", "1"], "actions must be at least 2"),
    (["simulate", "check", "--actions", "0"], "actions must be at least 2"),
    (["simulate", "check", "--eta", "0"], "eta must be a finite positive number"),
    (["simulate", "check", "--eta", "inf"], "eta must be a finite positive number, got inf"),
    (["simulate", "check", "--eta", "nan"], "eta must be a finite positive number, got nan"),
    (["simulate", "check", "--trials", "0"], "trials must be at least 1"),
    (["simulate", "check", "--eps-low", "0"], "eps_low=0.0"),
    (["simulate", "check", "--eps-high", "inf"], "the check needs both clip regions"),
    (["simulate", "check", "--seed", BIG], "seed must be in [0, 2**63 - 1]"),
    (["simulate", "check", "--seed", "-1"], "seed must be in"),
    (SIM_D + ["--group-size", "0"], "group_size=0 must be at least 1"),
    (SIM_D + ["--group-size", "-2"], "group_size=-2"),
    (SIM_D + ["--samples", "10"], "samples=10 must be a positive multiple"),
    (SIM_D + ["--minibatches", "0"], "minibatches=0"),
    (SIM_D + ["--epochs", "0"], "epochs=0"),
    (SIM_D + ["--lr", "inf"], "lr=inf must be a finite positive number"),
    (SIM_D + ["--lr", "nan"], "lr=nan"),
    (SIM_D + ["--lr", "0"], "lr=0.0"),
    (SIM_D + ["--optimizer", "bogus"], "'--optimizer': 'bogus' is not one of 'sgd', 'adam'"),
    (SIM_D + ["--reward", "bogus"], "'--reward': 'bogus' is not one of 'bernoulli', 'gaussian'"),
    (SIM_D + ["--init-scale", "nan"], "init_scale=nan"),
    (SIM_D + ["--init-scale", "-1"], "init_scale=-1.0"),
    (SIM_D + ["--actions", "1"], "actions=1"),
    (SIM_D + ["--actions", "0"], "actions=0 must be at least 2"),
    (SIM_D + ["--steps", "0"], "steps=0"),
    (SIM_D + ["--grid", "bogus"], "bogus"),
    (SIM_D + ["--grid", ","], "the grid is empty"),
    (SIM_D + ["--grid", "0.2/0.2,0.2/0.2"], "grid has 0.2/0.2 more than once"),
    (SIM_D + ["--grid", "0.2/0.2", "--out", "{world}/trained"], "is not a simulated run"),
    (SIM_D + ["--seed", BIG], f"seed={BIG} must be in [0, 2**63 - 1]"),
    (["simulate", "dynamics", "--steps", "2", "--seeds", "0", "--out", "{world}/simout"], "seeds=0"),
    (["simulate", "dynamics", "--steps", "2", "--seeds", "1", "--out", "{world}/file.txt"], "is a file"),
    (["simulate", "dynamics", "--steps", "2", "--seeds", "1", "--out", "/proc/clipctl-sim"], "/proc/clipctl-sim"),
    # ---- sweep
    (["sweep", "{world}/missing.toml"], "sweep file"),
    (["sweep", "no-such-sweep"], "unknown sweep 'no-such-sweep'"),
    (["sweep", "{world}/bad.toml"], "is not valid TOML"),
    (["sweep", "{world}/sweep-big-seed.toml", "--out", "{world}/sw"], "seeds must be integers >= 0 and <= 2**63 - 1"),
    (["sweep", "{world}/sweep-big-seed.toml", "--out", "{world}/sw", "--dry-run"], "seeds must be integers >= 0 and <= 2**63 - 1"),
    (["sweep", "{world}/sweep-neg-seed.toml", "--dry-run"], "seeds must be integers"),
    (["sweep", "{world}/sweep-dup-seed.toml", "--dry-run"], "repeat a seed"),
    (["sweep", "{world}/sweep-set-seed.toml", "--out", "{world}/sw", "--dry-run"], "train.seed=9223372036854775808"),
    (["sweep", "{world}/sweep-ok.toml", "--out", "{world}/file.txt"], "is a file"),
    (["sweep", "{world}/sweep-ok.toml", "--out", "{world}/file.txt", "--dry-run"], "is a file"),
    (["sweep", "{world}/sweep-ok.toml", "--out", "/proc/clipctl-sweep"], "/proc/clipctl-sweep"),
    (["sweep", "{world}/sweep-ok.toml", "--out", "{world}/sw", "--jobs", "0"], "--jobs"),
    (["sweep", "{world}/sweep-ok.toml", "--out", "{world}/sw", "--gpus-per-run", "0"], "--gpus-per-run"),
    # ---- presets
    (["presets", "missing-preset"], "unknown preset 'missing-preset'"),
    (["presets", "tiny-cpu", "--set", "optim.eps=nan"], "optim.eps=nan"),
]


def _fill(args: list[str], world: Path) -> list[str]:
    return [a.replace("{world}", str(world)) for a in args]


def assert_one_error_line(result, fragment: str, *, started: bool = False) -> None:
    """One line, ``Error: ...`` (``started``: after the run's "run directory:" line, the last line)."""
    out = result.output.strip()
    assert result.exit_code != 0, out
    assert "Traceback" not in out, out
    lines = out.splitlines()
    assert [line.startswith("Error: ") for line in lines].count(True) == 1, out
    if started:
        assert lines[-1].startswith("Error: ") and out.startswith("run directory:"), out
    else:
        assert len(lines) == 1 and lines[0].startswith("Error: "), out
    assert fragment in out, (fragment, out)


@pytest.mark.parametrize("args, fragment", BAD, ids=[f"{i:03d}-{a[0]}" for i, (a, _) in enumerate(BAD)])
def test_bad_input(world, monkeypatch, args, fragment):
    monkeypatch.chdir(world)  # default output places (runs/, runs/eval/...) land in the world too
    before = snapshot(world)
    result = runner.invoke(app, _fill(args, world))
    assert_one_error_line(result, fragment.replace("{world}", str(world)))
    assert snapshot(world) == before


def test_the_list_is_long():
    assert len(BAD) >= 135


def test_runs_without_steps_are_skipped_with_a_note(world, monkeypatch):
    monkeypatch.chdir(world)
    result = runner.invoke(app, ["analyze-clip-stats", f"{world}/runs/*", "-f", "csv", "--per-run"])
    assert result.exit_code == 0, result.output
    assert "note: skipped" in result.output and "nosteps" in result.output
    assert "good" in result.output
    before = snapshot(world)
    out = world.parent / "plot-out.png"
    result = runner.invoke(app, ["plot", f"{world}/runs/*", "--kind", "entropy", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "note: skipped" in result.output and out.is_file()
    assert snapshot(world) == before


# ---------------------------------------------------------------- locks, damaged parts, full disk


def _train_args(out: Path, name: str, fast_overrides: list[str], *extra: str) -> list[str]:
    args = ["train", "--out", str(out), "--name", name, "-q"]
    for o in [*fast_overrides, *extra]:
        args += ["--set", o]
    return args


def test_lock_refuses_a_second_writer(tmp_path):
    from clipctl.errors import RunDirError
    from clipctl.rundir import RunLock

    run = tmp_path / "r"
    run.mkdir()
    with RunLock(run, "train"):
        with pytest.raises(RunDirError, match=r"is in use by another clipctl process \(pid \d+ .*clipctl train"):
            RunLock(run, "eval-passk").acquire()
    with RunLock(run, "train --resume"):  # released: free again
        pass


def test_eval_into_a_locked_run_is_refused(tmp_path):
    from clipctl.rundir import RunLock

    run = tmp_path / "r"
    atomic_write_json(run / "run.json", {"config": CONFIG})
    (run / "checkpoints" / "step-1").mkdir(parents=True)
    (run / "checkpoints" / "step-1" / "trainer_state.pt").write_bytes(b"x")
    before = snapshot(tmp_path)
    with RunLock(run, "train"):
        result = runner.invoke(app, ["eval-passk", str(run), "-d", "gsm8k", "--n", "1", "--k", "1", "--limit", "1"])
        assert_one_error_line(result, "is in use by another clipctl process")
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k != "r/.lock"} == {k: v for k, v in before.items()}


def test_two_trainers_on_one_name(tmp_path, fast_overrides, monkeypatch):
    """The second is refused (whichever reaches the lock second), the first finishes intact."""
    from clipctl.runlog import read_run
    from clipctl.trainer import run as run_mod

    entered, release = threading.Event(), threading.Event()
    real_build = run_mod.build_trainer

    def slow_build(cfg, *args, **kw):  # hold the first trainer between the lock and run.json
        entered.set()
        release.wait(60)
        return real_build(cfg, *args, **kw)

    monkeypatch.setattr(run_mod, "build_trainer", slow_build)
    results = {}
    first = threading.Thread(
        target=lambda: results.setdefault("first", runner.invoke(app, _train_args(tmp_path, "same", fast_overrides, "train.steps=2", "train.seed=1")))
    )
    first.start()
    assert entered.wait(60)
    second = CliRunner().invoke(app, _train_args(tmp_path, "same", fast_overrides, "train.steps=3", "train.seed=0"))
    release.set()
    first.join(120)
    assert_one_error_line(second, "is in use by another clipctl process")
    assert results["first"].exit_code == 0, results["first"].output
    run = read_run(tmp_path / "same")
    assert run.meta["seed"] == 1 and list(run.steps["step"]) == [1, 2]
    # Once the first is done the name is taken for good: --resume is the way.
    again = CliRunner().invoke(app, _train_args(tmp_path, "same", fast_overrides, "train.steps=3"))
    assert_one_error_line(again, "already exists; continue it with --resume")


def _steps(run_dir: Path) -> pd.DataFrame:
    from clipctl.runlog import read_run

    cols = ["step", "entropy", "entropy_post", "reward_mean", "clip_low_frac", "clip_high_frac", "approx_kl"]
    steps = read_run(run_dir).steps
    return steps[[c for c in cols if c in steps]].reset_index(drop=True)


@pytest.fixture
def reference_run(tmp_path, fast_overrides, monkeypatch):
    """An uninterrupted 4-step run, checkpoints every step (keep 2), its tables left as one part per step.

    (Compaction off: the damage below hits one step's part, as in a run killed
    before its checkpoint's compaction; tests/test_runlog_compaction.py damages segments.)
    """
    from clipctl import runlog
    from clipctl.config import load_config
    from clipctl.trainer import train

    cfg = load_config("tiny-cpu", [*fast_overrides, "train.steps=4", "train.save_every=1", "train.keep_last=2"])
    with monkeypatch.context() as m:
        m.setattr(runlog, "compact_table", lambda *a, **k: None)
        return train(cfg, out=tmp_path / "ref", name="ref").run_dir, cfg


@pytest.mark.slow
def test_truncated_part_then_resume_rebuilds_exactly(tmp_path, reference_run):
    import shutil

    from clipctl.runlog import checkpoints
    from clipctl.trainer import train

    ref, cfg = reference_run
    run = tmp_path / "copy"
    shutil.copytree(ref, run)
    assert [s for s, _ in checkpoints(run)] == [3, 4]
    part = run / "steps" / "step-000004.parquet"
    part.write_bytes(part.read_bytes()[:40])  # truncated
    logs = []
    result = train(resume=run, log=logs.append)
    assert result.first_step == 4 and any("rebuilding steps 4-4 from checkpoint step 3" in m for m in logs)
    pd.testing.assert_frame_equal(_steps(run), _steps(ref))
    # Damage before every kept checkpoint: nothing is touched, the error says how to rebuild.
    from clipctl.runlog import table_files

    table_files(run, "steps")[0].path.write_bytes(b"PAR1")  # the file holding step 1 (a segment after the resume)
    before = snapshot(run)
    result = runner.invoke(app, ["train", "--resume", str(run), "-q"])
    assert_one_error_line(result, "no checkpoint before step 1 is left to rebuild it from")
    assert f"rm -r {run / 'checkpoints'} && clipctl train --resume {run}" in result.output
    assert {k: v for k, v in snapshot(run).items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}


@pytest.mark.slow
def test_missing_part_then_resume_rebuilds_exactly(tmp_path, reference_run):
    import shutil

    from clipctl.trainer import train

    ref, _ = reference_run
    run = tmp_path / "copy"
    shutil.copytree(ref, run)
    (run / "steps" / "step-000004.parquet").unlink()  # what the old advice ("delete that file") did
    train(resume=run)
    pd.testing.assert_frame_equal(_steps(run), _steps(ref))


@pytest.mark.slow
def test_disk_full_is_one_error_and_resume_is_exact(tmp_path, reference_run, fast_overrides, monkeypatch):
    import torch

    ref, _ = reference_run
    args = _train_args(tmp_path / "runs", "full", fast_overrides, "train.steps=4", "train.save_every=1", "train.keep_last=2")
    real_save = torch.save
    calls = {"n": 0}

    def full_on_third_save(*a, **k):  # the checkpoint of step 3 hits a full disk mid-write
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(*a, **k)

    monkeypatch.setattr(torch, "save", full_on_third_save)
    result = runner.invoke(app, args)
    assert_one_error_line(result, "disk full (No space left on device) while writing", started=True)
    assert "everything up to checkpoint step 2 is kept" in result.output
    run = tmp_path / "runs" / "full"
    assert not list((run / "checkpoints").glob(".step-*"))  # no partial folder left
    monkeypatch.setattr(torch, "save", real_save)  # space is back
    result = runner.invoke(app, ["train", "--resume", str(run), "-q"])
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(_steps(run), _steps(ref))
