"""The target database: settings per transaction, the sync_runs table (migration, one row per run), the Assets."""

from __future__ import annotations

import json

import pytest
from dagrun import get_dag, run_dag

OLD_SYNC_RUNS = """
CREATE TABLE intra42.sync_runs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, dag_id text NOT NULL, run_id text NOT NULL,
    mode text NOT NULL, dry_run boolean NOT NULL, started_at timestamptz,
    finished_at timestamptz NOT NULL DEFAULT now(), watermark timestamptz, report jsonb NOT NULL)
"""


@pytest.fixture
def db(pg):
    from usersync.db import TargetDb

    return TargetDb("intra42_db", "intra42", sync="intra42")


def test_every_transaction_runs_with_the_sync_settings(db, sql):
    sql("DROP SCHEMA IF EXISTS intra42 CASCADE; CREATE SCHEMA intra42")
    with db.transaction() as cur:
        cur.execute("SELECT current_setting('search_path'), current_setting('jit'), current_setting('work_mem')")
        assert cur.fetchone() == ("intra42", "off", "64MB")
        cur.execute("CREATE TABLE settled (id int)")
    assert sql("SELECT schemaname FROM pg_tables WHERE tablename = 'settled'") == [("intra42",)]
    with db.transaction() as cur:  # nothing outlives the transaction: the session is the pooler's to share
        cur.connection.commit()
        cur.execute("SELECT current_setting('search_path')")
        assert cur.fetchone()[0] != "intra42"


def test_create_tables_migrates_an_old_sync_runs_and_keeps_one_row_per_run(db, sql, fresh_schema):
    from usersync import report

    sql("DROP SCHEMA IF EXISTS intra42 CASCADE; CREATE SCHEMA intra42")
    sql(OLD_SYNC_RUNS)
    for run_id, watermark in (("a", "2026-01-01"), ("b", "2026-01-02"), ("b", "2026-01-03")):  # b recorded twice
        sql(
            "INSERT INTO intra42.sync_runs (dag_id, run_id, mode, dry_run, watermark, report) "
            "VALUES ('intra42_users', %s, 'incremental', false, %s, '{}')",
            (run_id, watermark),
        )

    fresh_schema("intra42_users", "intra42", drop=False)
    fresh_schema("intra42_users", "intra42", drop=False)  # idempotent

    assert sql("SELECT run_id, status, watermark::date::text, errors FROM intra42.sync_runs ORDER BY run_id") == [
        ("a", "success", "2026-01-01", []),
        ("b", "success", "2026-01-03", []),
    ]
    assert db.query("last_watermark", {"dag_id": "intra42_users"})["watermark"].date().isoformat() == "2026-01-03"

    # A run that fails twice (a cleared task failing again), then succeeds: one row, every error kept.
    for task in ("fetch_users", "upsert_users"):
        error = {"task": task, "error": f"{task} broke"}
        db.query(
            "record_failure",
            {
                "dag_id": "intra42_users",
                "run_id": "c",
                "dry_run": False,
                "started_at": None,
                "error": json.dumps(error),
            },
        )
    assert sql("SELECT status, errors FROM intra42.sync_runs WHERE run_id = 'c'") == [
        (
            "failed",
            [
                {"task": "fetch_users", "error": "fetch_users broke"},
                {"task": "upsert_users", "error": "upsert_users broke"},
            ],
        )
    ]
    assert db.query("last_watermark", {"dag_id": "intra42_users"})["watermark"].date().isoformat() == "2026-01-03"

    report.record_run(
        db,
        report.build_report(
            dag_id="intra42_users",
            run_id="c",
            mode="incremental",
            dry_run=False,
            started_at=None,
            watermark="2026-01-04T00:00:00Z",
        ),
    )
    rows = sql(
        "SELECT status, mode, jsonb_array_length(errors), report->>'run_id' FROM intra42.sync_runs WHERE run_id = 'c'"
    )
    assert rows == [("success", "incremental", 2, "c")]
    assert db.query("last_watermark", {"dag_id": "intra42_users"})["watermark"].date().isoformat() == "2026-01-04"


EXPECTED_ASSETS = {
    "intra42_users": {"upsert_users": ["usersync://intra42_db/intra42/users"]},
    "portaildf_user_kind": {"update_kinds": ["usersync://portaildf_db/portaildf/users"]},
    "gazelle_sync": {
        "upsert_users": ["usersync://gazelle_db/gazelle/users"],
        "upsert_clients": ["usersync://gazelle_db/gazelle/clients", "usersync://gazelle_db/gazelle/contacts"],
        "upsert_pianos": ["usersync://gazelle_db/gazelle/pianos"],
        "upsert_appointments": ["usersync://gazelle_db/gazelle/events"],
        "upsert_timeline": ["usersync://gazelle_db/gazelle/timeline_entries"],
    },
}


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_ASSETS))
def test_each_target_table_is_an_asset_its_write_task_updates(airflow_db, dag_id):
    dag = get_dag(dag_id)
    declared = {task.task_id: [asset.uri for asset in task.outlets] for task in dag.tasks if task.outlets}
    assert declared == EXPECTED_ASSETS[dag_id]


def test_a_run_emits_an_event_on_the_table_asset(intra42_sandbox, fresh_schema, sql):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    intra42_sandbox.control("reset")
    fresh_schema("intra42_users", "intra42")
    run, states = run_dag("intra42_users")
    assert set(states.values()) == {"success"}, states
    with create_session() as session:
        events = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.uri == "usersync://intra42_db/intra42/users", AssetEvent.source_run_id == run.run_id)
            .all()
        )
        assert [event.source_task_id for event in events] == ["upsert_users"]
