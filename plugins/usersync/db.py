"""The target database of one sync: a Postgres connection, the sync's schema, its SQL files."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from airflow.providers.postgres.hooks.postgres import PostgresHook

log = logging.getLogger(__name__)

SQL_DIR = Path(os.environ.get("USERSYNC_SQL_DIR", Path(__file__).resolve().parents[2] / "include" / "sql"))


def session_settings(schema: str) -> str:
    """The statement that starts every transaction a sync runs: its settings, local to the transaction.

    Set per transaction, not as libpq startup options, because transaction-mode poolers (PgBouncer,
    Supabase's Supavisor) hand each transaction to any server connection and ignore or refuse those options.
    search_path: the sync's schema only, so SQL files name tables without a schema.
    jit off: the staging tables are fresh (no statistics), so the planner over-estimates them and JIT-compiles
             one-shot statements for more time than it saves.
    work_mem: room for the de-duplicating sort of a whole batch without spilling to disk.
    """
    return (
        f"SELECT set_config('search_path', '{schema}', true), set_config('jit', 'off', true), "
        "set_config('work_mem', '64MB', true)"
    )


class TargetDb:
    """`books`: the schema of this database holding the sync's runs and quarantine (usersync.sink.Bookkeeping),
    when not `schema` itself. In this database: the stage writes its quarantine in its own statement."""

    def __init__(self, conn_id: str, schema: str, sync: str, books: str | None = None):
        self.conn_id, self.schema, self.sync, self.books = conn_id, schema, sync, books or schema

    def _sql_path(self, name: str) -> Path | None:
        """include/sql/<sync>/<name>.sql, else include/sql/common/<name>.sql."""
        for folder in (self.sync, "common"):
            path = SQL_DIR / folder / f"{name}.sql"
            if path.exists():
                return path
        return None

    def has_sql(self, name: str) -> bool:
        return self._sql_path(name) is not None

    def sql(self, name: str) -> str:
        path = self._sql_path(name)
        if path is None:
            raise FileNotFoundError(f"no {name}.sql in {SQL_DIR / self.sync} or {SQL_DIR / 'common'}")
        return path.read_text()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        conn = PostgresHook(postgres_conn_id=self.conn_id).get_conn()
        conn.prepare_threshold = None  # no server-side prepared statements: a pooler may switch server connection
        try:
            with conn.cursor() as cur:
                cur.execute(session_settings(self.schema))
                yield cur
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()

    def run(self, cur: Any, name: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Execute a named statement; return its first row as a dict (None if it returns nothing)."""
        cur.execute(self.sql(name), params)
        if cur.description is None:
            return None
        row = cur.fetchone()
        return None if row is None else dict(zip([c.name for c in cur.description], row, strict=True))

    def stream(self, name: str, params: dict[str, Any] | None = None, batch: int = 10_000) -> Iterator[tuple]:
        """The rows of a named query, read through a server-side cursor: memory stays flat however many."""
        with self.transaction() as cur, cur.connection.cursor(name=f"usersync_{name}") as rows:
            rows.itersize = batch
            rows.execute(self.sql(name), params)
            yield from rows

    def query(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        with self.transaction() as cur:
            return self.run(cur, name, params)
