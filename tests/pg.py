"""A throwaway PostgreSQL server for the tests, like `start_redis()` in tests/conftest.py.

`start_postgres()` runs `initdb` in a temporary directory and `postgres` on a free port of
127.0.0.1 (its unix socket in the same directory), tuned for speed (no fsync). PostgreSQL
refuses to run as root: as root, initdb and postgres run as the `postgres` system user and
the directory belongs to it; otherwise they run as the current user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import TIMEOUT, free_port

PG_USER = "postgres"  # the system user initdb/postgres run as when the tests run as root


def _bindir() -> Path:
    initdb = shutil.which("initdb")
    if initdb is not None:
        real = Path(initdb).resolve().parent
        if (real / "postgres").exists():
            return real
        if shutil.which("postgres"):
            return Path(initdb).parent

    def version(initdb: str) -> int:  # /usr/lib/postgresql/<version>/bin/initdb
        name = Path(initdb).parent.parent.name
        return int(name) if name.isdigit() else 0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    raise RuntimeError(
        "PostgreSQL is needed for the app store tests: no initdb on PATH nor under "
        "/usr/lib/postgresql/*/bin (apt-get install postgresql)"
    )


def _run_as() -> dict[str, Any]:
    """Popen arguments that drop root to the postgres user (nothing when not root)."""
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam(PG_USER)
    except KeyError:
        raise RuntimeError(
            f"the tests run as root but there is no {PG_USER!r} user to run PostgreSQL as "
            "(it comes with the postgresql package)"
        ) from None
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(HOME=str(root), LC_ALL="C", LANG="C")
    return env


@dataclass
class Postgres:
    root: Path  # temporary directory: data/, the unix socket, postgres.log
    port: int
    bindir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        return self.root / "postgres.log"

    def dsn_for(self, dbname: str) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{dbname}"

    @property
    def dsn(self) -> str:
        """The server's `postgres` database (create test databases from it)."""
        return self.dsn_for("postgres")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def start(self) -> None:
        import psycopg  # here: the other tests need not have it

        if self.running:
            return
        cmd = [
            str(self.bindir / "postgres"),
            "-D", str(self.data),
            "-p", str(self.port),
            "-k", str(self.root),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            "-c", "max_connections=50",
            "-c", "shared_buffers=16MB",
            "-c", "max_wal_size=64MB",
            "-c", "log_min_messages=warning",
            "-c", "log_min_error_statement=panic",
        ]  # fmt: skip
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=_env(self.root),
                start_new_session=True,  # a ^C in the terminal does not reach it
                **_run_as(),
            )
        deadline = time.monotonic() + 3 * TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited at start:\n{self.log_tail()}")
            try:
                psycopg.connect(self.dsn, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"postgres did not start:\n{self.log_tail()}")

    def stop(self) -> None:
        """Fast shutdown: clients are disconnected at once, as in a database outage."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # fast shutdown (SIGTERM would wait for clients)
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGQUIT)  # immediate shutdown
            try:
                proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> Postgres:
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="pushwire-pg-"))
    run_as = _run_as()
    if run_as:
        os.chown(root, run_as["user"], run_as["group"])
    os.chmod(root, 0o700)
    pg = Postgres(root=root, port=free_port(), bindir=bindir)
    try:
        done = subprocess.run(
            [
                str(bindir / "initdb"),
                f"--pgdata={pg.data}",
                f"--username={PG_USER}",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=root,
            env=_env(root),
            timeout=6 * TIMEOUT,
            check=False,
            **run_as,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{done.stdout.decode(errors='replace')[-3000:]}")
        pg.start()
    except BaseException:
        pg.close()
        raise
    return pg
