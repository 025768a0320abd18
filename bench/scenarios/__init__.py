"""The benchmark scenarios, one module each, run by `python -m bench NAME [args]`. Each has a
module docstring (its first line is its summary in `python -m bench --help`) and
`main(argv)`."""

from __future__ import annotations

import argparse
import pkgutil


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
