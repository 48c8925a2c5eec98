"""``clipctl reproduce CLAIM``: plan a claim's runs, run them through the sweep machinery, decide, report.

1. Everything is checked before anything is written: the claim and scale, the
   seeds and steps, the output folder (writable), that DIR holds no
   reproduction of another config (``reproduce.json``, ``specs/*.toml``), and
   every sweep's own checks (``sweep.prepare``: a sweep folder made with another
   spec, a run made with other overrides).
2. Sweeps run with ``sweep.run_sweep(out=DIR)``: finished runs are skipped and
   partial ones resumed, so runs made earlier with ``clipctl sweep NAME --out
   DIR`` are reused. Simulated runs are skipped when their run.json already
   holds the same simulator config and every step.
3. ``decide`` and ``report.write_report`` then rebuild report.md, claims.json
   and the figures from the runs on disk: a second call trains nothing and
   writes the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pandas as pd

from clipctl import sweep as sweeps
from clipctl.errors import ConfigError, RunDirError
from clipctl.reproduce.claims import Claim, Evidence, SimPlan, SweepPlan, get_claim, get_scale
from clipctl.reproduce.verdict import overall
from clipctl.rundir import check_output_dir, ensure_output_dir
from clipctl.runlog import atomic_write_bytes, atomic_write_json, logged_steps, read_meta

STATE_FILE = "reproduce.json"
SPECS = "specs"


@dataclass
class Request:
    claim: str
    scale: str
    seeds: int
    steps: int
    out: Path

    def identity(self, plans) -> dict:
        """What must match for a later call to continue in the same DIR."""
        return {"claim": self.claim, "scale": self.scale, "seeds": self.seeds, "steps": self.steps,
                "plans": [p.name for p in plans]}

    def command(self) -> str:
        return (f"clipctl reproduce {self.claim} --scale {self.scale} --seeds {self.seeds} --steps {self.steps} "
                f"--out {self.out}")


def default_out(claim: str, scale: str) -> Path:
    return Path("runs") / "reproduce" / f"{claim}-{scale}"


def make_request(claim_id: str, scale: str, seeds: Optional[int], steps: Optional[int], out: Optional[Path]) -> tuple[Claim, Request]:
    claim = get_claim(claim_id)
    sc = get_scale(claim, scale)
    seeds = sc.seeds if seeds is None else seeds
    steps = sc.steps if steps is None else steps
    if seeds < 2:
        raise ConfigError(f"--seeds {seeds} must be at least 2 (an interval across seeds needs two); default {sc.seeds}")
    if steps < 1:
        raise ConfigError(f"--steps {steps} must be at least 1; default {sc.steps}")
    return claim, Request(claim.id, scale, seeds, steps, Path(out) if out is not None else default_out(claim.id, scale))


# ---------------------------------------------------------------- checks (nothing written)


def _check_state(req: Request, plans) -> None:
    path = req.out / STATE_FILE
    if not path.is_file():
        return
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"cannot read {path}: {e}; delete it (it is rewritten) or pass another --out") from None
    new = req.identity(plans)
    if stored != new:
        diff = next(f"{k} {stored.get(k)} there, {new[k]} here" for k in new if stored.get(k) != new[k])
        raise ConfigError(f"{req.out} holds a reproduction of another config ({diff}); pass another --out or delete {req.out}")


def _spec_path(req: Request, plan: SweepPlan) -> Path:
    return plan.source if plan.source is not None else req.out / SPECS / f"{plan.name}.toml"


def _check_sweeps(req: Request, plans) -> dict[str, sweeps.Prepared]:
    """``sweep.prepare`` every sweep against DIR (generated ones from a temporary copy of their file)."""
    prepared = {}
    with tempfile.TemporaryDirectory() as tmp:
        for plan in plans:
            if not isinstance(plan, SweepPlan):
                continue
            path = _spec_path(req, plan)
            if plan.text is not None:
                if path.is_file() and path.read_text() != plan.text:
                    raise ConfigError(f"{path} holds another sweep than this call's; pass another --out or delete {req.out}")
                path = Path(tmp) / f"{plan.name}.toml"
                path.write_text(plan.text)
            prepared[plan.label] = sweeps.prepare(path, req.out)
    return prepared


def _sim_configs(plan: SimPlan):
    from clipctl.simulate import DynamicsConfig, dynamics_configs

    return dynamics_configs(plan.grid, plan.seeds, DynamicsConfig(**dict(plan.base)))


def _sim_dirs(req: Request, plan: SimPlan) -> list[tuple[Path, bool]]:
    """(run dir, done) of each simulated run: done when its run.json has this config and it logged its last step."""
    from clipctl.simulate import run_name

    out = []
    for cfg in _sim_configs(plan):
        run_dir = req.out / plan.name / run_name(cfg)
        done = False
        if (run_dir / "run.json").is_file():
            stored = read_meta(run_dir).get("config", {}).get("simulate")
            # The simulator writes its whole steps table as one atomic part named after the last step.
            done = stored == dataclasses.asdict(cfg) and logged_steps(run_dir)[-1:] == [cfg.steps]
        out.append((run_dir, done))
    return out


# ---------------------------------------------------------------- the command


def plan_table(claim_id: str, scale: str, *, seeds=None, steps=None, out=None) -> pd.DataFrame:
    """``--dry-run``: every run the call needs and what it would do, checking as a real call does."""
    claim, req = make_request(claim_id, scale, seeds, steps, out)
    plans = claim.scales[scale].plans(req.seeds, req.steps)
    check_output_dir(req.out, "--out")
    _check_state(req, plans)
    prepared = _check_sweeps(req, plans)
    rows = []
    for plan in plans:
        if isinstance(plan, SweepPlan):
            rows_, actions = sweeps.reconcile(prepared[plan.label])
            rows += [{"plan": plan.name, "run": name, "action": actions[name], "steps": r["steps"]} for name, r in rows_.items()]
        else:
            rows += [{"plan": plan.name, "run": d.name, "action": "skip (done)" if done else "simulate",
                      "steps": cfg.steps} for (d, done), cfg in zip(_sim_dirs(req, plan), _sim_configs(plan))]
    df = pd.DataFrame(rows)
    df.attrs["out"] = str(req.out)
    return df


def reproduce(claim_id: str, scale: str, *, seeds: Optional[int] = None, steps: Optional[int] = None,
              out: Optional[Path] = None, jobs: Optional[int] = None, gpus: Optional[str] = None,
              log: Optional[Callable[[str], None]] = None) -> dict:
    """Run (or reuse) every run ``claim_id`` needs at ``scale``, decide it, write DIR/report.md,
    DIR/claims.json and DIR/figures/; return the claims.json object (``["report"]``: the report's path)."""
    from clipctl.reproduce.report import write_report

    log = log or (lambda msg: None)
    claim, req = make_request(claim_id, scale, seeds, steps, out)
    sc = claim.scales[scale]
    plans = sc.plans(req.seeds, req.steps)
    if jobs is None and gpus is None:
        jobs = sc.jobs  # e.g. 2 at tiny: each run then gets cores / 2 threads (sweep.run_sweep)
    ensure_output_dir(req.out, "--out")  # an unwritable place fails here, before anything else is written
    _check_state(req, plans)
    _check_sweeps(req, plans)
    for plan in plans:
        if isinstance(plan, SimPlan):
            _sim_dirs(req, plan)  # bad simulator settings fail before any training
    atomic_write_json(req.out / STATE_FILE, req.identity(plans))
    runs: dict[str, list[Path]] = {}
    spec_texts: dict[str, str] = {}
    for plan in plans:
        if isinstance(plan, SweepPlan):
            path = _spec_path(req, plan)
            if plan.text is not None and not path.is_file():
                atomic_write_bytes(path, plan.text.encode())
            spec_texts[plan.name] = path.read_text()
            manifest = sweeps.run_sweep(path, out=req.out, jobs=jobs, gpus=gpus, log=log)
            failed = manifest.loc[manifest["status"] != "done", "run"].tolist()
            sd = Path(manifest.attrs["sweep_dir"])
            if failed:
                raise sweeps.SweepError(
                    f"{len(failed)} run(s) of {sd} did not finish (e.g. {failed[0]}); see {sd}/logs/{failed[0]}.log, "
                    f"fix the cause, then run clipctl sweep {path} --out {req.out} --retry-failed and reproduce again"
                )
            runs[plan.label] = [sd / name for name in manifest["run"]]
        else:
            runs[plan.label] = _run_sim(req, plan, log)
    ev = Evidence(runs)
    estimates = claim.decide(ev)
    result = {
        "claim": claim.id, "source": claim.source, "quote": claim.quote, "scale": scale,
        "seeds": req.seeds, "steps": req.steps, "verdict": overall(e["verdict"] for e in estimates),
        "estimates": estimates,
    }
    return write_report(req, claim, result, ev, spec_texts)


def _run_sim(req: Request, plan: SimPlan, log) -> list[Path]:
    from clipctl.simulate import DynamicsConfig, run_dynamics

    dirs = _sim_dirs(req, plan)
    if all(done for _, done in dirs):
        log(f"simulator {plan.name}: {len(dirs)} runs, all done, in {req.out / plan.name}")
    else:
        log(f"simulator {plan.name}: simulating {len(dirs)} runs in {req.out / plan.name}")
        run_dynamics(req.out / plan.name, grid=plan.grid, seeds=plan.seeds, base=DynamicsConfig(**dict(plan.base)))
    return [d for d, _ in dirs]
