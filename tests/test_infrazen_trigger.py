"""The old admin endpoint (`POST /api/admin/bulk-sync-all-users`, which answered non-admins HTTP 200) is now the
Airflow REST API: against a real `airflow api-server` with the simple auth manager, an admin triggers
infrazen_bulk_sync with a conf and a viewer is refused with 403. Every wait is bounded; the api-server is stopped
at the end."""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest
import requests
from conftest import ROOT
from test_celery import AIRFLOW, Processes, free_port, wait_for

DAG = "infrazen_bulk_sync"
PASSWORDS = {"admin": "admin-" + secrets.token_hex(4), "viewer": "viewer-" + secrets.token_hex(4)}


@pytest.fixture(scope="module")
def api_server():
    """An api-server on a throw-away home (SQLite), its DAGs serialized; yields its base URL."""
    import os

    from tools.airflow_env import airflow_env

    home = Path(tempfile.mkdtemp(prefix="usersync-trigger-"))
    (home / "passwords.json").write_text(json.dumps(PASSWORDS))
    port = free_port()
    env = {
        **os.environ,
        **airflow_env(home, home / "staging"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")]),
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(16),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # nothing runs the triggered run here
    }  # fmt: skip
    processes = Processes(home, env)
    try:
        processes.airflow("db", "migrate", timeout=300)
        processes.airflow("dags", "reserialize", timeout=300)
        processes.start("api-server", AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(port),
                        "--workers", "1")  # fmt: skip
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            with contextlib.suppress(requests.RequestException):
                return requests.get(f"{base}/api/v2/monitor/health", timeout=5).status_code == 200
            return False

        wait_for("the api-server", up, 180, processes)
        yield base
    finally:
        processes.stop_all()
        shutil.rmtree(home, ignore_errors=True)


def token(base: str, user: str) -> str:
    """The JWT of a simple-auth-manager user (README: `curl -X POST $AIRFLOW/auth/token`)."""
    answer = requests.post(f"{base}/auth/token", json={"username": user, "password": PASSWORDS[user]}, timeout=30)
    assert answer.status_code == 201, answer.text
    return answer.json()["access_token"]


def trigger(base: str, user: str, conf: dict) -> requests.Response:
    return requests.post(f"{base}/api/v2/dags/{DAG}/dagRuns", json={"logical_date": None, "conf": conf},
                         headers={"Authorization": f"Bearer {token(base, user)}"}, timeout=30)  # fmt: skip


def test_an_admin_triggers_the_bulk_sync_and_a_viewer_gets_403(api_server):
    conf = {"sync_type": "api", "user_ids": [1, 2], "num_workers": 4}
    admin = trigger(api_server, "admin", conf)
    assert admin.status_code == 200, admin.text
    run = admin.json()
    assert run["dag_id"] == DAG and run["conf"] == conf and run["state"] == "queued"

    viewer = trigger(api_server, "viewer", conf)
    assert viewer.status_code == 403, viewer.text  # the old endpoint: HTTP 200 {"success": false}
    runs = requests.get(f"{api_server}/api/v2/dags/{DAG}/dagRuns", timeout=30,
                        headers={"Authorization": f"Bearer {token(api_server, 'viewer')}"}).json()  # fmt: skip
    assert runs["total_entries"] == 1  # the viewer may look, not trigger

    refused = trigger(api_server, "admin", {"sync_type": "nightly"})  # not in the enum: refused at trigger time
    assert refused.status_code == 400, refused.text
