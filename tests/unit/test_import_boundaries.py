"""Import boundaries between the stage packages, read from the source with ``ast`` (docs/architecture.md, "Boundaries").

Every import counts: at module level, inside functions, under ``TYPE_CHECKING``, relative ones, and
``importlib.import_module("literal")`` / ``__import__("literal")``. The rules:

1. ``edge`` never imports ``simulators`` (simulators implement edge's interfaces, never the reverse).
2. Nothing imports ``vigil`` except ``vigil`` itself (it is the program that wires the stages).
3. A stage imports, of the other stages, only what ``MAY_IMPORT`` says: ``broker`` (the contracts and
   the MQTT layer) for every stage, plus ``edge`` for ``simulators``; ``vigil`` may import every stage.
4. No import cycle between the stage packages.

Imports that still break a rule and that another step must remove are listed, pair by pair, in
``KNOWN_VIOLATIONS``. A new violation fails; so does a listed pair that no longer exists (delete it:
the list only shrinks).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("broker", "edge", "rules", "alerting", "storage", "simulators", "console", "vigil")

MAY_IMPORT: dict[str, frozenset[str]] = {
    "broker": frozenset(),
    "edge": frozenset({"broker"}),
    "rules": frozenset({"broker"}),
    "alerting": frozenset({"broker"}),
    "storage": frozenset({"broker"}),
    "console": frozenset({"broker"}),
    "simulators": frozenset({"broker", "edge"}),
    "vigil": frozenset(STAGES),
}

Edge = tuple[str, str]

KNOWN_VIOLATIONS: frozenset[Edge] = frozenset({
    # The console lives beside alerting in the platform process and still reaches into its internals
    # (store, desk, service, ...) instead of going through alerting's API; to be replaced by that API.
    ("console.auth", "alerting.access"),
    ("console.auth", "alerting.config"),
    ("console.board", "alerting.lifecycle"),
    ("console.fieldwork", "alerting.api"),
    ("console.fieldwork", "alerting.desk"),
    ("console.fieldwork", "alerting.workorders.desk"),
    ("console.params", "alerting.api"),
    ("console.service", "alerting.api"),
    ("console.service", "alerting.desk"),
    ("console.service", "alerting.evidence"),
    ("console.service", "alerting.figures"),
    ("console.service", "alerting.lifecycle"),
    ("console.service", "alerting.roster"),
    ("console.service", "alerting.service"),
    ("console.testing", "alerting.inbox"),
    ("console.web", "alerting.api"),
    ("console.web", "alerting.desk"),
    ("console.web", "alerting.evidence"),
    ("console.web", "alerting.vehicle_commands"),
    # The console's history page and the rules replay read InfluxDB through storage's query layer;
    # a read API of storage's own (or a shared query module) should serve them.
    ("console.history", "storage.query"),
    ("rules.replay", "storage.query"),
    # The console's test harness starts a whole platform; it belongs with the tests or in vigil.
    ("console.testing", "vigil.config"),
    ("console.testing", "vigil.runtime"),
    # The scenario runner is a test harness that drives devices, gateways, rules and alerting in one
    # process; it should move out of the rules stage (e.g. its own package beside vigil).
    ("rules.scenario.camera", "edge.camera.analyzer"),
    ("rules.scenario.camera", "edge.camera.config"),
    ("rules.scenario.camera", "edge.camera.runner"),
    ("rules.scenario.camera", "edge.camera_agent"),
    ("rules.scenario.camera", "simulators.camera_scenes"),
    ("rules.scenario.devices", "edge.elevator.agent"),
    ("rules.scenario.devices", "edge.elevator.detectors"),
    ("rules.scenario.devices", "edge.elevator.monitor"),
    ("rules.scenario.devices", "edge.elevator.signals"),
    ("rules.scenario.devices", "simulators.elevator"),
    ("rules.scenario.devices", "simulators.elevator_box"),
    ("rules.scenario.gateways", "edge.hj212.__main__"),
    ("rules.scenario.gateways", "edge.hj212.codec"),
    ("rules.scenario.gateways", "edge.hj212.gateway"),
    ("rules.scenario.gateways", "edge.hj212.session"),
    ("rules.scenario.gateways", "edge.jt808.codec"),
    ("rules.scenario.gateways", "edge.jt808.commands"),
    ("rules.scenario.gateways", "edge.jt808.messages"),
    ("rules.scenario.gateways", "edge.jt808.registry"),
    ("rules.scenario.gateways", "edge.jt808.session"),
    ("rules.scenario.gateways", "simulators.jt808_terminal"),
    ("rules.scenario.gateways", "edge.jt808.alarms"),
    ("rules.scenario.devices", "edge.open_events"),
    ("rules.scenario.modbus_adapter", "edge.modbus.gateway"),
    ("rules.scenario.modbus_adapter", "edge.modbus.poller"),
    ("rules.scenario.modbus_adapter", "edge.modbus.tagmap"),
    ("rules.scenario.runner", "alerting.config"),
    ("rules.scenario.runner", "alerting.lifecycle"),
})


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


def import_graph(root: Path, packages: Iterable[str] = STAGES) -> set[Edge]:
    """(importer module, imported module) for every import between modules of different packages."""
    packages = tuple(packages)
    known = package_modules(root, packages)
    edges: set[Edge] = set()
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name in _imported_names(tree, module, path.name == "__init__.py", known):
            target = name
            while target and target not in known:  # ``pkg.mod.Class`` -> ``pkg.mod``
                target = target.rpartition(".")[0]
            if target and stage(target) in packages and stage(target) != stage(module):
                edges.add((module, target))
    return edges


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
        allowed = b in MAY_IMPORT[a]
        lines.append(f"  {a} -> {b}: {len(pairs)} import(s){'' if allowed else ' [outside MAY_IMPORT]'}")
        if not allowed or any(p in bad for p in pairs):
            for p in pairs:
                mark = "!!" if p in bad else "(known)" if p in KNOWN_VIOLATIONS else ""
                lines.append(f"      {mark:8}{p[0]} -> {p[1]}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def graph() -> set[Edge]:
    return import_graph(ROOT)


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


def test_the_graph_covers_the_real_packages(graph: set[Edge]) -> None:
    # A parser that found nothing would let every rule pass: check imports known to exist.
    assert ("simulators.elevator_box", "edge.elevator.cli") in graph
    assert ("vigil.demo", "edge.elevator.cli") in graph
    assert {stage(a) for a, _ in graph} >= set(STAGES) - {"broker"}


def test_edge_never_imports_simulators(graph: set[Edge]) -> None:
    bad = sorted(e for e in graph if stage(e[0]) == "edge" and stage(e[1]) == "simulators")
    assert not bad, ("edge imports simulators: a simulator implements edge's interfaces (see "
                     "simulators/elevator_box.py), never the reverse\n" + render(graph, bad))


def test_only_vigil_imports_vigil(graph: set[Edge]) -> None:
    bad = sorted(e for e in graph if stage(e[1]) == "vigil" and e not in KNOWN_VIOLATIONS)
    assert not bad, "only the vigil program may import vigil\n" + render(graph, bad)


def test_stages_import_only_what_the_layering_allows(graph: set[Edge]) -> None:
    bad = sorted(e for e in graph if stage(e[1]) not in MAY_IMPORT[stage(e[0])] and e not in KNOWN_VIOLATIONS)
    assert not bad, ("new import across stages; talk over MQTT through broker.contracts, or move the shared "
                     "code (docs/architecture.md, 'Boundaries')\n" + render(graph, bad))


def test_no_import_cycle_between_stages(graph: set[Edge]) -> None:
    cycle = find_cycle(e for e in graph if e not in KNOWN_VIOLATIONS)
    assert cycle is None, f"import cycle between stages: {' -> '.join(cycle)}\n" + render(graph)


def test_known_violations_only_shrink(graph: set[Edge]) -> None:
    gone = sorted(KNOWN_VIOLATIONS - graph)
    assert not gone, f"fixed, so delete from KNOWN_VIOLATIONS in {Path(__file__).name}: {gone}"
    needless = sorted(e for e in KNOWN_VIOLATIONS if stage(e[1]) in MAY_IMPORT[stage(e[0])])
    assert not needless, f"allowed anyway, so delete from KNOWN_VIOLATIONS: {needless}"
