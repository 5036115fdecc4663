"""The house rules of the code's shape: no import cycle, no private name taken across modules, no huge file.

An AST walk over the packages, function-level imports included (a cycle hidden inside a function still
ties the modules together).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("retrieval", "indexer", "ui")
MAX_LINES = 700


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            rel = f.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            mods[".".join(parts)] = f
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, str | None]]:
    """(module imported, name taken from it or None) for every import statement in the file."""
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)] + ([node.module] if node.module else [])
                module = ".".join(base)
            else:
                module = node.module or ""
            for a in node.names:
                full = f"{module}.{a.name}"
                found.append((full, None) if full in mods else (module, a.name))
    resolved = []
    for target, taken in found:
        while target and target not in mods and "." in target:
            target = target.rsplit(".", 1)[0]
        if target in mods and target != name:
            resolved.append((target, taken))
    return resolved


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for m, f in mods.items():
        for target, taken in _imports(m, f, mods):
            if not m.startswith(target + "."):  # a module importing its own package's __init__
                edges[m].add(target)
            if taken and taken.startswith("_") and not taken.startswith("__"):
                private.append(f"{m} imports {taken} from {target}")
    return edges, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def test_no_import_cycles():
    edges, _ = _graph()
    assert _cycles(edges) == []


def test_no_private_names_across_modules():
    _, private = _graph()
    assert private == []


def test_the_walk_sees_function_level_imports_and_cycles():
    """The checker itself: a cycle through a function-level import is found."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]
    mods = _modules()
    edges, _ = _graph()
    # ui imports the library (inside functions, lazily), never the other way round
    assert any(t.startswith("retrieval") for m in edges if m.startswith("ui") for t in edges[m])
    assert not any(t.startswith(("ui", "indexer")) for m in edges if m.startswith("retrieval") for t in edges[m])
    assert len(mods) > 20


def test_training_is_apart_from_the_query_path():
    """Training code imports the library; the library, indexer and UI's query path never import training."""
    edges, _ = _graph()
    offenders = [f"{m} -> {t}" for m in edges for t in edges[m]
                 if t.startswith("retrieval.training") and m.startswith(("retrieval.", "indexer"))
                 and not m.startswith("retrieval.training")]
    assert offenders == []


def test_no_source_file_over_the_limit():
    big = {str(f.relative_to(ROOT)): n for f in _modules().values()
           if (n := sum(1 for _ in f.open())) > MAX_LINES}
    assert big == {}
