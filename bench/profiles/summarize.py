"""Summarise a py-spy ``--format raw`` (collapsed stacks) profile: self and inclusive time per function.

Run: .venv/bin/python bench/profiles/summarize.py bench/profiles/NAME/drain.collapsed.txt [--top 40]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

_LINE = re.compile(r"^(.*) (\d+)$")


def frame_name(frame: str) -> str:
    """``func (path/file.py:line)`` -> ``func (file.py)`` so lines of one function add up."""
    m = re.match(r"^(.*?) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    func, path = m.groups()
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{func} ({short})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = idle = 0
    with open(args.path) as fh:
        for line in fh:
            m = _LINE.match(line.rstrip("\n"))
            if not m:
                continue
            stack, n = m.group(1), int(m.group(2))
            frames = [frame_name(f) for f in stack.split(";")]
            if any(f.startswith(("select (", "_run_once (selectors")) for f in frames[-1:]):
                idle += n
            total += n
            own[frames[-1]] += n
            for f in set(frames):
                incl[f] += n
    busy = total - idle
    print(f"samples: {total} (idle in select: {idle}; busy: {busy})")
    print(f"\n== self time (share of busy samples), top {args.top}")
    for name, n in own.most_common(args.top):
        print(f"{n / max(busy, 1) * 100:6.1f}%  {name}")
    print(f"\n== inclusive time (share of busy samples), top {args.top}")
    for name, n in incl.most_common(args.top):
        print(f"{n / max(busy, 1) * 100:6.1f}%  {name}")


if __name__ == "__main__":
    main()
