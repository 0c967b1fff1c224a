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
COLUMNS = ("login", "email", "first_name", "last_name", "pool_month", "pool_year", "location", "wallet",
           "correction_point", "updated_at")


@pytest.fixture
def intra42(intra42_sandbox, fresh_schema):
    """A clean sandbox (original data, no faults) and an empty intra42 schema."""
    intra42_sandbox.control("reset")
    fresh_schema(DAG_ID, "intra42")
    return intra42_sandbox


def expected_table(sandbox) -> dict:
    return {s["id"]: tuple(_normal(c, s[c]) for c in COLUMNS) for s in sandbox.data.students()}


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
    assert len(staged_runs) == 1  # only the latest run's staging files are kept


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
    intra42.control("faults", {"error_rate": 0.15, "burst_429": 3, "truncate_rate": 0.15,
                               "duplicate_rate": 0.3, "seed": 11})
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


def test_a_failing_api_fails_the_run_and_leaves_the_table_as_it_was(intra42, sql):
    sync()
    before = sql("SELECT * FROM intra42.users ORDER BY id")
    intra42.control("mutate", {"k": 5})
    intra42.control("faults", {"error_rate": 1.0})

    _, states = run_dag(DAG_ID)

    assert states["fetch_students"] == "failed"
    assert states["upsert_users"] == "upstream_failed"
    assert sql("SELECT * FROM intra42.users ORDER BY id") == before


def test_a_missed_run_loses_no_changes(intra42, sql):
    sync()
    first = intra42.control("mutate", {"k": 3})["ids"]
    intra42.control("faults", {"error_rate": 1.0})
    run_dag(DAG_ID)  # fails: no watermark moves
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


def test_backfilled_intervals_give_the_same_table_as_a_full_refresh(intra42_sandbox, fresh_schema, sql,
                                                                    monkeypatch):
    from sandbox.common import serve
    from sandbox.intra42 import Intra42Data, create_app

    start = datetime(2026, 3, 1, tzinfo=UTC)
    data = Intra42Data(students=600, seed=3, updated_from=start, updated_to=start + timedelta(days=1))
    app = create_app(data, client_id="test-client-id", client_secret=CLIENT_SECRET, per_second=40,
                     per_hour=100000)
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


def test_no_secret_reaches_logs_xcom_or_staging(intra42, sql, capfd):
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
    assert {reason.split(":")[0] for _, reason in quarantined} <= {"wallet", "updated_at", "login",
                                                                   "correction_point"}
    expected = expected_table(intra42)
    for student_id, _ in quarantined:
        del expected[student_id]
    assert actual_table(sql) == expected
