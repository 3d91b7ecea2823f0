"""One exception base per package (broker/errors.py): every exception class a package defines derives
from its package's base, and every base from ``broker.errors.VigilError``.

Imports every module of the packages (``__main__`` modules excepted: they run on import) and checks
the classes defined there, nested ones included.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.errors import VigilError

ROOT = Path(__file__).resolve().parents[2]
BASES = {
    "broker": "broker.errors.BrokerError",
    "edge": "edge.errors.EdgeError",
    "rules": "rules.errors.RulesError",
    "alerting": "alerting.errors.AlertingError",
    "storage": "storage.errors.StorageError",
    "simulators": "simulators.errors.SimulatorError",
    "console": "console.errors.ConsoleError",
    "scenario": "scenario.errors.ScenarioError",
    "vigil": "vigil.errors.ProgramError",
}


def base_of(package: str) -> type[BaseException]:
    module, _, name = BASES[package].rpartition(".")
    base = getattr(importlib.import_module(module), name)
    assert isinstance(base, type) and issubclass(base, BaseException)
    return base


def modules(package: str) -> list[str]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts.pop()
        out.append(".".join(parts))
    return out


def exception_classes(module: object) -> Iterator[type[BaseException]]:
    """Exception classes defined in ``module`` (not imported into it), nested classes included."""
    name = getattr(module, "__name__", "")
    todo = [obj for obj in vars(module).values() if inspect.isclass(obj)]
    while todo:
        cls = todo.pop()
        if cls.__module__ != name:
            continue
        if issubclass(cls, BaseException):
            yield cls
        todo.extend(obj for obj in vars(cls).values() if inspect.isclass(obj))


@pytest.mark.parametrize("package", sorted(BASES))
def test_every_exception_derives_from_its_package_base(package: str) -> None:
    base = base_of(package)
    assert issubclass(base, VigilError) or base is VigilError
    found, bad = [], []
    for name in modules(package):
        for cls in exception_classes(importlib.import_module(name)):
            found.append(cls)
            if cls is not VigilError and not issubclass(cls, base):  # the root sits beside broker's base
                bad.append(f"{name}.{cls.__qualname__}{tuple(b.__name__ for b in cls.__bases__)}")
    assert found, f"no exception class found in {package}: the walk found nothing"
    assert not bad, f"derive these from {BASES[package]} (keep ValueError etc. as a second base):\n  " + "\n  ".join(bad)


def test_the_walk_sees_nested_and_second_base_classes() -> None:
    import types

    module = types.ModuleType("probe")

    class Outer:
        class Inner(ValueError):
            pass

    class Plain(KeyError):
        pass

    for cls in (Outer, Outer.Inner, Plain):
        cls.__module__ = "probe"
    module.Outer = Outer  # type: ignore[attr-defined]
    module.Plain = Plain  # type: ignore[attr-defined]
    module.Imported = VigilError  # type: ignore[attr-defined]
    assert sorted(c.__name__ for c in exception_classes(module)) == ["Inner", "Plain"]
