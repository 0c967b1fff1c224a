"""sink: the Postgres write behind the Sink interface; bookkeeping in a schema apart from the target."""

from __future__ import annotations

import json

import pytest
from usersync import dag_parts, load, report
from usersync.db import SQL_DIR, TargetDb
from usersync.entities import INTRA42_USERS
from usersync.sink import Bookkeeping, PostgresSink, Run


@pytest.fixture
def db(fresh_schema):
    fresh_schema("intra42_users", "intra42")
    return TargetDb("intra42_db", "intra42", sync="intra42")


def stage(db, tmp_path, run_id, ids, refused=()):
    """Stage students `ids`, and the `refused` records (quarantined)."""
    (tmp_path / run_id).mkdir()
    records = [{"id": i, "login": f"l{i}", "email": f"l{i}@x.fr", "updated_at": "2026-01-01T00:00:00Z"} for i in ids]
    lines = "".join(json.dumps(record) + "\n" for record in [*records, *refused])
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


def test_stage_and_write_keep_the_books_in_another_schema_than_the_target(airflow_db, sql, tmp_path):
    sql("DROP SCHEMA IF EXISTS intra42 CASCADE; DROP SCHEMA IF EXISTS intra42_books CASCADE")
    db = TargetDb("intra42_db", "intra42", sync="intra42", books="intra42_books")
    with db.transaction() as cur:  # what create_tables runs
        for statement in dag_parts.table_statements(db.schema, db.sync, entities=[INTRA42_USERS], books=db.books):
            text = (SQL_DIR / statement).read_text() if statement.endswith(".sql") else statement
            cur.execute(text.replace("{{ schema }}", db.schema))
    sink = PostgresSink(db)

    unstorable = {"id": 11, "login": "nul\u0000", "email": "x", "updated_at": "2026-01-01T00:00:00Z"}
    staged = stage(db, tmp_path, "one", range(1, 11), refused=[{"id": 12, "email": "y"}, unstorable])
    assert (staged["staged"], staged["quarantined"]) == (10, 2)
    assert sink.write(INTRA42_USERS, Run("one"))["inserted"] == 10
    # A full read in which student 10 is quarantined: the deletion policy leaves it alone (it read the books).
    stage(db, tmp_path, "two", range(1, 10), refused=[{"id": 10, "updated_at": "2026-01-02T00:00:00Z"}])
    written = sink.write(INTRA42_USERS, Run("two", full_refresh=True, max_delete_share=0.5))
    report.publish(db, report.build_report(dag_id="d", run_id="two", mode="full", dry_run=False, started_at=None))

    assert (written["marked_deleted"], written["unchanged"]) == (0, 9)
    assert sql("SELECT count(*) FROM intra42.users WHERE deleted_at IS NULL") == [(10,)]
    assert sql("SELECT run_id, record->>'id', left(reason, 57) FROM intra42_books.quarantine ORDER BY 1, 2") == [
        ("one", "12", "login: missing or not a string"),
        ("one", None, "not storable as JSON: unsupported Unicode escape sequence"),
        ("two", "10", "login: missing or not a string"),
    ]
    assert sql("SELECT run_id FROM intra42_books.sync_runs") == [("two",)]
    assert Bookkeeping.of(db).last_watermark("d") == {"watermark": None, "last_full": None}
    tables = "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema LIKE 'intra42%%' "
    tables += "AND table_name = ANY(%s) ORDER BY 1, 2"
    assert sql(tables, (["quarantine", "sync_runs", "users", "staged_deltas"],)) == [
        ("intra42", "staged_deltas"),
        ("intra42", "users"),
        ("intra42_books", "quarantine"),
        ("intra42_books", "sync_runs"),
    ]
