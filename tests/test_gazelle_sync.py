"""gazelle_sync end to end: dag.test() against the Gazelle GraphQL sandbox over HTTP and a real Postgres."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, time, timedelta

import pytest
from conftest import GAZELLE_ANCHOR, GAZELLE_REFRESH_TOKEN, gazelle_conn
from dagrun import run_dag, xcom

DAG_ID, SCHEMA = "gazelle_sync", "gazelle"
TABLES = ("users", "clients", "contacts", "pianos", "events", "timeline_entries")
VARIABLE = "gazelle_api_oauth_token"
# A mid-month logical date inside the sandbox's event range (anchor - 120 days .. anchor + 30 days).
RUN_AT = datetime.combine(GAZELLE_ANCHOR, time(4), tzinfo=UTC)


@pytest.fixture
def gazelle(gazelle_sandbox, fresh_schema):
    """A clean sandbox, the initial refresh token in the connection and none saved, an empty gazelle schema."""
    from airflow.models import Variable

    gazelle_sandbox.control("reset")
    os.environ["AIRFLOW_CONN_GAZELLE_API"] = gazelle_conn(gazelle_sandbox.url)
    Variable.delete(VARIABLE)
    fresh_schema(DAG_ID, SCHEMA)
    return gazelle_sandbox


def sync(conf=None, logical_date=RUN_AT):
    run, states = run_dag(DAG_ID, conf, logical_date=logical_date)
    assert set(states.values()) <= {"success", "skipped"}, states
    return xcom(run, "report_run")


def ids(sql, table: str, where: str = "true") -> set:
    return {row[0] for row in sql(f"SELECT id FROM {SCHEMA}.{table} WHERE {where}")}


def versions(sql) -> dict:
    return {t: dict(sql(f"SELECT id, xmin::text FROM {SCHEMA}.{t}")) for t in TABLES}


def queries(sandbox) -> dict:
    return sandbox.state()["queries"]


def sync_counting_queries(sandbox, conf=None, **kwargs) -> tuple[dict, dict]:
    """sync(), and how many requests the sandbox saw per root field during it."""
    before = queries(sandbox)
    report = sync(conf, **kwargs)
    return report, {field: n - before[field] for field, n in queries(sandbox).items()}


def event_window(day: datetime):
    return (day - timedelta(days=7)).date(), (day - timedelta(days=1)).date()


def test_first_run_fills_every_table_and_foreign_keys_hold(gazelle, sql):
    report = sync()
    data = gazelle.data

    assert ids(sql, "users") == {u["id"] for u in data.users()}
    assert ids(sql, "clients") == {c["id"] for c in data.clients()}
    assert ids(sql, "contacts") == {c["id"] for client in data.clients() for c in client["contacts"]}
    assert ids(sql, "pianos") == {p["id"] for p in data.pianos()}
    assert ids(sql, "events") == {e["id"] for e in data.events(*event_window(RUN_AT))} != set()
    timeline = data.timeline(RUN_AT - timedelta(days=30), RUN_AT)
    assert ids(sql, "timeline_entries") == {t["id"] for t in timeline} != set()
    assert report["quarantined"] == 0 and report["users"]["fetched"] == len(data.users())

    # Nested and referenced values landed where they belong.
    client = data.clients()[0]
    row = sql(f"SELECT company_name, default_contact_id, tags FROM {SCHEMA}.clients WHERE id = %s", (client["id"],))
    assert row == [(client["companyName"], (client["defaultContact"] or {}).get("id"), client["tags"])]
    assert sql(f"SELECT count(*) FROM {SCHEMA}.contacts WHERE is_default")[0][0] == sum(
        1 for c in data.clients() if c["defaultContact"])
    orphans = sql(f"""
        SELECT (SELECT count(*) FROM {SCHEMA}.pianos p WHERE NOT EXISTS (SELECT 1 FROM {SCHEMA}.clients c
                                                                          WHERE c.id = p.client_id))
             + (SELECT count(*) FROM {SCHEMA}.events e WHERE e.client_id IS NOT NULL AND NOT EXISTS
                   (SELECT 1 FROM {SCHEMA}.clients c WHERE c.id = e.client_id))""")
    assert orphans == [(0,)]
    assert sql(f"SELECT report->>'run_id' FROM {SCHEMA}.sync_runs") != []


def test_second_run_skips_users_and_writes_nothing(gazelle, sql):
    sync()
    before = versions(sql)

    report, asked = sync_counting_queries(gazelle)
    assert asked["allUsers"] == 0  # not one users request
    assert report["users"] == {"skipped": True, "api_calls": 0}
    assert (report["inserted"], report["updated"]) == (0, 0)
    assert versions(sql) == before
    assert asked["allClients"] == 1  # the delta walk stopped after its first page


def test_force_users_and_the_first_of_the_month_resync_technicians(gazelle, sql):
    sync()
    hired = gazelle.control("hire")["user"]
    sync()
    assert hired["id"] not in ids(sql, "users")

    report = sync({"force_users": True})
    assert hired["id"] in ids(sql, "users") and report["users"]["inserted"] == 1

    second = gazelle.control("hire")["user"]
    _, asked = sync_counting_queries(gazelle, logical_date=RUN_AT.replace(day=1))
    assert asked["allUsers"] >= 1 and second["id"] in ids(sql, "users")


def test_k_edited_clients_are_exactly_k_updates_read_from_the_first_pages_only(gazelle, sql):
    sync()
    edited = set(gazelle.control("mutate", {"k": 7})["ids"])

    report, asked = sync_counting_queries(gazelle, {"page_size": 20})
    assert report["clients"]["updated"] == 7 and report["clients"]["inserted"] == 0
    changed = {row[0] for row in sql(f"SELECT id FROM {SCHEMA}.clients ORDER BY ingested_at DESC LIMIT 7")}
    assert changed == edited
    assert asked["allClients"] == 1  # 7 new + 13 older on page 1: nothing more needed

    full, asked = sync_counting_queries(gazelle, {"full_refresh": True, "entities": ["clients"]})
    assert asked["allClients"] == -(-len(gazelle.data.clients()) // 100)
    assert full["clients"]["updated"] == 0 and full["pianos"] == {"skipped": True, "api_calls": 0}


def test_appointment_and_timeline_windows_follow_the_logical_date(gazelle, sql):
    sync()
    last_week = RUN_AT - timedelta(days=7)
    sync({"entities": ["appointments", "timeline"]}, logical_date=last_week)
    expected = {e["id"] for e in gazelle.data.events(*event_window(RUN_AT))}
    expected |= {e["id"] for e in gazelle.data.events(*event_window(last_week))}
    assert ids(sql, "events") == expected
    first, last = sql(f"SELECT min(start), max(start) FROM {SCHEMA}.events")[0]
    assert first.date() == event_window(last_week)[0] and last.date() <= event_window(RUN_AT)[1]


def test_a_window_mirrors_the_api_events_gone_from_it_are_removed(gazelle, sql):
    sync()
    start_on, end_on = event_window(RUN_AT)
    inside = datetime.combine(start_on, time(10), tzinfo=UTC)
    outside = datetime.combine(start_on - timedelta(days=1), time(10), tzinfo=UTC)
    for event_id, start in (("evt_cancelled_upstream", inside), ("evt_of_an_older_window", outside)):
        sql(f"INSERT INTO {SCHEMA}.events (id, start, piano_ids) VALUES (%s, %s, '{{}}')", (event_id, start))

    report = sync({"entities": ["appointments"]})
    assert report["appointments"]["marked_deleted"] == 1
    assert "evt_cancelled_upstream" not in ids(sql, "events")
    assert "evt_of_an_older_window" in ids(sql, "events")  # outside this run's window: left alone
    assert ids(sql, "events") - {"evt_of_an_older_window"} == {e["id"] for e in gazelle.data.events(start_on, end_on)}


def test_contacts_a_synced_client_no_longer_lists_are_removed(gazelle, sql):
    sync()
    edited = gazelle.control("mutate", {"k": 1})["ids"][0]
    sql(f"INSERT INTO {SCHEMA}.contacts (id, client_id, is_default) VALUES ('con_gone', %s, false)", (edited,))
    other = gazelle.data.clients(sort_by="UPDATED_AT_ASC")[0]["id"]  # far behind the delta walk's first page
    sql(f"INSERT INTO {SCHEMA}.contacts (id, client_id, is_default) VALUES ('con_kept', %s, false)", (other,))

    report = sync({"entities": ["clients"]})
    assert report["clients"]["contacts_removed"] == 1
    assert "con_gone" not in ids(sql, "contacts")
    assert "con_kept" in ids(sql, "contacts")  # its client was not read again in this delta run


def test_an_expired_token_is_refreshed_mid_run_and_the_rotated_token_kept(gazelle, sql):
    from airflow.models import Variable

    sync()
    saved = json.loads(Variable.get(VARIABLE))
    assert saved["refresh_token"] != GAZELLE_REFRESH_TOKEN  # rotated on the first refresh
    gazelle.control("expire_tokens")  # the saved access token still looks valid to the client: 401 mid-run
    refreshes = gazelle.state()["refreshes"]

    sync({"force_users": True})
    assert gazelle.state()["refreshes"] == refreshes + 1
    rotated = json.loads(Variable.get(VARIABLE))["refresh_token"]
    assert rotated not in (saved["refresh_token"], GAZELLE_REFRESH_TOKEN)

    gazelle.control("expire_tokens")
    sync()  # the next run starts from the kept refresh token (the connection's one is long revoked)
    assert json.loads(Variable.get(VARIABLE))["refresh_token"] != rotated


def test_graphql_errors_fail_the_task_with_the_message_and_write_nothing(gazelle, sql, capfd):
    gazelle.control("faults", {"graphql_errors": 1000})
    _, states = run_dag(DAG_ID, {"entities": ["clients"]}, logical_date=RUN_AT)
    assert states["fetch_clients"] == "failed"
    assert "the API refused the query: Internal server error" in "".join(capfd.readouterr())
    assert ids(sql, "clients") == set()


def test_an_api_key_connection_needs_no_oauth(gazelle, sql):
    from sandbox.gazelle import DEFAULT_API_KEY

    os.environ["AIRFLOW_CONN_GAZELLE_API"] = json.dumps({
        "conn_type": "http", "host": gazelle.url, "extra": {"x-gazelle-api-key": DEFAULT_API_KEY, "timeout": 10}})
    sync({"entities": ["users", "clients"]})
    assert gazelle.state()["refreshes"] == 0
    assert len(ids(sql, "clients")) == len(gazelle.data.clients())


def test_dry_run_writes_nothing(gazelle, sql):
    report = sync({"dry_run": True})
    assert report["dry_run"] and report["inserted"] > 0
    assert all(not ids(sql, table) for table in TABLES)


def test_a_run_without_logical_date_is_about_when_it_runs():
    """Manual runs triggered from the UI or the API may have no logical date (Airflow 3)."""
    import importlib.util
    from types import SimpleNamespace

    from dagrun import ROOT

    spec = importlib.util.spec_from_file_location("gazelle_sync_dag", ROOT / "dags" / "gazelle_sync.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    when = datetime(2026, 12, 1, 9, tzinfo=UTC)
    assert module.run_date({"dag_run": SimpleNamespace(run_after=when)}) == when
    assert module.run_date({"logical_date": None, "dag_run": SimpleNamespace(run_after=when)}) == when
    assert module.first_of_the_month({"dag_run": SimpleNamespace(run_after=when)})
    assert module.run_date({"logical_date": RUN_AT, "dag_run": SimpleNamespace(run_after=when)}) == RUN_AT
