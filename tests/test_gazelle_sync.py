"""gazelle_sync end to end: dag.test() against the Gazelle GraphQL sandbox (served from Gazelle's real schema)
over HTTP and a real Postgres."""

from __future__ import annotations

import json
import os
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import GAZELLE_ANCHOR, GAZELLE_REFRESH_TOKEN, gazelle_conn
from dagrun import ROOT, run_dag, xcom

DAG_ID, SCHEMA = "gazelle_sync", "gazelle"
TABLES = ("users", "clients", "contacts", "pianos", "events", "timeline_entries")
VARIABLE = "gazelle_api_oauth_token"
ZONE = ZoneInfo("America/Toronto")  # the DAG's default GAZELLE_TIMEZONE, and the sandbox account's zone
# A mid-month logical date inside the sandbox's event range (anchor - 120 days .. anchor + 30 days).
RUN_AT = datetime.combine(GAZELLE_ANCHOR, time(4), tzinfo=UTC)
SPEC_SDL = Path("/work/shared/specs/gazelle/schema.graphql")


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


def appointment_days(moment: datetime, back: int = 7, ahead: int = 14) -> tuple[date, date]:
    today = moment.astimezone(ZONE).date()
    return today - timedelta(days=back), today + timedelta(days=ahead)


def load_dag_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gazelle_sync_dag", ROOT / "dags" / "gazelle_sync.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def last_run_report(sql) -> dict:
    return sql(f"SELECT report FROM {SCHEMA}.sync_runs ORDER BY id DESC LIMIT 1")[0][0]


def test_every_query_validates_against_gazelle_real_schema():
    from graphql import build_schema, parse, validate

    from sandbox.gazelle import SDL

    if SPEC_SDL.exists():  # the sandbox serves a verbatim copy of the spec's SDL
        assert SPEC_SDL.read_text(encoding="utf-8") == SDL
    schema = build_schema(SDL)
    queries = sorted((ROOT / "include" / "graphql" / "gazelle").glob("*.graphql"))
    assert len(queries) == 5
    for query in queries:
        assert validate(schema, parse(query.read_text())) == [], query.name


def test_first_run_fills_every_table_as_the_api_has_it_and_a_rerun_writes_nothing(gazelle, sql):
    report = sync()
    data = gazelle.data

    assert ids(sql, "users") == {u["id"] for u in data.users()}
    assert ids(sql, "clients") == {c["id"] for c in data.clients()}
    assert ids(sql, "contacts") == {c["id"] for client in data.clients() for c in client["contacts"]}
    assert ids(sql, "pianos") == {p["id"] for p in data.pianos()}
    start_on, end_on = appointment_days(RUN_AT)
    events = data.events(start_on, end_on)
    assert ids(sql, "events") == {e["id"] for e in events}
    timeline = data.timeline(RUN_AT - timedelta(days=30), RUN_AT)
    assert ids(sql, "timeline_entries") == {t["id"] for t in timeline} != set()
    assert report["quarantined"] == 0 and report["failed"] == {}
    assert report["users"]["fetched"] == len(data.users()) and report["users"]["api_calls"] == 1

    # Upcoming appointments, dated in the account's zone (evening ones fall on the next UTC day).
    local = {row[0]: row[1:] for row in sql(f"SELECT id, local_date, local_time, start FROM {SCHEMA}.events")}
    for event in events:
        start = datetime.fromisoformat(event["start"]).astimezone(ZONE)
        assert local[event["id"]][:2] == (start.date(), start.time().replace(tzinfo=None))
    assert any(d > RUN_AT.astimezone(ZONE).date() for d, _, _ in local.values())
    assert any(d != start.astimezone(UTC).date() for d, _, start in local.values())

    # The fields the original system keeps.
    client = next(c for c in data.clients() if c["personalNotes"] and c["localization"])
    row = sql(f"SELECT personal_notes, locale, tags FROM {SCHEMA}.clients WHERE id = %s", (client["id"],))
    assert row == [(client["personalNotes"], client["localization"]["locale"], client["tags"])]
    piano = next(p for p in data.pianos() if p["damppChaserMfgDate"])
    row = sql(
        f"SELECT dampp_chaser_installed, dampp_chaser_humidistat_model, dampp_chaser_mfg_date::text "
        f"FROM {SCHEMA}.pianos WHERE id = %s",
        (piano["id"],),
    )
    assert row == [(True, piano["damppChaserHumidistatModel"], piano["damppChaserMfgDate"])]
    with_invoice = {t["id"]: t["invoice"]["id"] for t in timeline if t["invoice"]}
    assert (
        dict(sql(f"SELECT id, invoice_id FROM {SCHEMA}.timeline_entries WHERE invoice_id IS NOT NULL"))
        == (with_invoice)
        != {}
    )
    assert sql(f"SELECT count(*) FROM {SCHEMA}.timeline_entries WHERE estimate_id IS NOT NULL")[0][0] == sum(
        1 for t in timeline if t["estimate"]
    )
    assert sql(f"SELECT report->'failed' FROM {SCHEMA}.sync_runs") == [({},)]

    before = versions(sql)
    report, asked = sync_counting_queries(gazelle)
    assert (report["inserted"], report["updated"]) == (0, 0) and versions(sql) == before
    assert asked["allUsers"] == 0  # technicians already synced: not one request
    assert asked["allClients"] == -(-len(data.clients()) // 100)  # clients are read in full every run


def test_force_users_and_the_first_of_the_month_resync_technicians(gazelle, sql):
    sync()
    hired = gazelle.control("hire")["user"]
    sync()
    assert hired["id"] not in ids(sql, "users")

    report = sync({"force_users": True})
    assert hired["id"] in ids(sql, "users") and report["users"]["inserted"] == 1

    second = gazelle.control("hire")["user"]
    _, asked = sync_counting_queries(gazelle, logical_date=RUN_AT.replace(day=1))
    assert asked["allUsers"] == 1 and second["id"] in ids(sql, "users")


def test_edited_clients_and_pianos_are_exactly_the_updates(gazelle, sql):
    sync()
    clients = set(gazelle.control("mutate", {"k": 7})["ids"])
    pianos = set(gazelle.control("mutate_pianos", {"k": 3})["ids"])

    report = sync({"entities": ["clients", "pianos"], "page_size": 50})
    assert (report["clients"]["updated"], report["clients"]["inserted"]) == (7, 0)
    assert (report["pianos"]["updated"], report["pianos"]["inserted"]) == (3, 0)
    assert {r[0] for r in sql(f"SELECT id FROM {SCHEMA}.clients ORDER BY ingested_at DESC LIMIT 7")} == clients
    assert {r[0] for r in sql(f"SELECT id FROM {SCHEMA}.pianos ORDER BY ingested_at DESC LIMIT 3")} == pianos


def test_appointments_gone_from_the_window_are_marked_cancelled_not_deleted(gazelle, sql):
    sync()
    today = RUN_AT.astimezone(ZONE).date()
    upcoming = next(
        e for e in gazelle.data.events(today + timedelta(days=2), today + timedelta(days=14)) if e["status"] == "ACTIVE"
    )
    assert gazelle.control("remove", {"kind": "events", "id": upcoming["id"]}) == {"removed": True}
    outside = datetime.combine(appointment_days(RUN_AT)[0] - timedelta(days=1), time(10), ZONE)
    sql(
        f"INSERT INTO {SCHEMA}.events (id, start, local_date, local_time, status, piano_ids) "
        f"VALUES ('evt_of_an_older_window', %s, %s, '10:00', 'ACTIVE', '{{}}')",
        (outside, outside.date()),
    )

    report = sync({"entities": ["appointments"]})
    assert report["appointments"]["marked_deleted"] == 1
    assert sql(f"SELECT status FROM {SCHEMA}.events WHERE id = %s", (upcoming["id"],)) == [("CANCELLED",)]
    assert sql(f"SELECT status FROM {SCHEMA}.events WHERE id = 'evt_of_an_older_window'") == [("ACTIVE",)]

    before = versions(sql)
    report = sync({"entities": ["appointments"]})  # already marked: nothing to write
    assert report["appointments"]["marked_deleted"] == 0 and versions(sql) == before


def test_a_window_answer_that_looks_truncated_cancels_nothing(gazelle, sql):
    sync()
    start_on, end_on = appointment_days(RUN_AT)
    in_window = [e["id"] for e in gazelle.data.events(start_on, end_on)]
    for event_id in in_window[: len(in_window) * 2 // 3]:
        gazelle.control("remove", {"kind": "events", "id": event_id})

    _, states = run_dag(DAG_ID, {"entities": ["appointments"]}, logical_date=RUN_AT)
    assert states["upsert_appointments"] == "failed" and states["all_synced"] == "upstream_failed"
    assert sql(f"SELECT count(*) FROM {SCHEMA}.events WHERE status = 'CANCELLED'") == [(0,)]
    assert "refusing to mark" in last_run_report(sql)["failed"]["appointments"]


def test_a_failing_clients_fetch_still_loads_the_rest_records_the_run_and_fails_it(gazelle, sql):
    gazelle.control("fail_fields", {"fields": ["allClients"]})
    _, states = run_dag(DAG_ID, logical_date=RUN_AT)

    assert states["fetch_clients"] == "failed" and states["stage_pianos"] == "upstream_failed"
    assert {states[f"upsert_{e}"] for e in ("users", "appointments", "timeline")} == {"success"}
    assert states["report_run"] == "success" and states["all_synced"] == "upstream_failed"  # the run fails
    data = gazelle.data
    assert ids(sql, "users") == {u["id"] for u in data.users()}
    assert ids(sql, "events") == {e["id"] for e in data.events(*appointment_days(RUN_AT))}
    assert ids(sql, "timeline_entries") == {t["id"] for t in data.timeline(RUN_AT - timedelta(days=30), RUN_AT)}
    assert ids(sql, "clients") == ids(sql, "pianos") == set()

    report = last_run_report(sql)  # the run is recorded with what failed and why
    assert set(report["failed"]) == {"clients", "pianos"}
    assert "Internal server error" in report["failed"]["clients"]
    assert report["failed"]["pianos"] == "not loaded: a task it waits for failed"
    assert report["users"]["inserted"] == len(data.users()) and "error" not in report["timeline"]

    gazelle.control("fail_fields", {"fields": []})
    report = sync()  # the next run loads the clients; references resolve
    assert ids(sql, "clients") == {c["id"] for c in data.clients()} and report["failed"] == {}


def test_empty_values_never_overwrite_timeline_texts_and_tag_lists(gazelle, sql):
    sync()
    data = gazelle.data
    entries = [t for t in data.timeline(RUN_AT - timedelta(days=30), RUN_AT) if t["summary"]]
    emptied, stale = entries[0], entries[1]
    tagged = next(c for c in data.clients() if c["tags"])
    sql(f"UPDATE {SCHEMA}.timeline_entries SET comment = 'read earlier' WHERE id = %s", (emptied["id"],))
    sql(f"UPDATE {SCHEMA}.timeline_entries SET summary = 'stale' WHERE id = %s", (stale["id"],))
    data.get("timeline", emptied["id"]).update(summary="", comment=None)  # the API now answers without them
    data.get("clients", tagged["id"])["tags"] = []

    report = sync({"entities": ["clients", "timeline"]})
    assert sql(f"SELECT summary, comment FROM {SCHEMA}.timeline_entries WHERE id = %s", (emptied["id"],)) == [
        (emptied["summary"], "read earlier")
    ]
    assert sql(f"SELECT summary FROM {SCHEMA}.timeline_entries WHERE id = %s", (stale["id"],)) == [
        (stale["summary"],)
    ]  # a non-empty value does overwrite
    assert sql(f"SELECT tags FROM {SCHEMA}.clients WHERE id = %s", (tagged["id"],)) == [(tagged["tags"],)]
    assert report["timeline"]["updated"] == 1 and report["clients"]["updated"] == 0


def test_the_timeline_upper_bound_is_applied_by_the_sync(gazelle, sql):
    earlier = RUN_AT - timedelta(days=10)
    report = sync({"entities": ["timeline"]}, logical_date=earlier)
    assert ids(sql, "timeline_entries") == {
        t["id"] for t in gazelle.data.timeline(earlier - timedelta(days=30), earlier)
    }
    assert report["timeline"]["outside_window"] == len(gazelle.data.timeline(earlier + timedelta(seconds=1))) > 0


def test_contacts_a_client_no_longer_lists_are_removed(gazelle, sql):
    sync()
    client = gazelle.data.clients()[0]["id"]
    sql(f"INSERT INTO {SCHEMA}.contacts (id, client_id, is_default) VALUES ('con_gone', %s, false)", (client,))

    report = sync({"entities": ["clients"]})
    assert report["clients"]["contacts_removed"] == 1 and "con_gone" not in ids(sql, "contacts")


def test_a_client_with_more_contacts_than_the_query_reads_is_quarantined_with_the_reason(gazelle, sql):
    client = gazelle.data.get("clients", gazelle.data.clients()[0]["id"])
    client["contacts"] = [dict(client["contacts"][0], id=f"con_extra_{n}") for n in range(51)]  # first: 50

    report = sync({"entities": ["clients"]})
    assert report["clients"]["quarantined"] == 1 and client["id"] not in ids(sql, "clients")
    reason = sql(f"SELECT reason FROM {SCHEMA}.quarantine WHERE record->>'id' = %s", (client["id"],))
    assert reason == [
        ("allContacts: more contacts than the query asks for; raise allContacts(first:) in clients.graphql",)
    ]


def test_scheduled_runs_in_working_hours_refresh_the_appointments_only(gazelle, sql):
    from types import SimpleNamespace

    from dagrun import get_dag

    module = load_dag_module()
    crons = [(t.expression, str(t.timezone)) for t in get_dag(DAG_ID).timetable.timetables]
    assert crons == [("0 23 * * *", "America/Toronto"), ("0 7-21 * * *", "America/Toronto")]

    def entities(hour: int, run_type: str = "scheduled") -> list[str]:
        at = datetime.combine(GAZELLE_ANCHOR, time(hour), ZONE)
        return module.run_entities(
            {"params": {"entities": module.ENTITIES}, "logical_date": at, "dag_run": SimpleNamespace(run_type=run_type)}
        )

    assert entities(10) == entities(21) == ["appointments"]
    assert entities(23) == entities(10, "manual") == module.ENTITIES


def test_the_appointment_window_is_made_of_the_account_days():
    from usersync.gazelle import appointment_days as window

    late_evening = datetime(2026, 11, 28, 3, 30, tzinfo=UTC)  # 22:30 on the 27th in Montréal
    assert window(late_evening, ZONE, 7, 14) == {
        "startOn": "2026-11-20",
        "endOn": "2026-12-11",
        "timezone": "America/Toronto",
    }
    assert window(late_evening, ZoneInfo("UTC"), 0, 0)["startOn"] == "2026-11-28"


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

    os.environ["AIRFLOW_CONN_GAZELLE_API"] = json.dumps(
        {"conn_type": "http", "host": gazelle.url, "extra": {"x-gazelle-api-key": DEFAULT_API_KEY, "timeout": 10}}
    )
    sync({"entities": ["users", "clients"]})
    assert gazelle.state()["refreshes"] == 0
    assert len(ids(sql, "clients")) == len(gazelle.data.clients())


def test_dry_run_writes_nothing(gazelle, sql):
    report = sync({"dry_run": True})
    assert report["dry_run"] and report["inserted"] > 0
    assert all(not ids(sql, table) for table in TABLES)


def test_a_run_without_logical_date_is_about_when_it_runs():
    """Manual runs triggered from the UI or the API may have no logical date (Airflow 3)."""
    from types import SimpleNamespace

    module = load_dag_module()
    when = datetime(2026, 12, 1, 9, tzinfo=UTC)
    assert module.run_date({"dag_run": SimpleNamespace(run_after=when)}) == when
    assert module.run_date({"logical_date": None, "dag_run": SimpleNamespace(run_after=when)}) == when
    assert module.first_of_the_month({"dag_run": SimpleNamespace(run_after=when)})
    assert module.run_date({"logical_date": RUN_AT, "dag_run": SimpleNamespace(run_after=when)}) == RUN_AT


def quarantine_reasons(sql) -> dict:
    """The quarantined records' reasons by record id (a line Postgres could not store is kept as a string)."""
    return dict(
        sql(
            f'SELECT substring(record #>> \'{{}}\' FROM \'"id":"([^"]+)"\'), reason '
            f"FROM {SCHEMA}.quarantine WHERE jsonb_typeof(record) = 'string' "
            f"UNION ALL SELECT record->>'id', reason FROM {SCHEMA}.quarantine "
            f"WHERE jsonb_typeof(record) = 'object'"
        )
    )


def exact_tables(sql, data, without=()) -> None:
    """Every table holds what the API has (in the default windows of RUN_AT), but the records `without`."""
    clients = [c for c in data.clients() if c["id"] not in without]
    assert ids(sql, "users") == {u["id"] for u in data.users()}
    assert ids(sql, "clients") == {c["id"] for c in clients}
    assert ids(sql, "contacts") == {c["id"] for client in clients for c in client["contacts"]}
    assert ids(sql, "pianos") == {p["id"] for p in data.pianos()} - set(without)
    assert ids(sql, "events") == {e["id"] for e in data.events(*appointment_days(RUN_AT))} - set(without)
    assert ids(sql, "timeline_entries") == {
        t["id"] for t in data.timeline(RUN_AT - timedelta(days=30)) if t["occurredAt"] <= f"{RUN_AT:%Y-%m-%dT%H:%M:%SZ}"
    } - set(without)
    written = {row[0]: row[1:] for row in sql(f"SELECT id, personal_notes, status, company_name FROM {SCHEMA}.clients")}
    assert written == {c["id"]: (c["personalNotes"], c["status"], c["companyName"]) for c in clients}
    notes = dict(sql(f"SELECT id, notes FROM {SCHEMA}.pianos"))
    assert notes == {p["id"]: p["notes"] for p in data.pianos() if p["id"] not in without}


def test_hostile_records_are_quarantined_with_their_reason_while_everything_else_loads(gazelle, sql):
    hostile = gazelle.control("hostile")["ids"]
    report = sync()

    reasons = quarantine_reasons(sql)
    assert "unsupported Unicode escape sequence" in reasons.pop(hostile["nul"])
    assert "surrogate" in reasons.pop(hostile["lone_surrogate"])
    assert reasons.pop(hostile["impossible_date"]) == "updatedAt: no such date"
    assert reasons.pop(hostile["offset_99"]) == "updatedAt: UTC offset out of range"
    assert reasons.pop(hostile["contact_hour_25"]) == "allContacts: createdAt: no such time of day"
    assert reasons.pop(hostile["year_0000"]) == "damppChaserMfgDate: no such date"
    assert reasons.pop(hostile["event_no_such_date"]) == "createdAt: no such date"
    assert reasons.pop(hostile["timeline_hour_25"]) == "occurredAt: no such time of day"
    assert reasons == {} and report["quarantined"] == len(hostile) and report["failed"] == {}
    exact_tables(sql, gazelle.data, without=set(hostile.values()))


DELTAS = ", ".join(f"{SCHEMA}.{table}_delta" for table in TABLES)


def test_a_postgres_crash_between_stage_and_write_loses_nothing(gazelle, sql, monkeypatch):
    from usersync import load

    write = load.upsert

    def after_a_crash(db, entity, **kwargs):
        sql(f"TRUNCATE {DELTAS}")  # what crash recovery does to unlogged tables
        return write(db, entity, **kwargs)

    monkeypatch.setattr(load, "upsert", after_a_crash)
    report = sync()

    exact_tables(sql, gazelle.data)
    for entity in ("users", "clients", "pianos", "appointments", "timeline"):
        figures = report[entity]
        assert figures["restaged"] == figures["staged"] == figures["inserted"] > 0, entity
    contacts = sum(len(c["contacts"]) for c in gazelle.data.clients())
    assert report["clients"]["contacts_inserted"] == contacts == len(ids(sql, "contacts"))


def test_overlapping_runs_whose_stages_and_writes_interleave_end_exact(gazelle, sql, monkeypatch):
    """Stage of run A, stage of run B, write of A, write of B (a retry, a manual run during a scheduled one):
    each write finds the delta not its own and stages its run again; the tables end as the API has them."""
    from usersync import load, staging

    sync()  # the tables are filled: the overlapping runs have changes to write
    monkeypatch.setattr(staging, "clean_up", lambda dag_id, run_id: None)  # run A's files stay: it is not over
    write, held = load.upsert, {}

    def held_back(db, entity, *, run_id, **kwargs):
        held[entity.name] = run_id
        return {"held_back": True}

    gazelle.control("mutate", {"k": 7})
    gazelle.control("mutate_pianos", {"k": 3})
    monkeypatch.setattr(load, "upsert", held_back)
    sync()  # run A: stages, its writes held back
    gazelle.control("mutate", {"k": 7})
    gazelle.control("mutate_pianos", {"k": 3})
    written_by_a = {}

    def after_run_a_writes(db, entity, *, run_id, **kwargs):
        written_by_a[entity.name] = write(db, entity, run_id=held[entity.name], **kwargs)
        return write(db, entity, run_id=run_id, **kwargs)

    monkeypatch.setattr(load, "upsert", after_run_a_writes)
    report = sync()  # run B: stages, then run A writes, then run B writes

    assert set(written_by_a) == set(held) == {"clients", "pianos", "events", "timeline_entries"}
    assert all(figures["restaged"] > 0 for figures in written_by_a.values())  # run B had staged since
    assert written_by_a["clients"]["updated"] == 7 and written_by_a["pianos"]["updated"] == 3
    for entity in ("clients", "pianos", "appointments", "timeline"):
        assert report[entity]["restaged"] == report[entity]["staged"], entity
    assert report["clients"]["updated"] == 7 and report["pianos"]["updated"] == 3
    exact_tables(sql, gazelle.data)
