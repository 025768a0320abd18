"""The benchmark scenarios, one module each, run by `python -m bench NAME [args]`. Each has a
module docstring (its first line is its summary in `python -m bench --help`) and
`main(argv)`."""

from __future__ import annotations

import argparse
import pkgutil
from collections.abc import Mapping
from typing import Any


def names() -> list[str]:
    """Every scenario, by module name."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The argument parser of scenario `module` (its __name__), its docstring as help."""
    name = module.rsplit(".", 1)[-1]
    return argparse.ArgumentParser(
        prog=f"python -m bench {name}",
        description=doc,
        formatter_class=argparse.RawTextHelpFormatter,
    )


def parse(
    ap: argparse.ArgumentParser, argv: list[str] | None, quick: Mapping[str, Any]
) -> argparse.Namespace:
    """`ap`'s arguments from `argv`, with `--quick` (a small run to check the tools): the
    values of `quick` for every option left at its default."""
    small = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in quick.items())
    ap.add_argument("--quick", action="store_true", help=f"a small run: {small}")
    args = ap.parse_args(argv)
    if args.quick:
        for k, v in quick.items():
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, v)
    return args
