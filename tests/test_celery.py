"""The Celery deployment, without Docker: a real scheduler, dag-processor and api-server, redis (Debian's
redis-server) and two Celery workers sharing one staging path, on a throw-away Airflow home whose metadata DB is
a database of the test Postgres. A scheduled intra42_users run, then `airflow backfill create` over 10 intervals
(run 10 at a time, as production would), each ending with the exact table.

Slow (a few minutes on two cores): every wait is bounded, and every process started here is stopped at the end.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import CLIENT_ID, CLIENT_SECRET, ROOT, Sandbox, intra42_conn
from test_intra42_users import actual_table, expected_table

REDIS = shutil.which("redis-server")
AIRFLOW = str(Path(sys.executable).parent / "airflow")
START = datetime(2026, 3, 1, tzinfo=UTC)
INTERVALS = 10  # of 6 hours: the students' updated_at are spread over them
PORTAILDF_USERS, INFRAZEN_USERS = 200, 40
pytestmark = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (scripts/test does)")


class Processes:
    """The processes of the deployment, each in its own process group, logging to a file."""

    def __init__(self, home: Path, env: dict[str, str]):
        self.home, self.env, self.running = home, env, []

    def start(self, name: str, *command: str) -> subprocess.Popen:
        log = open(self.home / f"{name}.log", "w")  # noqa: SIM115 -- the child holds it
        process = subprocess.Popen(
            command, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.running.append((name, process))
        return process

    def airflow(self, *args: str, timeout: float) -> str:
        """An `airflow` CLI command, to the end; its output."""
        done = subprocess.run([AIRFLOW, *args], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"airflow {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    def check_alive(self) -> None:
        for name, process in self.running:
            assert process.poll() is None, f"{name} exited ({process.returncode}):\n{self.log(name)}"

    def log(self, name: str, chars: int = 4000) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop_all(self) -> None:
        """Last started first (redis last): SIGTERM to its process group, SIGKILL to what is left after 15 s."""
        for _, process in reversed(self.running):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=15)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # the group: task processes a worker forked
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout: float, processes: Processes, every: float = 1.0):
    started = time.monotonic()
    deadline = started + timeout
    while True:
        result = check()
        if result:
            print(f"[celery] {what}: {time.monotonic() - started:.0f}s")
            return result
        processes.check_alive()
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(every)


@pytest.fixture(scope="module")
def students():
    """The 42 sandbox for this deployment: 300 students changed over the 10 intervals."""
    from sandbox.common import serve
    from sandbox.intra42 import Intra42Data, create_app

    data = Intra42Data(students=300, seed=11, updated_from=START, updated_to=START + timedelta(hours=6 * INTERVALS))
    app = create_app(data, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, per_second=40, per_hour=100000)
    with serve(app) as url:
        yield Sandbox(url, app)


@pytest.fixture(scope="module")
def other_syncs(pg):
    """The sandboxes of every other sync (threads of this process, small data) and the application tables their
    syncs update; yields the connections of every sync (environment variables), as the demo makes them."""
    from sandbox.__main__ import build_app
    from sandbox.common import serve
    from sandbox.infrazen import InfraZenData
    from sandbox.portaildf import PortailDFData
    from tools.app_tables import seed_infrazen, seed_portaildf_users
    from tools.demo import connections, infrazen_env

    grant = f"celery-grant-{secrets.token_hex(4)}"
    sandboxes = {
        "portaildf": ["portaildf", "--users", str(PORTAILDF_USERS), "--per-second", "50"],
        "gazelle": ["gazelle", "--clients", "60", "--refresh-token", grant, "--per-second", "20"],
        "ds": ["ds"],
        "grist": ["grist"],
        "infrazen": ["infrazen", "--users", str(INFRAZEN_USERS)],
    }
    infrazen = InfraZenData(INFRAZEN_USERS)
    seed_portaildf_users(pg.url, "portaildf", PortailDFData(PORTAILDF_USERS).app_users())
    seed_infrazen(pg.url, "infrazen", infrazen.app_users(), infrazen.app_providers())
    db_url = pg.url.replace("postgresql://", "postgres://")
    with contextlib.ExitStack() as stack:
        urls = {name: stack.enter_context(serve(build_app(argv))) for name, argv in sandboxes.items()}
        urls["intra42"] = "http://unused"  # the deployment's own 42 sandbox: students
        yield {**connections(db_url, urls, 40, grant), **infrazen_env(db_url, urls["infrazen"])}


@pytest.fixture(scope="module")
def deployment(pg, students, other_syncs):
    """Everything started, the metadata DB migrated; yields (Processes, run SQL on the metadata DB)."""
    import psycopg
    import requests

    home = Path(tempfile.mkdtemp(prefix="usersync-celery-"))
    database = f"airflow_celery_{os.getpid()}"
    with psycopg.connect(pg.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}"')
        conn.execute(f'CREATE DATABASE "{database}"')
    meta_url = pg.url.rsplit("/", 1)[0] + f"/{database}"
    redis_port, api_port = free_port(), free_port()

    from tools.airflow_env import airflow_env

    env = {
        **os.environ,
        **other_syncs,
        **airflow_env(home, home / "shared-staging"),  # one staging path, both workers
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")]),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta_url.replace("postgresql://", "postgresql+psycopg://"),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(16),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",  # REST calls below without a login
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "300",
        "AIRFLOW_CONN_INTRA42_API": intra42_conn(students.url, rate_limit="40/s"),
    }
    processes = Processes(home, env)
    try:
        processes.start(
            "redis", REDIS, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"
        )
        started = time.monotonic()
        processes.airflow("db", "migrate", timeout=240)
        print(f"[celery] db migrate: {time.monotonic() - started:.0f}s")
        processes.start(
            "api-server", AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(api_port), "--workers", "1"
        )
        processes.start("dag-processor", AIRFLOW, "dag-processor")
        processes.start("scheduler", AIRFLOW, "scheduler")
        for worker in ("worker1", "worker2"):
            processes.start(
                worker,
                AIRFLOW,
                "celery",
                "worker",
                "--celery-hostname",
                f"{worker}@%h",
                "--concurrency",
                "4",
                "--skip-serve-logs",
            )

        api = f"http://127.0.0.1:{api_port}/api/v2"

        def answers(path: str) -> bool:
            with contextlib.suppress(requests.RequestException):
                return requests.get(f"{api}{path}", timeout=5).status_code == 200
            return False

        wait_for("the api-server", lambda: answers("/monitor/health"), 120, processes)
        wait_for("the dag-processor to parse intra42_users", lambda: answers("/dags/intra42_users"), 120, processes)

        def meta(statement: str, params=None):
            with psycopg.connect(meta_url, autocommit=True) as conn:
                return conn.execute(statement, params).fetchall()

        yield processes, api, meta
    finally:
        processes.stop_all()
        with psycopg.connect(pg.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        shutil.rmtree(home, ignore_errors=True)


def finished_runs(meta, run_type: str) -> list[tuple]:
    return meta(
        "SELECT run_id, state, start_date, end_date FROM dag_run WHERE dag_id = 'intra42_users' "
        "AND run_type = %s AND state IN ('success', 'failed') ORDER BY logical_date",
        (run_type,),
    )


def tasks_received(processes: Processes) -> dict[str, int]:
    """How many task workloads each Celery worker received (from its log: task instances record the machine's
    hostname, the same for both)."""
    return {name: processes.log(name, 10**8).count("] received") for name in ("worker1", "worker2")}


def task_failures(processes: Processes) -> str:
    return "\n".join(f"== {name}\n{processes.log(name, 2500)}" for name in ("scheduler", "worker1", "worker2"))


def test_a_scheduled_run_through_celery_loads_the_exact_table(deployment, students, sql):
    import requests

    processes, api, meta = deployment
    sql("DROP SCHEMA IF EXISTS intra42 CASCADE")
    # Unpaused, the scheduler creates the latest interval's run (catchup is off): the first, full load.
    requests.patch(f"{api}/dags/intra42_users", json={"is_paused": False}, timeout=10).raise_for_status()
    runs = wait_for("the scheduled run", lambda: finished_runs(meta, "scheduled"), 180, processes, every=2)

    assert [state for _, state, _, _ in runs] == ["success"], task_failures(processes)
    assert actual_table(sql) == expected_table(students)
    assert sum(tasks_received(processes).values()) >= 6  # every task went through a Celery worker


@pytest.fixture(scope="module")
def backfilled(deployment, pg):
    """`airflow backfill create` over 10 intervals on an empty table; returns the finished runs."""
    import psycopg

    processes, _, meta = deployment
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS intra42 CASCADE")
    last = START + timedelta(hours=6 * (INTERVALS - 1))
    processes.airflow(
        "backfill",
        "create",
        "--dag-id",
        "intra42_users",
        "--from-date",
        START.isoformat(),
        "--to-date",
        last.isoformat(),
        "--max-active-runs",
        str(INTERVALS),
        timeout=120,
    )
    return wait_for(
        f"{INTERVALS} backfill runs",
        lambda: len(runs := finished_runs(meta, "backfill")) == INTERVALS and runs,
        240,
        processes,
        3,
    )


def test_a_backfill_runs_10_intervals_at_once_on_both_workers(deployment, backfilled):
    processes, _, meta = deployment
    assert [state for _, state, _, _ in backfilled] == ["success"] * INTERVALS, task_failures(processes)
    # The runs overlapped: production's case of concurrent runs of one sync.
    most_at_once = max(sum(1 for _, _, s, e in backfilled if s <= start < e) for _, _, start, _ in backfilled)
    assert most_at_once > 1
    assert all(tasks_received(processes).values()), tasks_received(processes)  # both workers took tasks


# Issue 9, item 1: concurrent runs once shared <entity>_raw/_delta and one run's cleanup deleted another's staging.
def test_a_backfill_of_10_concurrent_intervals_ends_with_the_exact_table(backfilled, students, sql):
    assert actual_table(sql) == expected_table(students)


def test_every_other_dag_runs_through_the_scheduler_and_celery(deployment, pg):
    """dag.test() runs a DAG's tasks in one process; here each other sync runs as production runs it: triggered
    through the REST API, scheduled, its tasks (mapped ones, branches, task groups) on Celery workers, XCom,
    connections and Variables through the execution API. Each run succeeds and records its report."""
    import requests

    from tools.demo import dag_ids, latest_report

    processes, api, meta = deployment
    syncs = [dag_id for dag_id in dag_ids() if dag_id != "intra42_users"]
    wait_for(
        "the other DAGs parsed",
        lambda: all(requests.get(f"{api}/dags/{d}", timeout=5).ok for d in syncs),
        120,
        processes,
    )
    runs = {}
    for dag_id in syncs:
        requests.patch(f"{api}/dags/{dag_id}", json={"is_paused": False}, timeout=10).raise_for_status()
        answer = requests.post(f"{api}/dags/{dag_id}/dagRuns", json={"logical_date": None}, timeout=10)
        assert answer.status_code == 200, answer.text
        runs[dag_id] = answer.json()["dag_run_id"]

    def states() -> dict[str, str]:
        rows = meta(
            "SELECT dag_id, run_id, state FROM dag_run WHERE run_type = 'manual' AND dag_id = ANY(%s)", (syncs,)
        )
        return {dag_id: state for dag_id, run_id, state in rows if runs.get(dag_id) == run_id}

    finished = wait_for(
        "every other DAG's run",
        lambda: (now := states()) and all(now.get(d) in ("success", "failed") for d in syncs) and now,
        600,
        processes,
        every=3,
    )
    assert finished == dict.fromkeys(syncs, "success"), task_failures(processes)
    for dag_id in syncs:
        report = latest_report(pg.url, dag_id, runs[dag_id])
        assert report is not None and report["run_id"] == runs[dag_id], dag_id  # its report, recorded
