"""Import structure of the package: no module-level import cycle; analysis without torch."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "clipctl"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(module-level, function-level) clipctl modules that ``name`` imports.

    Module level: statements executed when the module is imported (including
    those under ``if``/``try`` at top level), except ``if TYPE_CHECKING:``
    blocks. Function level: imports inside a ``def`` (run on call only) and
    under ``if TYPE_CHECKING:`` (never run, still a dependency).
    Importing ``a.b.c`` also runs the packages ``a.b`` and ``a``, so those
    count too, except the importer's own packages (already being imported).
    """
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    own = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")) + 1)}

    def targets(node: ast.AST) -> set[str]:
        found: set[str] = set()
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                mod = ".".join(anchor + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in modules)
        out = set()
        for t in found:
            parts = t.split(".")
            for i in range(1, len(parts) + 1):
                m = ".".join(parts[:i])
                if m in modules and m not in own and m != "clipctl":
                    out.add(m)
        return out

    top: set[str] = set()
    inner: set[str] = set()

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                # Never run, but a type-level dependency all the same: counted with the function-level ones.
                for sub in child.body:
                    walk_stmt(sub, True)
                for sub in child.orelse:
                    walk_stmt(sub, in_function)
                continue
            walk_stmt(child, in_function)

    def walk_stmt(child: ast.AST, in_function: bool) -> None:
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            (inner if in_function else top).update(targets(child))
        walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(ast.parse(path.read_text(), str(path)), False)
    return top, inner


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules = _modules()
    top, inner = {}, {}
    for name, path in modules.items():
        top[name], inner[name] = _imports(name, path, modules)
    return top, inner


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (or a self-loop)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def connect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return components


def test_graph_sees_known_edges():
    top, inner = import_graph()
    assert "clipctl.errors" in top["clipctl.runlog"]
    assert "clipctl.algo.losses" in top["clipctl.algo.stats"]
    assert "clipctl.algo" in top["clipctl.trainer.loop"]
    # Function-level imports are seen, and kept out of the module-level graph.
    assert "clipctl.rollout" in inner["clipctl.eval.driver"]
    assert "clipctl.rollout" not in top["clipctl.eval.driver"]
    # ``if TYPE_CHECKING:`` imports never run, but count as a dependency.
    assert "clipctl.config" not in top["clipctl.rollout"]
    assert "clipctl.config" in inner["clipctl.rollout"]


def test_config_is_on_the_ground_floor():
    """config imports nothing of clipctl but errors and clip (not even in functions), and loads no torch."""
    top, inner = import_graph()
    assert top["clipctl.config"] | inner["clipctl.config"] <= {"clipctl.errors", "clipctl.clip"}
    assert top["clipctl.clip"] | inner["clipctl.clip"] <= {"clipctl.errors"}


def test_find_cycles_reports_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_level_import_cycle():
    top, _ = import_graph()
    cycles = find_cycles(top)
    assert not cycles, f"module-level import cycles among src/clipctl: {cycles}"


def test_no_import_cycle_counting_function_level_imports():
    """Imports inside functions (and under ``if TYPE_CHECKING:``) cannot break an import; two
    modules that need each other are still one tangled unit. None today (``trainer.loop`` receives its
    comm and engine instead of importing ``trainer.deepspeed``; ``rollout`` does not read ``config``)."""
    top, inner = import_graph()
    both = {m: top[m] | inner[m] for m in top}
    cycles = find_cycles(both)
    assert not cycles, f"import cycles through function-level imports: {cycles}"


def test_vllm_engine_defaults_equal_rollout_config():
    """``make_engine("vllm", ...)`` without a RolloutConfig uses VLLMEngine's defaults."""
    import inspect

    from clipctl.config import RolloutConfig
    from clipctl.rollout.vllm import VLLMEngine

    params = inspect.signature(VLLMEngine.__init__).parameters
    cfg = RolloutConfig()
    for option in ("gpu_memory_utilization", "kv_cache_mb", "sleep_between_steps", "dtype"):
        assert params[option].default == getattr(cfg, f"vllm_{option}"), option


ANALYSIS_PROBE = """
import sys
import clipctl.analysis
import pandas as pd
from clipctl.analysis import combine_updates
from clipctl.schema import SUM_KEYS
combine_updates(pd.DataFrame([{"step": 1, **{k: 1.0 for k in SUM_KEYS}}]))
heavy = sorted(m for m in ("torch", "transformers", "clipctl.algo") if m in sys.modules)
print(",".join(heavy))
"""


def test_analysis_does_not_import_torch():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", ANALYSIS_PROBE], capture_output=True, text=True, env=env, timeout=300, check=True
    )
    assert out.stdout.strip() == "", f"import clipctl.analysis (and combine_updates) loaded: {out.stdout.strip()}"
