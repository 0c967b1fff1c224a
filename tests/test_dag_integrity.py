"""Every DAG imports cleanly, is configured as the project requires, and does no I/O at parse time."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from dagrun import ROOT, dagbag
from usersync import ds_grist

DAG_FILES = sorted(p for p in (ROOT / "dags").glob("*.py") if not p.name.startswith("_"))
# Files that generate several DAGs from a configuration file, and those DAGs' ids
GENERATED = {"ds_to_grist": lambda: [c.dag_id for c in ds_grist.configurations(ds_grist.CONFIG_FILE.read_text())]}
DAG_IDS = sorted(i for p in DAG_FILES for i in (GENERATED[p.stem]() if p.stem in GENERATED else [p.stem]))


def test_dags_import_without_errors(airflow_db):
    assert dagbag().import_errors == {}
    assert set(DAG_IDS) == set(dagbag().dag_ids)  # one DAG per file, named after it (or generated)


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_dag_settings(airflow_db, dag_id):
    dag = dagbag().get_dag(dag_id)
    assert "usersync" in dag.tags
    assert dag.max_active_runs == 1
    assert dag.doc_md
    for task in dag.tasks:
        assert task.owner == "usersync", task.task_id
        assert task.retries >= 1, task.task_id
        assert task.retry_exponential_backoff, task.task_id
    for name, param in dag.params.items():
        assert param.description, f"param {name} has no description for the trigger form"
        assert param.schema.get("type"), f"param {name} is not validated"


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.stem)
def test_dag_file_does_no_network_or_database_io_at_import(dag_file):
    """Import the file in a fresh interpreter where sockets, Postgres and Airflow lookups all refuse."""
    probe = textwrap.dedent(f"""
        import socket, sys
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "plugins")!r}]

        def refuse(*args, **kwargs):
            raise RuntimeError("I/O at DAG import time")

        socket.socket.connect = socket.socket.connect_ex = refuse
        socket.create_connection = socket.getaddrinfo = refuse
        import psycopg
        psycopg.connect = psycopg.Connection.connect = refuse
        from airflow.sdk import BaseHook, Variable
        BaseHook.get_connection = classmethod(refuse)
        Variable.get = staticmethod(refuse)

        import importlib.util
        spec = importlib.util.spec_from_file_location("dag_under_test", {str(dag_file)!r})
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        print("imported")
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-3000:]
