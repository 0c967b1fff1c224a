"""What every sync DAG shares: its default task settings, the API sensor, the table-creating task."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator
from airflow.providers.http.sensors.http import HttpSensor
from airflow.sdk import Asset

from usersync.api import RETRYABLE_STATUS, SENSOR_HEADERS
from usersync.db import TargetDb, session_settings
from usersync.report import RunFailed

DEFAULT_ARGS = {
    "owner": "usersync",
    "retries": 3,  # on top of the HTTP client's own retries
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=30),
}
COMMON_TABLES = ("common/create_schema.sql", "common/create_sync_runs.sql", "common/create_sync_runs_columns.sql",
                 "common/create_sync_runs_index.sql", "common/create_sync_runs_dedup.sql",
                 "common/create_sync_runs_run_idx.sql", "common/create_quarantine.sql",
                 "common/create_quarantine_index.sql")
NOT_YET = {404, 429, *RETRYABLE_STATUS}  # the API is starting, overloaded or down: poke again


def default_args(db: TargetDb) -> dict[str, Any]:
    """DEFAULT_ARGS, plus: a task that fails for good records the failure in the sync's sync_runs (and notifies)."""
    return {**DEFAULT_ARGS, "on_failure_callback": RunFailed(db)}


def table_asset(db: TargetDb, table: str) -> Asset:
    """The Airflow Asset of a table a sync writes, `usersync://<db connection id>/<schema>/<table>`: named after
    the connection, not its host, so that parsing the DAG needs no connection. A downstream DAG schedules on
    it with `schedule=[Asset("usersync://intra42_db/intra42/users")]`."""
    return Asset(uri=f"usersync://{db.conn_id}/{db.schema}/{table}", group="usersync")


def _without_credentials(request):
    return request  # as requests' `auth`: replaces the basic auth HttpHook builds from login/password


def api_sensor(conn_id: str, endpoint: str, *, up: Sequence[int] = (200,), method: str = "GET",
               send_login: bool = False, **kwargs: Any) -> HttpSensor:
    """Wait until the API answers one of the `up` statuses; another answer (e.g. refused credentials) fails.

    The connection's login/password go along (as basic auth) only with `send_login`, for a token endpoint
    that takes them that way.
    """

    def check(response) -> bool:
        if response.status_code in up:
            return True
        if response.status_code in NOT_YET:
            return False
        raise ValueError(f"{method} {endpoint} answered {response.status_code}: {response.text[:200]}")

    return HttpSensor(
        task_id="api_available", http_conn_id=conn_id, method=method, endpoint=endpoint.lstrip("/"),
        headers=SENSOR_HEADERS, extra_options={"check_response": False}, response_check=check,
        request_kwargs=None if send_login else {"auth": _without_credentials},
        poke_interval=30, timeout=600, exponential_backoff=True, **kwargs,
    )


def create_tables(conn_id: str, schema: str, sync: str, statements: Sequence[str]) -> SQLExecuteQueryOperator:
    """The schema, sync_runs and quarantine, then the sync's own statements (include/sql/<sync>/<name>.sql), in
    order; all idempotent."""
    # One transaction (the operator commits once at the end), opened with the sync's settings.
    return SQLExecuteQueryOperator(task_id="create_tables", conn_id=conn_id, sql=[
        session_settings(schema), *COMMON_TABLES, *(f"{sync}/{name}.sql" for name in statements)])
