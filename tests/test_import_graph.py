"""The package's layers: every import points downward, so the modules form no cycle (function-
level imports included). A new upward import fails here with the loop it closes."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def _module(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in (SRC / "fedumm").rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import mod` imports pkg.mod; `from mod import name`, mod
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                    for a in node.names
                ]
            for target in targets:
                while target and target not in files:  # `from pkg import name`: the package
                    target = target.rpartition(".")[0]
                if target and target != name and target != "fedumm":
                    graph[name].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_imports_one_above_it():
    graph = _graph()
    assert len(graph) > 50 and "fedumm.engines.embedded" in graph["fedumm.engines"]
    loop = _cycle(graph)
    assert loop is None, "import cycle: " + " -> ".join(loop)


def test_the_layers_are_the_documented_ones():
    graph = _graph()

    def reaches(a: str, b: str) -> bool:
        seen, todo = set(), [a]
        while todo:
            node = todo.pop()
            if node == b:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph[node])
        return False

    assert not reaches("fedumm.config", "fedumm.models")  # the schema knows no model...
    assert not reaches("fedumm.config", "fedumm.federation.strategies")  # ...and no algorithm
    assert not reaches("fedumm.models.foundation", "fedumm.training")  # recipes live above
    assert not reaches("fedumm.recipe", "fedumm.engines")  # engines call the recipe
    assert not reaches("fedumm.federation.server", "fedumm.engines")  # the loop knows no engine
