"""InfraZen bulk sync (spec /work/shared/specs/infrazen.md §1): what the DAG `infrazen_bulk_sync` does per chunk.

``sync_chunk`` reads every provider of a chunk's users (``num_workers`` users at a time, each provider account
under its own rate limit, lists paged to the end: usersync.infrazen) and stages, as JSON, the resources found and
one outcome per provider and per user, with the statuses and totals of the spec. ``write_chunk`` writes a chunk
in one transaction: COPY, ``resources_delta``, one set-based upsert, then the bookkeeping rows. When that fails
(a database error), it is redone user by user, each in its own savepoint, so only the users whose write fails are
rolled back, and reported failed with the database's error.

Credentials are read from ``cloud_providers`` by the chunk that uses them and stay in its memory: staging files,
XCom and reports hold ids, statuses, counts, costs and error texts (masked) only.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import re
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
from airflow.sdk import BaseHook, ObjectStoragePath
from airflow.sdk.exceptions import AirflowNotFoundException
from psycopg import sql

from usersync import staging
from usersync.db import TargetDb
from usersync.entities import INFRAZEN_RESOURCES
from usersync.entity import stage_sql
from usersync.infrazen import (
    DEFAULT_HOSTS,
    PROVIDER_TYPES,
    ProviderError,
    credential_secrets,
    sync_provider,
)
from usersync.load import COPY_RAW, _quarantine
from usersync.masking import mask_secrets
from usersync.report import error_text

log = logging.getLogger(__name__)

MAX_CHUNKS = 1024  # Airflow's default max_map_length: a mapped task has at most this many instances
HOST_EXTRAS = ("identity_host", "region_host", "cloud_host")
CLIENT_EXTRAS = {"rate_limit": str, "timeout": float, "max_retries": int, "backoff": float, "page_size": int}


def conn_id(provider_type: str) -> str:
    return f"infrazen_{provider_type}"


def provider_settings(provider_type: str) -> dict[str, Any]:
    """The `infrazen_<type>` connection: hosts (host templates, real hosts by default) and client options.
    It holds no credentials: those are each user's own, in cloud_providers."""
    try:
        conn = BaseHook.get_connection(conn_id(provider_type))
    except AirflowNotFoundException:
        return {"hosts": dict(DEFAULT_HOSTS[provider_type]), "options": {}}
    extra = conn.extra_dejson
    hosts = {k: extra[k] for k in HOST_EXTRAS if extra.get(k)}
    if conn.host:
        hosts["host"] = conn.host
    options = {k: kind(extra[k]) for k, kind in CLIENT_EXTRAS.items() if extra.get(k) not in (None, "")}
    return {"hosts": {**DEFAULT_HOSTS[provider_type], **hosts}, "options": options}


def probe_url(provider_type: str, hosts: dict[str, str]) -> str:
    """An API call that answers without credentials (401, or Beget's HTTP-200 error envelope) when the API is up."""
    if provider_type == "yandex":
        return hosts["host"].format(service="resource-manager").rstrip("/") + "/resource-manager/v1/clouds"
    if provider_type == "selectel":
        return hosts["host"].rstrip("/") + "/vpc/resell/v2/accounts"
    return hosts["host"].rstrip("/") + "/api/user/getAccountInfo"


def plan_chunks(users: int, batch_size: int) -> int:
    """Users per chunk: batch_size, larger when needed to stay within MAX_CHUNKS mapped instances."""
    return max(batch_size, math.ceil(users / MAX_CHUNKS), 1)


# ---------------------------------------------------------------------------------------------- fetch


def _now() -> str:
    return datetime.now(UTC).isoformat()


def sync_user(user: dict, credentials: dict[int, str], settings: dict[str, dict]) -> tuple[dict, list[dict], list]:
    """One user's providers, one after the other in created_at order: (user outcome, provider outcomes,
    resources). A provider's failure is an outcome (status error, its own message and duration), never raised."""
    started, clock = _now(), time.monotonic()
    outcomes, resources = [], []
    for order, provider in enumerate(user["providers"], start=1):
        kind, pid = provider["type"], provider["id"]
        began = _now()
        outcome = {
            "user_id": user["user_id"],
            "provider_id": pid,
            "sync_order": order,
            "type": kind,
            "name": provider["name"],
            "started_at": began,
        }
        try:
            if kind not in PROVIDER_TYPES:
                raise ProviderError(f"Connection failed: unknown provider type {kind!r}", connection=True)
            found = sync_provider(kind, credentials[pid], settings[kind]["hosts"], **settings[kind]["options"])
        except ProviderError as exc:
            message = error_text(str(exc))
            outcome.update(
                status="error",
                error=message,
                duration=round(exc.duration),
                resources=0,
                cost=0.0,
                complete=False,
                stats=exc.stats,
                error_details={"connection": exc.connection},
                sync_config={"sync_success": False, "resources_synced": 0, "total_cost": 0, "errors": [message]},
            )
        else:
            errors = [error_text(e) for e in found.errors]
            outcome.update(
                status="success",
                error="; ".join(errors) or None,
                duration=round(found.duration),
                resources=len(found.resources),
                cost=found.total_daily_cost,
                complete=found.complete,
                stats=found.stats,
                metadata=found.metadata,
                error_details={"partial": errors} if errors else None,
                sync_config={
                    "sync_success": True,
                    "resources_synced": len(found.resources),
                    "total_cost": found.total_daily_cost,
                    "errors": errors,
                    "account_id": found.account_id,
                },
            )
            resources += [{**r, "user_id": user["user_id"], "provider_id": pid} for r in found.resources]
        outcome["completed_at"] = _now()
        outcomes.append(outcome)
    return user_outcome(user, outcomes, started, time.monotonic() - clock), outcomes, resources


def user_outcome(user: dict, outcomes: list[dict], started: str, seconds: float) -> dict:
    """The complete_syncs row (spec §1.6): success without failures, error when every provider failed, else
    partial; a provider read only in part (a list failed) makes it partial too (the original reported success)."""
    failed = [o for o in outcomes if o["status"] == "error"]
    incomplete = [o for o in outcomes if o["status"] == "success" and not o["complete"]]
    if not failed and not incomplete:
        status, message = "success", None
    elif len(failed) == len(outcomes):
        status, message = "error", "All provider syncs failed"
    else:
        status = "partial"
        message = "; ".join(
            filter(
                None,
                [
                    f"{len(failed)} provider syncs failed" if failed else None,
                    f"{len(incomplete)} provider syncs incomplete" if incomplete else None,
                ],
            )
        )
    daily = round(sum(o["cost"] for o in outcomes), 2)
    return {
        "user_id": user["user_id"], "status": status, "started_at": started, "completed_at": _now(),
        "duration": round(seconds), "seconds": round(seconds, 2), "providers": len(outcomes),
        "successful": len(outcomes) - len(failed), "failed": len(failed),
        "resources": sum(o["resources"] for o in outcomes), "daily_cost": daily, "monthly_cost": round(daily * 30, 2),
        "cost_by_provider": {o["name"]: o["cost"] for o in outcomes},
        "resources_by_provider": {o["name"]: o["resources"] for o in outcomes},
        "error_message": message,
        "error_details": {"provider_errors": [{"provider": o["name"], "error": o["error"]}
                                              for o in failed + incomplete]} if message else None,
        "sync_config": {"user_id": user["user_id"], "providers_count": len(outcomes), "sync_timestamp": started,
                        "providers": [{"id": o["provider_id"], "name": o["name"], "type": o["type"]}
                                      for o in outcomes]},
    }  # fmt: skip


def sync_chunk(db: TargetDb, chunk: str, prefix: ObjectStoragePath, num_workers: int) -> dict[str, Any]:
    """Read every provider of the chunk's users, `num_workers` users at a time; stage resources.ndjson,
    providers.ndjson and users.ndjson under `prefix`. A retry of a chunk that staged everything does nothing."""
    if manifest := staging.read_json(prefix / "_manifest.json"):
        return manifest
    users = staging.read_ndjson(chunk)
    provider_ids = [p["id"] for u in users for p in u["providers"]]
    with db.transaction() as cur:
        cur.execute(db.sql("chunk_credentials"), {"provider_ids": provider_ids})
        credentials = {pid: text for pid, _, text in cur.fetchall()}
    mask_secrets(s for text in credentials.values() for s in credential_secrets(text))  # all at once: one regex
    settings = {kind: provider_settings(kind) for kind in {p["type"] for u in users for p in u["providers"]}}
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="infrazen") as pool:
        results = list(pool.map(lambda u: sync_user(u, credentials, settings), users))
    credentials.clear()
    prefix.mkdir(parents=True, exist_ok=True)
    staging.write_ndjson(prefix / "resources.ndjson", (r for _, _, found in results for r in found))
    staging.write_ndjson(
        prefix / "providers.ndjson",
        ({k: v for k, v in o.items() if k != "stats"} for _, outs, _ in results for o in outs),
    )
    staging.write_ndjson(prefix / "users.ndjson", (u for u, _, _ in results))
    stats = [o.get("stats") or {} for _, outs, _ in results for o in outs]
    manifest = {
        "prefix": str(prefix), "users": len(users), "providers": len(provider_ids),
        "resources": sum(len(found) for _, _, found in results),
        "api_calls": sum(s.get("api_calls", 0) for s in stats), "throttled": sum(s.get("throttled", 0) for s in stats),
        "retries": sum(s.get("retries", 0) for s in stats),
        "token_renewals": sum(s.get("token_renewals", 0) for s in stats),
        "duration_s": round(time.monotonic() - started, 2),
    }  # fmt: skip
    staging.write_json(prefix / "_manifest.json", manifest)
    log.info("chunk read: %s", manifest)
    return manifest


# ---------------------------------------------------------------------------------------------- write


def _statements(text: str) -> list[str]:
    """A file's statements (psycopg sends statements with parameters one at a time)."""
    return [
        s
        for s in re.split(r";\s*\n", text)
        if s.strip() and not all(line.strip().startswith("--") or not line.strip() for line in s.splitlines())
    ]


def run_script(db: TargetDb, cur: Any, name: str, params: dict[str, Any]) -> list[dict]:
    """Execute a named SQL file statement by statement; the last statement's rows as dicts."""
    rows: list[dict] = []
    for statement in _statements(db.sql(name)):
        cur.execute(statement, params)
        rows = (
            [dict(zip([c.name for c in cur.description], row, strict=True)) for row in cur.fetchall()]
            if cur.description
            else []
        )
    return rows


def _copy(cur: Any, table: str, path: ObjectStoragePath) -> None:
    with cur.copy(COPY_RAW.format(table)) as copy, path.open("rb") as f:
        while block := f.read(1 << 20):
            copy.write(block)


def _stage(db: TargetDb, cur: Any, run_id: str) -> dict[str, Any]:
    """resources_raw -> resources_delta (a TEMP table of the declared columns), by the statement generated from
    the declaration: a record the resources table cannot hold is quarantined with its reason, the last record
    per resource wins. Returns received, staged, quarantined, duplicates."""
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type)) for c in INFRAZEN_RESOURCES.columns
    )
    cur.execute(sql.SQL("CREATE TEMP TABLE resources_delta ({}) ON COMMIT DROP").format(columns))
    cur.execute(stage_sql(INFRAZEN_RESOURCES, run_id, quarantine=_quarantine(db)))
    return dict(zip([c.name for c in cur.description], cur.fetchone(), strict=True))


def write_chunk(db: TargetDb, prefix: str, *, run_id: str, sync_type: str) -> dict[str, Any]:
    """Write one chunk in one transaction (see the module docstring); returns the users' report lines and the
    resource counts."""
    folder = ObjectStoragePath(prefix)
    users = staging.read_ndjson(folder / "users.ndjson")
    providers = staging.read_ndjson(folder / "providers.ndjson")
    db_errors: dict[int, str] = {}
    with db.transaction() as cur:
        run_script(db, cur, "create_chunk_tables", {})
        _copy(cur, "resources_raw", folder / "resources.ndjson")
        _copy(cur, "provider_outcomes", folder / "providers.ndjson")
        _copy(cur, "user_outcomes", folder / "users.ndjson")

        staged = _stage(db, cur, run_id)  # every record checked (and quarantined) once, whatever follows
        totals = {"inserted": 0, "updated": 0, "deactivated": 0}

        def write(user_ids: list[int] | None) -> None:
            # Only providers read completely may lose resources (of the users written now: those the write reads).
            complete = [
                p["provider_id"]
                for p in providers
                if p["status"] == "success" and p["complete"] and (user_ids is None or p["user_id"] in user_ids)
            ]
            params = {"users": user_ids, "run_id": run_id, "sync_type": sync_type, "complete": complete}
            counts = run_script(db, cur, "write_resources", params)[0]
            run_script(db, cur, "write_syncs", params)
            for key in totals:
                totals[key] += counts[key]

        cur.execute("SAVEPOINT chunk")
        try:
            write(None)  # the whole chunk at once: the usual case
        except psycopg.Error as exc:
            log.warning("chunk write failed (%s): writing its users one by one", error_text(exc))
            cur.execute("ROLLBACK TO SAVEPOINT chunk")
            for key in totals:
                totals[key] = 0
            for user in users:
                cur.execute("SAVEPOINT chunk_user")
                try:
                    write([user["user_id"]])
                except psycopg.Error as user_exc:
                    cur.execute("ROLLBACK TO SAVEPOINT chunk_user")
                    db_errors[user["user_id"]] = error_text(f"database error: {user_exc}".strip())
                    log.error("user %s not written, rolled back: %s", user["user_id"], db_errors[user["user_id"]])
                cur.execute("RELEASE SAVEPOINT chunk_user")
        cur.execute("RELEASE SAVEPOINT chunk")
    lines = []
    for user in users:
        error = db_errors.get(user["user_id"]) or user["error_message"]
        outcome = "failed" if user["status"] == "error" or user["user_id"] in db_errors else "success"
        lines.append({"user_id": user["user_id"], "status": outcome,
                      "sync_status": "error" if user["user_id"] in db_errors else user["status"],
                      "providers": user["providers"], "successful_providers": user["successful"],
                      "failed_providers": user["failed"], "resources": user["resources"],
                      "daily_cost": user["daily_cost"], "duration_s": user["seconds"], "error": error})  # fmt: skip
    return {"users": lines, **totals, "quarantined": staged["quarantined"]}


def user_line(u: dict) -> str:
    """A user's line in the logged report (ids, no email: emails stay out of logs)."""
    mark = {"success": "✓", "failed": "✗", "skipped": "○"}[u["status"]]
    if u["status"] == "skipped":
        return f"{mark} user {u['user_id']}  skipped  {u['reason']}"
    text = (
        f"{mark} user {u['user_id']}  {u['status']} ({u['sync_status']})  providers "
        f"{u['successful_providers']}/{u['providers']}  resources {u['resources']}  "
        f"daily {u['daily_cost']:.2f} RUB  {u['duration_s']}s"
    )
    return text + (f"  error: {u['error']}" if u.get("error") else "")


def json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
