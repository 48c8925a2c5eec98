"""docs/metrics.md and the Parquet schema name the same columns."""

import re
from pathlib import Path

from clipctl.config import load_config
from clipctl.runlog import read_run
from clipctl.trainer import train

DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


def documented_columns() -> dict[str, set[str]]:
    tables, current = {}, None
    for line in DOC.read_text().splitlines():
        heading = re.match(r"^## (\w+)", line)
        if heading:
            current = heading.group(1)
            tables[current] = set()
        elif current and line.startswith("| `"):
            first_cell = line.split("|")[1]
            tables[current].update(re.findall(r"`([A-Za-z0-9_]+)`", first_cell))
    return tables


def test_docs_match_schema(tmp_path, fast_overrides):
    cfg = load_config(
        "tiny-cpu", [*fast_overrides, "train.steps=1", "log.token_sample_rate=0.2", "log.clip_probe_every=1"]
    )
    run = read_run(train(cfg, out=tmp_path, name="doc").run_dir)
    docs = documented_columns()
    for table in ("steps", "updates", "samples", "tokens"):
        actual = set(getattr(run, table).columns)
        assert actual, table
        assert docs[table] == actual, f"{table}: undocumented {actual - docs[table]}, stale {docs[table] - actual}"
