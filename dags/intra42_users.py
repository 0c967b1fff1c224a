"""
### intra42_users: 42 intra cursus-21 students → `intra42.users`

Every 6 hours: wait for the API, make sure the tables exist, choose what to fetch (the changes since the
last successful run; a backfill run's own data interval; everything on `full_refresh`), stage every page
as JSON, COPY it into `users_delta`, upsert what changed in one transaction, and report.

Connections: `intra42_api` (http: host, login = client id, password = client secret, extra `rate_limit`)
and `intra42_db` (the application's Postgres; tables live in schema `intra42`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator
from airflow.providers.http.sensors.http import HttpSensor
from airflow.sdk import CronDataIntervalTimetable, Param, dag, task
from usersync import intra42, load, report, staging
from usersync.api import SENSOR_HEADERS
from usersync.db import SQL_DIR, TargetDb, hook_params
from usersync.window import choose_window

API_CONN, DB_CONN, SCHEMA = "intra42_api", "intra42_db", "intra42"
CURSUS_ID = 21
STUDENTS_ONLY = {"filter[kind]": "student", "filter[alumni?]": "false"}
db = TargetDb(DB_CONN, SCHEMA, sync="intra42")


@dag(
    dag_id="intra42_users",
    description="42 intra API cursus-21 students -> intra42.users",
    schedule=CronDataIntervalTimetable("0 */6 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={
        "owner": "usersync",
        "retries": 3,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=30),
    },
    tags=["usersync", "intra42", "users"],
    params={
        "full_refresh": Param(False, type="boolean", description="Fetch every student, not only the changes; "
                              "students the API no longer returns are marked deleted."),
        "interval_only": Param(False, type="boolean", description="Fetch only this run's data interval "
                               "(what backfill runs always do)."),
        "per_page": Param(100, type="integer", minimum=1, maximum=100, description="Students per API page."),
        "dry_run": Param(False, type="boolean", description="Fetch and stage, report what would change, "
                         "write nothing to intra42.users."),
        "max_delete_share": Param(0.10, type="number", minimum=0, maximum=1, description="A full refresh "
                                  "refuses to mark more than this share of the students deleted."),
    },
    template_searchpath=[str(SQL_DIR)],
    user_defined_macros={"schema": SCHEMA},
    doc_md=__doc__,
)
def intra42_users():
    api_available = HttpSensor(
        task_id="api_available",
        http_conn_id=API_CONN,
        headers=SENSOR_HEADERS,
        method="POST",
        endpoint="oauth/token",  # answers only when the API is up and the client credentials are valid
        request_params={"grant_type": "client_credentials"},
        response_error_codes_allowlist=["404", "429", "500", "502", "503", "504"],  # down for now: poke again
        poke_interval=30,
        timeout=600,
        exponential_backoff=True,
    )

    create_tables = SQLExecuteQueryOperator(
        task_id="create_tables",
        conn_id=DB_CONN,
        hook_params=hook_params(SCHEMA),
        sql=[
            "common/create_schema.sql", "common/create_sync_runs.sql", "common/create_sync_runs_index.sql",
            "common/create_quarantine.sql", "common/create_quarantine_index.sql",
            "intra42/create_users.sql", "intra42/create_users_login_idx.sql",
            "intra42/create_users_email_idx.sql", "intra42/create_users_updated_at_idx.sql",
            "intra42/create_users_delta.sql",
        ],
    )

    @task
    def choose_what_to_fetch(params=None, dag_run=None, data_interval_start=None, data_interval_end=None):
        last = db.query("last_watermark", {"dag_id": dag_run.dag_id})
        return choose_window(
            full_refresh=params["full_refresh"], interval_only=params["interval_only"],
            run_type=dag_run.run_type, interval_start=data_interval_start,
            interval_end=data_interval_end, watermark=last and last["watermark"],
        )

    @task
    def fetch_students(window: dict, params=None, dag_run=None) -> dict:
        api = intra42.client(API_CONN)
        query = dict(STUDENTS_ONLY)
        if "updated_from" in window:
            query["range[updated_at]"] = f"{window['updated_from']},{window['updated_to']}"
        pages = intra42.users_paginator(api, CURSUS_ID, query, per_page=params["per_page"])
        prefix = staging.run_prefix(dag_run.dag_id, dag_run.run_id, "users")
        return staging.fetch_to_staging(prefix, pages, {"after_id": 0}, api)

    @task
    def stage_users(fetched: dict, dag_run=None) -> dict:
        return load.stage(db, "users", fetched["prefix"], dag_run.run_id)

    @task
    def upsert_users(window: dict, staged: dict, params=None, dag_run=None) -> dict:
        return load.upsert(db, "users", run_id=dag_run.run_id, full_refresh=window["mode"] == "full",
                           max_delete_share=params["max_delete_share"], dry_run=params["dry_run"])

    @task
    def report_run(window: dict, fetched: dict, staged: dict, written: dict, params=None, dag_run=None) -> dict:
        run = report.build_report(
            dag_id=dag_run.dag_id, run_id=dag_run.run_id, mode=window["mode"], dry_run=params["dry_run"],
            started_at=dag_run.start_date, window=window.get("why"),
            fetched=fetched["records"], pages=fetched["pages"], **staged, **written,
            api_calls=fetched["api_calls"], throttled=fetched["throttled"], retries=fetched["retries"],
        )
        staging.remove_other_runs(dag_run.dag_id, dag_run.run_id)
        return report.publish(db, run)

    window = choose_what_to_fetch()
    [api_available, create_tables] >> window
    fetched = fetch_students(window)
    staged = stage_users(fetched)
    written = upsert_users(window, staged)
    report_run(window, fetched, staged, written)


intra42_users()
