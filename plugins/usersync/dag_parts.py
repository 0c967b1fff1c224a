"""What every sync DAG shares: its default task settings, the API sensor, the table-creating task."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator
from airflow.providers.http.sensors.http import HttpSensor
from airflow.sdk import Asset, task
from airflow.sdk.exceptions import AirflowFailException
from psycopg import sql

from usersync.api import RETRYABLE_STATUS, SENSOR_HEADERS
from usersync.db import TargetDb, session_settings
from usersync.entity import Entity, create_sql
from usersync.report import RunFailed

DEFAULT_ARGS = {
    "owner": "usersync",
    "retries": 3,  # on top of the HTTP client's own retries
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=30),
}
# A sync's books: its runs and quarantine (usersync.sink.Bookkeeping), in its own schema unless told otherwise.
BOOKS_TABLES = (
    "common/create_sync_runs.sql",
    "common/create_sync_runs_columns.sql",
    "common/create_sync_runs_index.sql",
    "common/create_sync_runs_dedup.sql",
    "common/create_sync_runs_run_idx.sql",
    "common/create_quarantine.sql",
    "common/create_quarantine_index.sql",
)
# The schema, the books, staged_deltas and the functions stage statements use.
COMMON_TABLES = (
    "common/create_schema.sql",
    *BOOKS_TABLES,
    "common/create_staged_deltas.sql",
    "common/create_json_refusal.sql",
    "common/create_timestamp_problem.sql",
)
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


def api_sensor(
    conn_id: str,
    endpoint: str,
    *,
    up: Sequence[int] = (200,),
    method: str = "GET",
    send_login: bool = False,
    **kwargs: Any,
) -> HttpSensor:
    """Wait until the API answers one of the `up` statuses; another answer (e.g. refused credentials) fails.

    The connection's login/password go along (as basic auth) only with `send_login`, for a token endpoint
    that takes them that way.
    """

    def check(response) -> bool:
        if response.status_code in up:
            return True
        if response.status_code in NOT_YET:
            return False
        # Refused credentials or request: poking again or retrying the task would only repeat the refusal
        # (and could lock the account).
        raise AirflowFailException(f"{method} {endpoint} answered {response.status_code}: {response.text[:200]}")

    return HttpSensor(
        task_id="api_available",
        http_conn_id=conn_id,
        method=method,
        endpoint=endpoint.lstrip("/"),
        headers=SENSOR_HEADERS,
        extra_options={"check_response": False},
        response_check=check,
        request_kwargs=None if send_login else {"auth": _without_credentials},
        poke_interval=30,
        timeout=600,
        exponential_backoff=True,
        **kwargs,
    )


def table_statements(
    schema: str,
    sync: str,
    statements: Sequence[str] = (),
    entities: Iterable[Entity] = (),
    migrations: Sequence[str] = (),
    books: str | None = None,
) -> list[str]:
    """What create_tables runs: the common tables, the sync's migrations (of tables an earlier version made,
    which may not exist), the declared entities' tables (usersync.entity.create_sql), then the sync's own
    statements (both include/sql/<sync>/<name>.sql, as names Airflow's template search finds).
    `books`: another schema of the database for the books (usersync.db.TargetDb.books), made there first."""
    declared = [statement.as_string(None) for entity in entities for statement in create_sql(entity)]
    files = lambda names: [f"{sync}/{name}.sql" for name in names]  # noqa: E731
    common, apart = COMMON_TABLES, []
    if books not in (None, schema):
        books_schema = sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(books)).as_string(None)
        apart = [session_settings(books), books_schema, *BOOKS_TABLES]
        common = tuple(name for name in COMMON_TABLES if name not in BOOKS_TABLES)
    return [*apart, session_settings(schema), *common, *files(migrations), *declared, *files(statements)]


def create_tables(conn_id: str, schema: str, sync: str, *args: Any, **kwargs: Any) -> SQLExecuteQueryOperator:
    """A task making the tables of table_statements(schema, sync, ...), in order; all idempotent."""
    # One transaction (the operator commits once at the end), opened with the sync's settings.
    return SQLExecuteQueryOperator(
        task_id="create_tables", conn_id=conn_id, sql=table_statements(schema, sync, *args, **kwargs)
    )


# For every `number` param: JSON Schema's number, minimum and maximum all accept NaN (every comparison with it
# is false), and Airflow then stores it as null, so the run would fail later with a misleading "None is not of
# type 'number'". NaN is the one number both >= 0 and < 0; the bounds refuse the infinities. Airflow checks
# this when the run is created (trigger form, API, CLI): `Param(0.1, type="number", **dag_parts.FINITE)`.
FINITE = {
    "not": {"allOf": [{"minimum": 0}, {"exclusiveMaximum": 0}]},
    "allOf": [{"minimum": -sys.float_info.max, "maximum": sys.float_info.max}],
}


def check_params():
    """A task that refuses a run whose conf holds a key the DAG does not declare (a typo such as
    `full_refrsh` would silently do something else), before anything else runs.

    Airflow validates each declared param against its schema when the run is created (NaN included, see
    FINITE), but accepts any other key: no params declaration can refuse those at trigger time.
    """

    @task(task_id="check_params")  # AirflowFailException: no retry
    def check(dag=None, dag_run=None) -> None:
        unknown = sorted(set(dag_run.conf or {}) - set(dag.params))
        if unknown:
            raise AirflowFailException(
                f"unknown param {', '.join(map(repr, unknown))} in the run's conf; this "
                f"DAG's params are {', '.join(sorted(dag.params))}"
            )

    return check()
