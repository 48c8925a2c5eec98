"""Kill a training run at random moments, resume it each time, and check it equals an uninterrupted run.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/kill_resume.py --kills 20

1. An uninterrupted reference run (``clipctl train``, builtin:tiny, small batch,
   a checkpoint every step) gives the expected steps table and its wall time T.
2. Each of the ``--kills`` attempts (the first a fresh run, then
   ``--resume``) is SIGKILLed either in start-up (with probability 1/2: at a
   uniform moment between launch and the mean time attempts took to write
   their first new checkpoint, so in loading, the resume checks or the first
   step) or in the steps after it (uniformly within 3 step times after the
   attempt's first new checkpoint: rollouts, updates, the probe, Parquet
   writes, checkpoint saves, compaction). The line of each kill says which
   and how many steps it added. The verdict requires every kill to fire.
   Then one last resume runs to the end.
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

STEPS = 80  # long enough that every kill fires before the run could finish
OVERRIDES = [
    f"train.steps={STEPS}", "train.save_every=1", "train.keep_last=2", "train.rollout_batch_prompts=4",
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


def steps_logged(run_dir: Path) -> list[int] | str:
    """The steps a reader sees in ``run_dir`` now (a half-written run must still read)."""
    from clipctl.runlog import read_run

    try:
        return [int(s) for s in read_run(run_dir).steps["step"]]
    except Exception as e:
        return f"unreadable now ({type(e).__name__})"


def newest_checkpoint(run_dir: Path) -> int:
    """The newest ``checkpoints/step-N`` folder's N (0 if none); a cheap directory listing."""
    steps = [int(p.name[5:]) for p in (run_dir / "checkpoints").glob("step-*") if p.name[5:].isdigit()]
    return max(steps, default=0)


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
        ref = subprocess.Popen(command(out, "ref", False), env=env, stdout=subprocess.DEVNULL)
        first_checkpoint = None
        while ref.poll() is None:
            if first_checkpoint is None and (out / "ref" / "checkpoints" / "step-1").exists():
                first_checkpoint = time.perf_counter() - t0
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        if ref.returncode != 0 or first_checkpoint is None:
            print(f"reference run failed (exit {ref.returncode})")
            return 1
        per_step = (wall - first_checkpoint) / (STEPS - 1)
        print(f"reference run: {wall:.1f} s ({first_checkpoint:.1f} s to its first checkpoint, "
              f"{per_step:.2f} s per step)", flush=True)
        resume = False
        fired = 0
        startups = [first_checkpoint]  # time from launch to an attempt's first new checkpoint
        for k in range(args.kills):
            in_startup = rng.random() < 0.5
            delay = rng.uniform(0.0, sum(startups) / len(startups)) if in_startup else rng.uniform(0.0, 3 * per_step)
            before = steps_logged(out / "cut") if resume else []
            start_ckpt = newest_checkpoint(out / "cut")
            proc = subprocess.Popen(command(out, "cut", resume), env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, start_new_session=True)
            t_start, t_new = time.perf_counter(), None
            # Start-up kills fire `delay` after launch; step kills `delay` after the attempt's first new checkpoint.
            while proc.poll() is None:
                now = time.perf_counter()
                if t_new is None and newest_checkpoint(out / "cut") > start_ckpt:
                    t_new = now
                    startups.append(now - t_start)
                if (in_startup and now - t_start >= delay) or (t_new is not None and now - t_new >= delay):
                    break
                time.sleep(0.01)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                ended = "killed"
                fired += 1
            else:
                ended = f"ended by itself (exit {proc.returncode})"
            where = (f"{delay:4.1f} s after launch" if in_startup else f"{delay:4.1f} s after its first new checkpoint")
            resume = resume or (out / "cut" / "run.json").exists()
            logged = steps_logged(out / "cut") if resume else []
            span = f"steps {logged[0]}-{logged[-1]}" if isinstance(logged, list) and logged else str(logged or "none")
            new = len(logged) - len(before) if isinstance(logged, list) and isinstance(before, list) else "?"
            print(f"kill {k + 1:2d}: {where}, {ended}; logged {span} ({new} new)", flush=True)
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
        return 0 if close and fired == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
