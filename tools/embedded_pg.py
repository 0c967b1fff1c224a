"""A throw-away PostgreSQL cluster owned by the project (tests, demo, benchmarks).

initdb refuses to run as root, so as root every server command runs as the `postgres` system user.
The cluster listens on 127.0.0.1 only, with trust auth: it is a local sandbox, never a real database.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PG_BIN = Path(os.environ.get("USERSYNC_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = "usersync"
DATABASE = "usersync"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def reachable_by_owner(path: Path) -> bool:
    """Can the server's user reach `path`? (As root the server runs as `postgres`, who may not.)"""
    if os.geteuid() != 0:
        return True
    return subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(path)], check=False).returncode == 0


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    def start(self, fast: bool = False) -> EmbeddedPostgres:
        """initdb (first time only) and start; `fast` trades durability for speed (tests)."""
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        settings = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories=''"
        if fast:
            settings += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        log = self.data_dir.parent / f"{self.data_dir.name}.log"
        subprocess.run(
            _as_owner(
                [
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(log),
                    "-o",
                    settings,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )
        self._create_database()
        return self

    def stop(self) -> None:
        subprocess.run(
            _as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"]),
            check=False,
            capture_output=True,
        )

    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.data_dir, "postgres", "postgres")
            shutil.chown(self.data_dir.parent, "postgres", "postgres")
        subprocess.run(
            _as_owner(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ]
            ),
            check=True,
            capture_output=True,
        )

    def _create_database(self) -> None:
        import psycopg

        url = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(url, autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
                conn.execute(f'CREATE DATABASE "{DATABASE}"')


@contextlib.contextmanager
def running(data_dir: Path, fast: bool = True):
    """Start a fresh cluster in data_dir (or, when the server's user cannot reach the project, in a
    temporary folder) on a free port; stop it on exit."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    fallback = None
    if not reachable_by_owner(data_dir.parent.parent):
        fallback = Path(tempfile.mkdtemp(prefix="usersync-pg-"))
        os.chmod(fallback, 0o755)
        data_dir = fallback / data_dir.name
    pg = EmbeddedPostgres(data_dir, free_port()).start(fast=fast)
    try:
        yield pg
    finally:
        pg.stop()
        if fallback:
            shutil.rmtree(fallback, ignore_errors=True)


if __name__ == "__main__":
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server on kill too

    with running(Path(sys.argv[1] if len(sys.argv) > 1 else ".pgdata/manual")) as pg:
        print(pg.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
