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

from airflow.sdk import CronDataIntervalTimetable, Param, dag, task
from usersync import dag_parts, intra42, pipeline, report, staging
from usersync.db import TargetDb
from usersync.entities import INTRA42_USERS as USERS

API_CONN, DB_CONN, SCHEMA = "intra42_api", "intra42_db", "intra42"
CURSUS_ID = 21
STUDENTS_ONLY = {"filter[kind]": "student", "filter[alumni?]": "false"}
db = TargetDb(DB_CONN, SCHEMA, sync="intra42")


def fetch_students(entity, window: dict, prefix, params: dict) -> dict:
    """Every page of the window's students, staged under prefix."""
    api = intra42.client(API_CONN)
    query = dict(STUDENTS_ONLY)
    if "updated_from" in window:
        query["range[updated_at]"] = f"{window['updated_from']},{window['updated_to']}"
    pages = intra42.users_paginator(api, CURSUS_ID, query, per_page=params["per_page"])
    return staging.fetch_to_staging(prefix, pages, {"after_id": 0}, api)


@dag(
    **pipeline.dag_args(
        "intra42_users",
        db=db,
        description="42 intra API cursus-21 students -> intra42.users",
        schedule=CronDataIntervalTimetable("0 */6 * * *", timezone="UTC"),
        doc=__doc__,
        tags=["users"],
        full_refresh="Fetch every student, not only the changes; students the API no longer returns are marked "
        "deleted.",
        dry_run="Fetch and stage, report what would change, write nothing to intra42.users.",
        params={
            "interval_only": Param(
                False, type="boolean", description="Fetch only this run's data interval (what backfill runs always do)."
            ),
            "per_page": Param(100, type="integer", minimum=1, maximum=100, description="Students per API page."),
            "max_delete_share": Param(
                0.10,
                type="number",
                minimum=0,
                maximum=1,
                **dag_parts.FINITE,
                description="A full refresh refuses to mark more than this share of the students deleted.",
            ),
            "overlap_minutes": Param(
                5,
                type="integer",
                minimum=0,
                description="An incremental run reads again "
                "the changes dated up to this long before the watermark (late writes).",
            ),
            "reconcile_every_hours": Param(
                24,
                type="integer",
                minimum=0,
                description="A scheduled or manual run "
                "reads everything (and marks the students gone) when the last full "
                "read is this old; 0: never by itself.",
            ),
        },
    )
)
def intra42_users():
    # The token endpoint answers 200 only when the API is up and the credentials (sent as basic auth) are good.
    api_available = dag_parts.api_sensor(
        API_CONN, "oauth/token", method="POST", send_login=True, request_params={"grant_type": "client_credentials"}
    )

    @task
    def report_run(window: dict, fetched: dict, staged: dict, written: dict, params=None, dag_run=None) -> dict:
        return report.close_run(
            db,
            dag_run,
            mode=window["mode"],
            dry_run=params["dry_run"],
            window=window.get("why"),
            fetched=fetched["records"],
            pages=fetched["pages"],
            **staged,
            **written,
            api_calls=fetched["api_calls"],
            throttled=fetched["throttled"],
            retries=fetched["retries"],
        )

    window = pipeline.choose_what_to_fetch(db)
    pipeline.preflight(db, api_available, entities=[USERS]) >> window
    users = pipeline.load_entities(db, [USERS], fetch_students, window)["users"]
    report_run(window, users["fetched"], users["staged"], users["written"])


intra42_users()
