"""Benchmark of infrazen_bulk_sync: 500 users x 2 providers against the sandbox with 50 ms per call.

    .venv/bin/python bench/infrazen.py                 500 users, the DAG (dag.test) next to the old loop
    .venv/bin/python bench/infrazen.py --users 100     a quicker run

Two ways to sync the same users into two copies of InfraZen's tables (schemas `infrazen` and `legacy`, seeded
alike), against one InfraZen sandbox (a separate process: `python -m sandbox infrazen --latency 0.05`, every API
answer delayed 50 ms, each account under the sandbox's per-account rate limit):

  dag         the DAG itself, `dag.test()` (tasks one after the other in this process): chunks of --batch-size
              users, --workers users at a time per chunk, COPY + set-based writes per chunk.
  sequential  the old way: users in id order, one provider after the other (the same usersync.infrazen clients),
              then row-by-row writes: one INSERT ... ON CONFLICT per resource, a complete_syncs row per user.

Then both schemas' resources and complete_syncs are compared (same rows, statuses and totals), and the sandbox's
counters give the 429s it sent and the over-limit requests it accepted. Prints a table (bench/README.md, section
"infrazen_bulk_sync").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins"), str(ROOT / "tests")]
SEED, POOL = 3, 2200  # users generated; the first --users of them with exactly 2 syncable providers are kept


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick(users: int):
    """The app rows of `users` users with exactly two syncable providers (refused credentials excluded)."""
    from sandbox.infrazen import InfraZenData

    data = InfraZenData(POOL, SEED)
    chosen = [u for u in data.eligible_users() if len(data.eligible_providers(u)) == 2
              and not {p["id"] for p in data.eligible_providers(u)} & data.bad_provider_ids][:users]  # fmt: skip
    assert len(chosen) == users, f"only {len(chosen)} users with two providers in the pool"
    keep = set(chosen)
    return (data, [u for u in data.app_users() if u["id"] in keep],
            [p for p in data.app_providers() if p["user_id"] in keep])  # fmt: skip


@contextlib.contextmanager
def sandbox(latency: float):
    port = free_port()
    log = open(tempfile.mktemp(prefix="infrazen-sandbox-", suffix=".log"), "w")  # noqa: SIM115
    process = subprocess.Popen([sys.executable, "-m", "sandbox", "infrazen", "--port", str(port), "--users",
                                str(POOL), "--seed", str(SEED), "--latency", str(latency)],
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/_sandbox/state", timeout=2).ok:
                    break
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def rate(url: str) -> dict:
    state = requests.get(f"{url}/_sandbox/state", timeout=10).json()
    return {
        p: {k: r[k] for k in ("over_limit_accepted", "early_after_429")}
        | {"throttled": state["stats"].get("throttled", 0)}
        for p, r in state["rate"].items()
    }


def sequential(url: str, pg_url: str, providers: list[dict], conns: dict) -> float:
    """The old way, user after user, provider after provider, row by row."""
    import psycopg
    from usersync.infrazen import ProviderError, sync_provider
    from usersync.infrazen_bulk import user_outcome

    settings = {k: json.loads(v) for k, v in conns.items()}
    by_user: dict[int, list[dict]] = {}
    for p in sorted(providers, key=lambda p: (p["user_id"], p["created_at"])):
        by_user.setdefault(p["user_id"], []).append(p)
    started = time.monotonic()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SET search_path TO legacy")
        for user_id, mine in by_user.items():
            began = time.monotonic()
            outcomes = []
            for order, p in enumerate(mine, 1):
                kind = p["provider_type"]
                conn_settings = settings[f"AIRFLOW_CONN_INFRAZEN_{kind.upper()}"]
                hosts = {"host": conn_settings["host"], **{k: v for k, v in conn_settings["extra"].items()
                                                           if k.endswith("_host")}}  # fmt: skip
                outcome = {"provider_id": p["id"], "name": p["connection_name"], "type": kind, "sync_order": order}
                try:
                    found = sync_provider(kind, json.dumps(p["credentials"]), hosts, rate_limit="8/s",
                                          backoff=0.05, page_size=1000)  # fmt: skip
                except ProviderError as exc:
                    outcome.update(status="error", error=str(exc), resources=0, cost=0.0, complete=False)
                else:
                    outcome.update(status="success", error=None, resources=len(found.resources),
                                   cost=found.total_daily_cost, complete=found.complete)  # fmt: skip
                    for r in found.resources:  # one statement per resource: the old way
                        conn.execute(
                            "INSERT INTO resources (provider_id, resource_id, resource_type, resource_name,"
                            " service_name, region, status, external_ip, effective_cost, daily_cost, original_cost,"
                            " currency, billing_period, cost_period, cost_frequency, provider_config, is_active,"
                            " last_sync) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,true,now())"
                            " ON CONFLICT (provider_id, resource_id, resource_type) DO UPDATE SET"
                            " status = EXCLUDED.status, daily_cost = EXCLUDED.daily_cost, last_sync = now()",
                            (p["id"], r["resource_id"], r["resource_type"], r["resource_name"], r["service_name"],
                             r["region"], r["status"], r["external_ip"], r["effective_cost"], r["daily_cost"],
                             r["original_cost"], r["currency"], r["billing_period"], r["cost_period"],
                             r["cost_frequency"], json.dumps(r["provider_config"])))  # fmt: skip
                outcomes.append(outcome)
            row = user_outcome({"user_id": user_id}, outcomes, "now", time.monotonic() - began)
            conn.execute(
                "INSERT INTO complete_syncs (user_id, sync_type, sync_status, sync_started_at, total_providers_synced,"
                " successful_providers, failed_providers, total_resources_found, total_daily_cost,"
                " total_monthly_cost) VALUES (%s, 'manual', %s, now(), %s, %s, %s, %s, %s, %s)",
                (user_id, row["status"], row["providers"], row["successful"], row["failed"], row["resources"],
                 row["daily_cost"], row["monthly_cost"]))  # fmt: skip
    return time.monotonic() - started


def tables(pg_url: str, schema: str) -> tuple[list, list]:
    import psycopg

    with psycopg.connect(pg_url) as conn:
        resources = conn.execute(
            f"SELECT provider_id, resource_id, resource_type, resource_name, status, round(daily_cost::numeric, 4),"
            f" is_active FROM {schema}.resources ORDER BY 1, 2, 3").fetchall()  # fmt: skip
        syncs = conn.execute(
            f"SELECT user_id, sync_status, total_providers_synced, successful_providers, total_resources_found,"
            f" round(total_daily_cost::numeric, 2) FROM {schema}.complete_syncs ORDER BY 1").fetchall()  # fmt: skip
    return resources, syncs


def task_seconds(run) -> dict[str, float]:
    """Seconds per task (mapped instances summed), from each instance's start and end."""
    seconds: dict[str, float] = {}
    for ti in run.get_task_instances():
        seconds[ti.task_id] = seconds.get(ti.task_id, 0.0) + (ti.end_date - ti.start_date).total_seconds()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--skip-sequential", action="store_true", help="the DAG only (no comparison)")
    args = parser.parse_args()

    from tools.airflow_env import airflow_env

    home = Path(tempfile.mkdtemp(prefix="usersync-bench-infrazen-"))
    os.environ.update(airflow_env(home, home / "staging", log_level="WARNING"))
    from tools.app_tables import seed_infrazen
    from tools.embedded_pg import running

    data, users, providers = pick(args.users)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, home, ignore_errors=True)
        pg = cleanup.enter_context(running(home / "pg"))
        url = cleanup.enter_context(sandbox(args.latency))
        from test_infrazen_bulk_sync import provider_conns

        conns = provider_conns(url, rate_limit="8/s")
        os.environ.update(conns)
        os.environ["AIRFLOW_CONN_INFRAZEN_DB"] = pg.url.replace("postgresql://", "postgres://")
        for schema in ("infrazen", "legacy"):
            seed_infrazen(pg.url, schema, users, providers)

        eligible = [p for p in providers if data.is_eligible(p)]
        seq_s = None if args.skip_sequential else sequential(url, pg.url, eligible, conns)
        seq_rate = rate(url)
        requests.post(f"{url}/_sandbox/reset", timeout=10)

        from airflow.utils.db import upgradedb
        from dagrun import run_dag

        upgradedb()
        # A dry run first (no provider called, nothing written): dag.test's one-time start-up in this process
        # (its in-process execution API, imports) is paid there, not by the measured run.
        started = time.monotonic()
        run, states = run_dag("infrazen_bulk_sync", {"dry_run": True})
        cold_s = time.monotonic() - started
        assert str(run.state) == "success", states
        started = time.monotonic()
        run, states = run_dag("infrazen_bulk_sync", {"num_workers": args.workers, "batch_size": args.batch_size})
        dag_s = time.monotonic() - started
        dag_rate = rate(url)
        assert str(run.state) == "success", states
        tasks = task_seconds(run)
        same = tables(pg.url, "infrazen") == tables(pg.url, "legacy")
        if not same and seq_s is not None:
            for a, b in zip(*(tables(pg.url, s) for s in ("infrazen", "legacy")), strict=True):
                print("differ:", sorted(set(a) ^ set(b))[:6])
        resources = len(tables(pg.url, "infrazen")[0])

    sequential_rows = (
        [
            ("sequential loop (old way)", f"{seq_s:.1f} s ({seq_s / args.users:.2f} s per user)"),
            ("speed-up", f"{seq_s / dag_s:.1f}x (target >= 10x)"),
            ("429s sent, DAG / sequential", f"{dag_rate['yandex']['throttled']} / {seq_rate['yandex']['throttled']}"),
            ("over-limit accepted, sequential", str({p: r["over_limit_accepted"] for p, r in seq_rate.items()})),
            ("same final tables (resources, complete_syncs)", str(same)),
        ]
        if seq_s is not None
        else [("429s sent, DAG", str(dag_rate["yandex"]["throttled"]))]
    )
    rows = [
        ("users x providers", f"{args.users} x 2, {resources:,} resources"),
        ("latency per call", f"{args.latency * 1000:.0f} ms"),
        ("DAG dry run before (dag.test's start-up in this process)", f"{cold_s:.1f} s"),
        (f"DAG (dag.test, {args.workers} workers, chunks of {args.batch_size})", f"{dag_s:.1f} s"),
        ("DAG tasks (s; mapped ones summed)", ", ".join(f"{t} {s:.1f}" for t, s in tasks.items())),
        ("over-limit accepted / early after 429, DAG",
         str({p: (r["over_limit_accepted"], r["early_after_429"]) for p, r in dag_rate.items()})),
        *sequential_rows,
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))


if __name__ == "__main__":
    main()
