"""Kill a training run at random moments, resume it each time, and check it equals an uninterrupted run.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/kill_resume.py --kills 20

1. An uninterrupted reference run (``clipctl train``, builtin:tiny, small batch,
   a checkpoint every step) gives the expected steps table and its wall time T.
2. ``--kills`` kill times are drawn uniformly over [0, T] and sorted; a second
   run with the same config is started and SIGKILLed at the first, then
   ``--resume`` is started and killed after the gap to the next, and so on
   (kills land in start-up, rollouts, updates, Parquet writes, checkpoint
   saves and compaction). The attempts together run at most T and each
   resume repeats its start-up and the steps after its checkpoint, so the run
   cannot finish before the last kill: every kill fires. Then one last resume
   runs to the end.
3. The final steps table must equal the reference's (every step once; the
   math columns to 1e-6) and every checkpoint must load.

Prints one line per kill and a final verdict; exits 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OVERRIDES = [
    "train.steps=40", "train.save_every=1", "train.keep_last=2", "train.rollout_batch_prompts=4",
    "train.minibatch_prompts=2", "rollout.n=4", "rollout.max_new_tokens=12", "log.samples_every=1",
    "log.clip_probe_every=2",
]
TIMING = ("rollout_seconds", "update_seconds", "probe_seconds", "step_seconds", "tokens_per_second")


def command(out: Path, name: str, resume: bool) -> list[str]:
    base = [sys.executable, "-m", "clipctl", "train", "-q"]
    if resume:
        return [*base, "--resume", str(out / name)]
    sets = [a for o in OVERRIDES for a in ("--set", o)]
    return [*base, *sets, "--out", str(out), "--name", name]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

    import numpy as np

    from clipctl.runlog import read_run

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        subprocess.run(command(out, "ref", False), env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        print(f"reference run: {wall:.1f} s", flush=True)
        resume = False
        times = sorted(rng.uniform(0.0, wall) for _ in range(args.kills))
        fired = 0
        for k, (delay, before) in enumerate(zip(times, [0.0, *times])):
            delay -= before
            proc = subprocess.Popen(command(out, "cut", resume), env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, start_new_session=True)
            try:
                proc.wait(timeout=delay)
                ended = f"ended by itself (exit {proc.returncode})"
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                ended = "killed"
                fired += 1
            resume = resume or (out / "cut" / "run.json").exists()
            try:
                logged = list(read_run(out / "cut").steps["step"]) if resume else []
            except Exception as e:  # a half-written run must still resume; report what a reader sees
                logged = f"unreadable now ({type(e).__name__})"
            print(f"kill {k + 1:2d}: after {delay:5.1f} s, {ended}; steps logged: {logged}", flush=True)
            if proc.returncode not in (0, -signal.SIGKILL) and ended != "killed":
                print(proc.stderr.read().decode()[-2000:])
                return 1
        subprocess.run(command(out, "cut", resume), env=env, check=True, stdout=subprocess.DEVNULL)
        ref, cut = read_run(out / "ref"), read_run(out / "cut")
        a = ref.steps.drop(columns=[c for c in TIMING if c in ref.steps])
        b = cut.steps.drop(columns=[c for c in TIMING if c in cut.steps])
        same_steps = list(b["step"]) == list(a["step"])
        close = same_steps and np.allclose(a.to_numpy(float), b.to_numpy(float), rtol=0, atol=1e-6, equal_nan=True)
        print(f"kills fired: {fired} of {args.kills}")
        print(f"final: steps {list(b['step'])}, equal to the uninterrupted run: {close}; checkpoints {cut.checkpoints}")
        return 0 if close else 1


if __name__ == "__main__":
    sys.exit(main())
