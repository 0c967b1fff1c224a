"""
### gazelle_sync: a Gazelle account (piano-technician software) → schema `gazelle`

Daily: wait for the API, make sure the tables exist, then for each entity fetch its pages (GraphQL, Relay
cursors) to staging JSON, COPY them into `<entity>_delta` and upsert what changed:

* **users** (technicians): skipped (zero API calls) when `gazelle.users` already has rows, unless
  `force_users` is set or it is the 1st of the month;
* **clients** (with their contacts) and **pianos**: delta sync, newest change first, stopping at the newest
  change the table already holds (`full_refresh` reads everything);
* **appointments**: events starting in the 7 days before the run's logical date;
* **timeline**: entries of the 30 days before the run's logical date.

Fetches run in parallel; loads follow the foreign keys (clients before pianos, contacts, events; pianos
before timeline entries). The report counts API calls per entity.

Connections: `gazelle_api` (http: host, login/password = OAuth client id/secret, extra `refresh_token`, or
extra `x-gazelle-api-key`; `rate_limit`) and `gazelle_db` (the Postgres, e.g. Supabase; schema `gazelle`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import CronTriggerTimetable, Param, dag, task
from airflow.sdk.exceptions import AirflowSkipException
from usersync import dag_parts, gazelle, load, report, staging
from usersync.branch import branch_unless_populated
from usersync.db import SQL_DIR, TargetDb
from usersync.graphql_api import first_page

API_CONN, DB_CONN, SCHEMA = "gazelle_api", "gazelle_db", "gazelle"
ENTITIES = list(gazelle.STREAMS)
WINDOW_MAX_REMOVED = 0.5  # a window's re-sync refuses to remove more of its rows: the answer looks truncated
db = TargetDb(DB_CONN, SCHEMA, sync="gazelle")


def run_date(context) -> datetime:
    """The date a run is about (a manual run may have no logical date: then when it runs)."""
    return context.get("logical_date") or context["dag_run"].run_after


def first_of_the_month(context) -> bool:
    return run_date(context).day == 1


def returned_by(ti, task_id: str) -> dict:
    """What an earlier task of this run returned; this task is skipped when that one did not run."""
    value = ti.xcom_pull(task_ids=task_id)
    if value is None:
        raise AirflowSkipException(f"{task_id} did not run in this run")
    return value


def entity_figures(ti, entity: str) -> dict:
    """One entity's line in the report, from what its tasks returned."""
    fetched = ti.xcom_pull(task_ids=f"fetch_{entity}")
    if fetched is None:
        return {"skipped": True, "api_calls": 0}
    staged = ti.xcom_pull(task_ids=f"stage_{entity}") or {}
    written = ti.xcom_pull(task_ids=f"upsert_{entity}") or {}
    return {"fetched": fetched["records"], "pages": fetched["pages"], "api_calls": fetched["api_calls"],
            "throttled": fetched["throttled"], "retries": fetched["retries"],
            **({"window": fetched["window"]} if fetched["window"] else {"since": fetched["since"]}),
            **{k: v for k, v in staged.items() if k != "received"},
            **{k: v for k, v in written.items() if k != "marked_deleted" or fetched["window"]}}


@dag(
    dag_id="gazelle_sync",
    description="Gazelle users, clients, pianos, appointments, timeline -> gazelle schema",
    schedule=CronTriggerTimetable("0 4 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=dag_parts.default_args(db),
    tags=["usersync", "gazelle"],
    params={
        "force_users": Param(False, type="boolean", description="Sync the technicians even though "
                             "gazelle.users already has rows (the 1st of each month always does)."),
        "full_refresh": Param(False, type="boolean", description="Read every client and piano, not only "
                              "those changed since the last sync."),
        "entities": Param(ENTITIES, type="array", items={"type": "string", "enum": ENTITIES}, minItems=1,
                          uniqueItems=True, description="What to sync (all by default)."),
        "dry_run": Param(False, type="boolean", description="Fetch and stage everything, report what would "
                         "change, write nothing."),
        "page_size": Param(100, type="integer", minimum=1, maximum=100, description="Records per API page."),
    },
    template_searchpath=[str(SQL_DIR)],
    user_defined_macros={"schema": SCHEMA},
    doc_md=__doc__,
)
def gazelle_sync():
    # Without a token the endpoint answers 401: it is up (the fetches check the credentials).
    api_available = dag_parts.api_sensor(API_CONN, gazelle.GRAPHQL_PATH, method="POST", up=(200, 400, 401))

    create_tables = dag_parts.create_tables(DB_CONN, SCHEMA, "gazelle", [
        "create_users", "create_clients", "create_contacts", "create_pianos", "create_events",
        "create_timeline_entries", "create_contacts_client_id_idx", "create_pianos_client_id_idx",
        "create_events_client_id_idx", "create_events_start_idx", "create_timeline_entries_client_id_idx",
        "create_timeline_entries_piano_id_idx", "create_timeline_entries_occurred_at_idx",
        "create_users_delta", "create_clients_delta", "create_contacts_delta", "create_pianos_delta",
        "create_events_delta", "create_timeline_entries_delta",
    ])

    users_needed = branch_unless_populated(
        db, "users", sync_task_id="fetch_users", skip_task_id="users_already_synced", force_param="force_users",
        force_if=first_of_the_month, task_id="users_needed",
    )
    users_already_synced = EmptyOperator(task_id="users_already_synced")

    @task
    def fetch(entity: str, params=None, **context) -> dict:
        if entity not in params["entities"]:
            raise AirflowSkipException(f"{entity} is not in this run's entities")
        stream = gazelle.STREAMS[entity]
        watermark = None
        if stream.delta and not params["full_refresh"]:
            watermark = db.query(f"watermark_{stream.entity}")["watermark"]
        api = gazelle.client(API_CONN)
        api.limiter.divide(len(params["entities"]))  # the fetches run at the same time on one account's limit
        day, dag_run = run_date(context), context["dag_run"]
        pages = gazelle.paginator(api, stream, day, watermark, params["page_size"])
        prefix = staging.run_prefix(dag_run.dag_id, dag_run.run_id, stream.entity)
        fetched = staging.fetch_to_staging(prefix, pages, first_page(), api)
        return {**fetched, "since": watermark.isoformat() if watermark else "everything",
                "window": stream.window(day) if stream.window else None}

    @task(trigger_rule="none_failed")  # runs when its fetch ran, whatever the entities it waits for did
    def stage(entity: str, ti=None, dag_run=None) -> dict:
        stream, fetched = gazelle.STREAMS[entity], returned_by(ti, f"fetch_{entity}")
        return load.stage(db, stream.entity, fetched["prefix"], dag_run.run_id, children=stream.children)

    @task(trigger_rule="none_failed")
    def upsert(entity: str, ti=None, params=None, dag_run=None) -> dict:
        stream, window = gazelle.STREAMS[entity], returned_by(ti, f"fetch_{entity}")["window"]
        # A window's fetch is all the API has in it: what the table holds there and the API lacks goes.
        return load.upsert(db, stream.entity, run_id=dag_run.run_id, dry_run=params["dry_run"],
                           children=stream.children, full_refresh=window is not None, scope=window,
                           max_delete_share=WINDOW_MAX_REMOVED)

    @task(trigger_rule="none_failed")
    def report_run(ti=None, params=None, dag_run=None) -> dict:
        per_entity = {entity: entity_figures(ti, entity) for entity in ENTITIES}
        totals = {key: sum(figures.get(key, 0) for figures in per_entity.values())
                  for key in ("fetched", "inserted", "updated", "unchanged", "quarantined", "api_calls", "throttled")}
        run = report.build_report(
            dag_id=dag_run.dag_id, run_id=dag_run.run_id, dry_run=params["dry_run"], started_at=dag_run.start_date,
            mode="full" if params["full_refresh"] else "delta", **totals, **per_entity,
        )
        staging.remove_other_runs(dag_run.dag_id, dag_run.run_id)
        return report.publish(db, run)

    ready = [api_available, create_tables]
    dag_parts.check_params() >> ready
    ready >> users_needed
    steps = {}
    for entity in ENTITIES:
        fetched = fetch.override(task_id=f"fetch_{entity}")(entity)
        staged = stage.override(task_id=f"stage_{entity}")(entity)
        tables = (gazelle.STREAMS[entity].entity, *gazelle.STREAMS[entity].children)
        written = upsert.override(task_id=f"upsert_{entity}",
                                  outlets=[dag_parts.table_asset(db, table) for table in tables])(entity)
        fetched >> staged >> written
        steps[entity] = (fetched, staged, written)
        if entity == "users":
            users_needed >> [fetched, users_already_synced]
        else:
            ready >> fetched
    # Foreign keys: clients before what refers to them, pianos before the timeline.
    for parent, children in {"clients": ("pianos", "appointments", "timeline"), "pianos": ("timeline",)}.items():
        for child in children:
            steps[parent][2] >> steps[child][1]
    [written for _, _, written in steps.values()] + [users_already_synced] >> report_run()


gazelle_sync()
