"""analyze-clip-stats over a sweep: compacted run logs vs one Parquet file per step (issue 15 part 5).

Generates synthetic run directories (no training): ``run.json`` with a real
resolved config (4 clip settings x seeds) and a steps table with the real
steps-table columns (read from docs/metrics.md), in two layouts:

- ``parts``: today's layout before compaction, ``steps/step-NNNNNN.parquet``,
  one file per step;
- ``compacted``: what ``runlog.compact(..., final=True)`` leaves at the end of a
  run, ``steps/steps-000001-NNNNNN.parquet``. The compacted runs are made by
  writing parts and compacting them only for the first ``--verify`` runs (to
  check both layouts read back equal); the rest are written as one file.

Then times ``clipctl.analysis.analyze_runs`` (what ``clipctl analyze-clip-stats``
runs, without printing) over each layout, and ``clipctl analyze-clip-stats``
itself (a fresh process, imports included) over the compacted one. The parts
layout is slow to write and read (1,000 files per run), so by default it is
measured on ``--parts-runs`` runs and scaled linearly to ``--runs`` (each run is
read on its own, so the cost per run does not depend on how many there are);
pass ``--parts-runs`` equal to ``--runs`` to measure it in full.

    OMP_NUM_THREADS=1 .venv/bin/python bench/runlog_compaction.py --runs 1000 --steps 1000 --parts-runs 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from clipctl import analysis, runlog  # noqa: E402
from clipctl.config import load_config, config_to_dict  # noqa: E402

INT_COLUMNS = {"step", "n_updates", "n_tokens", "response_length_max", "update_tokens", "skipped_updates"}
SETTINGS = [(0.2, 0.2), (0.2, float("inf")), (1.0, 0.2), (1.0, float("inf"))]


def steps_columns() -> list[str]:
    """The steps table's columns, as docs/metrics.md lists them (a test keeps it equal to the Parquet schema)."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    section = text.split("## steps", 1)[1].split("\n## ", 1)[0]
    cols = []
    for line in section.splitlines():
        if line.startswith("| `"):
            cols += re.findall(r"`([a-z0-9_]+)`", line.split("|")[1])
    return list(dict.fromkeys(cols))


def synthetic_steps(columns: list[str], steps: int, rng: np.random.Generator) -> pd.DataFrame:
    data = {}
    for c in columns:
        if c == "step":
            data[c] = np.arange(1, steps + 1, dtype=np.int64)
        elif c in INT_COLUMNS:
            data[c] = rng.integers(0, 5000, steps).astype(np.int64)
        else:
            data[c] = rng.normal(size=steps)
    return pd.DataFrame(data)


def write_run(folder: Path, k: int, steps_df: pd.DataFrame, layout: str, verify: bool) -> None:
    eps_low, eps_high = SETTINGS[k % len(SETTINGS)]
    cfg = load_config("tiny-cpu", [f"algo.eps_low={eps_low}", f"algo.eps_high={eps_high}", f"train.seed={k // len(SETTINGS)}"])
    runlog.atomic_write_json(folder / "run.json", {"name": folder.name, "config": config_to_dict(cfg)})
    n = len(steps_df)
    if layout == "parts" or verify:
        for s in range(n):
            runlog.write_parquet_atomic(steps_df.iloc[s:s + 1], runlog.part_path(folder, "steps", s + 1))
        if layout == "compacted":
            runlog.compact(folder, n, final=True)
    else:
        runlog.write_parquet_atomic(steps_df, runlog.segment_path(folder, "steps", 1, n))


def make_runs(root: Path, layout: str, runs: int, steps: int, verify: int, seed: int = 0) -> float:
    root.mkdir(parents=True, exist_ok=True)
    columns = steps_columns()
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for k in range(runs):
        write_run(root / f"run-{k:04d}", k, synthetic_steps(columns, steps, rng), layout, k < verify)
    return time.perf_counter() - t0


def time_analyze(root: Path) -> tuple[float, float]:
    """Wall and CPU seconds of ``analyze_runs`` (CPU time: a fairer figure on a shared, loaded machine)."""
    t0, c0 = time.perf_counter(), time.process_time()
    analysis.analyze_runs([str(root / "*")])
    return time.perf_counter() - t0, time.process_time() - c0


def time_cli(root: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "clipctl", "analyze-clip-stats", str(root / "*")],
        check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--parts-runs", type=int, default=20, help="runs in the one-file-per-step layout (scaled to --runs)")
    ap.add_argument("--verify", type=int, default=4, help="compacted runs made from real parts and checked equal")
    ap.add_argument("--out", type=Path, default=None, help="where to generate (default: a temp folder, removed)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    base = args.out or Path(tempfile.mkdtemp(prefix="clipctl-bench-runlog-"))
    try:
        comp, parts = base / "compacted", base / "parts"
        gen_c = make_runs(comp, "compacted", args.runs, args.steps, args.verify)
        gen_p = make_runs(parts, "parts", args.parts_runs, args.steps, 0)
        for k in range(min(args.verify, args.parts_runs)):
            a = runlog.read_run(comp / f"run-{k:04d}").steps
            b = runlog.read_run(parts / f"run-{k:04d}").steps
            pd.testing.assert_frame_equal(a, b)
        files_c = sum(1 for _ in comp.glob("*/steps/*.parquet")) / args.runs
        files_p = sum(1 for _ in parts.glob("*/steps/*.parquet")) / args.parts_runs

        t_comp, cpu_comp = time_analyze(comp)
        t_parts_sub, cpu_parts_sub = time_analyze(parts)
        t_parts = t_parts_sub * args.runs / args.parts_runs
        cpu_parts = cpu_parts_sub * args.runs / args.parts_runs
        t_cli = time_cli(comp)
        result = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
            "runs": args.runs,
            "steps": args.steps,
            "steps_columns": len(steps_columns()),
            "files_per_run_compacted": files_c,
            "files_per_run_parts": files_p,
            "generate_compacted_s": round(gen_c, 2),
            "generate_parts_s": round(gen_p, 2),
            "parts_runs_measured": args.parts_runs,
            "analyze_compacted_s": round(t_comp, 3),
            "analyze_compacted_cpu_s": round(cpu_comp, 3),
            "analyze_parts_s": round(t_parts, 2),
            "analyze_parts_cpu_s": round(cpu_parts, 2),
            "analyze_parts_measured_s": round(t_parts_sub, 3),
            "cli_compacted_s": round(t_cli, 3),
            "parts_over_compacted": round(t_parts / t_comp, 1),
            "parts_over_compacted_cpu": round(cpu_parts / cpu_comp, 1),
        }
        print(f"{args.runs} runs x {args.steps} steps ({result['steps_columns']} steps columns), {result['machine']}")
        print(f"  compacted ({files_c:.0f} file/run):   analyze_runs {t_comp:8.2f} s wall, {cpu_comp:8.2f} s CPU;"
              f"   clipctl analyze-clip-stats {t_cli:.2f} s wall")
        scaled = "" if args.parts_runs == args.runs else f" (measured {t_parts_sub:.2f} s on {args.parts_runs} runs, scaled)"
        print(f"  parts ({files_p:.0f} files/run):  analyze_runs {t_parts:8.2f} s wall, {cpu_parts:8.2f} s CPU{scaled}")
        print(f"  ratio parts / compacted: {t_parts / t_comp:.1f}x wall, {cpu_parts / cpu_comp:.1f}x CPU")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        if args.out is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
