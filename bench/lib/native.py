"""The benchmarks' C programs (bench/loadgen, bench/floor), built with gcc -O2 on first use
into their git-ignored build/ folders."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from bench.lib import ROOT

LOADGEN_SRC = ROOT / "bench" / "loadgen" / "loadgen.c"
LOADGEN_BIN = ROOT / "bench" / "loadgen" / "build" / "loadgen"
FLOOR_SRC = ROOT / "bench" / "floor" / "floor.c"
FLOOR_BIN = ROOT / "bench" / "floor" / "build" / "floor"
URING_HEADER = Path("/usr/include/liburing.h")  # Debian's liburing-dev


def build_c(src: Path, binary: Path, flags: list[str] | None = None) -> Path:
    """Compile src into binary unless the binary is newer than the source; `-l` flags go
    after the source, the others before it."""
    if binary.exists() and binary.stat().st_mtime >= src.stat().st_mtime:
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    cc = shutil.which("gcc") or shutil.which("cc") or "gcc"
    tmp = binary.with_suffix(f".{os.getpid()}.tmp")
    flags = flags or []
    libs = [f for f in flags if f.startswith("-l")]
    defs = [f for f in flags if not f.startswith("-l")]
    subprocess.run([cc, "-O2", "-Wall", *defs, "-o", str(tmp), str(src), *libs], check=True)
    tmp.replace(binary)
    return binary
