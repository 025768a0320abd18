"""Which package may import which: the app layer (`pushwire/apps/`) is below the server's
composition root and never imports it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pushwire"


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules `path` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{alias.name}" for alias in node.names)
    return out


def test_imported_modules_resolves_relative_imports():
    found = imported_modules(PACKAGE / "apps" / "registry.py")
    assert "pushwire.apps.index" in found and "pushwire.tables" in found


def test_the_app_layer_does_not_import_the_server():
    offenders = {
        str(path.relative_to(PACKAGE.parent)): sorted(
            m
            for m in imported_modules(path)
            if m == "pushwire.server" or m.startswith("pushwire.server.")
        )
        for path in sorted((PACKAGE / "apps").glob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}
