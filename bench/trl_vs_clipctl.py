"""clipctl's trainer against TRL's GRPOTrainer on the same tiny model and work, on CPU.

Same model (builtin:tiny), same GSM8K prompts and template, 8 prompts x 8
responses per step, 48 new tokens, temperature 1, Bernoulli(0.5) rewards,
Dr. GRPO loss, eps 0.2/0.2, two optimizer steps per generation (so the second
is off-policy), lr 1e-3. Each trainer runs in its own subprocess; we report
seconds per step (median over steps after a warm-up step) and whole-process
peak RSS, side by side, as ratios clipctl / TRL.

    OMP_NUM_THREADS=1 .venv/bin/python bench/trl_vs_clipctl.py --steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

P, G, M, NEW_TOKENS, LR = 8, 8, 4, 48, 1e-3


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_clipctl(steps: int) -> dict:
    from clipctl.config import load_config
    from clipctl.trainer import train

    cfg = load_config("tiny-cpu", [
        f"train.steps={steps}", f"train.rollout_batch_prompts={P}", f"train.minibatch_prompts={M}",
        f"rollout.n={G}", f"rollout.max_new_tokens={NEW_TOKENS}", f"optim.lr={LR}", "log.clip_probe_every=0",
        "log.samples_every=0", "algo.loss_agg=seq-mean-token-sum-norm", f"train.save_every={steps}",
        "train.micro_batch_size=64",
    ])
    times = []
    last = [time.perf_counter()]

    def on_step(m):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    with tempfile.TemporaryDirectory() as out:
        train(cfg, out=out, name="bench", on_step=on_step)
    return {"trainer": "clipctl", "step_seconds": times, "peak_rss_mb": peak_mb()}


def run_trl(steps: int) -> dict:
    import numpy as np
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from clipctl.data import read_table
    from clipctl.models import resolve_model_path

    path = resolve_model_path("builtin:tiny")
    rows = read_table("gsm8k", "train")[: P * steps * 2]
    ds = Dataset.from_list([{"prompt": f"Question: {r['question']}\nAnswer:"} for r in rows])
    rng = np.random.default_rng(0)

    def random_reward(completions, **kw):
        return [float(rng.random() < 0.5) for _ in completions]

    times = []

    class Timer(TrainerCallback):
        def __init__(self):
            self.last = None

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            if self.last is not None:
                times.append(now - self.last)
            self.last = now

    with tempfile.TemporaryDirectory() as out:
        cfg = GRPOConfig(
            output_dir=out, use_cpu=True, report_to="none", logging_steps=1000, save_strategy="no",
            num_generations=G, per_device_train_batch_size=M * G, steps_per_generation=P // M,
            gradient_accumulation_steps=1, max_completion_length=NEW_TOKENS, temperature=1.0, top_k=0,
            top_p=1.0, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, beta=0.0,
            epsilon=0.2, epsilon_high=0.2, loss_type="dr_grpo", scale_rewards="none", num_iterations=1,
            max_steps=steps * (P // M), seed=0, shuffle_dataset=False, bf16=False, dataloader_num_workers=0,
        )
        model = AutoModelForCausalLM.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        tok.padding_side = "left"
        trainer = GRPOTrainer(model=model, reward_funcs=random_reward, args=cfg, train_dataset=ds,
                              processing_class=tok, callbacks=[Timer()])
        trainer.train()
    # TRL steps are optimizer steps; one clipctl step = P / M of them (one generation).
    per_gen = [sum(times[i : i + P // M]) for i in range(0, len(times) - len(times) % (P // M), P // M)]
    return {"trainer": "trl", "step_seconds": per_gen, "peak_rss_mb": peak_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--one", choices=("clipctl", "trl"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        result = run_clipctl(args.steps) if args.one == "clipctl" else run_trl(args.steps)
        print(json.dumps(result))
        return
    results = {}
    for name in ("clipctl", "trl"):
        proc = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(args.steps)],
                              capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if proc.returncode != 0:
            print(f"{name} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            return
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{P} prompts x {G} responses x {NEW_TOKENS} tokens, 2 optimizer steps per generation, OMP_NUM_THREADS=1")
    print(f"{'trainer':>8} {'s/step (median)':>16} {'peak RSS MB':>12}")
    med = {}
    for name, r in results.items():
        times = r["step_seconds"][1:] or r["step_seconds"]  # first step warms up
        med[name] = statistics.median(times)
        print(f"{name:>8} {med[name]:>16.3f} {r['peak_rss_mb']:>12.0f}")
    print(f"ratio clipctl/TRL: time {med['clipctl'] / med['trl']:.2f}, "
          f"peak memory {results['clipctl']['peak_rss_mb'] / results['trl']['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
