"""Imports point one way: no circle between modules, no lower layer importing a higher one.

Reads every module under `pipeline/` and `http_gateway/` with `ast` (no import is executed), and
takes every import statement into account, including those inside functions. No servers.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "http_gateway")

# Lowest first. A module may import modules of its own layer and of the layers below it. A module
# belongs to the entry with the longest prefix that matches its dotted name.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("contracts", ("pipeline", "pipeline.contracts")),
    ("audio and text", ("pipeline.audio", "pipeline.text")),
    ("edges: store, model-server client, bus, engines, embedded servers", (
        "pipeline.store", "pipeline.backend", "pipeline.bus", "pipeline.client", "pipeline.engines", "pipeline.voicelib",
        "pipeline.stack", "pipeline.stack.ports", "pipeline.stack.servers", "pipeline.stack.seaweed",
        "pipeline.stack.devstack",
    )),
    ("stages and jobs", ("pipeline.ingest", "pipeline.synth", "pipeline.assemble", "pipeline.synthesis",
                         "pipeline.jobs")),
    ("gateway, service runtime, bench", ("http_gateway", "pipeline.stack.runtime", "pipeline.bench")),
    ("commands: the CLI, up and demo", ("pipeline.cli", "pipeline.stack.embedded")),
]

# The gateway talks to the bus and the store only, never to a model server.
FORBIDDEN = {"http_gateway": ("pipeline.backend", "pipeline.engines", "pipeline.synth", "pipeline.synthesis")}


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Our modules that `name` imports anywhere in its file (module level or inside functions)."""

    def ours(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from a import b`: b is a module of a, or a name defined in a.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(t for t in map(ours, targets) if t is not None and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def find_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module, as one circle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm; the graph is small enough for recursion
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [circle_through(graph, group) for group in groups]


def circle_through(graph: dict[str, set[str]], group: list[str]) -> list[str]:
    """One path start -> ... -> start inside `group` (breadth first), for the failure message."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & members):
                if target == start:
                    return paths[node] + [start]
                if target not in paths:
                    paths[target] = paths[node] + [target]
                    following.append(target)
        frontier = following
    return group


def test_every_module_has_a_layer():
    unplaced = sorted(name for name in module_files() if layer_of(name) is None)
    assert not unplaced, f"add these modules to LAYERS in tests/test_layers.py: {unplaced}"


def test_no_import_circles():
    circles = find_circles(import_graph())
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(circle) for circle in circles)


def test_imports_point_down_the_layers():
    upward = []
    for module, targets in sorted(import_graph().items()):
        for target in sorted(targets):
            here, there = layer_of(module), layer_of(target)
            if here is not None and there is not None and there > here:
                upward.append(f"{module} ({LAYERS[here][0]}) imports {target} ({LAYERS[there][0]})")
    assert not upward, "lower layers import higher ones:\n" + "\n".join(upward)


def test_the_gateway_never_reaches_a_model_server():
    graph = import_graph()
    wrong = [f"{module} imports {target}" for module, targets in sorted(graph.items())
             for source, banned in FORBIDDEN.items() if module == source or module.startswith(source + ".")
             for target in sorted(targets) if any(target == b or target.startswith(b + ".") for b in banned)]
    assert not wrong, "\n".join(wrong)


def test_the_checks_see_a_circle_and_an_upward_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_circles(graph) == [["a", "b", "c", "a"]]
    assert layer_of("pipeline.contracts.settings") < layer_of("pipeline.synth") < layer_of("pipeline.cli.main")
    assert layer_of("pipeline.stack.ports") < layer_of("pipeline.stack.runtime") < layer_of("pipeline.stack.embedded")
