"""usersync.entity: the statements generated from declarations, run on the real test Postgres."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from decimal import Decimal

import psycopg
import pytest
from conftest import ROOT, student
from psycopg import sql as q
from usersync.entities import INTRA42_USERS, PORTAILDF_LOOKUPS
from usersync.entity import Column, Entity, create_sql, delete_sql, load_order, stage_sql, upsert_sql

RUN = "manual__entity"
SCHEMA = "entity_test"
SQL_DIR = ROOT / "include" / "sql"
HAND_SQL = ROOT / "tests" / "reference_sql"  # the hand-written SQL the declarations replaced


class Db:
    """One schema of the test Postgres; each call is one transaction."""

    def __init__(self, url: str, schema: str):
        self.url, self.schema = url, schema

    def run(self, *statements, params=None) -> dict | None:
        """Execute the statements in one transaction; the last one's first row as a dict."""
        with psycopg.connect(self.url, options=f"-c search_path={self.schema}") as conn, conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement, params)
            return (
                dict(zip([c.name for c in cur.description], cur.fetchone(), strict=True)) if cur.description else None
            )

    def rows(self, query: str | q.Composable, params=None) -> list[tuple]:
        with psycopg.connect(self.url, options=f"-c search_path={self.schema}") as conn:
            return conn.execute(query, params).fetchall()

    def create(self, entity: Entity) -> None:
        self.run(*create_sql(entity))

    def land(self, entity: Entity, records: list) -> None:
        """Empty the entity's _raw and _delta tables, then COPY the records into <entity>_raw, in order."""
        tables = [q.Identifier(f"{t}_{s}") for t in entity.tables for s in ("raw", "delta")]
        with psycopg.connect(self.url, options=f"-c search_path={self.schema}") as conn, conn.cursor() as cur:
            cur.execute(q.SQL("TRUNCATE {} RESTART IDENTITY").format(q.SQL(", ").join(tables)))
            with cur.copy(q.SQL("COPY {} (record) FROM STDIN").format(q.Identifier(f"{entity.name}_raw"))) as copy:
                for record in records:
                    copy.write_row((json.dumps(record, ensure_ascii=False),))

    def stage(self, entity: Entity, records: list, run_id: str = RUN) -> dict:
        self.land(entity, records)
        return self.run(stage_sql(entity, run_id))

    def load(self, entity: Entity, records: list) -> tuple[dict, dict]:
        return self.stage(entity, records), self.run(upsert_sql(entity))

    def reasons(self, entity: str, by: str = "id", run_id: str = RUN) -> dict:
        return dict(
            self.rows(
                "SELECT record->>%s, reason FROM quarantine WHERE run_id = %s AND entity = %s", (by, run_id, entity)
            )
        )


def make_schema(url: str, schema: str) -> Db:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(q.SQL("DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0}").format(q.Identifier(schema)))
    db = Db(url, schema)
    db.run((SQL_DIR / "common" / "create_quarantine.sql").read_text())
    db.run((SQL_DIR / "common" / "create_timestamp_problem.sql").read_text())
    return db


@pytest.fixture
def db(pg):
    return make_schema(pg.url, SCHEMA)


EVERY_TYPE = Entity(
    "things",
    key="id",
    columns=[
        Column("id", "bigint", required=True),
        Column("n", "integer"),
        Column("amount", "numeric"),
        Column("flag", "boolean"),
        Column("name", "text", max_length=5),
        Column("day", "date"),
        Column("at", "timestamptz"),
        Column("extra", "jsonb"),
        Column("tags", "text[]"),
        Column("color", check=("red", "green")),
        Column("code", check="^[A-Z]{2}$"),
        Column("city", path="address.city", required=True),
    ],
)


def thing(id_: int, **changes) -> dict:
    record = {
        "id": id_,
        "n": -5,
        "amount": 12.5,
        "flag": True,
        "name": "abc",
        "day": "2024-02-29",
        "at": "2026-01-01T10:00:00+01:00",
        "extra": {"a": [1]},
        "tags": ["x", "y"],
        "color": "red",
        "code": "FR",
        "address": {"city": "Lyon"},
    }
    record.update(changes)
    return record


# --- DDL ------------------------------------------------------------------------------------------------------


def test_generated_ddl_creates_the_table_its_delta_raw_and_indexes(db):
    db.create(EVERY_TYPE)
    db.create(EVERY_TYPE)  # idempotent

    tables = db.rows("SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1", (SCHEMA,))
    assert [t for (t,) in tables] == ["quarantine", "things", "things_delta", "things_raw"]
    types = dict(
        db.rows(
            "SELECT column_name, format_type(atttypid, atttypmod) FROM information_schema.columns c "
            "JOIN pg_attribute a ON a.attrelid = 'things'::regclass AND a.attname = c.column_name "
            "WHERE table_schema = %s AND table_name = 'things'",
            (SCHEMA,),
        )
    )
    assert types["tags"] == "text[]" and types["at"] == "timestamp with time zone" and types["day"] == "date"
    assert "deleted_at" not in types and types["ingested_at"] == "timestamp with time zone"
    assert db.rows("SELECT relpersistence FROM pg_class WHERE relname IN ('things_delta', 'things_raw')") == [
        ("u",),
        ("u",),
    ]


def test_intra42_declaration_creates_the_same_table_as_the_hand_written_sql(pg):
    hand, generated = make_schema(pg.url, "entity_hand"), make_schema(pg.url, "entity_generated")
    for path in sorted((HAND_SQL / "intra42").glob("create_*.sql")):
        hand.run(path.read_text())
    generated.create(INTRA42_USERS)

    def shape(db):
        columns = db.rows(
            "SELECT table_name, ordinal_position, column_name, data_type, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_schema = %s AND table_name <> 'users_raw' ORDER BY 1, 2",
            (db.schema,),
        )
        indexes = db.rows(
            "SELECT indexname, replace(indexdef, %s, '') FROM pg_indexes WHERE schemaname = %s ORDER BY 1",
            (db.schema + ".", db.schema),
        )
        persistence = db.rows(
            "SELECT relname, relpersistence FROM pg_class WHERE relnamespace = %s::regnamespace "
            "AND relkind = 'r' ORDER BY 1",
            (db.schema,),
        )
        return columns, indexes, persistence

    hand_columns, hand_indexes, hand_persistence = shape(hand)
    columns, indexes, persistence = shape(generated)
    assert columns == hand_columns
    assert [name for name, _ in indexes] == [name for name, _ in hand_indexes]
    assert indexes == hand_indexes
    # The hand-written DAG creates users_raw when it stages; the declaration creates it with the others.
    assert [p for p in persistence if p[0] != "users_raw"] == hand_persistence


def test_intra42_declaration_stages_like_stage_users_sql(pg):
    records = [student(i) for i in range(1, 30)] + [
        {"login": "no-id"},
        student(100, id="100"),
        student(101, id=-101),
        student(102, id=1.5),
        student(103, login=""),
        student(104, login=None),
        student(105, email=7),
        student(106, first_name=1),
        student(107, wallet="lots"),
        student(108, wallet=1e12),
        student(109, correction_point=2.5),
        student(110, updated_at="yesterday"),
        student(111, updated_at=None),
        ["not", "an", "object"],
        42,
        student(3, wallet=99),
        student(112, updated_at="2025-06-01 10:00:00+02"),
        student(113, id=1.0),
        student(114, id=10**18),
        student(115, wallet=-999_999_999, correction_point=-(10**9)),
    ]
    hand, generated = make_schema(pg.url, "entity_hand"), make_schema(pg.url, "entity_generated")
    for db in (hand, generated):
        db.create(INTRA42_USERS)
    hand.land(INTRA42_USERS, records)
    hand_counts = hand.run(
        (HAND_SQL / "intra42" / "stage_users.sql").read_text(), params={"run_id": RUN, "entity": "users"}
    )

    assert (
        generated.stage(INTRA42_USERS, records)
        == hand_counts
        == {"received": 49, "staged": 30, "quarantined": 18, "duplicates": 1}
    )
    table = "SELECT to_jsonb(d) - 'ingested_at' FROM users_delta d ORDER BY id"
    assert generated.rows(table) == hand.rows(table)
    quarantine = "SELECT reason, record FROM quarantine ORDER BY record::text"
    assert generated.rows(quarantine) == hand.rows(quarantine)


def test_portaildf_lookups_stage_like_the_hand_written_sql(pg):
    """Answers carry no email: the stage reads it from the application's users (trimmed; '' when missing)."""

    def answer(n: int, outcome: str = "found", **record) -> dict:
        found = {"id_user": n, "exterieur": n % 2 == 0, "gestionnaire": n % 3 == 0, **record}
        return {
            "user_id": str(n),
            "outcome": outcome,
            **({"record": found} if outcome == "found" else {}),
            **({"reason": "HTTP 500"} if outcome == "failed" else {}),
        }

    records = [answer(n) for n in range(1, 13)] + [
        answer(20, "not_found"),
        answer(21, "failed"),
        answer(22, "maybe"),
        {"outcome": "found"},
        answer(23, exterieur="yes"),
        answer(24, gestionnaire=None),
        answer(25, id_user="7"),
        answer(26, id_user=None),
        answer(27),  # a user the application no longer has
        {**answer(28, "failed"), "ambiguous": 2},
        {**answer(29), "ambiguous": 3},
        answer(1, exterieur=True, gestionnaire=True),
        [1],
    ]
    hand, generated = make_schema(pg.url, "entity_hand"), make_schema(pg.url, "entity_generated")
    hand.run((HAND_SQL / "portaildf" / "create_users_delta.sql").read_text())
    hand.run("CREATE UNLOGGED TABLE users_raw (seq bigint GENERATED ALWAYS AS IDENTITY, record jsonb NOT NULL)")
    generated.create(PORTAILDF_LOOKUPS)
    assert generated.run("SELECT to_regclass('users') AS users") == {"users": None}  # the application's
    columns = "SELECT column_name, data_type, is_nullable FROM information_schema.columns WHERE table_schema = %s "
    columns += "AND table_name = 'users_delta' ORDER BY ordinal_position"
    assert generated.rows(columns, (generated.schema,)) == hand.rows(columns, (hand.schema,))
    for db in (hand, generated):
        db.run("CREATE TABLE users (id integer PRIMARY KEY, email text, kind text)")
        db.run(
            "INSERT INTO users SELECT n, CASE WHEN n <> 12 THEN ' u' || n || '@example.fr ' END "
            "FROM generate_series(1, 29) AS n WHERE n <> 27"
        )
    hand.land(PORTAILDF_LOOKUPS, records)
    hand_counts = hand.run(
        (HAND_SQL / "portaildf" / "stage_users.sql").read_text(), params={"run_id": RUN, "entity": "users"}
    )

    counts = generated.stage(PORTAILDF_LOOKUPS, records)

    assert (
        counts
        == {k: hand_counts[k] for k in counts}
        == {"received": 25, "staged": 18, "quarantined": 6, "duplicates": 1}
    )
    table = "SELECT * FROM users_delta ORDER BY user_id"
    assert generated.rows(table) == hand.rows(table)
    assert generated.rows("SELECT email FROM users_delta WHERE user_id IN ('2', '12', '27') ORDER BY user_id") == [
        ("",),
        ("u2@example.fr",),
        ("",),
    ]
    quarantine = "SELECT reason, record FROM quarantine ORDER BY record::text"
    assert generated.rows(quarantine) == hand.rows(quarantine)
    # The figures the hand-written stage returned besides its counts: portaildf's summary gives them now.
    summary = generated.run((SQL_DIR / "portaildf" / "summary_users.sql").read_text())
    figures = ("not_found", "failed", "ambiguous", "not_found_ids", "failures")
    assert {k: summary[k] for k in figures} == {k: hand_counts[k] for k in figures}
    assert (summary["ambiguous"], summary["failures"][0]["user_id"]) == (2, "21")


# --- stage --------------------------------------------------------------------------------------------------


def test_stage_and_upsert_round_trip_typed_values(db):
    db.create(EVERY_TYPE)
    staged, written = db.load(
        EVERY_TYPE, [thing(1), thing(2, n=None, tags=None, extra=None, address={"city": "Nîmes"})]
    )

    assert staged == {"received": 2, "staged": 2, "quarantined": 0, "duplicates": 0}
    assert written == {"inserted": 2, "updated": 0, "unchanged": 0}
    rows = db.rows(
        "SELECT id, n, amount, flag, name, day::text, at, extra, tags, color, code, city FROM things ORDER BY id"
    )
    assert rows[0] == (
        1,
        -5,
        12.5,
        True,
        "abc",
        "2024-02-29",
        datetime(2026, 1, 1, 9, tzinfo=UTC),
        {"a": [1]},
        ["x", "y"],
        "red",
        "FR",
        "Lyon",
    )
    assert (rows[1][1], rows[1][7], rows[1][8], rows[1][11]) == (None, None, None, "Nîmes")


def test_each_rule_quarantines_with_its_reason_and_the_rest_loads(db):
    db.create(EVERY_TYPE)
    bad = {
        "not a JSON object": ["an", "array"],
        "id: missing or not an integer": {"id": None},
        "n: not an integer": thing(11, n=12345678901),
        "amount: not a number": thing(12, amount="12"),
        "flag: not a boolean": thing(13, flag="true"),
        "name: not a string of at most 5 characters": thing(14, name="too long"),
        "day: not an ISO 8601 date": thing(15, day="2026-02-30"),
        "at: not an ISO 8601 timestamp": thing(16, at="2026-01-01"),
        "tags: not a list of strings": thing(17, tags=["x", 1]),
        "color: not one of red, green": thing(18, color="blue"),
        "code: not a string": thing(19, code="fr"),
        "city: missing or not a string": thing(20, address="Lyon"),
    }
    records = [thing(1), *bad.values(), thing(2, n=None, amount=None, extra=None, tags=None, color=None)]

    counts = db.stage(EVERY_TYPE, records)

    assert counts == {"received": 14, "staged": 2, "quarantined": 12, "duplicates": 0}
    reasons = db.rows("SELECT reason, record FROM quarantine ORDER BY id")
    assert reasons == [(reason, record) for reason, record in bad.items()]
    assert db.rows("SELECT id FROM things_delta ORDER BY id") == [(1,), (2,)]


IMPOSSIBLE_TIMESTAMPS = [
    "2026-02-30T10:00:00Z",
    "2026-04-31T10:00:00Z",
    "2026-13-01T10:00:00Z",
    "2026-00-10T10:00:00Z",
    "2026-01-00T10:00:00Z",
    "2026-01-01T25:00:00Z",
    "2026-01-01T24:00:00Z",
    "2026-01-01T10:60:00Z",
    "2026-01-01T10:00:60Z",
    "2026-01-01T10:00:00+99",
    "2026-01-01T10:00:00+16:00",
    "2026-01-01T10:00:00+15:60",
    "0000-01-01T10:00:00Z",
    "2025-02-29T10:00:00Z",
    "1900-02-29T10:00:00Z",
    "2026-01-01T10:00:00",
    "2026-01-01T10:00:00." + "9" * 200 + "Z",
    "20260101T100000Z",
    "2026-1-1T10:00:00Z",
    " 2026-01-01T10:00:00Z",
    "2026-01-01T10:00:00Z\n",
    "١٢٣٤-01-01T10:00:00Z",
]
POSSIBLE_TIMESTAMPS = [
    "2024-02-29T10:00:00Z",
    "2000-02-29T00:00:00+00:00",
    "2026-12-31 23:59:59.999999999-15:59",
    "0001-01-01T00:00:00+15:59",
    "9999-12-31T23:59:59Z",
    "2026-01-31T10:00+0530",
    "2026-06-30T10:00:00-03",
]


def test_impossible_dates_are_quarantined_and_never_fail_a_cast(db):
    entity = Entity(
        "events",
        key="id",
        columns=[Column("id", "bigint", required=True), Column("day", "date"), Column("at", "timestamptz")],
    )
    db.create(entity)
    records = [{"id": i, "at": at} for i, at in enumerate(IMPOSSIBLE_TIMESTAMPS)]
    records += [{"id": 100 + i, "day": at[:10]} for i, at in enumerate(IMPOSSIBLE_TIMESTAMPS[:5])]
    records += [{"id": 200 + i, "at": at, "day": at[:10]} for i, at in enumerate(POSSIBLE_TIMESTAMPS)]

    counts = db.stage(entity, records)

    assert counts["quarantined"] == len(IMPOSSIBLE_TIMESTAMPS) + 5
    assert counts["staged"] == len(POSSIBLE_TIMESTAMPS)
    assert set(db.reasons("events").values()) == {"at: not an ISO 8601 timestamp", "day: not an ISO 8601 date"}
    assert db.rows("SELECT day::text FROM events_delta ORDER BY id")[:2] == [("2024-02-29",), ("2000-02-29",)]


def test_the_last_record_per_key_wins(db):
    db.create(INTRA42_USERS)
    counts = db.stage(INTRA42_USERS, [student(1, wallet=1), student(2), student(1, wallet=2), student(1, wallet=3)])
    assert counts == {"received": 4, "staged": 2, "quarantined": 0, "duplicates": 2}
    assert db.rows("SELECT wallet FROM users_delta WHERE id = 1") == [(3,)]


# --- upsert -------------------------------------------------------------------------------------------------


def test_upsert_writes_only_the_rows_that_changed(db):
    db.create(INTRA42_USERS)
    records = [student(i) for i in range(1, 51)]
    assert db.load(INTRA42_USERS, records)[1] == {"inserted": 50, "updated": 0, "unchanged": 0, "stale": 0}
    before = dict(db.rows("SELECT id, xmin::text FROM users"))

    assert db.load(INTRA42_USERS, records)[1] == {"inserted": 0, "updated": 0, "unchanged": 50, "stale": 0}
    assert dict(db.rows("SELECT id, xmin::text FROM users")) == before

    records[4] = student(5, location="c1r1s1")
    written = db.load(INTRA42_USERS, [*records, student(99)])[1]
    assert written == {"inserted": 1, "updated": 1, "unchanged": 49, "stale": 0}
    after = dict(db.rows("SELECT id, xmin::text FROM users"))
    assert {i for i in before if after[i] != before[i]} == {5}


def test_a_stored_row_is_never_replaced_by_an_older_cursor(db):
    db.create(INTRA42_USERS)
    db.load(INTRA42_USERS, [student(1, wallet=5, updated_at="2025-06-02T00:00:00Z"), student(2)])

    _, written = db.load(
        INTRA42_USERS,
        [
            student(1, wallet=1, updated_at="2025-06-01T00:00:00Z"),
            student(2, wallet=7, updated_at="2025-06-03T00:00:00Z"),
        ],
    )

    assert written == {"inserted": 0, "updated": 1, "unchanged": 0, "stale": 1}  # student 1: stale
    assert db.rows("SELECT id, wallet FROM users ORDER BY id") == [(1, 5), (2, 7)]


def test_keep_non_empty_columns_are_not_overwritten_by_empty_values(db):
    entity = Entity(
        "entries",
        key="id",
        columns=[
            Column("id", required=True),
            Column("summary", keep_non_empty=True),
            Column("tags", "text[]", keep_non_empty=True),
            Column("type"),
        ],
    )
    db.create(entity)
    db.load(entity, [{"id": "a", "summary": "tuned", "tags": ["x"], "type": "SERVICE"}, {"id": "b", "summary": ""}])

    _, written = db.load(
        entity,
        [{"id": "a", "summary": "", "tags": [], "type": "NOTE"}, {"id": "b", "summary": "now set", "tags": None}],
    )

    assert written == {"inserted": 0, "updated": 2, "unchanged": 0}
    assert db.rows("SELECT id, summary, tags, type FROM entries ORDER BY id") == [
        ("a", "tuned", ["x"], "NOTE"),
        ("b", "now set", None, None),
    ]
    assert db.load(entity, [{"id": "a", "summary": None, "tags": None, "type": "NOTE"}])[1]["unchanged"] == 1


# --- deletion -----------------------------------------------------------------------------------------------


def test_mark_deleted_reports_its_guard_figures_and_a_return_clears_the_mark(db):
    db.create(INTRA42_USERS)
    records = [student(i) for i in range(1, 21)]
    db.load(INTRA42_USERS, records)

    db.load(INTRA42_USERS, [*records[:15], student(16, login="")])  # 16 quarantined: still in the source
    figures = db.run(delete_sql(INTRA42_USERS, RUN))

    assert figures == {"marked": 4, "removed": 0, "active_before": 20}
    assert db.rows("SELECT id FROM users WHERE deleted_at IS NOT NULL ORDER BY id") == [(i,) for i in range(17, 21)]
    assert db.run(delete_sql(INTRA42_USERS, RUN)) == {"marked": 0, "removed": 0, "active_before": 16}

    _, back = db.load(INTRA42_USERS, records)
    assert back == {"inserted": 0, "updated": 4, "unchanged": 16, "stale": 0}
    assert db.rows("SELECT count(*) FROM users WHERE deleted_at IS NULL") == [(20,)]


def test_mark_can_set_a_status_and_spares_rows_written_after_the_fetch_started(db):
    entity = Entity(
        "appointments",
        key="id",
        columns=[Column("id", required=True), Column("status")],
        deletion="mark",
        deleted_status=("status", "CANCELLED"),
    )
    db.create(entity)
    assert "deleted_at" not in {
        c for (c,) in db.rows("SELECT column_name FROM information_schema.columns WHERE table_name = 'appointments'")
    }
    db.load(entity, [{"id": str(i), "status": "ACTIVE"} for i in range(1, 5)])
    fetch_started = db.run("SELECT now() AS now")["now"]
    db.run("UPDATE appointments SET ingested_at = now() WHERE id = '4'")  # written by a run that started later

    db.load(entity, [{"id": "1", "status": "ACTIVE"}])
    figures = db.run(delete_sql(entity, RUN, fetch_started=fetch_started))

    assert figures == {"marked": 2, "removed": 0, "active_before": 4}
    assert db.rows("SELECT id, status FROM appointments ORDER BY id") == [
        ("1", "ACTIVE"),
        ("2", "CANCELLED"),
        ("3", "CANCELLED"),
        ("4", "ACTIVE"),
    ]
    assert db.run(delete_sql(entity, RUN)) == {"marked": 1, "removed": 0, "active_before": 2}  # 4, now
    assert db.load(entity, [{"id": "2", "status": "ACTIVE"}])[1] == {"inserted": 0, "updated": 1, "unchanged": 0}


def test_remove_within_a_window(db):
    entity = Entity(
        "events",
        key="id",
        deletion="remove",
        columns=[Column("id", required=True), Column("start", "timestamptz", required=True)],
    )
    db.create(entity)
    db.load(entity, [{"id": f"e{day}", "start": f"2026-10-{day:02d}T09:00:00Z"} for day in range(1, 11)])
    db.load(entity, [{"id": "e5", "start": "2026-10-05T09:00:00Z"}])

    window = q.SQL("start >= {} AND start < {}").format(
        q.Literal(datetime(2026, 10, 4, tzinfo=UTC)), q.Literal(datetime(2026, 10, 7, tzinfo=UTC))
    )
    figures = db.run(delete_sql(dataclasses.replace(entity, window=window), RUN))

    assert figures == {"marked": 0, "removed": 2, "active_before": 3}
    assert [i for (i,) in db.rows("SELECT id FROM events ORDER BY start")] == [
        "e1",
        "e2",
        "e3",
        "e5",
        "e7",
        "e8",
        "e9",
        "e10",
    ]


def test_a_key_of_two_columns(db):
    entity = Entity(
        "memberships",
        key=("group", "user"),
        deletion="mark",
        columns=[Column("group", required=True), Column("user", "bigint", required=True), Column("role")],
    )
    db.create(entity)
    rows = [{"group": g, "user": u, "role": "member"} for g in ("a", "b") for u in (1, 2)]
    assert db.load(entity, [*rows, {**rows[0], "role": "owner"}]) == (
        {"received": 5, "staged": 4, "quarantined": 0, "duplicates": 1},
        {"inserted": 4, "updated": 0, "unchanged": 0},
    )
    assert db.load(entity, rows[1:])[1] == {"inserted": 0, "updated": 0, "unchanged": 3}
    assert db.run(delete_sql(entity, RUN)) == {"marked": 1, "removed": 0, "active_before": 4}
    assert db.rows('SELECT "group", "user", role FROM memberships WHERE deleted_at IS NOT NULL') == [("a", 1, "owner")]


def test_no_deletion_policy_has_no_deletion_statement():
    with pytest.raises(ValueError, match="no deletion policy"):
        delete_sql(Entity("x", key="id", columns=[Column("id")]), RUN)


# --- children and references ----------------------------------------------------------------------------------

CONTACTS = Entity(
    "contacts",
    key="id",
    path="contacts.nodes",
    parent_key="client_id",
    deletion="remove",
    columns=[
        Column("id", required=True),
        Column("first_name", path="firstName"),
        Column("wants_email", "boolean", path="wantsEmail"),
    ],
)
CLIENTS = Entity(
    "clients",
    key="id",
    children=[CONTACTS],
    columns=[
        Column("id", required=True),
        Column("company_name", path="companyName"),
        Column("updated_at", "timestamptz", path="updatedAt", required=True),
    ],
)


def client(id_: str, *contacts: dict, **changes) -> dict:
    record = {
        "id": id_,
        "companyName": f"Company {id_}",
        "updatedAt": "2026-10-01T10:00:00Z",
        "contacts": {"nodes": list(contacts)},
    }
    record.update(changes)
    return record


def test_labels_rules_and_a_window_as_a_run_declares_them(db):
    visits = Entity(
        "visits",
        key="id",
        deletion="remove",
        columns=[
            Column("id", required=True),
            Column("on_day", "date", path="onDay", label="onDay", required=True, explain=True),
            Column("at", "time", path="atTime", label="atTime"),
        ],
        rules=[("record->>'kind' IS DISTINCT FROM 'draft'", "kind: a draft")],
    )
    db.create(visits)
    in_october = dataclasses.replace(visits, window="on_day BETWEEN '2026-10-01' AND '2026-10-31'")
    records = [
        {"id": "v1", "onDay": "2026-10-02", "atTime": "09:30"},
        {"id": "v2", "onDay": "2026-10-32"},
        {"id": "v3", "onDay": "2026-10-03", "atTime": "25:00"},
        {"id": "v4", "onDay": "2026-10-04", "kind": "draft"},
        {"id": "v5", "onDay": "2026-11-05"},  # outside the window: left out, not refused
        {"id": "v6", "onDay": "2026-09-30"},
    ]
    counts = db.stage(in_october, records)

    assert counts == {"received": 6, "staged": 1, "quarantined": 3, "duplicates": 0, "outside_window": 2}
    assert db.reasons("visits") == {
        "v2": "onDay: no such date",
        "v3": "atTime: not an ISO 8601 time of day",
        "v4": "kind: a draft",
    }
    db.run(upsert_sql(in_october))
    db.run("INSERT INTO visits (id, on_day) VALUES ('gone', '2026-10-20'), ('kept', '2026-12-01')")
    db.stage(in_october, records[:1], run_id="r2")
    assert db.run(delete_sql(in_october, "r2")) == {"marked": 0, "removed": 1, "active_before": 2}
    assert db.rows("SELECT id, at::text FROM visits ORDER BY id") == [("kept", None), ("v1", "09:30:00")]


def test_children_are_staged_with_their_parent_and_pruned_by_it(db):
    db.create(CLIENTS)
    records = [
        client("c1", {"id": "p1", "firstName": "Ana", "wantsEmail": True}, {"id": "p2"}),
        client("c2", {"id": "p3", "firstName": "Old"}),
        client("c3", {"id": "p4"}, {"id": 5}),  # a bad contact: the whole client is refused
        client("c4", contacts=None),
        client("c2", {"id": "p3", "firstName": "Bo"}),  # the last c2 wins, with its contacts
    ]
    counts = db.stage(CLIENTS, records)

    assert counts == {"received": 5, "staged": 2, "quarantined": 2, "duplicates": 1, "contacts_staged": 3}
    assert db.reasons("clients") == {
        "c3": "contacts: id: missing or not a string",
        "c4": "contacts: missing or not a list",
    }
    assert db.run(upsert_sql(CLIENTS)) == {"inserted": 2, "updated": 0, "unchanged": 0}
    assert db.run(upsert_sql(CLIENTS.children[0])) == {"inserted": 3, "updated": 0, "unchanged": 0}
    assert db.rows("SELECT id, client_id, first_name, wants_email FROM contacts ORDER BY id") == [
        ("p1", "c1", "Ana", True),
        ("p2", "c1", None, None),
        ("p3", "c2", "Bo", None),
    ]

    db.stage(CLIENTS, [client("c1", {"id": "p1", "firstName": "Ana", "wantsEmail": True})])
    db.run(upsert_sql(CLIENTS))
    figures = db.run(delete_sql(CLIENTS.children[0], RUN, parent=CLIENTS))
    assert figures == {"marked": 0, "removed": 1, "active_before": 2}  # c2's contacts are out of scope
    assert db.rows("SELECT id FROM contacts ORDER BY id") == [("p1",), ("p3",)]


PIANOS = Entity(
    "pianos",
    key="id",
    references={"client_id": "clients"},
    columns=[Column("id", required=True), Column("client_id", path="client.id", required=True)],
)
ENTRIES = Entity(
    "timeline",
    key="id",
    references={"client_id": "clients", "piano_id": "pianos.id"},
    columns=[Column("id", required=True), Column("client_id", path="client.id"), Column("piano_id", path="piano.id")],
)


def test_orphans_are_quarantined(db):
    for entity in (CLIENTS, PIANOS, ENTRIES):
        db.create(entity)
    db.load(CLIENTS, [client("c1")])
    db.load(PIANOS, [{"id": "p1", "client": {"id": "c1"}}, {"id": "p2", "client": {"id": "nope"}}])
    db.load(
        ENTRIES,
        [
            {"id": "t1", "client": {"id": "c1"}, "piano": {"id": "p1"}},
            {"id": "t2", "client": None},
            {"id": "t3", "client": {"id": "c1"}, "piano": {"id": "p2"}},
        ],
    )

    assert db.rows("SELECT id FROM pianos") == [("p1",)]
    assert db.rows("SELECT id FROM timeline ORDER BY id") == [("t1",), ("t2",)]
    assert db.reasons("pianos") == {"p2": "client_id: no such clients"}
    assert db.reasons("timeline") == {"t3": "piano_id: no such pianos"}


def test_load_order_follows_references_and_refuses_a_cycle():
    users = Entity("users", key="id", columns=[Column("id")])
    with_contacts_ref = Entity(
        "calls", key="id", references={"contact_id": "contacts"}, columns=[Column("id"), Column("contact_id")]
    )
    order = load_order([ENTRIES, with_contacts_ref, PIANOS, users, CLIENTS])
    assert [e.name for e in order] == ["users", "clients", "calls", "pianos", "timeline"]
    assert [e.name for e in load_order([PIANOS])] == ["pianos"]  # clients is another sync's

    a = Entity("a", key="id", references={"b_id": "b"}, columns=[Column("id"), Column("b_id")])
    b = Entity("b", key="id", references={"a_id": "a"}, columns=[Column("id"), Column("a_id")])
    with pytest.raises(ValueError, match="reference cycle among a, b"):
        load_order([users, a, b])


# --- quoting and declarations -----------------------------------------------------------------------------------


def test_names_that_need_quoting(db):
    entity = Entity.from_dict(
        {
            "name": 'Démarche "n°1" dossiers',
            "key": ["N° dossier"],
            "columns": [
                {"name": "N° dossier", "type": "bigint", "required": True, "path": ["dossier", "numéro"]},
                {"name": "Nom d'usage", "path": ["champs", "nom d'usage"]},
                {"name": 'Montant "HT"', "type": "numeric", "path": ["champs", 'montant "HT"']},
                {"name": "État", "check": ["en_construction", "accepté"], "keep_non_empty": True},
                {"name": "Code", "check": "^[0-9]{2}%$"},
                {"name": "mis à jour", "type": "timestamptz", "path": "dossier.màj"},
            ],
            "cursor": "mis à jour",
            "deletion": "mark",
            "indexes": ["État"],
        }
    )
    db.create(entity)
    good = {
        "dossier": {"numéro": 1, "màj": "2026-01-01T00:00:00Z"},
        "champs": {"nom d'usage": "O'Brien", 'montant "HT"': 12.3},
        "État": "accepté",
        "Code": "12%",
    }
    bad = {"dossier": {"numéro": 2}, "État": "refusé"}

    staged, written = db.load(entity, [good, bad])

    assert (staged["staged"], staged["quarantined"], written["inserted"]) == (1, 1, 1)
    table = q.Identifier('Démarche "n°1" dossiers')
    assert db.rows(
        q.SQL('SELECT "N° dossier", "Nom d\'usage", "Montant ""HT""", "État", "Code" FROM {}').format(table)
    ) == [(1, "O'Brien", Decimal("12.3"), "accepté", "12%")]
    assert db.rows("SELECT reason FROM quarantine") == [("État: not one of en_construction, accepté",)]
    assert db.run(delete_sql(entity, RUN)) == {"marked": 0, "removed": 0, "active_before": 1}
    assert db.rows("SELECT count(*) FROM pg_indexes WHERE indexname = 'Démarche \"n°1\" dossiers_État_idx'") == [(1,)]


def test_quarantine_may_live_in_another_schema(db, pg):
    books = make_schema(pg.url, "entity_books")
    db.create(INTRA42_USERS)
    db.load(INTRA42_USERS, [student(1), student(2)])
    db.run("DROP TABLE quarantine")
    db.land(INTRA42_USERS, [student(1, login=""), student(3)])

    assert db.run(stage_sql(INTRA42_USERS, RUN, quarantine=("entity_books", "quarantine")))["quarantined"] == 1
    figures = db.run(delete_sql(INTRA42_USERS, RUN, quarantine=("entity_books", "quarantine")))
    assert figures == {"marked": 1, "removed": 0, "active_before": 2}  # 2; 1 was quarantined, so kept
    assert books.rows("SELECT reason FROM quarantine") == [("login: missing or not a string",)]


def test_from_dict_equals_the_dataclasses():
    data = {
        "name": "users",
        "key": "id",
        "cursor": "updated_at",
        "columns": [
            {"name": "id", "type": "bigint", "required": True},
            {"name": "updated_at", "type": "timestamptz", "path": "meta.updatedAt"},
        ],
        "children": [
            {
                "name": "emails",
                "key": "address",
                "path": "emails",
                "parent_key": "user_id",
                "columns": [{"name": "address", "required": True}],
            }
        ],
    }
    entity = Entity.from_dict(data)
    assert entity == Entity(
        "users",
        "id",
        [Column("id", "bigint", required=True), Column("updated_at", "timestamptz", path=("meta", "updatedAt"))],
        cursor="updated_at",
        children=[Entity("emails", "address", [Column("address", required=True)], path="emails", parent_key="user_id")],
    )
    assert [c.name for c in entity.children[0].columns] == ["user_id", "address"]
    assert entity.children[0].column("user_id").type == "bigint"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"columns": [Column("id"), Column("id")]}, "declared twice"),
        ({"columns": [Column("id"), Column("deleted_at")]}, "reserved"),
        ({"cursor": "updated"}, "no column 'updated'"),
        ({"key": "nope"}, "no column 'nope'"),
        ({"references": {"client": "clients"}}, "no column 'client'"),
        ({"deletion": "purge"}, "not one of none, mark, remove"),
        ({"deleted_status": ("id", "x")}, 'needs deletion="mark"'),
        ({"owned": False, "deletion": "remove"}, "a table not ours has no deletion policy"),
    ],
)
def test_bad_declarations_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Entity("e", **{"key": "id", "columns": [Column("id")], **kwargs})


def test_a_table_not_ours_is_written_by_the_sync_not_by_a_generated_upsert():
    with pytest.raises(ValueError, match="not our table; the sync writes it"):
        upsert_sql(PORTAILDF_LOOKUPS)


def test_unknown_type_is_refused():
    with pytest.raises(ValueError, match="unknown type 'varchar'"):
        Column("x", "varchar")
