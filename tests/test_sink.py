"""sink: the Postgres write behind the Sink interface; bookkeeping in a schema apart from the target."""

from __future__ import annotations

import json

import pytest
from usersync import load
from usersync.db import TargetDb
from usersync.entities import INTRA42_USERS
from usersync.sink import Bookkeeping, PostgresSink, Run


@pytest.fixture
def db(fresh_schema):
    fresh_schema("intra42_users", "intra42")
    return TargetDb("intra42_db", "intra42", sync="intra42")


def stage(db, tmp_path, run_id, ids):
    (tmp_path / run_id).mkdir()
    lines = "".join(
        json.dumps({"id": i, "login": f"l{i}", "email": f"l{i}@x.fr", "updated_at": "2026-01-01T00:00:00Z"}) + "\n"
        for i in ids
    )
    (tmp_path / run_id / "page-000001.ndjson").write_text(lines)
    return load.stage(db, INTRA42_USERS, f"file://{tmp_path / run_id}", run_id)


def test_the_postgres_sink_writes_the_delta_and_applies_the_deletion_policy(db, tmp_path, sql):
    sink = PostgresSink(db)
    stage(db, tmp_path, "one", range(1, 11))
    assert sink.write(INTRA42_USERS, Run("one"))["inserted"] == 10

    stage(db, tmp_path, "two", range(1, 10))
    dry = sink.write(INTRA42_USERS, Run("two", full_refresh=True, dry_run=True, max_delete_share=0.5))
    assert (dry["marked_deleted"], dry["removed"]) == (1, 0)
    assert sql("SELECT count(*) FROM intra42.users WHERE deleted_at IS NOT NULL") == [(0,)]  # rolled back
    written = sink.write(INTRA42_USERS, Run("two", full_refresh=True, max_delete_share=0.5))
    assert (written["marked_deleted"], written["unchanged"]) == (1, 9)
    assert sql("SELECT id FROM intra42.users WHERE deleted_at IS NOT NULL") == [(10,)]


def test_bookkeeping_may_live_in_another_schema_than_the_target(db, sql):
    sql(
        "DROP SCHEMA IF EXISTS books CASCADE; CREATE SCHEMA books; CREATE TABLE books.sync_runs "
        "(LIKE intra42.sync_runs INCLUDING ALL)"
    )
    sql(
        "INSERT INTO books.sync_runs (dag_id, run_id, mode, dry_run, started_at, watermark) "
        "VALUES ('d', 'r', 'full', false, '2026-01-01T00:00:00Z', '2026-01-01T06:00:00Z')"
    )

    last = Bookkeeping("intra42_db", "books").last_watermark("d")

    assert last["watermark"].isoformat() == "2026-01-01T06:00:00+00:00"
    assert Bookkeeping.of(db).last_watermark("d") == {"watermark": None, "last_full": None}
