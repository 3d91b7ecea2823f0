"""Import boundaries between the stage packages, read from the source with ``ast`` (docs/architecture.md, "Boundaries").

Every import counts: at module level, inside functions, under ``TYPE_CHECKING``, relative ones, and
``importlib.import_module("literal")`` / ``__import__("literal")``. The rules:

1. ``edge`` never imports ``simulators`` (simulators implement edge's interfaces, never the reverse).
2. Nothing imports ``vigil`` except ``vigil`` itself (it is the program that wires the stages), and
   nothing but ``vigil`` imports ``scenario`` (the acceptance harness beside it).
3. A stage imports, of the other stages, only what ``MAY_IMPORT`` says (the direction of the flow), and
   only their ``PUBLIC`` modules: all of ``broker`` (contracts, MQTT layer, registry, calendar, ...),
   ``alerting.surface``, ``storage.query``, and the wire protocols and elevator driver of ``edge`` (for
   ``simulators``). The composers, ``vigil`` (the program) and ``scenario`` (the harness), may import
   any module of the stages they may import: they build the stages from their parts.
4. No import cycle between the stage packages, and none between modules (within a package too).

Imports that still break a rule and that another step must remove are listed, pair by pair, in
``KNOWN_VIOLATIONS``, and module cycles by their members in ``KNOWN_MODULE_CYCLES``. A new violation
or cycle fails; so does a listed one that no longer exists (delete it: the lists only shrink).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("broker", "edge", "rules", "alerting", "storage", "simulators", "console", "scenario", "vigil")

MAY_IMPORT: dict[str, frozenset[str]] = {
    "broker": frozenset(),
    "edge": frozenset({"broker"}),
    # rules.replay reads recorded history through storage's read surface.
    "rules": frozenset({"broker", "storage"}),
    "alerting": frozenset({"broker"}),
    "storage": frozenset({"broker"}),
    # The console lives beside alerting in the platform process (alerting.surface) and reads history.
    "console": frozenset({"broker", "alerting", "storage"}),
    "simulators": frozenset({"broker", "edge"}),
    # The scenario harness drives devices, gateways, rules and alerting in one process; only vigil
    # (the ``vigil rules scenario`` command) and the tests import it.
    "scenario": frozenset(STAGES) - {"scenario", "vigil"},
    "vigil": frozenset(STAGES),
}

PUBLIC: dict[str, frozenset[str] | None] = {
    # None: every module is public. An entry covers the module and, if it is a package, its submodules.
    "broker": None,
    "alerting": frozenset({"alerting.surface"}),
    "storage": frozenset({"storage.query"}),
    # What a simulated device speaks (codecs, messages, code tables) and what a simulated elevator box
    # plugs into (the agent's signals, its monitor in edge.elevator.agent, and entry point).
    "edge": frozenset({
        "edge.hj212.codec", "edge.hj212.codes",
        "edge.jt808.codec", "edge.jt808.commands", "edge.jt808.messages",
        "edge.jt809.codec", "edge.jt809.directory", "edge.jt809.messages",
        "edge.modbus.tagmap",
        "edge.elevator.agent", "edge.elevator.cli", "edge.elevator.signals",
    }),
    "rules": frozenset(), "simulators": frozenset(), "console": frozenset(), "scenario": frozenset(),
    "vigil": frozenset(),
}
COMPOSERS = frozenset({"vigil", "scenario"})
"""They build stages from their parts, so the public-module rule does not bind them (MAY_IMPORT does)."""

Edge = tuple[str, str]

KNOWN_VIOLATIONS: frozenset[Edge] = frozenset()

KNOWN_MODULE_CYCLES: frozenset[frozenset[str]] = frozenset()
"""Members of strongly connected groups of modules still to break (lazy and type-only imports included).
Empty: no module cycle is allowed; fix a new one by moving shared types out or typing the back-reference
with a Protocol (e.g. ``alerting.ports``), never by listing it here."""


def stage(module: str) -> str:
    """The stage package of a dotted module name."""
    return module.split(".", 1)[0]


def package_modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the packages under ``root``."""
    out: dict[str, Path] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imported_names(tree: ast.AST, module: str, is_package: bool, known: dict[str, Path]) -> Iterable[str]:
    for node in ast.walk(tree):  # every node: function bodies and ``if TYPE_CHECKING:`` blocks included
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            for alias in node.names:  # ``from pkg import submodule`` imports the submodule
                yield f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Name) and node.func.id == "__import__")
                   or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"))):
            yield node.args[0].value


def module_graph(root: Path, packages: Iterable[str] = STAGES) -> set[Edge]:
    """(importer module, imported module) for every import between two modules of the packages."""
    packages = tuple(packages)
    known = package_modules(root, packages)
    edges: set[Edge] = set()
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name in _imported_names(tree, module, path.name == "__init__.py", known):
            target = name
            while target and target not in known:  # ``pkg.mod.Class`` -> ``pkg.mod``
                target = target.rpartition(".")[0]
            if target and target != module:
                edges.add((module, target))
    return edges


def import_graph(root: Path, packages: Iterable[str] = STAGES) -> set[Edge]:
    """(importer module, imported module) for every import between modules of different packages."""
    return {(a, b) for a, b in module_graph(root, packages) if stage(a) != stage(b)}


def is_public(module: str) -> bool:
    """Whether other stages may import ``module`` (see ``PUBLIC``)."""
    public = PUBLIC[stage(module)]
    return public is None or any(module == p or module.startswith(p + ".") for p in public)


def allowed(edge: Edge) -> bool:
    """Whether the cross-stage import ``edge`` follows MAY_IMPORT and, outside the composers, PUBLIC."""
    a, b = stage(edge[0]), stage(edge[1])
    return b in MAY_IMPORT[a] and (a in COMPOSERS or is_public(edge[1]))


def module_cycles(edges: Iterable[Edge]) -> list[list[str]]:
    """A cycle path (first == last) through every group of modules that import each other, sorted."""
    return [path for _, path in module_groups(edges)]


def module_groups(edges: Iterable[Edge]) -> list[tuple[frozenset[str], list[str]]]:
    """Every group of modules that import each other (Tarjan's strongly connected components): its members
    and one cycle through it, sorted by the cycle."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(v: str) -> None:  # recursion depth is bounded by the longest import chain
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(((frozenset(g), _cycle_through(graph, g)) for g in groups), key=lambda item: item[1])


def _cycle_through(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A cycle from the group's first module back to itself, staying inside the group (breadth first)."""
    start = min(group)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt: list[str] = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start] if v != start else [start, start]
                if w not in came_from:
                    came_from[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {sorted(group)}")


def find_cycle(edges: Iterable[Edge]) -> list[str] | None:
    """A cycle in the package graph of ``edges`` as a path (first == last), or None."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[stage(a)].add(stage(b))
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def render(edges: set[Edge], bad: Iterable[Edge] = ()) -> str:
    """The package graph with its module imports; ``!!`` marks offending imports, ``(known)`` listed ones."""
    bad = set(bad)
    by_pair: dict[tuple[str, str], list[Edge]] = defaultdict(list)
    for e in sorted(edges):
        by_pair[(stage(e[0]), stage(e[1]))].append(e)
    lines = ["import graph of the stage packages (importer -> imported):"]
    for (a, b), pairs in sorted(by_pair.items()):
        direction = b in MAY_IMPORT[a]
        internal = [p for p in pairs if not allowed(p)]
        note = " [outside MAY_IMPORT]" if not direction else f" [{len(internal)} not public]" if internal else ""
        lines.append(f"  {a} -> {b}: {len(pairs)} import(s){note}")
        for p in pairs:
            if not allowed(p) or p in bad:
                mark = "!!" if p in bad else "(known)" if p in KNOWN_VIOLATIONS else ""
                lines.append(f"      {mark:8}{p[0]} -> {p[1]}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def modules() -> set[Edge]:
    return module_graph(ROOT)


@pytest.fixture(scope="module")
def graph(modules: set[Edge]) -> set[Edge]:
    return {(a, b) for a, b in modules if stage(a) != stage(b)}


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    (tmp_path / "alpha" / "sub").mkdir(parents=True)
    (tmp_path / "beta").mkdir()
    (tmp_path / "alpha" / "__init__.py").write_text("")
    (tmp_path / "alpha" / "sub" / "__init__.py").write_text("from .. import top\n")
    (tmp_path / "alpha" / "top.py").write_text(
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "import importlib\n"
        "if TYPE_CHECKING:\n    from beta.typed import Thing\n"
        "def later() -> None:\n    import beta.lazy\n    from beta import submodule\n"
        "    importlib.import_module('beta.dynamic')\n    __import__('beta.dunder')\n"
        "from beta.plain import name\n")
    for name in ("__init__", "typed", "lazy", "submodule", "dynamic", "dunder", "plain"):
        (tmp_path / "beta" / f"{name}.py").write_text("")
    edges = import_graph(tmp_path, ("alpha", "beta"))
    assert edges == {("alpha.top", f"beta.{m}") for m in ("typed", "lazy", "submodule", "dynamic", "dunder", "plain")}
    assert find_cycle(edges) is None
    assert find_cycle({*edges, ("beta.plain", "alpha.sub")}) == ["alpha", "beta", "alpha"]
    # Within a package: alpha.sub imports alpha.top (relative), which does not import it back.
    assert ("alpha.sub", "alpha.top") in module_graph(tmp_path, ("alpha", "beta"))


def test_module_cycles_include_lazy_and_type_only_imports(tmp_path: Path) -> None:
    (tmp_path / "gamma").mkdir()
    (tmp_path / "gamma" / "__init__.py").write_text("")
    (tmp_path / "gamma" / "service.py").write_text("from gamma.desk import Desk\n")
    (tmp_path / "gamma" / "desk.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gamma.service import Service\n")
    (tmp_path / "gamma" / "web.py").write_text("def serve() -> None:\n    from gamma import api\n")
    (tmp_path / "gamma" / "api.py").write_text("from .web import serve\n")
    (tmp_path / "gamma" / "plain.py").write_text("from gamma.api import serve\n")
    cycles = module_cycles(module_graph(tmp_path, ("gamma",)))
    assert cycles == [["gamma.api", "gamma.web", "gamma.api"], ["gamma.desk", "gamma.service", "gamma.desk"]]
    assert module_cycles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == [["a", "b", "c", "a"]]
    # A listed group is compared by all its members: a module joining it is a new cycle.
    assert module_groups({("a", "b"), ("b", "a"), ("b", "c"), ("c", "a")}) == [
        (frozenset({"a", "b", "c"}), ["a", "b", "a"])]


def test_public_surfaces_and_composers() -> None:
    assert allowed(("console.web", "alerting.surface.views")) and not allowed(("console.web", "alerting.desk"))
    assert allowed(("rules.replay", "storage.query")) and not allowed(("rules.engine", "storage.outbox"))
    assert allowed(("simulators.hj212_logger", "edge.hj212.codec"))
    assert not allowed(("simulators.hj212_logger", "edge.runtime.link"))
    assert allowed(("edge.runtime.link", "broker.mqtt")) and not allowed(("edge.runtime.link", "simulators.elevator"))
    # The composers reach inside the stages they may import; nothing but vigil reaches the composers.
    assert allowed(("vigil.runtime", "alerting.service")) and allowed(("scenario.runner", "alerting.lifecycle"))
    assert not allowed(("scenario.runner", "vigil.runtime")) and not allowed(("rules.cli", "scenario.cli"))
    assert allowed(("vigil.plugins", "scenario.cli"))


def test_the_graph_covers_the_real_packages(graph: set[Edge]) -> None:
    # A parser that found nothing would let every rule pass: check imports known to exist.
    assert ("simulators.elevator_box", "edge.elevator.cli") in graph
    assert ("vigil.demo", "edge.elevator.cli") in graph
    assert ("vigil.plugins", "scenario.cli") in graph
    assert {stage(a) for a, _ in graph} >= set(STAGES) - {"broker"}


def test_edge_never_imports_simulators(graph: set[Edge]) -> None:
    bad = sorted(e for e in graph if stage(e[0]) == "edge" and stage(e[1]) == "simulators")
    assert not bad, ("edge imports simulators: a simulator implements edge's interfaces (see "
                     "simulators/elevator_box.py), never the reverse\n" + render(graph, bad))


def test_only_vigil_imports_vigil_and_scenario(graph: set[Edge]) -> None:
    bad = sorted(e for e in graph if stage(e[1]) in ("vigil", "scenario") and stage(e[0]) != "vigil"
                 and e not in KNOWN_VIOLATIONS)
    assert not bad, "only the vigil program may import vigil and the scenario harness\n" + render(graph, bad)


def test_stages_import_only_what_the_layering_allows(graph: set[Edge]) -> None:
    bad = sorted(e for e in graph if stage(e[1]) not in MAY_IMPORT[stage(e[0])] and e not in KNOWN_VIOLATIONS)
    assert not bad, ("new import across stages; talk over MQTT through broker.contracts, or move the shared "
                     "code (docs/architecture.md, 'Boundaries')\n" + render(graph, bad))


def test_stages_import_each_other_only_through_public_modules(graph: set[Edge]) -> None:
    bad = sorted(e for e in graph if not allowed(e) and e not in KNOWN_VIOLATIONS)
    assert not bad, ("import of another stage's internal module; use its public surface (PUBLIC in "
                     f"{Path(__file__).name}) or extend that surface on purpose\n" + render(graph, bad))


def test_no_import_cycle_between_stages(graph: set[Edge]) -> None:
    cycle = find_cycle(e for e in graph if e not in KNOWN_VIOLATIONS)
    assert cycle is None, f"import cycle between stages: {' -> '.join(cycle)}\n" + render(graph)


def test_no_import_cycle_between_modules(modules: set[Edge]) -> None:
    groups = [(members, path) for members, path in module_groups(modules) if members not in KNOWN_MODULE_CYCLES]
    assert not groups, ("import cycle between modules (lazy and TYPE_CHECKING imports count); move the shared "
                        "types into a small module both import, or type the back-reference with a Protocol:\n"
                        + "\n".join(f"  {' -> '.join(path)}   (group: {', '.join(sorted(members))})"
                                     for members, path in groups))


def test_known_violations_only_shrink(graph: set[Edge], modules: set[Edge]) -> None:
    gone = sorted(KNOWN_VIOLATIONS - graph)
    assert not gone, f"fixed, so delete from KNOWN_VIOLATIONS in {Path(__file__).name}: {gone}"
    needless = sorted(e for e in KNOWN_VIOLATIONS if allowed(e))
    assert not needless, f"allowed anyway, so delete from KNOWN_VIOLATIONS: {needless}"
    current = {members for members, _ in module_groups(modules)}
    broken = sorted(sorted(c) for c in KNOWN_MODULE_CYCLES - current)
    assert not broken, f"no longer a cycle (or a different one now), so delete from KNOWN_MODULE_CYCLES: {broken}"
