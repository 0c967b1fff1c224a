"""intra42_users end to end: dag.test() against the 42 sandbox over HTTP and a real Postgres."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import AIRFLOW_HOME, CLIENT_SECRET, intra42_conn
from dagrun import get_dag, run_dag, xcom

DAG_ID = "intra42_users"
COLUMNS = (
    "login",
    "email",
    "first_name",
    "last_name",
    "pool_month",
    "pool_year",
    "location",
    "wallet",
    "correction_point",
    "updated_at",
)


@pytest.fixture
def intra42(intra42_sandbox, fresh_schema):
    """A clean sandbox (original data, no faults) and an empty intra42 schema."""
    intra42_sandbox.control("reset")
    fresh_schema(DAG_ID, "intra42")
    return intra42_sandbox


def expected_table(sandbox, without=()) -> dict:
    students = (s for s in sandbox.data.students() if s["id"] not in without)
    return {s["id"]: tuple(_normal(c, s[c]) for c in COLUMNS) for s in students}


def actual_table(sql, where="deleted_at IS NULL") -> dict:
    rows = sql(f"SELECT id, {', '.join(COLUMNS)} FROM intra42.users WHERE {where}")
    return {row[0]: tuple(_normal(c, v) for c, v in zip(COLUMNS, row[1:], strict=True)) for row in rows}


def _normal(column, value):
    if column == "updated_at" and value is not None:
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(value.replace("Z", "+00:00"))
        return moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return value


def versions(sql) -> dict:
    """Each row's xmin: it changes exactly when the row is written."""
    return dict(sql("SELECT id, xmin::text FROM intra42.users"))


def last_report(sql) -> dict:
    return sql("SELECT report FROM intra42.sync_runs ORDER BY id DESC LIMIT 1")[0][0]


def sync(conf=None, **kwargs):
    run, states = run_dag(DAG_ID, conf, **kwargs)
    assert set(states.values()) == {"success"}, states
    return run


def test_first_run_loads_every_student_and_a_rerun_writes_nothing(intra42, sql):
    run = sync()

    expected = expected_table(intra42)
    assert actual_table(sql) == expected
    report = xcom(run, "report_run")
    assert report["mode"] == "full"
    assert (report["fetched"], report["inserted"], report["updated"]) == (len(expected), len(expected), 0)
    assert report["pages"] == -(-len(expected) // 100)
    assert last_report(sql)["run_id"] == run.run_id

    before = versions(sql)
    sync()
    again = last_report(sql)
    assert again["mode"] == "incremental"
    assert (again["inserted"], again["updated"], again["marked_deleted"]) == (0, 0, 0)
    assert again["fetched"] < len(expected)  # only the watermark's overlap is read again
    assert versions(sql) == before
    staged_runs = [p.name for p in (Path(AIRFLOW_HOME) / "staging" / DAG_ID).iterdir()]
    assert staged_runs == []  # a finished run removes its staging files


def test_k_changed_students_are_exactly_k_updates(intra42, sql):
    sync()
    before = versions(sql)

    changed = intra42.control("mutate", {"k": 7})["ids"]
    sync()

    report = last_report(sql)
    assert (report["mode"], report["inserted"], report["updated"]) == ("incremental", 0, 7)
    after = versions(sql)
    assert {i for i in before if after[i] != before[i]} == set(changed)
    assert actual_table(sql) == expected_table(intra42)


def test_faults_still_end_with_the_identical_table(intra42, sql):
    intra42.control(
        "faults", {"error_rate": 0.15, "burst_429": 3, "truncate_rate": 0.15, "duplicate_rate": 0.3, "seed": 11}
    )
    sync({"full_refresh": True})

    assert actual_table(sql) == expected_table(intra42)
    report = last_report(sql)
    assert report["throttled"] >= 3
    assert report["retries"] > 0
    assert report["duplicates"] > 0
    state = intra42.state()
    assert state["stats"]["truncated"] > 0


def test_dry_run_writes_nothing_but_reports_what_would_change(intra42, sql):
    sync({"dry_run": True})

    assert sql("SELECT count(*) FROM intra42.users") == [(0,)]
    report = last_report(sql)
    assert report["dry_run"] is True
    assert report["inserted"] == len(intra42.data.students())


def always_failing(sandbox, monkeypatch) -> None:
    """Every API call fails from now on; the client and the tasks retry once (the number does not matter)."""
    sandbox.control("faults", {"error_rate": 1.0})
    monkeypatch.setenv("AIRFLOW_CONN_INTRA42_API", intra42_conn(sandbox.url, rate_limit="40/s", max_retries="1"))


def test_a_failing_api_fails_the_run_and_leaves_the_table_as_it_was(intra42, sql, monkeypatch):
    sync()
    before = sql("SELECT * FROM intra42.users ORDER BY id")
    intra42.control("mutate", {"k": 5})
    always_failing(intra42, monkeypatch)

    _, states = run_dag(DAG_ID, retries=1)

    assert states["fetch_users"] == "failed"
    assert states["upsert_users"] == "upstream_failed"
    assert sql("SELECT * FROM intra42.users ORDER BY id") == before


def test_a_missed_run_loses_no_changes(intra42, sql, monkeypatch):
    sync()
    first = intra42.control("mutate", {"k": 3})["ids"]
    with monkeypatch.context() as failing:
        always_failing(intra42, failing)
        run_dag(DAG_ID, retries=1)  # fails: no watermark moves
    intra42.control("faults", {"error_rate": 0})
    second = intra42.control("mutate", {"k": 4})["ids"]

    sync()

    assert last_report(sql)["updated"] == len(set(first) | set(second))
    assert actual_table(sql) == expected_table(intra42)


def test_full_refresh_marks_students_the_api_no_longer_returns(intra42, sql):
    sync()
    sql("INSERT INTO intra42.users (id, login, email, updated_at) VALUES (999999999, 'gone', 'g@x', now())")

    sync({"full_refresh": True})

    assert last_report(sql)["marked_deleted"] == 1
    assert sql("SELECT login FROM intra42.users WHERE deleted_at IS NOT NULL") == [("gone",)]


def test_backfilled_intervals_give_the_same_table_as_a_full_refresh(intra42_sandbox, fresh_schema, sql, monkeypatch):
    from sandbox.common import serve
    from sandbox.intra42 import Intra42Data, create_app

    start = datetime(2026, 3, 1, tzinfo=UTC)
    data = Intra42Data(students=600, seed=3, updated_from=start, updated_to=start + timedelta(days=1))
    app = create_app(data, client_id="test-client-id", client_secret=CLIENT_SECRET, per_second=40, per_hour=100000)
    with serve(app) as url:
        monkeypatch.setenv("AIRFLOW_CONN_INTRA42_API", intra42_conn(url, rate_limit="40/s"))
        fresh_schema(DAG_ID, "intra42")
        for hours in (6, 12, 18, 24):
            sync({"interval_only": True}, logical_date=start + timedelta(hours=hours))
            assert last_report(sql)["mode"] == "interval"
        backfilled = actual_table(sql)

        fresh_schema(DAG_ID, "intra42")
        sync({"full_refresh": True})
        assert actual_table(sql) == backfilled
        assert len(backfilled) == 600


def test_no_secret_reaches_logs_xcom_or_staging(intra42, sql, capfd, monkeypatch):
    from usersync import staging

    monkeypatch.setattr(staging, "clean_up", lambda dag_id, run_id: None)  # keep the files to search them
    run = sync()
    tokens = list(intra42.app.state.tokens._tokens)  # every access token the sandbox issued
    assert tokens

    places = {"console": "".join(capfd.readouterr())}
    for path in Path(AIRFLOW_HOME).rglob("*"):
        if path.is_file() and path.suffix in (".log", ".json", ".ndjson", ""):
            places[str(path)] = path.read_text(errors="replace")
    places["xcom"] = json.dumps([xcom(run, t) for t in get_dag(DAG_ID).task_ids if t != "api_available"], default=str)
    places["sync_runs"] = json.dumps(sql("SELECT report FROM intra42.sync_runs"), default=str)
    assert any("staging" in name for name in places)

    for secret in [CLIENT_SECRET, *tokens]:
        leaks = [name for name, text in places.items() if secret in text]
        assert not leaks, f"a secret appears in {leaks}"


def test_every_run_is_recorded_with_its_mode(intra42, sql):
    sync({"per_page": 50})
    assert last_report(sql)["pages"] == -(-len(intra42.data.students()) // 50)
    assert os.environ["USERSYNC_STAGING_URL"].startswith("file://")
    modes = [r[0] for r in sql("SELECT mode FROM intra42.sync_runs ORDER BY id")]
    assert modes == ["full"]


def test_malformed_students_are_quarantined_with_their_reason_while_the_rest_load(intra42, sql):
    intra42.control("faults", {"corrupt_rate": 0.02, "seed": 5})
    sync()

    corrupted = intra42.state()["stats"]["corrupted"]
    assert corrupted > 0
    report = last_report(sql)
    assert report["quarantined"] == corrupted
    quarantined = sql("SELECT (record->>'id')::bigint, reason FROM intra42.quarantine")
    assert len(quarantined) == corrupted
    assert {reason.split(":")[0] for _, reason in quarantined} <= {"wallet", "updated_at", "login", "correction_point"}
    expected = expected_table(intra42)
    for student_id, _ in quarantined:
        del expected[student_id]
    assert actual_table(sql) == expected


def watermark(sql):
    return sql("SELECT watermark FROM intra42.sync_runs WHERE watermark IS NOT NULL ORDER BY id DESC LIMIT 1")[0][0]


def test_an_interval_run_on_an_empty_table_does_not_stand_for_a_full_load(intra42, sql):
    changed = intra42.control("mutate", {"k": 50})["ids"]
    now = datetime.now(UTC)
    interval_end = now.replace(hour=now.hour // 6 * 6, minute=0, second=0, microsecond=0) + timedelta(hours=6)
    sync({"interval_only": True}, logical_date=interval_end)  # its interval holds the 50 changes
    assert set(actual_table(sql)) == set(changed)
    assert sql("SELECT watermark FROM intra42.sync_runs") == [(None,)]

    sync()

    assert last_report(sql)["mode"] == "full"
    assert actual_table(sql) == expected_table(intra42)


def test_hostile_records_are_quarantined_with_their_reason_and_a_future_date_stalls_nothing(intra42, sql):
    hostile = intra42.control("hostile")["ids"]
    sync()

    report = last_report(sql)
    reasons = dict(
        sql(
            "SELECT substring(record #>> '{}' FROM '\"id\":(\\d+)')::bigint, reason "
            "FROM intra42.quarantine WHERE jsonb_typeof(record) = 'string' "
            "UNION ALL SELECT (record->>'id')::bigint, reason FROM intra42.quarantine "
            "WHERE jsonb_typeof(record) = 'object'"
        )
    )
    assert "unsupported Unicode escape sequence" in reasons.pop(hostile["nul"])
    assert "surrogate" in reasons.pop(hostile["lone_surrogate"])
    assert reasons.pop(hostile["impossible_date"]) == "updated_at: no such date"
    assert reasons.pop(hostile["offset_99"]) == "updated_at: UTC offset out of range"
    assert reasons == {} and report["quarantined"] == 4
    quarantined = [hostile[kind] for kind in ("nul", "lone_surrogate", "impossible_date", "offset_99")]
    assert actual_table(sql) == expected_table(intra42, without=quarantined)  # the 2099 student included
    assert report["future_dated"] == 1
    assert watermark(sql).year < 2099

    changed = intra42.control("mutate", {"k": 6})["ids"]
    sync()
    again = last_report(sql)
    assert (again["mode"], again["updated"]) == ("incremental", 6)
    assert set(changed) <= set(actual_table(sql))


def test_a_postgres_crash_between_stage_and_write_loses_nothing(intra42, sql, monkeypatch):
    from usersync import load

    write = load.upsert

    def after_a_crash(db, entity, **kwargs):
        sql("TRUNCATE intra42.users_delta")  # what crash recovery does to an unlogged table
        return write(db, entity, **kwargs)

    monkeypatch.setattr(load, "upsert", after_a_crash)
    sync()

    report = last_report(sql)
    assert report["inserted"] == report["staged"] == len(intra42.data.students())
    assert report["restaged"] == report["staged"]
    assert actual_table(sql) == expected_table(intra42)


def test_a_late_change_is_picked_up_by_the_daily_reconcile(intra42, sql):
    sync()
    late = intra42.data.mutate(10, at=watermark(sql) - timedelta(minutes=10))  # dated before the overlap

    sync()
    assert (last_report(sql)["mode"], last_report(sql)["updated"]) == ("incremental", 0)  # not seen
    sql("UPDATE intra42.sync_runs SET started_at = started_at - interval '25 hours' WHERE mode = 'full'")

    sync()

    report = last_report(sql)
    assert (report["mode"], report["updated"], report["marked_deleted"]) == ("full", 10, 0)
    assert actual_table(sql) == expected_table(intra42)
    assert set(late) <= set(actual_table(sql))


def test_interval_runs_whose_stage_and_write_interleave_end_exact(intra42_sandbox, fresh_schema, sql, monkeypatch):
    from usersync import load, staging

    from sandbox.common import serve
    from sandbox.intra42 import Intra42Data, create_app

    start = datetime(2026, 3, 1, tzinfo=UTC)
    data = Intra42Data(students=400, seed=5, updated_from=start, updated_to=start + timedelta(days=1))
    app = create_app(data, client_id="test-client-id", client_secret=CLIENT_SECRET, per_second=40, per_hour=100000)
    monkeypatch.setattr(staging, "clean_up", lambda dag_id, run_id: None)
    write, earlier = load.upsert, []

    def after_the_previous_run_staged_again(db, entity, *, run_id, **kwargs):
        if earlier:  # the previous interval's run stages (a retry, a concurrent backfill) between stage and write
            load.stage(db, entity, staging.run_prefix(DAG_ID, earlier[-1], "users"), earlier[-1])
        earlier.append(run_id)
        return write(db, entity, run_id=run_id, **kwargs)

    monkeypatch.setattr(load, "upsert", after_the_previous_run_staged_again)
    with serve(app) as url:
        monkeypatch.setenv("AIRFLOW_CONN_INTRA42_API", intra42_conn(url, rate_limit="40/s"))
        fresh_schema(DAG_ID, "intra42")
        for hours in (6, 12, 18, 24):
            sync({"interval_only": True}, logical_date=start + timedelta(hours=hours))
            report = last_report(sql)
            assert report.get("restaged", 0) == (report["staged"] if len(earlier) > 1 else 0)

        assert actual_table(sql) == {s["id"]: tuple(_normal(c, s[c]) for c in COLUMNS) for s in data.students()}
