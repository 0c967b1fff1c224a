"""
### intra42_users: 42 intra cursus-21 students → `intra42.users`

Every 6 hours: wait for the API, make sure the tables exist, choose what to fetch (the changes since the
last watermark, minus `overlap_minutes`; everything once every `reconcile_every_hours`, marking the students
gone; a backfill run's own data interval; everything on `full_refresh`), stage every page as JSON, COPY it
into `users_delta`, upsert what changed in one transaction, and report. Runs may overlap (backfills): each
writes its own records, and an older record never replaces a newer one.

Connections: `intra42_api` (http: host, login = client id, password = client secret, extra `rate_limit`)
and `intra42_db` (the application's Postgres; tables live in schema `intra42`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import CronDataIntervalTimetable, Param, dag, task
from usersync import dag_parts, intra42, load, report, staging
from usersync.db import SQL_DIR, TargetDb
from usersync.entities import INTRA42_USERS as USERS
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
    default_args=dag_parts.default_args(db),
    tags=["usersync", "intra42", "users"],
    params={
        "full_refresh": Param(False, type="boolean", description="Fetch every student, not only the changes; "
                              "students the API no longer returns are marked deleted."),
        "interval_only": Param(False, type="boolean", description="Fetch only this run's data interval "
                               "(what backfill runs always do)."),
        "per_page": Param(100, type="integer", minimum=1, maximum=100, description="Students per API page."),
        "dry_run": Param(False, type="boolean", description="Fetch and stage, report what would change, "
                         "write nothing to intra42.users."),
        "max_delete_share": Param(0.10, type="number", minimum=0, maximum=1, **dag_parts.FINITE,
                                  description="A full refresh refuses to mark more than this share of the "
                                  "students deleted."),
        "overlap_minutes": Param(5, type="integer", minimum=0, description="An incremental run reads again "
                                 "the changes dated up to this long before the watermark (late writes)."),
        "reconcile_every_hours": Param(24, type="integer", minimum=0, description="A scheduled or manual run "
                                       "reads everything (and marks the students gone) when the last full "
                                       "read is this old; 0: never by itself."),
    },
    template_searchpath=[str(SQL_DIR)],
    user_defined_macros={"schema": SCHEMA},
    doc_md=__doc__,
)
def intra42_users():
    # The token endpoint answers 200 only when the API is up and the credentials (sent as basic auth) are good.
    api_available = dag_parts.api_sensor(API_CONN, "oauth/token", method="POST", send_login=True,
                                         request_params={"grant_type": "client_credentials"})

    create_tables = dag_parts.create_tables(DB_CONN, SCHEMA, "intra42", entities=[USERS])

    @task
    def choose_what_to_fetch(params=None, dag_run=None, data_interval_start=None, data_interval_end=None):
        last = db.query("last_watermark", {"dag_id": dag_run.dag_id})
        return choose_window(
            full_refresh=params["full_refresh"], interval_only=params["interval_only"],
            run_type=dag_run.run_type, interval_start=data_interval_start,
            interval_end=data_interval_end, watermark=last["watermark"], last_full=last["last_full"],
            reconcile_every=timedelta(hours=params["reconcile_every_hours"]) or None,
            overlap=timedelta(minutes=params["overlap_minutes"]),
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
        return load.stage(db, USERS, fetched["prefix"], dag_run.run_id)

    @task(outlets=[dag_parts.table_asset(db, "users")])
    def upsert_users(window: dict, fetched: dict, staged: dict, params=None, dag_run=None) -> dict:
        # Only a run that read everything since the last watermark may move it, up to what it read up to.
        upto = window.get("updated_to") or datetime.fromtimestamp(fetched["fetch_epoch"], UTC)
        return load.upsert(db, USERS, run_id=dag_run.run_id, full_refresh=window["mode"] == "full",
                           max_delete_share=params["max_delete_share"], dry_run=params["dry_run"],
                           fetch_started=fetched["fetch_epoch"], watermark_upto=upto,
                           moves_watermark=window["mode"] != "interval" and not params["dry_run"])

    @task
    def report_run(window: dict, fetched: dict, staged: dict, written: dict, params=None, dag_run=None) -> dict:
        run = report.build_report(
            dag_id=dag_run.dag_id, run_id=dag_run.run_id, mode=window["mode"], dry_run=params["dry_run"],
            started_at=dag_run.start_date, window=window.get("why"),
            fetched=fetched["records"], pages=fetched["pages"], **staged, **written,
            api_calls=fetched["api_calls"], throttled=fetched["throttled"], retries=fetched["retries"],
        )
        staging.clean_up(dag_run.dag_id, dag_run.run_id)
        return report.publish(db, run)

    window = choose_what_to_fetch()
    [api_available, create_tables] >> window
    dag_parts.check_params() >> [api_available, create_tables]
    fetched = fetch_students(window)
    staged = stage_users(fetched)
    written = upsert_users(window, fetched, staged)
    report_run(window, fetched, staged, written)


intra42_users()
