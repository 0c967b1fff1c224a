"""What every sync DAG shares: its default task settings, the API sensor, the table-creating task."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator
from airflow.providers.http.sensors.http import HttpSensor
from airflow.sdk import task
from airflow.sdk.exceptions import AirflowFailException

from usersync.api import RETRYABLE_STATUS, SENSOR_HEADERS
from usersync.db import hook_params

DEFAULT_ARGS = {
    "owner": "usersync",
    "retries": 3,  # on top of the HTTP client's own retries
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=30),
}
COMMON_TABLES = ("common/create_schema.sql", "common/create_sync_runs.sql", "common/create_sync_runs_index.sql",
                 "common/create_quarantine.sql", "common/create_quarantine_index.sql")
NOT_YET = {404, 429, *RETRYABLE_STATUS}  # the API is starting, overloaded or down: poke again


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
        # Refused credentials or request: poking again or retrying the task would only repeat the refusal
        # (and could lock the account).
        raise AirflowFailException(f"{method} {endpoint} answered {response.status_code}: {response.text[:200]}")

    return HttpSensor(
        task_id="api_available", http_conn_id=conn_id, method=method, endpoint=endpoint.lstrip("/"),
        headers=SENSOR_HEADERS, extra_options={"check_response": False}, response_check=check,
        request_kwargs=None if send_login else {"auth": _without_credentials},
        poke_interval=30, timeout=600, exponential_backoff=True, **kwargs,
    )


def create_tables(conn_id: str, schema: str, sync: str, statements: Sequence[str]) -> SQLExecuteQueryOperator:
    """The schema, sync_runs and quarantine, then the sync's own statements (include/sql/<sync>/<name>.sql), in
    order; all idempotent."""
    return SQLExecuteQueryOperator(task_id="create_tables", conn_id=conn_id, hook_params=hook_params(schema),
                                   sql=[*COMMON_TABLES, *(f"{sync}/{name}.sql" for name in statements)])


def check_params():
    """A task that refuses the run's conf before anything else runs: a key the DAG does not declare (a typo
    such as `full_refrsh` would silently do something else) or a NaN/Infinity value.

    Airflow validates each declared param against its schema when the run is created, but accepts any
    other key, and JSON Schema's `number` (and its minimum/maximum) lets NaN through.
    """

    @task(task_id="check_params")  # AirflowFailException: no retry
    def check(dag=None, dag_run=None) -> None:
        conf = dag_run.conf or {}
        unknown = sorted(set(conf) - set(dag.params))
        if unknown:
            raise AirflowFailException(f"unknown param {', '.join(map(repr, unknown))} in the run's conf; this "
                                       f"DAG's params are {', '.join(sorted(dag.params))}")
        for key, value in conf.items():
            if _not_finite(value):
                raise AirflowFailException(f"param {key!r}: {value!r} is not a finite number")

    return check()


def _not_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(map(_not_finite, value.values()))
    if isinstance(value, list):
        return any(map(_not_finite, value))
    return False
