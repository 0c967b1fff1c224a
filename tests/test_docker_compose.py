"""Static checks of the docker-compose (CeleryExecutor) deployment.

No Docker engine is needed: everything goes through ``docker-compose config``,
which validates the file and renders it with variables interpolated. The
rendering runs with a scrubbed environment and an explicit env file, so a
developer's own ``.env`` or shell variables cannot change the outcome.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = "docker-compose.yaml"

AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
    "airflow-init",
)
# Services that run tasks, schedule them or authenticate them: their view of the
# connections and shared secrets must be identical.
RUNTIME_SERVICES = (
    "airflow-worker",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-apiserver",
)
REQUIRED_SERVICES = (*AIRFLOW_SERVICES, "redis", "postgres", "target-db", "sandbox")
STAGING_TARGET = "/opt/airflow/staging"

# Variables the compose file reads; none may leak in from the caller's environment.
_KEEP_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")


def _docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(
            "docker-compose is not on PATH. These tests need Debian's docker-compose "
            "(no Docker engine required): run `apt-get install -y docker-compose` and re-run.",
            pytrace=False,
        )
    return exe


def _run_compose(*args: str, env_file: Path) -> subprocess.CompletedProcess[str]:
    env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
    return subprocess.run(
        [_docker_compose(), "--env-file", str(env_file), "-f", COMPOSE_FILE, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _render(env_file: Path) -> dict:
    proc = _run_compose("config", env_file=env_file)
    assert proc.returncode == 0, f"docker-compose config failed:\n{proc.stderr}"
    return yaml.safe_load(proc.stdout)


@pytest.fixture
def empty_env_file(tmp_path: Path) -> Path:
    path = tmp_path / "empty.env"
    path.write_text("")
    return path


@functools.cache
def _default_rendering() -> dict:
    # Cached across tests; the env file is empty so every ${VAR:-default} takes its default.
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.env"
        empty.write_text("")
        return _render(empty)


def _services() -> dict:
    return _default_rendering()["services"]


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # "KEY=value" list form
        env = dict(item.split("=", 1) for item in env)
    return {k: ("" if v is None else str(v)) for k, v in env.items()}


def _volume_targets(service: dict) -> dict[str, str]:
    """Map container path -> source for short ("src:dst[:mode]") and long volume syntax."""
    targets = {}
    for vol in service.get("volumes") or []:
        if isinstance(vol, str):
            parts = vol.split(":")
            targets[parts[1]] = parts[0]
        else:
            targets[vol["target"]] = vol.get("source", "")
    return targets


def test_compose_config_is_valid(empty_env_file: Path) -> None:
    proc = _run_compose("config", "-q", env_file=empty_env_file)
    assert proc.returncode == 0, f"docker-compose config -q exited {proc.returncode}:\n{proc.stderr}"


def test_required_services_exist() -> None:
    missing = [name for name in REQUIRED_SERVICES if name not in _services()]
    assert not missing, f"services missing from {COMPOSE_FILE}: {missing}"


def test_executor_is_celery() -> None:
    for name in AIRFLOW_SERVICES:
        env = _env(_services()[name])
        assert env.get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor", name
        assert env.get("AIRFLOW__CELERY__BROKER_URL") == "redis://:@redis:6379/0", name
        assert env.get("AIRFLOW__CORE__LOAD_EXAMPLES") == "false", name
        assert env.get("USERSYNC_STAGING_URL") == f"file://{STAGING_TARGET}", name


def test_airflow_services_mount_staging_volume() -> None:
    rendering = _default_rendering()
    assert "staging" in (rendering.get("volumes") or {}), "named volume 'staging' is not declared"
    for name in AIRFLOW_SERVICES:
        targets = _volume_targets(_services()[name])
        assert STAGING_TARGET in targets, f"{name} does not mount {STAGING_TARGET}"
        # v1 renders the bare volume name, v2 may prefix it with the project name
        assert targets[STAGING_TARGET].endswith("staging"), (name, targets[STAGING_TARGET])


@pytest.mark.parametrize(
    "key",
    [
        "AIRFLOW_CONN_INTRA42_API",
        "AIRFLOW_CONN_INTRA42_DB",
        "AIRFLOW_CONN_PORTAILDF_API",
        "AIRFLOW_CONN_PORTAILDF_DB",
        "AIRFLOW_CONN_GAZELLE_API",
        "AIRFLOW_CONN_GAZELLE_DB",
        "AIRFLOW_CONN_DS_API",
        "AIRFLOW_CONN_GRIST_API",
        "AIRFLOW_CONN_DS_TO_GRIST_DB",
        "AIRFLOW_CONN_INFRAZEN_DB",
        "AIRFLOW_CONN_INFRAZEN_YANDEX",
        "AIRFLOW_CONN_INFRAZEN_SELECTEL",
        "AIRFLOW_CONN_INFRAZEN_BEGET",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CELERY__BROKER_URL",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    ],
)
def test_runtime_services_share_settings(key: str) -> None:
    values = {name: _env(_services()[name]).get(key) for name in RUNTIME_SERVICES}
    assert None not in values.values(), f"{key} missing in: {[n for n, v in values.items() if v is None]}"
    assert len(set(values.values())) == 1, f"{key} differs between services: {values}"


def test_default_connections_point_at_sandbox_and_target_db() -> None:
    env = _env(_services()["airflow-worker"])
    conn = json.loads(env["AIRFLOW_CONN_INTRA42_API"])
    assert conn["conn_type"] == "http"
    assert conn["host"] == "http://sandbox:8042"
    assert conn["login"] and conn["password"]
    assert conn["extra"] == {"rate_limit": "2/s,1200/h"}
    assert env["AIRFLOW_CONN_INTRA42_DB"] == "postgresql://usersync:usersync@target-db:5432/usersync"
    portaildf = json.loads(env["AIRFLOW_CONN_PORTAILDF_API"])
    assert (portaildf["host"], portaildf["extra"]["api_version"]) == ("http://sandbox:8043", "1")
    gazelle = json.loads(env["AIRFLOW_CONN_GAZELLE_API"])
    assert gazelle["host"] == "http://sandbox:8044" and gazelle["extra"]["refresh_token"]
    from sandbox import gazelle as gazelle_sandbox
    from sandbox import portaildf as portaildf_sandbox

    assert (portaildf["login"], portaildf["password"]) == (
        portaildf_sandbox.DEFAULT_USERNAME,
        portaildf_sandbox.DEFAULT_PASSWORD,
    )
    assert (gazelle["login"], gazelle["password"], gazelle["extra"]["refresh_token"]) == (
        gazelle_sandbox.DEFAULT_CLIENT_ID,
        gazelle_sandbox.DEFAULT_CLIENT_SECRET,
        gazelle_sandbox.DEFAULT_REFRESH_TOKEN,
    )
    from sandbox import ds as ds_sandbox
    from sandbox import grist as grist_sandbox

    ds, grist = json.loads(env["AIRFLOW_CONN_DS_API"]), json.loads(env["AIRFLOW_CONN_GRIST_API"])
    assert (ds["host"], ds["password"]) == ("http://sandbox:8046", ds_sandbox.DEFAULT_TOKEN)
    assert (grist["host"], grist["password"]) == ("http://sandbox:8484", grist_sandbox.DEFAULT_API_KEY)
    yandex = json.loads(env["AIRFLOW_CONN_INFRAZEN_YANDEX"])
    assert yandex["host"] == "http://sandbox:8045/yandex/{service}"
    selectel = json.loads(env["AIRFLOW_CONN_INFRAZEN_SELECTEL"])
    assert selectel["extra"]["region_host"] == "http://sandbox:8045/selectel/regions/{region}"
    assert "password" not in json.loads(env["AIRFLOW_CONN_INFRAZEN_BEGET"])  # users' own credentials only
    for name in ("PORTAILDF", "GAZELLE", "DS_TO_GRIST", "INFRAZEN"):
        assert env[f"AIRFLOW_CONN_{name}_DB"] == "postgresql://usersync:usersync@target-db:5432/usersync"


def test_env_file_overrides_connections(tmp_path: Path) -> None:
    env_file = tmp_path / "real.env"
    env_file.write_text(
        "INTRA42_API_URL=https://api.intra.42.fr\n"
        "INTRA42_API_UID=u-s4t2ud-0123abcd\n"
        "INTRA42_API_SECRET=s-s4t2ud-4567ef89\n"
        "INTRA42_API_RATE_LIMIT=1/s,600/h\n"
        "AIRFLOW_CONN_INTRA42_DB=postgresql://sync:pw@db.example.org:5432/apps\n"
    )
    services = _render(env_file)["services"]
    for name in RUNTIME_SERVICES:
        env = _env(services[name])
        conn = json.loads(env["AIRFLOW_CONN_INTRA42_API"])
        assert conn == {
            "conn_type": "http",
            "host": "https://api.intra.42.fr",
            "login": "u-s4t2ud-0123abcd",
            "password": "s-s4t2ud-4567ef89",
            "extra": {"rate_limit": "1/s,600/h"},
        }, name
        assert env["AIRFLOW_CONN_INTRA42_DB"] == "postgresql://sync:pw@db.example.org:5432/apps", name


def test_sandbox_service_runs_the_sandbox_with_healthcheck() -> None:
    sandbox = _services()["sandbox"]
    command = sandbox.get("command")
    if isinstance(command, str):
        command = command.split()
    assert "python -m sandbox all --host 0.0.0.0" in " ".join(command)
    assert {str(port) for port in sandbox.get("expose", [])} == {"8042", "8043", "8044", "8045", "8046", "8484"}
    assert sandbox.get("healthcheck", {}).get("test"), "sandbox has no healthcheck"
    assert sandbox.get("image") == _services()["airflow-worker"].get("image")


def test_worker_waits_for_its_dependencies() -> None:
    depends = _services()["airflow-worker"]["depends_on"]
    for dep, condition in {
        "redis": "service_healthy",
        "postgres": "service_healthy",
        "target-db": "service_healthy",
        "sandbox": "service_healthy",
        "airflow-apiserver": "service_healthy",
        "airflow-init": "service_completed_successfully",
    }.items():
        assert depends.get(dep, {}).get("condition") == condition, (dep, depends.get(dep))


def test_dockerfile_base_image_matches_locked_airflow() -> None:
    lock = (REPO_ROOT / "requirements.lock").read_text()
    locked = re.search(r"^apache-airflow==(\S+)$", lock, re.MULTILINE)
    assert locked, "apache-airflow is not pinned in requirements.lock"
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+apache/airflow:(\S+)-python3\.11\s*$", dockerfile, re.MULTILINE)
    assert base, "Dockerfile must build FROM apache/airflow:<version>-python3.11"
    assert base.group(1) == locked.group(1), (base.group(1), locked.group(1))
