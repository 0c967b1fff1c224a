"""
### gazelle_sync: a Gazelle account (piano-technician software) → schema `gazelle`

Nightly full sync (23:00 account time): wait for the API, make sure the tables exist, then for each entity
fetch it (GraphQL) to staging JSON, COPY it into `<entity>_delta` and upsert what changed:

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

import functools
import os
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import MultipleCronTriggerTimetable, Param, dag, task
from airflow.sdk.exceptions import AirflowSkipException
from usersync import dag_parts, gazelle, load, report, staging
from usersync.branch import branch_unless_populated
from usersync.db import SQL_DIR, TargetDb
from usersync.graphql_api import first_page

API_CONN, DB_CONN, SCHEMA = "gazelle_api", "gazelle_db", "gazelle"
ENTITIES = list(gazelle.STREAMS)
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


def window(entity: str, moment: datetime, params) -> dict[str, str] | None:
    """What a windowed entity's run holds: its rows there mirror the API."""
    if entity == "appointments":
        return gazelle.appointment_days(
            moment, TIMEZONE, params["appointments_days_back"], params["appointments_days_ahead"]
        )
    if entity == "timeline":
        return gazelle.timeline_window(moment)
    return None


def returned_by(ti, task_id: str) -> dict:
    """What an earlier task of this run returned; this task is skipped when that one did not run."""
    value = ti.xcom_pull(task_ids=task_id)
    if value is None:
        raise AirflowSkipException(f"{task_id} did not run in this run")
    return value


def noting_failure(fn):
    """A task that, when it fails, leaves its error in XCom (key `error`) for the report."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AirflowSkipException:
            raise
        except Exception as exc:
            kwargs["ti"].xcom_push(key="error", value=f"{type(exc).__name__}: {exc}"[:2000])
            raise

    return run


def entity_figures(ti, entity: str, entities: list[str]) -> dict:
    """One entity's line in the report, from what its tasks returned; `error` when it was not loaded."""
    # The branch records the task it followed (Airflow's SkipMixin XCom).
    followed = (ti.xcom_pull(task_ids="users_needed", key="skipmixin_key") or {}).get("followed", [])
    skipped_users = entity == "users" and "users_already_synced" in followed
    if entity not in entities or skipped_users:
        return {"skipped": True, "api_calls": 0}
    steps = ("fetch", "stage", "upsert")
    fetched, staged, written = (ti.xcom_pull(task_ids=f"{step}_{entity}") for step in steps)
    figures = {}
    if fetched:
        figures.update(
            {
                "fetched": fetched["records"],
                "pages": fetched["pages"],
                "api_calls": fetched["api_calls"],
                "throttled": fetched["throttled"],
                "retries": fetched["retries"],
                **({"window": fetched["window"]} if fetched["window"] else {}),
            }
        )
    figures.update({k: v for k, v in (staged or {}).items() if k != "received"})
    figures.update({k: v for k, v in (written or {}).items() if k != "marked_deleted" or fetched["window"]})
    if written is None:
        errors = (ti.xcom_pull(task_ids=f"{step}_{entity}", key="error") for step in steps)
        figures["error"] = next((e for e in errors if e), NOT_LOADED)
    return figures


@dag(
    dag_id="gazelle_sync",
    description="Gazelle users, clients, pianos, appointments, timeline -> gazelle schema",
    schedule=MultipleCronTriggerTimetable(
        f"0 {FULL_SYNC_HOUR} * * *", f"0 {WORKING_HOURS} * * *", timezone=TIMEZONE.key
    ),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,  # also keeps the hourly refresh off the staging tables while the nightly sync runs
    default_args=dag_parts.default_args(db),
    tags=["usersync", "gazelle"],
    params={
        "entities": Param(
            ENTITIES,
            type="array",
            items={"type": "string", "enum": ENTITIES},
            minItems=1,
            uniqueItems=True,
            description="What to sync (all by default; the scheduled working-hours runs sync the appointments only).",
        ),
        "dry_run": Param(
            False, type="boolean", description="Fetch and stage everything, report what would change, write nothing."
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
    template_searchpath=[str(SQL_DIR)],
    user_defined_macros={"schema": SCHEMA},
    doc_md=__doc__,
)
def gazelle_sync():
    # Without a token the endpoint answers 401: it is up (the fetches check the credentials).
    api_available = dag_parts.api_sensor(API_CONN, gazelle.GRAPHQL_PATH, method="POST", up=(200, 400, 401))

    create_tables = dag_parts.create_tables(
        DB_CONN,
        SCHEMA,
        "gazelle",
        [
            "create_users",
            "create_clients",
            "create_contacts",
            "create_pianos",
            "create_events",
            "create_timeline_entries",
            "upgrade_tables",
            "create_contacts_client_id_idx",
            "create_pianos_client_id_idx",
            "create_events_client_id_idx",
            "create_events_start_idx",
            "create_events_local_date_idx",
            "create_timeline_entries_client_id_idx",
            "create_timeline_entries_piano_id_idx",
            "create_timeline_entries_occurred_at_idx",
            "create_users_delta",
            "create_clients_delta",
            "create_contacts_delta",
            "create_pianos_delta",
            "create_events_delta",
            "create_timeline_entries_delta",
        ],
    )

    users_needed = branch_unless_populated(
        db,
        "users",
        sync_task_id="fetch_users",
        skip_task_id="users_already_synced",
        force_param="force_users",
        force_if=first_of_the_month,
        task_id="users_needed",
    )
    users_already_synced = EmptyOperator(task_id="users_already_synced")

    @task
    @noting_failure
    def fetch(entity: str, params=None, **context) -> dict:
        entities = run_entities({**context, "params": params})
        if entity not in entities:
            raise AirflowSkipException(f"{entity} is not in this run's entities")
        stream = gazelle.STREAMS[entity]
        api = gazelle.client(API_CONN, shared_by=len(entities))  # the fetches run at once on one account's limit
        held = window(entity, run_date(context), params)
        pages = gazelle.paginator(api, stream, held, params["page_size"])
        dag_run = context["dag_run"]
        prefix = staging.run_prefix(dag_run.dag_id, dag_run.run_id, stream.entity)
        return {**staging.fetch_to_staging(prefix, pages, first_page(), api), "window": held}

    @task(trigger_rule="none_failed")  # runs when its fetch ran, whatever the entities it waits for did
    @noting_failure
    def stage(entity: str, ti=None, dag_run=None) -> dict:
        stream, fetched = gazelle.STREAMS[entity], returned_by(ti, f"fetch_{entity}")
        return load.stage(
            db, stream.entity, fetched["prefix"], dag_run.run_id, children=stream.children, params=fetched["window"]
        )

    @task(trigger_rule="none_failed")
    @noting_failure
    def upsert(entity: str, ti=None, params=None, dag_run=None) -> dict:
        stream, held = gazelle.STREAMS[entity], returned_by(ti, f"fetch_{entity}")["window"]
        # A window's fetch is all the API has in it: what the table holds there and the API lacks is cancelled
        # (appointments) or removed (timeline).
        return load.upsert(
            db,
            stream.entity,
            run_id=dag_run.run_id,
            dry_run=params["dry_run"],
            children=stream.children,
            full_refresh=held is not None,
            scope=held,
            max_delete_share=WINDOW_MAX_REMOVED,
        )

    @task(trigger_rule="all_done")  # the run is recorded whatever failed
    def report_run(**context) -> dict:
        ti, params, dag_run = context["ti"], context["params"], context["dag_run"]
        entities = run_entities(context)
        per_entity = {entity: entity_figures(ti, entity, entities) for entity in ENTITIES}
        failed = {entity: figures["error"] for entity, figures in per_entity.items() if "error" in figures}
        totals = {
            key: sum(figures.get(key, 0) for figures in per_entity.values())
            for key in ("fetched", "inserted", "updated", "unchanged", "quarantined", "api_calls", "throttled")
        }
        run = report.build_report(
            dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,
            dry_run=params["dry_run"],
            started_at=dag_run.start_date,
            mode="appointments" if entities == ["appointments"] else "full",
            **totals,
            **per_entity,
            failed=failed,
        )
        staging.clean_up(dag_run.dag_id, dag_run.run_id)
        return report.publish(db, run)

    # Fails the run, once the report is written, when any entity failed (report_run itself never fails for that:
    # a retry would record the run twice).
    all_synced = EmptyOperator(task_id="all_synced", trigger_rule="none_failed")

    ready = [api_available, create_tables]
    dag_parts.check_params() >> ready
    ready >> users_needed
    steps = {}
    for entity in ENTITIES:
        fetched = fetch.override(task_id=f"fetch_{entity}")(entity)
        staged = stage.override(task_id=f"stage_{entity}")(entity)
        tables = (gazelle.STREAMS[entity].entity, *gazelle.STREAMS[entity].children)
        written = upsert.override(
            task_id=f"upsert_{entity}", outlets=[dag_parts.table_asset(db, table) for table in tables]
        )(entity)
        fetched >> staged >> written
        steps[entity] = (fetched, staged, written)
        if entity == "users":
            users_needed >> [fetched, users_already_synced]
        else:
            ready >> fetched
    steps["clients"][2] >> steps["pianos"][1]  # the one foreign key between entities: pianos -> clients
    loaded = [written for _, _, written in steps.values()] + [users_already_synced]
    loaded >> report_run() >> all_synced
    loaded >> all_synced


gazelle_sync()
