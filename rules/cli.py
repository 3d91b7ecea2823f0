"""``vigil rules check|test|replay``: tools for rule authors.

The ``vigil`` program wires these with ``add_arguments(subparsers)`` and adds ``scenario`` from the
``scenario`` package (the harness lives outside the rules stage); each sub-command's function
returns the process exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from rules.loader import DEFAULT_TIMEZONE, PACKS_DIR, load_rules, rule_files


def check(paths: list[str], *, timezone: str = DEFAULT_TIMEZONE, out: TextIO | None = None) -> int:
    """Validate rule files and print every error; 0 when all are valid, 1 otherwise."""
    out = out or sys.stdout
    files = rule_files(paths or [PACKS_DIR])
    if not files:
        print("no rule files found", file=out)
        return 1
    result = load_rules(files, timezone)
    for err in result.errors:
        print(err, file=out)
    print(f"{len(result.rules)} rules in {len(files)} files, {len(result.errors)} errors", file=out)
    return 1 if result.errors else 0


def _test_files(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in paths or [str(PACKS_DIR)]:
        path = Path(p)
        if path.is_dir():
            out.extend(sorted(path.glob("*_test.yaml")) + sorted(path.glob("*_test.yml")))
        else:
            out.append(path)
    return out


def test(files: list[str], *, verbose: bool = False, out: TextIO | None = None) -> int:
    """Run rule unit tests; 0 when every test passes, 1 otherwise."""
    from rules.testing import run_test_file

    out = out or sys.stdout
    paths = _test_files(files)
    if not paths:
        print("no rule test files found", file=out)
        return 1
    passed = failed = 0
    for path in paths:
        for outcome in run_test_file(path):
            if outcome.passed:
                passed += 1
                if verbose:
                    print(f"PASS {outcome.file}: {outcome.name}", file=out)
            else:
                failed += 1
                print(f"FAIL {outcome.file}: {outcome.name}", file=out)
                for problem in outcome.problems:
                    print(f"  {problem}", file=out)
    print(f"{passed} passed, {failed} failed", file=out)
    return 1 if failed else 0


def replay(rule_paths: list[str], *, mqtt_file: str | None = None, influx_url: str | None = None,
           influx_db: str = "vigil", since: str | None = None, until: str | None = None,
           registry: str | None = None, devices: list[str] | None = None, kinds: list[str] | None = None,
           tick: float = 1.0, as_json: bool = False, timezone: str = DEFAULT_TIMEZONE,
           out: TextIO | None = None) -> int:
    """Run rules over recorded history and print the alerts that would have fired; 0 on success."""
    from rules.replay import replay_history

    return replay_history(rule_paths, mqtt_file=mqtt_file, influx_url=influx_url, influx_db=influx_db,
                          since=since, until=until, registry=registry, devices=devices, kinds=kinds, tick=tick,
                          as_json=as_json, timezone=timezone, out=out or sys.stdout)


def add_arguments(subparsers: Any) -> Any:
    """Add ``rules`` with its ``check``, ``test`` and ``replay`` sub-commands (each sets ``func``); returns
    the group's sub-parsers so the program can add commands that live elsewhere (``scenario``)."""
    rules_p = subparsers.add_parser("rules", help="check, test and replay alert rules")
    sub = rules_p.add_subparsers(dest="rules_command", required=True)

    p = sub.add_parser("check", help="validate rule files and report all errors")
    p.add_argument("paths", nargs="*", help="rule files or directories (default: the shipped packs)")
    p.add_argument("--timezone", default=DEFAULT_TIMEZONE)
    p.set_defaults(func=lambda a: check(a.paths, timezone=a.timezone))

    p = sub.add_parser("test", help="run rule unit tests (*_test.yaml)")
    p.add_argument("files", nargs="*", help="test files or directories (default: the shipped packs' tests)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=lambda a: test(a.files, verbose=a.verbose))

    p = sub.add_parser("replay", help="run rules over recorded history and print the alerts that would fire")
    p.add_argument("--rules", dest="rule_paths", action="append", default=[],
                   help="rule file or directory (repeatable; default: the shipped packs)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--mqtt-file", help="JSON lines of {topic, payload, ts} recorded from MQTT")
    src.add_argument("--influx-url", help="InfluxDB (v1 HTTP API) URL, e.g. http://127.0.0.1:8086")
    p.add_argument("--influx-db", default="vigil")
    p.add_argument("--since", help="start (RFC 3339), InfluxDB only or to filter a file")
    p.add_argument("--until", help="end (RFC 3339)")
    p.add_argument("--registry", help="device registry YAML (attributes, absence of silent devices)")
    p.add_argument("--device", dest="devices", action="append", help="only these devices (repeatable)")
    p.add_argument("--kind", dest="kinds", action="append", help="only these device kinds (repeatable)")
    p.add_argument("--tick", type=float, default=1.0, help="seconds between engine ticks in recorded time")
    p.add_argument("--json", dest="as_json", action="store_true", help="print transitions as JSON lines")
    p.add_argument("--timezone", default=DEFAULT_TIMEZONE)
    p.set_defaults(func=lambda a: replay(a.rule_paths, mqtt_file=a.mqtt_file, influx_url=a.influx_url,
                                         influx_db=a.influx_db, since=a.since, until=a.until, registry=a.registry,
                                         devices=a.devices, kinds=a.kinds, tick=a.tick, as_json=a.as_json,
                                         timezone=a.timezone))
    return sub


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m rules.cli check ...``."""
    parser = argparse.ArgumentParser(prog="vigil")
    add_arguments(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["rules", *(argv if argv is not None else sys.argv[1:])])
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    raise SystemExit(main())
