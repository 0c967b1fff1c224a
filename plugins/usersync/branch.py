"""Skip a sync when its target table already has rows, unless forced."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from airflow.sdk import task
from psycopg import sql

from usersync.db import TargetDb


def table_has_rows(db: TargetDb, table: str) -> bool:
    with db.transaction() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{db.schema}.{table}",))
        if not cur.fetchone()[0]:
            return False
        cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(db.schema, table)))
        return cur.fetchone()[0]


def branch_unless_populated(
    db: TargetDb,
    table: str,
    *,
    sync_task_id: str,
    skip_task_id: str,
    force_param: str = "force",
    force_if: Callable[[dict[str, Any]], bool] | None = None,
    task_id: str | None = None,
):
    """A branch task: follow `sync_task_id` when `table` is empty or missing, when the `force_param` param is
    set, or when `force_if(context)` says so; otherwise follow `skip_task_id`."""

    @task.branch(task_id=task_id or f"sync_{table}_or_skip")
    def decide(**context: Any) -> str:
        forced = bool(context["params"].get(force_param)) or bool(force_if and force_if(context))
        if forced:
            return sync_task_id
        return skip_task_id if table_has_rows(db, table) else sync_task_id

    return decide()
