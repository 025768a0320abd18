"""Headless Chromium for the browser suites (Debian's package, driven by playwright-core from
tests/browser/node_modules): the skip when it is missing, the npm install, the screenshots."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BROWSER_DIR = ROOT / "tests" / "browser"  # the node scripts and their node_modules
CHROMIUM = Path("/usr/bin/chromium")


def require_chromium() -> None:
    """Called at the top of a browser test module: skips it without Chromium or node (fails
    in CI, which must install them)."""
    if not CHROMIUM.exists() or shutil.which("node") is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI must install chromium (apt-get install chromium) and node")
        pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)


def node_modules() -> None:
    if not (BROWSER_DIR / "node_modules" / "playwright-core").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=BROWSER_DIR, check=True)


def keep_screenshot(shot: Path, name: str) -> None:
    """`PUSHWIRE_SCREENSHOTS=1 make test` refreshes the screenshots in docs/."""
    if os.environ.get("PUSHWIRE_SCREENSHOTS"):
        shutil.copy(shot, ROOT / "docs" / name)
