"""Test session: Airflow on a throw-away home, a real Postgres, the sandbox APIs over real HTTP.

Airflow reads its configuration at import, so the environment is set here, before anything imports it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from datetime import date
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="usersync-airflow-"))
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]
from tools.airflow_env import airflow_env  # noqa: E402  (imports no Airflow)

os.environ.update(airflow_env(AIRFLOW_HOME, AIRFLOW_HOME / "staging"))

from tools.embedded_pg import running  # noqa: E402

CLIENT_ID, CLIENT_SECRET = "test-client-id", "test-client-secret-s3cr3t"
TEST_STUDENTS = 1234
GAZELLE_CLIENT_ID, GAZELLE_CLIENT_SECRET = "test-gazelle-client", "test-gazelle-s3cr3t"
GAZELLE_REFRESH_TOKEN = "test-gazelle-refresh-token-granted-by-a-user-0001"
GAZELLE_ANCHOR = date(2026, 10, 15)  # the sandbox's data is centred on it
PORTAILDF_LOGIN, PORTAILDF_PASSWORD, PORTAILDF_USERS = "test-portaildf", "test-portaildf-p4ssw0rd", 400


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_db():
    """The Airflow metadata DB (SQLite), migrated once per session."""
    from airflow.utils.db import upgradedb

    upgradedb()
    return AIRFLOW_HOME


@pytest.fixture(scope="session")
def pg():
    """A real PostgreSQL cluster for the whole session; every sync's DB connection points at it."""
    data_dir = ROOT / ".pgdata" / f"test-{os.getpid()}"
    shutil.rmtree(data_dir, ignore_errors=True)
    with running(data_dir) as server:
        url = server.url.replace("postgresql://", "postgres://")
        for conn in ("INTRA42_DB", "PORTAILDF_DB", "GAZELLE_DB"):
            os.environ[f"AIRFLOW_CONN_{conn}"] = url
        yield server
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def sql(pg):
    """Run SQL against the test Postgres: sql("select ...") -> list of tuples."""
    import psycopg

    def run(statement: str, params=None):
        with psycopg.connect(pg.url, autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else None

    return run


@pytest.fixture
def url(sandbox):
    """For a module whose `sandbox` fixture yields (url, app): the URL, with the sandbox reset (data, faults)."""
    import requests

    url, _ = sandbox
    requests.post(f"{url}/_sandbox/reset", timeout=5).raise_for_status()
    return url


@pytest.fixture
def data(sandbox, url):
    """The reset sandbox's data: the ground truth."""
    return sandbox[1].state.data


@pytest.fixture(scope="session")
def intra42_sandbox():
    """The 42 sandbox on a free port; AIRFLOW_CONN_INTRA42_API points at it with a fast rate limit."""
    from sandbox.common import serve
    from sandbox.intra42 import Intra42Data, create_app

    data = Intra42Data(students=TEST_STUDENTS, seed=7)
    app = create_app(data=data, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, per_second=40, per_hour=100000)
    with serve(app) as url:
        os.environ["AIRFLOW_CONN_INTRA42_API"] = intra42_conn(url, rate_limit="40/s")
        yield Sandbox(url, app)


def intra42_conn(url: str, rate_limit: str, max_retries: str = "6") -> str:
    """AIRFLOW_CONN_INTRA42_API for a sandbox; short backoffs keep fault tests quick."""
    return json.dumps(
        {
            "conn_type": "http",
            "host": url,
            "login": CLIENT_ID,
            "password": CLIENT_SECRET,
            # Strings, as the Airflow UI stores them (HttpHook also sends extras as request headers).
            "extra": {"rate_limit": rate_limit, "backoff": "0.05", "max_retries": max_retries, "timeout": 10},
        }
    )


@pytest.fixture(scope="session")
def portaildf_sandbox():
    """The Portail DF sandbox (V1 API, 100 req/s); AIRFLOW_CONN_PORTAILDF_API points at it."""
    from sandbox.common import serve
    from sandbox.portaildf import PortailDFData, create_app

    app = create_app(
        PortailDFData(users=PORTAILDF_USERS, seed=3),
        username=PORTAILDF_LOGIN,
        password=PORTAILDF_PASSWORD,
        per_second=100,
    )
    with serve(app) as url:
        os.environ["AIRFLOW_CONN_PORTAILDF_API"] = portaildf_conn(url, rate_limit="100/s")
        yield Sandbox(url, app)


def portaildf_conn(url: str, rate_limit: str = "100/s", api_version: str = "1", max_retries: str = "6") -> str:
    return json.dumps(
        {
            "conn_type": "http",
            "host": url,
            "login": PORTAILDF_LOGIN,
            "password": PORTAILDF_PASSWORD,
            "extra": {
                "api_version": api_version,
                "rate_limit": rate_limit,
                "backoff": "0.05",
                "max_retries": max_retries,
                "timeout": 10,
            },
        }
    )


@pytest.fixture(scope="session")
def gazelle_sandbox():
    """The Gazelle sandbox (data centred on GAZELLE_ANCHOR, 50 req/s); AIRFLOW_CONN_GAZELLE_API points at it."""
    from sandbox.common import serve
    from sandbox.gazelle import GazelleData, create_app

    data = GazelleData(clients=850, technicians=5, seed=4, anchor=GAZELLE_ANCHOR)
    app = create_app(
        data,
        client_id=GAZELLE_CLIENT_ID,
        client_secret=GAZELLE_CLIENT_SECRET,
        refresh_token=GAZELLE_REFRESH_TOKEN,
        per_second=50,
    )
    with serve(app) as url:
        os.environ["AIRFLOW_CONN_GAZELLE_API"] = gazelle_conn(url)
        yield Sandbox(url, app)


def gazelle_conn(url: str, **extra: str) -> str:
    return json.dumps(
        {
            "conn_type": "http",
            "host": url,
            "login": GAZELLE_CLIENT_ID,
            "password": GAZELLE_CLIENT_SECRET,
            "extra": {
                "refresh_token": GAZELLE_REFRESH_TOKEN,
                "rate_limit": "50/s",
                "backoff": "0.05",
                "max_retries": "6",
                "timeout": 10,
                **extra,
            },
        }
    )


class Sandbox:
    """A running sandbox: its URL, its data (the ground truth) and its control endpoints."""

    def __init__(self, url: str, app):
        self.url, self.app, self.data = url, app, app.state.data

    def control(self, action: str, body: dict | None = None):
        import requests

        response = requests.post(f"{self.url}/_sandbox/{action}", json=body or {}, timeout=10)
        response.raise_for_status()
        return response.json()

    def state(self) -> dict:
        import requests

        return requests.get(f"{self.url}/_sandbox/state", timeout=10).json()


@pytest.fixture
def fresh_schema(pg, airflow_db, sql):
    """Drop a sync's schema and recreate its tables exactly as the DAG's create_tables task does."""
    from dagrun import get_dag

    def make(dag_id: str, schema: str, drop: bool = True):
        if drop:
            sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        for statement in get_dag(dag_id).get_task("create_tables").sql:  # the files' text, as loaded
            sql(f"SET search_path TO {schema}; {statement.replace('{{ schema }}', schema)}")

    return make


def student(id_: int, **changes) -> dict:
    """A 42 student record as the API sends it, with `changes` applied."""
    record = {
        "id": id_,
        "login": f"login{id_}",
        "email": f"login{id_}@student.42.fr",
        "first_name": "Zoé",
        "last_name": "Łukasz",
        "pool_month": "july",
        "pool_year": "2023",
        "location": None,
        "wallet": 10,
        "correction_point": 3,
        "updated_at": "2025-06-01T10:00:00.000Z",
        "kind": "student",
    }
    record.update(changes)
    return record
