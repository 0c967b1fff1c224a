"""The reusable branch: skip a sync when its table is populated, unless forced."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from airflow.sdk import DAG, Param, task
from dagrun import register
from usersync.branch import branch_unless_populated
from usersync.db import TargetDb


def branch_dag(dag_id: str, force_if=None) -> DAG:
    db = TargetDb("intra42_db", "branchtest", sync="branchtest")
    with DAG(
        dag_id,
        schedule=None,
        start_date=datetime(2026, 1, 1, tzinfo=UTC),
        params={"force": Param(False, type="boolean")},
    ) as dag:

        @task
        def sync_things():
            return "synced"

        @task
        def skip_things():
            return "skipped"

        branch_unless_populated(
            db, "things", sync_task_id="sync_things", skip_task_id="skip_things", force_if=force_if
        ) >> [sync_things(), skip_things()]
    return register(dag)


def ran(dag, conf=None) -> set[str]:
    run = dag.test(run_conf=conf or {})
    return {ti.task_id for ti in run.get_task_instances() if str(ti.state) == "success"}


@pytest.fixture
def things(pg, airflow_db, sql):
    sql("DROP SCHEMA IF EXISTS branchtest CASCADE")
    sql("CREATE SCHEMA branchtest")
    return sql


def test_missing_or_empty_table_syncs(things):
    assert "sync_things" in ran(branch_dag("branch_missing"))
    things("CREATE TABLE branchtest.things (id int)")
    assert ran(branch_dag("branch_empty")) >= {"sync_things"}
    assert "skip_things" not in ran(branch_dag("branch_empty2"))


def test_populated_table_skips_unless_forced(things):
    things("CREATE TABLE branchtest.things (id int)")
    things("INSERT INTO branchtest.things VALUES (1)")
    assert ran(branch_dag("branch_full")) == {"sync_things_or_skip", "skip_things"}
    assert ran(branch_dag("branch_forced"), {"force": True}) == {"sync_things_or_skip", "sync_things"}
    monthly = branch_dag("branch_force_if", force_if=lambda context: True)
    assert ran(monthly) == {"sync_things_or_skip", "sync_things"}
