"""The environment a throw-away Airflow runs in (tests, demo, benchmarks).

Airflow reads its configuration when first imported, so callers apply this before importing it.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def airflow_env(home: Path, staging: Path, log_level: str = "INFO") -> dict[str, str]:
    """Settings for an Airflow home `home` (SQLite metadata DB) running this project's DAGs."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": log_level,
        "USERSYNC_STAGING_URL": f"file://{staging}",
    }
