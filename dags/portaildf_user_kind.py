"""
### portaildf_user_kind: classify every application user from the Cerema Portail DF directory

Daily: wait for the API, check the application's `users` table, pick the users to check (all with an email,
or only those without a kind), look them up in chunks of `batch_size` (one mapped task per chunk, retried
alone; `num_workers` concurrent requests under the connection's rate limit), stage the answers as JSON,
COPY them into `users_delta`, set `users.kind` where it differs in one transaction, and report.

| exterieur | gestionnaire | kind |
|---|---|---|
| true | false | `prestataire` |
| false | true | `gestionnaire` |
| true | true | `prestataire, gestionnaire` |
| false | false | `aucun` |

Users the directory does not know, and lookups that keep failing, are reported and left as they are.

Connections: `portaildf_api` (http: host, login/password, extra `api_version` "1" or "2", `rate_limit`,
`timeout`) and `portaildf_db` (the application's Postgres; its `users` table lives in schema `portaildf`).
"""

from __future__ import annotations

import functools

from airflow.sdk import CronTriggerTimetable, ObjectStoragePath, Param, dag, task
from usersync import dag_parts, load, pipeline, portaildf, report, staging
from usersync.api import AuthError
from usersync.db import TargetDb
from usersync.entities import PORTAILDF_LOOKUPS

API_CONN, DB_CONN, SCHEMA = "portaildf_api", "portaildf_db", "portaildf"
db = TargetDb(DB_CONN, SCHEMA, sync="portaildf")


@dag(
    **pipeline.dag_args(
        "portaildf_user_kind",
        db=db,
        description="Cerema Portail DF directory -> portaildf.users.kind",
        schedule=CronTriggerTimetable("0 3 * * *", timezone="UTC"),
        doc=__doc__,
        tags=["users"],
        dry_run="Look everyone up and report the kind changes (old kind -> new kind) without writing them.",
        params={
            "limit": Param(
                None,
                type=["null", "integer"],
                minimum=1,
                description="Check at most this many users (in id order). Empty: all of them.",
            ),
            "batch_size": Param(
                1000,
                type="integer",
                minimum=1,
                maximum=100_000,
                description="Users per lookup chunk: one mapped task each, retried on its own.",
            ),
            "num_workers": Param(
                4,
                type="integer",
                minimum=1,
                maximum=64,
                description="Concurrent requests per chunk. The connection's rate_limit caps them all together.",
            ),
            "only_missing": Param(False, type="boolean", description="Check only the users whose kind is empty."),
        },
    )
)
def portaildf_user_kind():
    # Without a token the API answers 401: it is up (the lookups check the credentials).
    api_available = dag_parts.api_sensor(API_CONN, "api/utilisateurs", up=(200, 401, 403))

    @task
    def select_users(params=None, dag_run=None) -> list[str]:
        """Stage the users to check as chunks of batch_size; returns the chunks' files."""
        rows = db.stream("select_users", {"only_missing": params["only_missing"], "limit": params["limit"]})
        users = ({"id": user_id, "email": email} for user_id, email in rows)
        prefix = staging.run_prefix(dag_run.dag_id, dag_run.run_id, "to_check")
        return staging.split_to_staging(prefix, users, params["batch_size"])

    @task(max_active_tis_per_dag=1)  # chunks share the API's rate limit: one at a time, each at full speed
    def look_up_chunk(chunk: str, params=None, dag_run=None, ti=None) -> dict:
        lookups = staging.run_prefix(dag_run.dag_id, dag_run.run_id, "lookups")
        refused = lookups / "_login_refused.json"  # one refused login per run: the next chunks do not try
        if (earlier := staging.read_json(refused)) and ti.try_number == 1:  # a chunk cleared by hand does
            raise AuthError(f"an earlier chunk of this run was refused the login: {earlier['error']}")
        # The chunks take turns on one account: each starts from the calls the previous one left in the windows.
        try:
            with portaildf.client(API_CONN, hand_over=lookups / "_recent_calls.json") as api:
                return staging.fan_out_to_staging(
                    lookups / ObjectStoragePath(chunk).stem,
                    staging.read_ndjson(chunk),
                    functools.partial(portaildf.lookup_user, api),
                    api,
                    params["num_workers"],
                    failed=portaildf.lookup_failed,
                )
        except AuthError as exc:
            staging.write_json(refused, {"error": str(exc)})
            raise

    @task(trigger_rule="none_failed")  # also when there was no user to check
    def stage_answers(looked_up: list[dict], dag_run=None) -> dict:
        return load.stage(db, PORTAILDF_LOOKUPS, [chunk["prefix"] for chunk in looked_up], dag_run.run_id)

    @task(outlets=[dag_parts.table_asset(db, "users")])
    def update_kinds(staged: dict, params=None, dag_run=None) -> dict:
        return load.upsert(db, PORTAILDF_LOOKUPS, run_id=dag_run.run_id, dry_run=params["dry_run"])

    @task(trigger_rule="none_failed")
    def report_run(looked_up: list[dict], staged: dict, written: dict, params=None, dag_run=None) -> dict:
        chunks = list(looked_up)
        calls = sum(c["api_calls"] for c in chunks)
        seconds = sum(c["duration_s"] for c in chunks)
        return report.close_run(
            db,
            dag_run,
            dry_run=params["dry_run"],
            mode="only_missing" if params["only_missing"] else "all",
            processed=sum(c["records"] for c in chunks),
            chunks=len(chunks),
            updated=written["updated"],
            unchanged=written["unchanged"],
            not_found=written["not_found"],
            failed=written["failed"],
            ambiguous=written["ambiguous"],
            quarantined=staged["quarantined"],
            kinds=written["kinds"],
            transitions=written["transitions"],
            api_calls=calls,
            requests_per_s=round(calls / seconds, 1) if seconds else 0.0,
            throttled=sum(c["throttled"] for c in chunks),
            retries=sum(c["retries"] for c in chunks),
            not_found_ids=written["not_found_ids"],
            failures=written["failures"],
        )

    chunks = select_users()
    # The application owns `users`: this sync checks it and makes only its own users_delta (and users_raw).
    pipeline.preflight(db, api_available, entities=[PORTAILDF_LOOKUPS], statements=["check_users_table"]) >> chunks
    looked_up = look_up_chunk.expand(chunk=chunks)
    staged = stage_answers(looked_up)
    written = update_kinds(staged)
    report_run(looked_up, staged, written)


portaildf_user_kind()
