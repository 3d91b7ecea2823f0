"""``vigil rules scenario``: run scenario files through the real gateways, rules and alerting.

The command sits among the rule authors' tools (``vigil rules ...``), but lives here because the
rules stage must not import the harness; ``vigil.plugins`` adds it to the ``rules`` group.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from scenario.runner import ScenarioResult


def scenario(files: list[str], *, verbose: bool = False, coverage: bool = False, record: str | None = None,
             out: TextIO | None = None) -> int:
    """Run scenario files (default: the shipped ones); 0 when every scenario passes (and, with
    ``coverage``, every shipped rule has a verified firing and quiet scenario), 1 otherwise."""
    # Imported here: every `vigil` command builds this parser, and the runner pulls in rules and alerting.
    from scenario.coverage import coverage_report, scenario_files
    from scenario.runner import format_result, run_scenario_file

    out = out or sys.stdout
    paths = scenario_files(files)
    if not paths:
        print("no scenario files found", file=out)
        return 1
    results: list[ScenarioResult] = []
    recorded: list[tuple[float, str, bytes]] | None = [] if record else None
    for path in paths:
        result = run_scenario_file(path, recorded)
        results.append(result)
        for line in format_result(result, verbose):
            print(line, file=out)
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed} passed, {failed} failed", file=out)
    if record and recorded is not None:
        # The input of `vigil rules replay --mqtt-file`: what the broker delivered, when.
        with open(record, "w", encoding="utf-8") as handle:
            for ts, topic, payload in recorded:
                handle.write(json.dumps({"topic": topic, "payload": payload.decode("utf-8", "replace"), "ts": ts},
                                        ensure_ascii=False) + "\n")
        print(f"{len(recorded)} delivered messages written to {record}", file=out)
    if coverage:
        report = coverage_report(results)
        for line in report.table():
            print(line, file=out)
        missing = report.missing()
        print(f"{len(missing)} shipped rules lack a verified firing or quiet scenario", file=out)
        if missing:
            return 1
    return 1 if failed else 0


def add_arguments(rules_sub: Any) -> None:
    """Add ``scenario`` to the ``rules`` group's sub-commands (``rules.cli.add_arguments`` returns them)."""
    p = rules_sub.add_parser("scenario", help="run scenario files: device input through the gateways to alerts")
    p.add_argument("files", nargs="*", help="scenario files or directories (default: the shipped scenarios)")
    p.add_argument("-v", "--verbose", action="store_true", help="show expected and actual alerts of passing ones too")
    p.add_argument("--coverage", action="store_true",
                   help="also list every shipped rule's verified firing/quiet scenarios; fail if one lacks either")
    p.add_argument("--record", metavar="FILE",
                   help="write the messages the platform received as JSON lines for `vigil rules replay --mqtt-file`")
    p.set_defaults(func=lambda a: scenario(a.files, verbose=a.verbose, coverage=a.coverage, record=a.record))


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m scenario.cli [FILES] [--coverage]``."""
    parser = argparse.ArgumentParser(prog="vigil rules")
    add_arguments(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["scenario", *(argv if argv is not None else sys.argv[1:])])
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    raise SystemExit(main())
