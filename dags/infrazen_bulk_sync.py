"""
### infrazen_bulk_sync: every eligible InfraZen user's cloud providers, synced in parallel, with a per-user history

The replacement of InfraZen's `bulk_sync_all_users.py` and its admin endpoint (spec: `specs/infrazen.md`).
Daily at 02:00 UTC (`sync_type` scheduled), or triggered from the UI (manual) or the REST API (api):

1. check the params, then select in one query the eligible users (active, not `demouser`, in id order; `user_ids`
   narrows them) with their providers (`auto_sync AND is_active AND NOT is_deleted`, in `created_at` order);
   users without one are skipped ("No auto-sync enabled providers");
2. wait for the provider APIs those users need;
3. sync them in chunks of `batch_size` users (one mapped task per chunk, at most 1,024), `num_workers` users at a
   time per chunk, each provider account under its own rate limit, every list paged to the end, staged as JSON;
4. write each chunk in one transaction: COPY -> `resources_delta` -> one upsert of the changed resources (bad
   records quarantined; resources a provider no longer lists marked inactive, unless its read failed or was
   partial; their `resource_tags`) -> per user a `complete_syncs` row with its `sync_snapshots` and
   `provider_sync_references` (failed providers too, with their real error), each snapshot's `resource_states`
   -> `cloud_providers.last_sync/sync_status/sync_error`. A user whose write fails is rolled back alone;
5. report (task log, XCom, `sync_runs`): totals and one line per user. The run then fails if any user failed.

`dry_run` lists who would be synced, with provider counts, and writes nothing.

Connections: `infrazen_db` (postgres: the application's database, tables in schema `infrazen`), and per provider
`infrazen_yandex`, `infrazen_selectel`, `infrazen_beget` (http: host templates, real hosts when absent; extras
`rate_limit` per account, `timeout`, `max_retries`, `backoff`; see the README). The credentials are each user's
own, read from `cloud_providers`, never logged, staged or reported.
"""

from __future__ import annotations

from datetime import UTC, datetime

import requests
from airflow.sdk import CronTriggerTimetable, Param, PokeReturnValue, dag, task
from airflow.sdk.exceptions import AirflowFailException
from usersync import dag_parts, infrazen_bulk, report, staging
from usersync.db import SQL_DIR, TargetDb

DB_CONN, SCHEMA = "infrazen_db", "infrazen"
db = TargetDb(DB_CONN, SCHEMA, sync="infrazen")
SKIPPED = "No auto-sync enabled providers"


def selection(dag_run):
    """The staged selection of a run: skipped users, who would be synced, the provider types it needs."""
    return staging.run_dir(dag_run.dag_id, dag_run.run_id) / "selection.json"


@dag(
    dag_id="infrazen_bulk_sync",
    description="InfraZen: every eligible user's cloud providers -> resources, complete_syncs",
    schedule=CronTriggerTimetable("0 2 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=dag_parts.default_args(db),
    tags=["usersync", "infrazen", "finops"],
    params={
        "sync_type": Param(
            "manual",
            type="string",
            enum=["manual", "scheduled", "api"],
            description="Recorded in complete_syncs.sync_type. Scheduled runs always use "
            "'scheduled'; 'api' for REST API triggers.",
        ),
        "dry_run": Param(
            False, type="boolean", description="List who would be synced, with provider counts; write nothing."
        ),
        "user_ids": Param(
            None,
            type=["null", "array"],
            items={"type": "integer"},
            description="Sync only these users (still only the eligible ones). Empty: everyone eligible.",
        ),
        "num_workers": Param(
            8,
            type="integer",
            minimum=1,
            maximum=64,
            description="Users synced at the same "
            "time within a chunk (each provider account keeps its own rate limit).",
        ),
        "batch_size": Param(
            50,
            type="integer",
            minimum=1,
            maximum=10_000,
            description="Users per chunk: one mapped task each (raised if needed to stay within 1,024 chunks).",
        ),
    },
    template_searchpath=[str(SQL_DIR)],
    user_defined_macros={"schema": SCHEMA},
    doc_md=__doc__,
)
def infrazen_bulk_sync():
    create_tables = dag_parts.create_tables(DB_CONN, SCHEMA, "infrazen", [])  # sync_runs, quarantine

    @task
    def select_users(params=None, dag_run=None) -> list[str]:
        """One query: the eligible users and their providers. Users with none are skipped; the others are staged
        as chunks (one mapped task each; their files are returned). Dry run: the list, no chunk. The selection
        (skipped users, who would be synced, the provider types needed) is staged for the sensor and the report."""
        rows = list(db.stream("select_users", {"user_ids": params["user_ids"] or None}))
        users = [{"user_id": uid, "providers": providers} for uid, providers in rows]
        to_sync = [u for u in users if u["providers"]]
        skipped = [
            {"user_id": u["user_id"], "status": "skipped", "reason": SKIPPED} for u in users if not u["providers"]
        ]
        if params["dry_run"]:
            for u in to_sync:
                print(f"would sync user {u['user_id']}: {len(u['providers'])} providers")  # noqa: T201
        size = infrazen_bulk.plan_chunks(len(to_sync), params["batch_size"])
        chunks = (
            []
            if params["dry_run"]
            else staging.split_to_staging(staging.run_prefix(dag_run.dag_id, dag_run.run_id, "users"), to_sync, size)
        )
        selection(dag_run).parent.mkdir(parents=True, exist_ok=True)
        staging.write_json(selection(dag_run), {
            "skipped": skipped, "provider_types": [] if params["dry_run"] else sorted({p["type"] for u in to_sync
                                                                                   for p in u["providers"]}),
            "would_sync": [{"user_id": u["user_id"], "providers": len(u["providers"])} for u in to_sync],
        })  # fmt: skip
        return chunks

    @task.sensor(poke_interval=30, timeout=600, mode="poke", exponential_backoff=True)
    def providers_available(dag_run=None) -> PokeReturnValue:
        """The provider APIs this run needs answer (any answer but 5xx/429: no credentials are sent)."""
        down = []
        for kind in staging.read_json(selection(dag_run))["provider_types"]:
            url = infrazen_bulk.probe_url(kind, infrazen_bulk.provider_settings(kind)["hosts"])
            try:
                status = requests.get(url, timeout=10).status_code
            except requests.RequestException as exc:
                status = type(exc).__name__
            if status == 429 or not isinstance(status, int) or status >= 500:
                down.append(f"{kind}: {status}")
        if down:
            print(f"waiting for {', '.join(down)}")  # noqa: T201
        return PokeReturnValue(is_done=not down)

    @task
    def sync_chunk(chunk: str, params=None, dag_run=None) -> dict:
        """Read every provider of the chunk's users into staging JSON (a failed provider is an outcome)."""
        prefix = staging.run_prefix(dag_run.dag_id, dag_run.run_id, "synced") / chunk.rsplit("/", 1)[-1][:-7]
        return infrazen_bulk.sync_chunk(db, chunk, prefix, params["num_workers"])

    @task(outlets=[dag_parts.table_asset(db, t) for t in ("resources", "complete_syncs")])
    def write_chunk(synced: dict, params=None, dag_run=None) -> dict:
        """One transaction: resources, then each user's complete_syncs/sync_snapshots/provider_sync_references."""
        sync_type = "scheduled" if dag_run.run_type == "scheduled" else params["sync_type"]
        return infrazen_bulk.write_chunk(db, synced["prefix"], run_id=dag_run.run_id, sync_type=sync_type)

    @task(trigger_rule="none_failed")  # also when no chunk ran (dry run, nobody to sync)
    def report_run(synced: list[dict], written: list[dict], params=None, dag_run=None) -> dict:
        selected = staging.read_json(selection(dag_run))
        users = sorted(
            [u for chunk in written for u in chunk["users"]] + selected["skipped"], key=lambda u: u["user_id"]
        )
        counts = {s: sum(u["status"] == s for u in users) for s in ("success", "failed", "skipped")}
        return report.close_run(
            db,
            dag_run,
            dry_run=params["dry_run"],
            mode="scheduled" if dag_run.run_type == "scheduled" else params["sync_type"],
            message=(f"Bulk sync completed: {counts['success']} successful, {counts['failed']} failed, "
                     f"{counts['skipped']} skipped"),
            total_users=len(users) + (len(selected["would_sync"]) if params["dry_run"] else 0),
            successful_users=counts["success"], failed_users=counts["failed"], skipped_users=counts["skipped"],
            chunks=len(synced), inserted=sum(c["inserted"] for c in written),
            updated=sum(c["updated"] for c in written), marked_deleted=sum(c["deactivated"] for c in written),
            quarantined=sum(c["quarantined"] for c in written),
            api_calls=sum(c["api_calls"] for c in synced), throttled=sum(c["throttled"] for c in synced),
            retries=sum(c["retries"] for c in synced),
            users=[infrazen_bulk.user_line(u) for u in users],
            user_results=users,
            **({"would_sync": [f"user {u['user_id']}: {u['providers']} providers" for u in selected["would_sync"]],
                "summary": f"{len(selected['would_sync'])} users with providers, {counts['skipped']} would be "
                           "skipped"} if params["dry_run"] else {}),
        )  # fmt: skip

    @task
    def check_users(reported: dict) -> None:
        """The old exit code 1: the run fails when any user failed, once every other user is synced and
        the report written."""
        if reported["failed_users"]:
            raise AirflowFailException(f"{reported['failed_users']} users failed: see the report")

    chunks = select_users()
    dag_parts.check_params() >> create_tables >> chunks
    synced = sync_chunk.expand(chunk=chunks)
    chunks >> providers_available() >> synced
    written = write_chunk.expand(synced=synced)
    check_users(report_run(synced, written))


infrazen_bulk_sync()
