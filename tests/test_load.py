"""stage / upsert / deletion guard on a real Postgres, from staging files written here."""

from __future__ import annotations

import json

import pytest
from conftest import student
from usersync import load
from usersync.db import TargetDb
from usersync.entities import INTRA42_USERS as USERS

RUN = "manual__test"


def write_pages(directory, *pages):
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("page-*.ndjson"):
        old.unlink()
    for number, records in enumerate(pages, 1):
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        (directory / f"page-{number:06d}.ndjson").write_text(lines, encoding="utf-8")
    return f"file://{directory}"


@pytest.fixture
def db(fresh_schema):
    fresh_schema("intra42_users", "intra42")
    return TargetDb("intra42_db", "intra42", sync="intra42")


def load_students(db, tmp_path, records, **upsert_args):
    prefix = write_pages(tmp_path / "pages", records)
    staged = load.stage(db, USERS, prefix, RUN)
    return staged, load.upsert(db, USERS, run_id=RUN, **upsert_args)


def test_stage_quarantines_bad_records_and_keeps_the_last_duplicate(db, tmp_path, sql):
    good = [student(i) for i in range(1, 6)]
    bad = [
        {"login": "no-id"},
        student(7, id="7"),
        student(8, wallet="lots"),
        student(9, updated_at="yesterday"),
        student(10, login=None),
        ["not", "an", "object"],
    ]
    prefix = write_pages(tmp_path / "pages", good[:3] + bad, good[3:] + [student(2, wallet=99)])

    staged = load.stage(db, USERS, prefix, RUN)

    assert staged == {"received": 12, "staged": 5, "quarantined": 6, "duplicates": 1}
    assert sql("SELECT wallet FROM intra42.users_delta WHERE id = 2") == [(99,)]
    reasons = dict(sql("SELECT record->>'login', reason FROM intra42.quarantine WHERE run_id = %s", (RUN,)))
    assert reasons["no-id"] == "id: missing or not an integer"
    assert reasons["login8"] == "wallet: not an integer"
    assert reasons["login9"] == "updated_at: missing or not an ISO 8601 timestamp"
    assert reasons[None] in ("login: missing or not a string", "not a JSON object")


def test_upsert_inserts_then_writes_only_what_changed(db, tmp_path, sql):
    records = [student(i) for i in range(1, 101)]
    _, first = load_students(db, tmp_path, records)
    assert (first["inserted"], first["updated"], first["unchanged"]) == (100, 0, 0)
    assert first["watermark"] is not None

    before = dict(sql("SELECT id, xmin::text FROM intra42.users"))
    _, again = load_students(db, tmp_path, records)
    assert (again["inserted"], again["updated"], again["unchanged"]) == (0, 0, 100)
    assert dict(sql("SELECT id, xmin::text FROM intra42.users")) == before

    records[4] = student(5, location="c1r1s1")
    records[9] = student(10, last_name="Müller", updated_at="2025-07-01T00:00:00Z")
    _, changed = load_students(db, tmp_path, records + [student(500)])
    assert (changed["inserted"], changed["updated"], changed["unchanged"]) == (1, 2, 98)
    after = dict(sql("SELECT id, xmin::text FROM intra42.users"))
    assert {i for i in before if after[i] != before[i]} == {5, 10}


def test_dry_run_reports_but_writes_nothing(db, tmp_path, sql):
    _, counts = load_students(db, tmp_path, [student(i) for i in range(1, 11)], dry_run=True)
    assert counts["inserted"] == 10
    assert sql("SELECT count(*) FROM intra42.users") == [(0,)]


def test_upsert_failing_midway_leaves_the_table_as_it_was(db, tmp_path, sql):
    load_students(db, tmp_path, [student(i) for i in range(1, 51)])
    before = sql("SELECT * FROM intra42.users ORDER BY id")
    # A row that the database refuses halfway through the statement (as a constraint would).
    sql("""CREATE FUNCTION intra42.refuse() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN IF NEW.id = 40 THEN RAISE EXCEPTION 'refused row 40'; END IF; RETURN NEW; END $$""")
    sql("CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON intra42.users FOR EACH ROW EXECUTE FUNCTION intra42.refuse()")

    changed = [student(i, wallet=1000 + i) for i in range(1, 61)]
    with pytest.raises(Exception, match="refused row 40"):
        load_students(db, tmp_path, changed)

    assert sql("SELECT * FROM intra42.users ORDER BY id") == before


def test_deletion_guard_marks_a_few_missing_rows(db, tmp_path, sql):
    records = [student(i) for i in range(1, 101)]
    load_students(db, tmp_path, records)

    _, counts = load_students(db, tmp_path, records[:95], full_refresh=True)

    assert counts["marked_deleted"] == 5
    marked = sql("SELECT id FROM intra42.users WHERE deleted_at IS NOT NULL ORDER BY id")
    assert marked == [(i,) for i in range(96, 101)]
    assert sql("SELECT count(*) FROM intra42.users") == [(100,)]

    _, back = load_students(db, tmp_path, records, full_refresh=True)
    assert (back["updated"], back["marked_deleted"]) == (5, 0)
    assert sql("SELECT count(*) FROM intra42.users WHERE deleted_at IS NOT NULL") == [(0,)]


def test_deletion_guard_refuses_a_truncated_full_refresh(db, tmp_path, sql):
    records = [student(i) for i in range(1, 101)]
    load_students(db, tmp_path, records)
    before = sql("SELECT * FROM intra42.users ORDER BY id")

    changed = [student(i, wallet=7) for i in range(1, 31)]  # the API "answered" 30 of 100
    with pytest.raises(load.DeletionGuardError, match="refusing to mark 70 of 100 users"):
        load_students(db, tmp_path, changed, full_refresh=True)

    assert sql("SELECT * FROM intra42.users ORDER BY id") == before
    _, allowed = load_students(db, tmp_path, changed, full_refresh=True, max_delete_share=0.8)
    assert allowed["marked_deleted"] == 70


def test_quarantined_record_is_not_marked_deleted(db, tmp_path, sql):
    records = [student(i) for i in range(1, 21)]
    load_students(db, tmp_path, records)
    records[0] = student(1, wallet="broken")

    staged, counts = load_students(db, tmp_path, records, full_refresh=True)

    assert staged["quarantined"] == 1
    assert counts["marked_deleted"] == 0


def stage_run(db, tmp_path, run_id, records):
    from usersync import staging

    folder = tmp_path / run_id
    folder.mkdir(parents=True)
    staging.write_ndjson(staging.ObjectStoragePath(f"file://{folder}/page-000001.ndjson"), records)
    return load.stage(db, USERS, f"file://{folder}", run_id)


def test_interleaved_runs_each_write_their_own_records(db, tmp_path, sql):
    a = [student(i) for i in range(1, 51)]
    b = [student(i) for i in range(51, 101)]
    stage_run(db, tmp_path, "run_a", a)
    stage_run(db, tmp_path, "run_b", b)  # empties users_delta and fills it with B's records

    written_a = load.upsert(db, USERS, run_id="run_a")
    written_b = load.upsert(db, USERS, run_id="run_b")

    assert (written_a["inserted"], written_a["restaged"]) == (50, 50)
    assert (written_b["inserted"], written_b["restaged"]) == (50, 50)
    assert sql("SELECT count(*), min(id), max(id) FROM intra42.users") == [(100, 1, 100)]


def test_a_delta_emptied_by_a_crash_is_staged_again(db, tmp_path, sql):
    stage_run(db, tmp_path, "run_a", [student(i) for i in range(1, 31)])
    sql("TRUNCATE intra42.users_delta")  # what crash recovery does to an unlogged table

    written = load.upsert(db, USERS, run_id="run_a")

    assert (written["inserted"], written["restaged"]) == (30, 30)
    assert sql("SELECT count(*) FROM intra42.users") == [(30,)]


def test_a_run_that_staged_nothing_cannot_write(db, tmp_path):
    stage_run(db, tmp_path, "run_a", [student(1)])
    with pytest.raises(load.DeltaNotStagedError):
        load.upsert(db, USERS, run_id="run_never_staged")


def test_an_older_record_never_replaces_a_newer_one(db, tmp_path, sql):
    stage_run(db, tmp_path, "newer", [student(1, wallet=2, updated_at="2025-08-01T00:00:00Z")])
    load.upsert(db, USERS, run_id="newer")
    stage_run(db, tmp_path, "older", [student(1, wallet=1, updated_at="2025-07-01T00:00:00Z")])

    written = load.upsert(db, USERS, run_id="older")

    assert (written["updated"], written["stale"]) == (0, 1)
    assert sql("SELECT wallet FROM intra42.users") == [(2,)]


def test_hostile_records_are_quarantined_with_their_reason_and_the_rest_load(db, tmp_path, sql):
    hostile = {
        101: student(101, last_name="Nul\x00l"),
        102: student(102, first_name="Half \ud83d"),
        103: student(103, updated_at="2026-02-30T10:00:00Z"),
        104: student(104, updated_at="2025-06-01T10:00:00+99:00"),
        105: student(105, updated_at="0000-01-01T00:00:00Z"),
        106: student(106, updated_at="2025-06-01T25:00:00Z"),
        107: student(107, wallet=float("nan")),
    }
    fine = [student(1, first_name="Zoé 😀"), student(2), student(3, updated_at="2024-02-29T23:59:59.123+14:00")]

    staged = stage_run(db, tmp_path, "run_h", [*fine, *hostile.values()])
    written = load.upsert(db, USERS, run_id="run_h")

    assert (staged["received"], staged["staged"], staged["quarantined"]) == (10, 3, 7)
    assert written["inserted"] == 3
    assert sql("SELECT first_name FROM intra42.users WHERE id = 1") == [("Zoé 😀",)]
    reasons = dict(
        sql(
            "SELECT coalesce(record->>'id', substring(record #>> '{}' FROM '\"id\":(\\d+)'))::int, "
            "reason FROM intra42.quarantine"
        )
    )
    assert set(reasons) == set(hostile)
    assert "unsupported Unicode escape sequence" in reasons[101]
    assert "surrogate" in reasons[102]
    assert reasons[103] == "updated_at: no such date"
    assert reasons[104] == "updated_at: UTC offset out of range"
    assert reasons[105] == "updated_at: no such date"
    assert reasons[106] == "updated_at: no such time of day"
    assert reasons[107].startswith("not storable as JSON")

    # A full refresh does not mark them deleted: the source still has them.
    sql(
        "INSERT INTO intra42.users (id, login, email, updated_at) SELECT id, 'x', 'x', now() "
        "FROM unnest(ARRAY[101, 102, 103]) AS id"
    )
    full = load.upsert(db, USERS, run_id="run_h", full_refresh=True, max_delete_share=1)
    assert full["marked_deleted"] == 0


def test_the_watermark_stops_at_the_runs_upper_bound(db, tmp_path):
    records = [student(1, updated_at="2025-06-01T10:00:00Z"), student(2, updated_at="2099-01-01T00:00:00Z")]
    stage_run(db, tmp_path, "run_f", records)

    written = load.upsert(db, USERS, run_id="run_f", watermark_upto="2026-01-01T00:00:00Z")

    assert written["watermark"].isoformat() == "2025-06-01T10:00:00+00:00"
    assert written["future_dated"] == 1
    assert "watermark" not in load.upsert(db, USERS, run_id="run_f", moves_watermark=False)


def test_a_full_refresh_does_not_mark_what_another_run_wrote_after_its_fetch(db, tmp_path, sql):
    import time

    load_students(db, tmp_path, [student(i) for i in range(1, 11)])
    fetch_started = time.time()
    time.sleep(0.01)
    stage_run(db, tmp_path, "other", [student(11)])
    load.upsert(db, USERS, run_id="other")  # written after the full run's fetch started
    stage_run(db, tmp_path, "full", [student(i) for i in range(1, 11)])

    written = load.upsert(db, USERS, run_id="full", full_refresh=True, fetch_started=fetch_started)

    assert written["marked_deleted"] == 0
    assert sql("SELECT count(*) FROM intra42.users WHERE deleted_at IS NULL") == [(11,)]


def test_a_suspicious_line_keeps_its_place_among_duplicates(db, tmp_path, sql):
    stage_run(
        db,
        tmp_path,
        "run_1",
        [
            student(1, first_name="Old 😀", wallet=1),
            student(1, wallet=2),
            student(2, wallet=1),
            student(2, first_name="New 😀", wallet=3),
        ],
    )
    assert sql("SELECT id, wallet, first_name FROM intra42.users_delta ORDER BY id") == [
        (1, 2, "Zoé"),
        (2, 3, "New 😀"),
    ]


@pytest.mark.parametrize(
    ("text", "suspicious"),
    [
        (rb'"Zo\u00e9 \ud83d\ude00"', False),  # an accent, an emoji's surrogate pair: jsonb takes them
        (rb'"\ud83d\uDE00"', False),
        (rb'"half \ud83d"', True),  # a lone high surrogate
        (rb'"\ude00 alone"', True),  # a lone low one
        (rb'"\ude00\ud83d"', True),  # a pair in the wrong order
        (rb'"\ud83d\ud83d\ude00"', True),  # a high one followed by another high one
        (rb'"nul \u0000"', True),
        (rb'{"wallet":NaN}', True),
        (rb'{"wallet":-Infinity}', True),
    ],
)
def test_suspicious_lines_are_those_jsonb_may_refuse(text, suspicious):
    assert load._suspicious(text) is suspicious
