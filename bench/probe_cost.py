"""The clip probe's cost as a multiple of an unprobed step, before and after the shared prefix (issue 27 item 6).

For each clip setting one trainer (``tiny-cpu`` by default) runs the same
steps four ways, side by side: every step is run unprobed, probed with full
replays from the step's start (``before``: the probe up to issue 27,
``Trainer._share_probe_prefix = False``) and probed with the shortcuts
(``after``: every replay starts from the state after the on-policy first
update, replays that retrace the real step are taken from the identity
replay) and ``after`` with ``log.probe_repeats = 0`` (``standin``: the real
step stands in for the identity replay, exact on a CPU). The engine state is
restored between the four, so each sees the same weights, samples and
rewards; the order is rotated from step to step so a load change on a
shared machine does not favour one. The probed runs' columns are checked
equal between ``before``, ``after`` and ``standin`` (``probe_noise`` aside,
NaN in ``standin``).

Printed per setting: median over steps of ``step_seconds`` probed /
unprobed (before, after, standin), after / before, the median number of update passes
the probe replayed (minibatch optimizer steps), and the steps' mean clip fractions.

    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_cost.py --steps 6
    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_cost.py --settings 0.2/0.2 --steps 4 --set rollout.max_new_tokens=24
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys

import torch

from clipctl.config import load_config
from clipctl.trainer import Trainer, build_trainer
from clipctl.trainer.checkpoint import rng_states, set_rng_states

MODES = ("unprobed", "before", "after", "standin")
DEFAULT_SETTINGS = "0.2/0.2,0.2/inf,1.0/0.2,0.1/inf"
# Columns that depend on wall time, not on the math (compared between before and after otherwise).
TIMED = {"rollout_seconds", "update_seconds", "probe_seconds", "step_seconds", "tokens_per_second"}


def _setting(text: str) -> tuple[float, float]:
    low, high = text.split("/")
    return float(low), float(high)


class _CountingTrainer:
    """Counts the optimizer steps ``update_epochs`` runs (real step and replays)."""

    def __init__(self):
        self.passes = 0
        self._real = Trainer.update_epochs
        counter = self

        def counting(trainer, step, sb, **kw):
            updates, totals = counter._real(trainer, step, sb, **kw)
            counter.passes += len(updates)
            return updates, totals

        Trainer.update_epochs = counting


def run_setting(preset: str, sets: list[str], eps_low: float, eps_high: float, steps: int, counter) -> dict:
    over = [*sets, f"algo.eps_low={eps_low}", f"algo.eps_high={eps_high}", "log.clip_probe_every=1",
            "log.samples_every=0", "log.token_sample_rate=0", f"train.steps={steps}"]
    cfg = load_config(preset, over)
    trainer = build_trainer(cfg)
    cfgs = {
        "unprobed": dataclasses.replace(cfg, log=dataclasses.replace(cfg.log, clip_probe_every=0)),
        "before": cfg, "after": cfg,
        "standin": dataclasses.replace(cfg, log=dataclasses.replace(cfg.log, probe_repeats=0)),
    }
    seconds = {m: [] for m in MODES}
    passes, clip_low, clip_high = [], [], []
    for step in range(1, steps + 1):
        state, rng = trainer.engine.snapshot(), rng_states()
        order = MODES[step % len(MODES):] + MODES[: step % len(MODES)]
        rows = {}
        for mode in order:
            trainer.engine.restore(state)
            set_rng_states(rng)
            trainer.cfg = cfgs[mode]
            Trainer._share_probe_prefix = mode != "before"
            before = counter.passes
            rows[mode] = trainer.run_step(step).metrics
            if mode != "unprobed":
                passes.append((mode, counter.passes - before - rows[mode]["n_updates"]))
            seconds[mode].append(rows[mode]["step_seconds"])
        Trainer._share_probe_prefix = True
        a = rows["before"]
        for mode, skip in (("after", TIMED), ("standin", TIMED | {"probe_noise"})):
            b = rows[mode]
            diff = [k for k in a if k not in skip and not (a[k] == b[k] or (_nan(a[k]) and _nan(b[k])))]
            if diff:
                raise SystemExit(f"step {step}: before and {mode} differ in {diff}")
        clip_low.append(a["clip_low_frac"])
        clip_high.append(a["clip_high_frac"])
        # The real state after the step is the same in every mode; continue from the last one.
    med = {m: statistics.median(v) for m, v in seconds.items()}
    return {
        "setting": f"{eps_low:g}/{eps_high:g}",
        "unprobed_s": med["unprobed"],
        "before_x": statistics.median(p / u for p, u in zip(seconds["before"], seconds["unprobed"])),
        "after_x": statistics.median(p / u for p, u in zip(seconds["after"], seconds["unprobed"])),
        "standin_x": statistics.median(p / u for p, u in zip(seconds["standin"], seconds["unprobed"])),
        "replayed_before": statistics.median(n for m, n in passes if m == "before"),
        "replayed_after": statistics.median(n for m, n in passes if m == "after"),
        "replayed_standin": statistics.median(n for m, n in passes if m == "standin"),
        "clip_low_frac": statistics.mean(clip_low),
        "clip_high_frac": statistics.mean(clip_high),
    }


def _nan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny-cpu")
    ap.add_argument("--settings", default=DEFAULT_SETTINGS, help="eps_low/eps_high, comma-separated")
    ap.add_argument("--steps", type=int, default=6, help="steps per setting (each run four times)")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides (key=value)")
    ap.add_argument("--json", help="write the rows here too")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    counter = _CountingTrainer()
    print(f"# {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}, preset {args.preset}, "
          f"{args.steps} steps, load average {os.getloadavg()[0]:.1f}")
    header = ("setting", "unprobed s/step", "probed/unprobed before", "after", "standin", "after/before",
              "updates replayed before", "after", "standin", "clip_low_frac", "clip_high_frac")
    print(" | ".join(header))
    rows = []
    for text in args.settings.split(","):
        r = run_setting(args.preset, args.set, *_setting(text), args.steps, counter)
        rows.append(r)
        print(f"{r['setting']} | {r['unprobed_s']:.2f} | {r['before_x']:.2f}x | {r['after_x']:.2f}x | "
              f"{r['standin_x']:.2f}x | {r['after_x'] / r['before_x']:.2f} | {r['replayed_before']:g} | "
              f"{r['replayed_after']:g} | {r['replayed_standin']:g} | "
              f"{r['clip_low_frac']:.4f} | {r['clip_high_frac']:.4f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
