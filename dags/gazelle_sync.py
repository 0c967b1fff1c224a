"""
### gazelle_sync: a Gazelle account (piano-technician software) → schema `gazelle`

Nightly full sync (23:00 account time): wait for the API, make sure the tables exist, choose what to fetch, then
for each entity fetch it (GraphQL) to staging JSON, COPY it into `<entity>_delta` and upsert what changed:

* **users** (technicians): one `allUsers` call; skipped (zero API calls) when `gazelle.users` already has rows,
  unless `force_users` is set or it is the 1st of the month;
* **clients** (with their contacts) and **pianos**: read in full every run (Gazelle cannot filter or sort by
  update time); the upsert writes only what changed;
* **appointments**: events of the days from 7 days back to 14 days ahead in the account's time zone; an
  appointment gone from that window upstream is kept, marked `CANCELLED`;
* **timeline**: entries of the 30 days before the run.

Hourly within working hours (7-21 account time), the scheduled runs refresh the appointments only.

Entities are independent (only pianos wait for clients): one failing does not stop the others. The report runs
whatever failed and records the run with each failed entity and its error; `all_synced` then fails the run.

Connections: `gazelle_api` (http: host, login/password = OAuth client id/secret, extra `refresh_token`, or
extra `x-gazelle-api-key`; `rate_limit`) and `gazelle_db` (the Postgres, e.g. Supabase; schema `gazelle`).
Settings (environment): `GAZELLE_TIMEZONE` (default `America/Toronto`), `GAZELLE_WORKING_HOURS` (`7-21`).
"""

from __future__ import annotations

import os
from datetime import datetime
from zoneinfo import ZoneInfo

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import MultipleCronTriggerTimetable, Param, dag, task
from airflow.sdk.exceptions import AirflowSkipException
from usersync import dag_parts, gazelle, pipeline, report, staging
from usersync.branch import branch_unless_populated
from usersync.db import TargetDb
from usersync.entity import Entity
from usersync.graphql_api import first_page

API_CONN, DB_CONN, SCHEMA = "gazelle_api", "gazelle_db", "gazelle"
ENTITIES = list(gazelle.STREAMS)  # the `entities` param's choices
STREAM_OF = {stream.entity.name: stream for stream in gazelle.STREAMS.values()}  # by table
TIMEZONE = ZoneInfo(os.environ.get("GAZELLE_TIMEZONE", "America/Toronto"))  # the account's (Montréal) zone
WORKING_HOURS = os.environ.get("GAZELLE_WORKING_HOURS", "7-21")  # account hours of the hourly appointments refresh
FULL_SYNC_HOUR = 23  # account time of the nightly full sync; the other scheduled runs refresh appointments only
WINDOW_MAX_REMOVED = 0.5  # a window's re-sync refuses to cancel/remove more of its rows: the answer looks truncated
NOT_LOADED = "not loaded: a task it waits for failed"
db = TargetDb(DB_CONN, SCHEMA, sync="gazelle")


def run_date(context) -> datetime:
    """The date a run is about (a manual run may have no logical date: then when it runs)."""
    return context.get("logical_date") or context["dag_run"].run_after


def first_of_the_month(context) -> bool:
    return run_date(context).day == 1


def run_entities(context) -> list[str]:
    """What a run syncs: the `entities` param, but only the appointments on a scheduled working-hours run."""
    entities = context["params"]["entities"]
    scheduled = getattr(context["dag_run"].run_type, "value", context["dag_run"].run_type) == "scheduled"
    if scheduled and run_date(context).astimezone(TIMEZONE).hour != FULL_SYNC_HOUR:
        return [entity for entity in entities if entity == "appointments"]
    return entities


def fetch(entity: Entity, plan: dict, prefix, params: dict) -> dict:
    """Every page of the entity (of its window, for appointments and timeline), staged under prefix."""
    stream = STREAM_OF[entity.name]
    if stream.name not in plan["entities"]:
        raise AirflowSkipException(f"{stream.name} is not in this run's entities")
    api = gazelle.client(API_CONN, shared_by=len(plan["entities"]))  # the fetches run at once on one limit
    window = plan["windows"].get(stream.name)
    pages = gazelle.paginator(api, stream, window, params["page_size"])
    return {**staging.fetch_to_staging(prefix, pages, first_page(), api), "window": window}


def in_its_window(entity: Entity, fetched: dict) -> Entity:
    """The entity as the run syncs it: what its fetch read is all the API has in that window."""
    return gazelle.for_window(entity, fetched["window"])


def entity_figures(ti, name: str, loaded: dict, entities: list[str]) -> dict:
    """One entity's line in the report, from what its tasks returned; `error` when it was not loaded."""
    # The branch records the task it followed (Airflow's SkipMixin XCom).
    followed = (ti.xcom_pull(task_ids="users_needed", key="skipmixin_key") or {}).get("followed", [])
    if name not in entities or (name == "users" and "users_already_synced" in followed):
        return {"skipped": True, "api_calls": 0}
    fetched, staged, written = loaded["fetched"], loaded["staged"], loaded["written"]
    figures = {}
    if fetched:
        figures.update({k: fetched[k] for k in ("pages", "api_calls", "throttled", "retries")})
        figures["fetched"] = fetched["records"]
        if fetched["window"]:
            figures["window"] = fetched["window"]
    figures.update({k: v for k, v in (staged or {}).items() if k != "received"})
    figures.update({k: v for k, v in (written or {}).items() if k != "marked_deleted" or fetched["window"]})
    if written is None:
        figures["error"] = pipeline.error_of(ti, name) or NOT_LOADED
    return figures


@dag(
    **pipeline.dag_args(
        "gazelle_sync",
        db=db,
        description="Gazelle users, clients, pianos, appointments, timeline -> gazelle schema",
        schedule=MultipleCronTriggerTimetable(
            f"0 {FULL_SYNC_HOUR} * * *", f"0 {WORKING_HOURS} * * *", timezone=TIMEZONE.key
        ),
        doc=__doc__,
        dry_run="Fetch and stage everything, report what would change, write nothing.",
        params={
            "entities": Param(
                ENTITIES,
                type="array",
                items={"type": "string", "enum": ENTITIES},
                minItems=1,
                uniqueItems=True,
                description="What to sync (all by default; the scheduled working-hours runs sync the appointments "
                "only).",
            ),
            "page_size": Param(100, type="integer", minimum=1, maximum=100, description="Records per API page."),
            "appointments_days_back": Param(
                7,
                type="integer",
                minimum=0,
                description="Appointments window: from this many days before today (account time).",
            ),
            "appointments_days_ahead": Param(
                14,
                type="integer",
                minimum=0,
                description="Appointments window: to this many days after today (account time).",
            ),
            "force_users": Param(
                False,
                type="boolean",
                description="Sync the technicians even though "
                "gazelle.users already has rows (the 1st of each month always does).",
            ),
        },
    )
)
def gazelle_sync():
    # Without a token the endpoint answers 401: it is up (the fetches check the credentials).
    api_available = dag_parts.api_sensor(API_CONN, gazelle.GRAPHQL_PATH, method="POST", up=(200, 400, 401))

    @task
    def choose_what_to_fetch(**context) -> dict:
        """The run's entities, and the windows of appointments and timeline: what a window's fetch reads is all
        the API has there (a full read: the rows it no longer lists there are cancelled or removed)."""
        moment, params = run_date(context), context["params"]
        days = (params["appointments_days_back"], params["appointments_days_ahead"])
        return {
            "mode": "full",
            "entities": run_entities(context),
            "windows": {
                "appointments": gazelle.appointment_days(moment, TIMEZONE, *days),
                "timeline": gazelle.timeline_window(moment),
            },
        }

    @task(trigger_rule="all_done")  # the run is recorded whatever failed
    def report_run(plan: dict | None, loaded: dict, **context) -> dict:
        ti, params, dag_run = context["ti"], context["params"], context["dag_run"]
        entities = plan["entities"] if plan else run_entities(context)
        per_entity = {name: entity_figures(ti, name, loaded[name], entities) for name in ENTITIES}
        failed = {name: figures["error"] for name, figures in per_entity.items() if "error" in figures}
        totals = {
            key: sum(figures.get(key, 0) for figures in per_entity.values())
            for key in ("fetched", "inserted", "updated", "unchanged", "quarantined", "api_calls", "throttled")
        }
        return report.close_run(
            db,
            dag_run,
            dry_run=params["dry_run"],
            mode="appointments" if entities == ["appointments"] else "full",
            **totals,
            **per_entity,
            failed=failed,
        )

    plan = choose_what_to_fetch()
    declared = {name: stream.entity for name, stream in gazelle.STREAMS.items()}
    pipeline.preflight(db, api_available, entities=declared.values(), migrations=["upgrade_tables"]) >> plan
    loaded = pipeline.load_entities(
        db, declared, fetch, plan, for_run=in_its_window, max_delete_share=WINDOW_MAX_REMOVED
    )

    # The technicians change rarely: fetched only when the table is empty, forced, or on the 1st of the month.
    users_already_synced = EmptyOperator(task_id="users_already_synced")
    users_needed = branch_unless_populated(
        db,
        "users",
        sync_task_id="fetch_users",
        skip_task_id="users_already_synced",
        force_param="force_users",
        force_if=first_of_the_month,
        task_id="users_needed",
    )
    plan >> users_needed >> [loaded["users"]["fetched"], users_already_synced]

    # Fails the run, once the report is written, when any entity failed (report_run itself never fails for that:
    # a retry would record the run twice).
    all_synced = EmptyOperator(task_id="all_synced", trigger_rule="none_failed")
    written = [tasks["written"] for tasks in loaded.values()] + [users_already_synced]
    written >> report_run(plan, loaded) >> all_synced
    written >> all_synced


gazelle_sync()
