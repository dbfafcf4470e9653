"""The architecture of ARCHITECTURE.md, checked with ast over the tree (nothing is imported or run).

Layers (lower may never import higher): core < engine = rag < services < ui. engine and rag never import
each other. Entry points (app.py, bench/, spaces_config/, any */__main__.py) may import anything; nothing
in the product imports a __main__ module (tests may, to drive a CLI in process). gradio only in ui/,
app.py and bench/, and only its public API. No import circles, counting TYPE_CHECKING and function-level
imports. Functions in ui/, engine/, services/ and rag/ fit in 60 lines. Each failure names the offender.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYER = {"core": 0, "engine": 1, "rag": 1, "services": 2, "ui": 3}
PACKAGES = (*LAYER, "bench", "spaces_config")
GRADIO_OK = {"ui", "app", "bench"}
MAX_LINES = 60
SHORT_PACKAGES = ("ui", "engine", "services", "rag")


def _modules() -> dict[str, Path]:
    files = [ROOT / "app.py"] + [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    out = {}
    for path in files:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:  # relative import
        package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*parts, *([node.module] if node.module else [])])
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _imports() -> list[tuple[str, int, str]]:
    """(importing module, line, imported module) for every import: module level, in functions, under TYPE_CHECKING."""
    found = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                found += [(module, node.lineno, t) for t in _targets(module, node)]
    return found


def _top(module: str) -> str:
    return module.split(".")[0]


def _is_entry(module: str) -> bool:
    return module == "app" or module.endswith("__main__") or _top(module) in ("bench", "spaces_config")


def test_layers_run_one_way() -> None:
    bad = []
    for src, line, tgt in _imports():
        s, t = _top(src), _top(tgt)
        where = f"{MODULES[src].relative_to(ROOT)}:{line} imports {tgt}"
        if tgt.endswith("__main__"):
            bad.append(where + " (a __main__ is an entry point; nothing imports it)")
        elif t in ("gradio", "gradio_client") and s not in GRADIO_OK:
            bad.append(where + " (gradio only in ui/)")
        elif (not _is_entry(src) and s in LAYER and t in LAYER and s != t
              and (LAYER[t] > LAYER[s] or {s, t} == {"engine", "rag"})):
            bad.append(where)
    assert not bad, "imports against the layers:\n" + "\n".join(sorted(set(bad)))


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for src, _, tgt in _imports():
        if tgt in MODULES and tgt != src:  # a submodule's implicit import of its package is not an edge
            graph[src].add(tgt)
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:  # reports one cycle at a time
        raise AssertionError(f"import cycle (TYPE_CHECKING and function-level imports count): {exc.args[1]}") from None


def test_functions_are_short() -> None:
    long = []
    for module, path in MODULES.items():
        if _top(module) not in SHORT_PACKAGES:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([d.lineno for d in node.decorator_list] + [node.lineno])
                if node.end_lineno - start + 1 > MAX_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} "
                                f"({node.end_lineno - start + 1} lines)")
    assert not long, "split these by concern:\n" + "\n".join(long)


def test_nothing_sets_torch_threads_on_import() -> None:
    bad = []
    for path in MODULES.values():
        for stmt in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue  # runs when called, not on import
            bad += [f"{path.relative_to(ROOT)}:{n.lineno}" for n in ast.walk(stmt)
                    if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "set_num_threads"]
    assert not bad, bad


PRIVATE_GRADIO_ATTRS = {"root_block", "fns", "session"}
PRIVATE_GRADIO_TEXT = ("draggable-item", "drag-handle", "oauth_info")


def test_ui_uses_public_gradio_only() -> None:
    bad = []
    for module, path in MODULES.items():
        if _top(module) not in ("ui", "app"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gradio."):
                bad.append(f"{where} imports {node.module}")
            elif isinstance(node, ast.Attribute) and node.attr in PRIVATE_GRADIO_ATTRS:
                bad.append(f"{where} .{node.attr}")
            elif isinstance(node, ast.Attribute) and node.attr == "context" and getattr(node.value, "id", "") == "gr":
                bad.append(f"{where} gr.context")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                bad += [f"{where} {t!r}" for t in PRIVATE_GRADIO_TEXT if t in node.value]
    assert not bad, "private Gradio in ui/:\n" + "\n".join(bad)

