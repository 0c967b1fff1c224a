"""A sync through a transaction-mode pooler (Debian's PgBouncer, set up like Supabase's: libpq startup options
ignored, server connections shared between transactions) writes to its own schema, never to `public`."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from dagrun import run_dag
from test_intra42_users import actual_table, expected_table

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
pytestmark = pytest.mark.skipif(not os.path.exists(PGBOUNCER), reason="pgbouncer is not installed (scripts/test does)")


@contextlib.contextmanager
def pgbouncer(server_url: str):
    """PgBouncer in pool_mode=transaction in front of `server_url`, two server connections for every client;
    yields its URL. As root it runs as `postgres` (it refuses to run as root)."""
    from tools.embedded_pg import free_port

    server, port = urlsplit(server_url), free_port()
    home = Path(tempfile.mkdtemp(prefix="usersync-pgbouncer-"))
    os.chmod(home, 0o777)
    (home / "users.txt").write_text(f'"{server.username}" ""\n')
    (home / "pgbouncer.ini").write_text(f"""
[databases]
{server.path.lstrip("/")} = host={server.hostname} port={server.port} user={server.username}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {home}/users.txt
pool_mode = transaction
default_pool_size = 2
max_client_conn = 200
; as Supavisor does: startup `options` (search_path, jit, work_mem) are dropped, not refused
ignore_startup_parameters = extra_float_digits, options
logfile = {home}/pgbouncer.log
""")
    command = [PGBOUNCER, str(home / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert process.poll() is None and time.monotonic() < deadline, (home / "pgbouncer.log").read_text()
            time.sleep(0.1)
        yield f"postgres://{server.username}@127.0.0.1:{port}{server.path}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def pooled(pg, airflow_db, monkeypatch):
    """AIRFLOW_CONN_INTRA42_DB through PgBouncer (transaction mode)."""
    with pgbouncer(pg.url) as url:
        monkeypatch.setenv("AIRFLOW_CONN_INTRA42_DB", url)
        yield url


def public_tables(sql) -> set[str]:
    return {name for (name,) in sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def test_intra42_users_through_a_transaction_pooler_writes_to_its_schema(intra42_sandbox, pooled, sql):
    intra42_sandbox.control("reset")
    sql("DROP SCHEMA IF EXISTS intra42 CASCADE")  # the DAG creates everything, through the pooler
    public_before = public_tables(sql)

    for _ in range(2):  # a full load, then an incremental run that reads its watermark through the pooler
        run, states = run_dag("intra42_users")
        assert set(states.values()) == {"success"}, states

    assert actual_table(sql) == expected_table(intra42_sandbox)
    assert {name for (name,) in sql("SELECT tablename FROM pg_tables WHERE schemaname = 'intra42'")} >= {
        "users",
        "users_delta",
        "sync_runs",
        "quarantine",
    }
    assert public_tables(sql) == public_before
    assert [status for (status,) in sql("SELECT status FROM intra42.sync_runs ORDER BY id")] == ["success"] * 2


def test_a_server_side_cursor_streams_through_the_pooler(pooled, tmp_path, monkeypatch):
    from usersync.db import TargetDb

    (tmp_path / "pooled").mkdir()
    (tmp_path / "pooled" / "numbers.sql").write_text("SELECT n FROM generate_series(1, 25) AS n ORDER BY n")
    monkeypatch.setattr("usersync.db.SQL_DIR", tmp_path)
    db = TargetDb("intra42_db", "intra42", sync="pooled")
    assert [n for (n,) in db.stream("numbers", batch=4)] == list(range(1, 26))
