"""The demo: every DAG once, end to end, against the sandbox APIs and a Postgres, printing each run's report.

    scripts/demo                 embedded Postgres under .demo/ (or --db-url URL), sandbox APIs, every DAG once
    scripts/demo ui              the same services, then `airflow standalone` on the same environment

Everything lives under .demo/ (Airflow home, Postgres data, staging, logs); delete it to start over.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import requests

from sandbox import ds, gazelle, grist, portaildf
from tools.airflow_env import airflow_env

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / ".demo"
SANDBOX_CLIENT_ID, SANDBOX_SECRET = "usersync-sandbox-uid", "usersync-sandbox-secret"


def demo_env(db_url: str, urls: dict[str, str], rate_per_second: int, gazelle_grant: str) -> dict[str, str]:
    """Airflow's environment, with the connections of every sync."""
    home = DEMO / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        **airflow_env(home, DEMO / "staging"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")]),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **connections(db_url, urls, rate_per_second, gazelle_grant),
        **infrazen_env(db_url, urls["infrazen"]),
    }


def connections(db_url: str, urls: dict[str, str], rate_per_second: int, gazelle_grant: str) -> dict[str, str]:
    """One API and one DB connection per sync (every DB connection to the same Postgres), as environment variables;
    `urls`: each sandbox's base URL. (InfraZen's: infrazen_env.)"""
    return {
        "AIRFLOW_CONN_INTRA42_DB": db_url,
        "AIRFLOW_CONN_INTRA42_API": json.dumps(
            {
                "conn_type": "http",
                "host": urls["intra42"],
                "login": SANDBOX_CLIENT_ID,
                "password": SANDBOX_SECRET,
                "extra": {"rate_limit": f"{rate_per_second}/s,1200/h"},
            }
        ),
        "AIRFLOW_CONN_PORTAILDF_DB": db_url,
        "AIRFLOW_CONN_PORTAILDF_API": json.dumps(
            {
                "conn_type": "http",
                "host": urls["portaildf"],
                "login": portaildf.DEFAULT_USERNAME,
                "password": portaildf.DEFAULT_PASSWORD,
                "extra": {"api_version": "1", "rate_limit": "50/s", "timeout": 10},
            }
        ),
        "AIRFLOW_CONN_GAZELLE_DB": db_url,
        "AIRFLOW_CONN_GAZELLE_API": json.dumps(
            {
                "conn_type": "http",
                "host": urls["gazelle"],
                "login": gazelle.DEFAULT_CLIENT_ID,
                "password": gazelle.DEFAULT_CLIENT_SECRET,
                "extra": {"refresh_token": gazelle_grant, "rate_limit": "20/s"},
            }
        ),
        # ds_to_grist: the configurations of dags/ds_to_grist.yaml name these connections
        "AIRFLOW_CONN_DS_TO_GRIST_DB": db_url,
        "AIRFLOW_CONN_DS_API": json.dumps(
            {"conn_type": "http", "host": urls["ds"], "password": ds.DEFAULT_TOKEN, "extra": {"rate_limit": "400/m"}}
        ),
        "AIRFLOW_CONN_GRIST_API": json.dumps(
            {"conn_type": "http", "host": urls["grist"], "password": grist.DEFAULT_API_KEY}
        ),
    }


def infrazen_env(db_url: str, url: str) -> dict[str, str]:
    """infrazen_bulk_sync's connections: the app DB, and each provider's hosts pointed at the InfraZen sandbox."""
    hosts = {
        "yandex": {"host": f"{url}/yandex/{{service}}", "extra": {}},
        "selectel": {"host": f"{url}/selectel/api", "extra": {"identity_host": f"{url}/selectel/cloud",
                                                               "region_host": f"{url}/selectel/regions/{{region}}"}},
        "beget": {"host": f"{url}/beget", "extra": {"cloud_host": f"{url}/beget"}},
    }  # fmt: skip
    return {
        "AIRFLOW_CONN_INFRAZEN_DB": db_url,
        **{f"AIRFLOW_CONN_INFRAZEN_{k.upper()}": json.dumps({"conn_type": "http", **v}) for k, v in hosts.items()},
    }


@contextlib.contextmanager
def postgres(db_url: str | None):
    """The given database, or the project's embedded one under .demo/pg (kept between demos)."""
    if db_url:
        yield db_url
        return
    from tools.embedded_pg import EmbeddedPostgres, free_port, reachable_by_owner

    home = DEMO
    if not reachable_by_owner(ROOT.parent):  # the server's user cannot reach .demo/: keep the data in /tmp
        home = Path(tempfile.gettempdir()) / f"usersync-demo-{hashlib.sha1(bytes(ROOT)).hexdigest()[:8]}"
    pg = EmbeddedPostgres(home / "pg", free_port())
    pg.stop()  # a previous demo interrupted hard may have left it running
    pg.start()
    try:
        yield pg.url.replace("postgresql://", "postgres://")
    finally:
        pg.stop()


@contextlib.contextmanager
def sandbox(api: str, port: int, *args: str):
    """`python -m sandbox <api>` in the background, until the block ends."""
    log = open(DEMO / f"sandbox-{api}.log", "w")  # noqa: SIM115 -- closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", api, "--port", str(port), *args],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            with contextlib.suppress(requests.ConnectionError):
                requests.get(f"{url}/_sandbox/state", timeout=2)
                break
            if proc.poll() is not None:
                raise SystemExit(f"the {api} sandbox did not start: see {log.name}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def airflow(env: dict[str, str], *args: str, log: Path | None = None) -> int:
    out = open(log, "w") if log else None  # noqa: SIM115 -- closed below
    try:
        return subprocess.run(["airflow", *args], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT).returncode
    finally:
        if out:
            out.close()


def dag_ids() -> list[str]:
    """Each DAG file's dag_id, read from the file name (one DAG per file, named after it), and the DAGs
    dags/ds_to_grist.py generates, one per configuration of dags/ds_to_grist.yaml."""
    from usersync import ds_grist

    files = sorted(p.stem for p in (ROOT / "dags").glob("*.py") if not p.name.startswith("_"))
    generated = [c.dag_id for c in ds_grist.configurations(ds_grist.CONFIG_FILE.read_text())]
    return [name for name in files if name != "ds_to_grist"] + generated


def latest_report(db_url: str, dag_id: str, run_id: str | None = None) -> dict | None:
    """The newest sync_runs row of a DAG (or of one of its runs), whichever schema the DAG writes to."""
    import psycopg

    with psycopg.connect(db_url.replace("postgres://", "postgresql://")) as conn:
        schemas = [r[0] for r in conn.execute("SELECT schemaname FROM pg_tables WHERE tablename = 'sync_runs'")]
        rows = [
            conn.execute(
                f'SELECT finished_at, report FROM "{s}".sync_runs WHERE dag_id = %s AND run_id = coalesce(%s, run_id) '
                "ORDER BY finished_at DESC LIMIT 1",
                (dag_id, run_id),
            ).fetchone()
            for s in schemas
        ]
    rows = [r for r in rows if r]
    return max(rows)[1] if rows else None


def run_all(env: dict[str, str], db_url: str) -> int:
    from usersync.report import format_report

    failures = 0
    for dag_id in dag_ids():
        log = DEMO / "logs" / f"{dag_id}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"== {dag_id}: running (log: {log.relative_to(ROOT)})", flush=True)
        started = datetime.now(UTC).isoformat()
        code = airflow(env, "dags", "test", dag_id, log=log)
        report = latest_report(db_url, dag_id)
        if code != 0 or report is None or report["finished_at"] < started:
            failures += 1
            print(f"!! {dag_id} failed (exit {code}): see {log}\n")
            continue
        print(format_report(report) + "\n", flush=True)
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", choices=["run", "ui"], default="run")
    parser.add_argument("--db-url", help="target Postgres for every sync (default: an embedded one in .demo/pg)")
    parser.add_argument("--students", type=int, default=40335, help="42 sandbox size (default 40,335)")
    parser.add_argument(
        "--portaildf-users", type=int, default=1234, help="rows of the housing platform's users table (default 1,234)"
    )
    parser.add_argument(
        "--rate",
        type=int,
        default=20,
        help="42 sandbox requests per second (the real API allows 2; default 20 for a quick demo)",
    )
    parser.add_argument(
        "--infrazen-users",
        type=int,
        default=300,
        help="InfraZen users (with their cloud providers) the sandbox and app tables hold",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the services below are stopped on kill too
    DEMO.mkdir(exist_ok=True)
    sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]
    from sandbox.infrazen import InfraZenData
    from tools.app_tables import seed_infrazen, seed_portaildf_users
    from tools.embedded_pg import free_port

    # Each demo's Gazelle sandbox starts afresh: a new grant makes the sync start from it, not from the
    # refresh token an earlier demo saved.
    gazelle_grant = f"demo-grant-{secrets.token_hex(8)}"
    with (
        postgres(args.db_url) as db_url,
        sandbox(
            "intra42",
            free_port(),
            "--students",
            str(args.students),
            "--per-second",
            str(args.rate),
            "--client-id",
            SANDBOX_CLIENT_ID,
            "--client-secret",
            SANDBOX_SECRET,
        ) as intra42_url,
        sandbox("portaildf", free_port(), "--users", str(args.portaildf_users), "--per-second", "50") as portaildf_url,
        sandbox("gazelle", free_port(), "--refresh-token", gazelle_grant, "--per-second", "20") as gazelle_url,
        sandbox("ds", free_port()) as ds_url,
        sandbox("grist", free_port()) as grist_url,
        sandbox("infrazen", free_port(), "--users", str(args.infrazen_users)) as infrazen_url,
    ):
        urls = {
            "intra42": intra42_url,
            "portaildf": portaildf_url,
            "gazelle": gazelle_url,
            "ds": ds_url,
            "grist": grist_url,
            "infrazen": infrazen_url,
        }
        env = demo_env(db_url, urls, args.rate, gazelle_grant)
        infrazen_data = InfraZenData(args.infrazen_users)
        added_users, added_providers = seed_infrazen(
            db_url.replace("postgres://", "postgresql://"),
            "infrazen",
            infrazen_data.app_users(),
            infrazen_data.app_providers(),
        )
        print(
            f"== InfraZen providers sandbox {infrazen_url}; the app's infrazen.users/cloud_providers: "
            f"{added_users:,} users and {added_providers:,} providers added"
        )
        print(f"== Postgres {db_url}\n== 42 sandbox {intra42_url} ({args.students:,} students, {args.rate} req/s)")
        print(f"== Portail DF sandbox {portaildf_url} ({args.portaildf_users:,} users, 50 req/s)")
        print(f"== Gazelle sandbox {gazelle_url} (850 clients, 20 req/s)")
        print(
            f"== Démarches Simplifiées sandbox {ds_url} (démarches 101, 102); Grist sandbox {grist_url} "
            "(ds_to_grist: two configurations sharing one document, dags/ds_to_grist.yaml)"
        )
        added = seed_portaildf_users(
            db_url.replace("postgres://", "postgresql://"),
            "portaildf",
            portaildf.PortailDFData(args.portaildf_users).app_users(),
        )
        print(f"== the housing platform's portaildf.users table: {added:,} users added", flush=True)
        print("== preparing the Airflow metadata DB (.demo/airflow)", flush=True)
        if airflow(env, "db", "migrate", log=DEMO / "logs-db-migrate.log") != 0:
            raise SystemExit(f"airflow db migrate failed: see {DEMO / 'logs-db-migrate.log'}")
        if args.what == "ui":
            print("== airflow standalone: open http://localhost:8080 (login and password are printed below)")
            return airflow(env, "standalone")
        failures = run_all(env, db_url)
        print("To browse these runs in the Airflow UI: scripts/demo ui")
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
