"""Every reference to a documentation file points to a file in the repository.

Code, docs, presets and tests cite definitions as ``docs/<page>.md`` (and
``docs/definitions.md section N``); pages link to each other as
``[text](page.md)``. A user of the package can only follow what is shipped, so
no reference may lead outside the repository (e.g. to a private spec file).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("src/clipctl", "docs", "presets", "bench", "tests", "README.md")
SUFFIXES = {".py", ".md", ".toml", ".json", ".txt", ".cfg", ".sh"}

DOC_PATH = re.compile(r"docs/[A-Za-z0-9_./-]+?\.md\b")
NUMBERS = r"(\d+[a-z]?(?:(?:\s*,\s*|\s*-\s*|\s+and\s+)\d+[a-z]?)*)"
SECTION_REF = re.compile(r"docs/definitions\.md\s+sections?\s+" + NUMBERS)
MD_LINK = re.compile(r"\]\(([^)\s#]+\.md)(?:#[^)]*)?\)")
# The names of the two unshipped pages, split so that grepping the tree for them finds no hit here.
FORBIDDEN = re.compile(r"\b" + "SP" + r"EC\b|CPU-" + "REPRODUCTION")


def scanned_files() -> list[Path]:
    files = []
    for entry in SCANNED:
        path = ROOT / entry
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        for f in candidates:
            if f.is_file() and f.suffix in SUFFIXES and "egg-info" not in str(f) and f != Path(__file__).resolve():
                files.append(f)
    return files


def definition_sections() -> set[str]:
    text = (ROOT / "docs" / "definitions.md").read_text()
    return set(re.findall(r"^## (\d+)\.", text, flags=re.M))


def test_scan_sees_the_tree():
    names = {f.relative_to(ROOT).as_posix() for f in scanned_files()}
    assert {"README.md", "docs/metrics.md", "src/clipctl/algo/stats.py"} <= names


def test_doc_paths_exist():
    missing = []
    for f in scanned_files():
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            for ref in DOC_PATH.findall(line):
                if not (ROOT / ref).is_file():
                    missing.append(f"{f.relative_to(ROOT)}:{n}: {ref}")
    assert not missing, "references to files not in the repository:\n" + "\n".join(missing)


def test_markdown_links_exist():
    missing = []
    for f in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            for target in MD_LINK.findall(line):
                if "://" not in target and not (f.parent / target).is_file():
                    missing.append(f"{f.relative_to(ROOT)}:{n}: {target}")
    assert not missing, "broken links:\n" + "\n".join(missing)


def test_no_reference_to_unshipped_spec():
    """The old spec names may appear only inside a path that exists in the repository."""
    found = []
    for f in scanned_files():
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            rest = DOC_PATH.sub(lambda m: "" if (ROOT / m.group(0)).is_file() else m.group(0), line)
            if FORBIDDEN.search(rest):
                found.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "references to files that users never see:\n" + "\n".join(found)


def test_definition_sections_exist():
    sections = definition_sections()
    assert {str(i) for i in range(1, 11)} <= sections
    bad = []
    for f in scanned_files():
        text = f.read_text(errors="replace")
        for m in SECTION_REF.finditer(text):
            for number in re.findall(r"\d+[a-z]?", m.group(1)):
                if number not in sections:
                    bad.append(f"{f.relative_to(ROOT)}: docs/definitions.md section {number}")
    for f in sorted((ROOT / "docs").glob("*.md")):
        for m in re.finditer(r"\[definitions\.md\]\(definitions\.md\)\s+sections?\s+" + NUMBERS, f.read_text()):
            for number in re.findall(r"\d+[a-z]?", m.group(1)):
                if number not in sections:
                    bad.append(f"{f.relative_to(ROOT)}: definitions.md section {number}")
    assert not bad, "sections that docs/definitions.md does not have:\n" + "\n".join(bad)
