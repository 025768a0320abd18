"""`python -m bench SCENARIO [args]`: run one benchmark scenario (from the checkout's root).
`python -m bench --help` lists them; `python -m bench SCENARIO --help` describes one."""

from __future__ import annotations

import importlib
import sys

from bench.scenarios import names


def usage() -> str:
    lines = [__doc__ or "", "scenarios:"]
    for name in names():
        doc = importlib.import_module(f"bench.scenarios.{name}").__doc__ or ""
        lines.append(f"  {name:<13} {doc.strip().splitlines()[0] if doc.strip() else ''}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name = argv[0].replace("-", "_")
    if name not in names():
        print(f"unknown scenario {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    importlib.import_module(f"bench.scenarios.{name}").main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
