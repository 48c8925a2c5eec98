"""DIR/report.md, DIR/claims.json and DIR/figures/ of ``clipctl reproduce`` (docs/reproduction.md).

Everything written is a function of the runs on disk, the call's arguments and
the installed versions: no timestamps, so a second call writes the same bytes.
Every run is listed, never a selection.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import pandas as pd

from clipctl import render
from clipctl.reproduce.claims import Claim, Evidence
from clipctl.reproduce.verdict import ALPHA, POWER
from clipctl.runlog import atomic_write_bytes, read_meta

RULE = (
    "supported: the 95 % CI excludes 0 in the paper's direction; contradicted: it excludes 0 the other way; "
    "inconclusive: otherwise. Overall: contradicted if any sub-statement is, supported if all are, else inconclusive."
)
PACKAGES = ("clipctl", "torch", "transformers", "numpy", "pandas", "pyarrow", "matplotlib")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return render.cell(v, ".4g")  # nan, inf and -inf as words
    return str(v).replace("|", "\\|").replace("\n", " ")


def md_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git(*args: str) -> str | None:
    here = Path(__file__).resolve().parents[1]  # the clipctl package
    try:
        res = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def _git_commit() -> str | None:
    """HEAD of the checkout clipctl runs from, ``+ uncommitted changes`` when its package files differ from it."""
    head = _git("rev-parse", "HEAD")
    if not head:
        return None
    return head + (" + uncommitted changes" if _git("status", "--porcelain", "--", ".") else "")


def _clean(value):
    """JSON-ready: NaN -> null, infinities -> "inf"/"-inf", numpy scalars -> Python, recursively."""
    from clipctl.analysis import _json_safe

    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return _json_safe(value)


def config_hash(obj) -> str:
    """The first 12 hex digits of sha256 over the canonical JSON of a config (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _run_rows(ev: Evidence, out: Path) -> list[dict]:
    rows = []
    for label, paths in ev.runs.items():
        for p in paths:
            meta = read_meta(p)
            run, root = Path(p).resolve(), Path(out).resolve()
            rows.append({"plan": label, "run": str(run.relative_to(root)) if run.is_relative_to(root) else str(p),
                         "config_hash": config_hash(meta.get("config", {}))})
    return rows


def _figures(ev: Evidence, out: Path) -> list[str]:
    from clipctl import plotting

    written = []
    for name, label, kind, kw in ev.figures:
        fig = plotting.plot_runs([str(p) for p in ev.runs[label]], kind, **kw)
        plotting.save_figure(fig, out / "figures" / name)
        written.append(f"figures/{name}")
    return written


def _limit_line(req, claim: Claim, result: dict) -> str:
    sc = claim.scales[req.scale]
    needs = [e["seeds_for_80pct_power"] for e in result["estimates"] if e["verdict"] == "inconclusive"]
    power = ""
    if needs:
        shown = ", ".join(f"{e['id']}: {e['seeds_for_80pct_power'] or 'not reachable'}" for e in result["estimates"]
                          if e["verdict"] == "inconclusive")
        power = f" Seeds (pairs) the observed effects would need for {POWER:.0%} power at two-sided alpha {ALPHA}: {shown}."
    flat = [e["id"] for e in result["estimates"] if e.get("zero_spread")]
    if flat:
        power += (f" SE 0 for {', '.join(flat)}: every seed gave the same value, so the interval has width 0 and "
                  "understates the uncertainty; more steps or seeds would show the spread.")
    return f"Scale {req.scale} ({sc.limit}); {req.steps} steps, {req.seeds} seeds.{power}"


def write_report(req, claim: Claim, result: dict, ev: Evidence, spec_texts: dict[str, str]) -> dict:
    out = Path(req.out)
    figures = _figures(ev, out)
    result = {
        **result,
        "rule": RULE,
        "limit": _limit_line(req, claim, result),
        "figures": figures,
        "runs": _run_rows(ev, out),
        "provenance": {
            "command": req.command(), "versions": _versions(), "git_commit": _git_commit(),
            "sweep_hashes": {name: hashlib.sha256(text.encode()).hexdigest()[:12] for name, text in sorted(spec_texts.items())},
        },
    }
    result = _clean(result)
    atomic_write_bytes(out / "claims.json", (json.dumps(result, indent=2, sort_keys=False) + "\n").encode())
    atomic_write_bytes(out / "report.md", report_text(claim, result, ev).encode())
    result["report"] = str(out / "report.md")
    return result


ESTIMATE_COLS = ("id", "statement", "direction", "method", "n", "estimate", "se", "ci_low", "ci_high", "verdict",
                 "seeds_for_80pct_power")


def report_text(claim: Claim, result: dict, ev: Evidence) -> str:
    prov = result["provenance"]
    est = pd.DataFrame([{k: e.get(k) for k in ESTIMATE_COLS} for e in result["estimates"]], dtype=object)
    lines = [
        f"# {claim.id} at scale {result['scale']}: {result['verdict']}",
        "",
        f"**{claim.source}.** The paper (arXiv 2509.26114):",
        "",
        f"> {claim.quote}",
        "",
        f"**Runs:** {claim.needs}. **Deciding statistic:** {claim.statistic}.",
        "",
        "## Verdict",
        "",
        md_table(est),
        "",
        f"Rule (docs/reproduction.md): {result['rule']} Intervals: mean +- t(0.975, df) SE.",
        "",
        f"**What limits it:** {result['limit']}",
        "",
    ]
    if result["figures"]:
        lines += ["## Figures", ""] + [f"![{f}]({f})" for f in result["figures"]] + [""]
    for title, df in ev.tables:
        lines += [f"## {title}", "", md_table(df), ""]
    runs = pd.DataFrame(result["runs"])
    lines += ["## Every run and its config hash", "", md_table(runs), ""]
    lines += ["## Provenance", "", f"- command: `{prov['command']}`", f"- git commit: {prov['git_commit'] or 'unknown'}"]
    lines += [f"- sweep file {name}: sha256 {h}" for name, h in prov["sweep_hashes"].items()]
    lines += ["- versions: " + ", ".join(f"{k} {v}" for k, v in prov["versions"].items())]
    return "\n".join(lines) + "\n"
