"""portaildf_user_kind end to end: dag.test() against the Portail DF sandbox over HTTP and a real Postgres."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from conftest import AIRFLOW_HOME, PORTAILDF_PASSWORD, portaildf_conn
from dagrun import get_dag, run_dag, xcom

from tools.app_tables import seed_portaildf_users

DAG_ID, SCHEMA = "portaildf_user_kind", "portaildf"
KINDS = {"prestataire", "gestionnaire", "prestataire, gestionnaire", "aucun"}
SMALL_CHUNKS = {"batch_size": 150, "num_workers": 8}  # 400 users -> 3 chunks


@pytest.fixture
def portaildf(portaildf_sandbox, fresh_schema, pg, sql):
    """A clean sandbox, the application's users table filled with its users (no kind yet), the sync's tables."""
    portaildf_sandbox.control("reset")
    os.environ["AIRFLOW_CONN_PORTAILDF_API"] = portaildf_conn(portaildf_sandbox.url)
    sql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    seed_portaildf_users(pg.url, SCHEMA, portaildf_sandbox.data.app_users())
    fresh_schema(DAG_ID, SCHEMA, drop=False)
    return portaildf_sandbox


def kinds(sql) -> dict:
    return {str(user_id): kind for user_id, kind in sql(f"SELECT id, kind FROM {SCHEMA}.users")}


def versions(sql) -> dict:
    return dict(sql(f"SELECT id::text, xmin::text FROM {SCHEMA}.users"))


def sync(conf=None):
    run, states = run_dag(DAG_ID, {**SMALL_CHUNKS, **(conf or {})})
    assert {s for s in states.values()} <= {"success", "skipped"}, states
    return run, xcom(run, "report_run")


def test_every_user_gets_the_kind_the_directory_says_and_a_rerun_writes_nothing(portaildf, sql):
    run, report = sync()

    expected = portaildf.data.expected_kinds()
    assert kinds(sql) == expected
    assert set(expected.values()) == KINDS | {None}  # every row of the mapping, and unknown users
    with_email = [u for u in portaildf.data.app_users() if u["email"]]
    unknown = [u["email"].strip() for u in with_email if expected[u["id"]] is None]
    assert report["processed"] == len(with_email)
    assert report["chunks"] == -(-len(with_email) // SMALL_CHUNKS["batch_size"])
    assert (report["updated"], report["unchanged"], report["failed"]) == (len(with_email) - len(unknown), 0, 0)
    assert report["not_found"] == len(unknown) > 0
    unknown_ids = [u["id"] for u in with_email if expected[u["id"]] is None]
    assert sorted(report["not_found_ids"]) == sorted(unknown_ids)  # ids: the report is logged, emails are not
    assert report["kinds"] == {k or "(none)": n for k, n in Counter(expected.values()).items()}
    assert report["api_calls"] >= report["processed"] and report["requests_per_s"] > 0
    assert sql(f"SELECT report FROM {SCHEMA}.sync_runs")[0][0]["run_id"] == run.run_id

    state = portaildf.state()
    assert report["throttled"] == state["stats"]["throttled"]  # every 429 was seen, and waited out
    for window in state["rate"]["windows"]:
        assert window["max_accepted_in_window"] <= window["limit"]  # nothing over the limit got through

    before = versions(sql)
    _, again = sync()
    assert (again["updated"], again["unchanged"]) == (0, report["updated"])
    assert versions(sql) == before


def test_tricky_emails_plus_signs_unicode_and_letter_case(portaildf, sql):
    sync()
    table = kinds(sql)
    directory = {r["email"].casefold(): r["email"] for r in portaildf.data.records()}
    users = [u for u in portaildf.data.app_users() if u["email"] and u["email"].strip().casefold() in directory]
    groups = {
        "plus": [u for u in users if "+" in u["email"]],
        "unicode": [u for u in users if not u["email"].isascii()],
        "case": [u for u in users if directory[u["email"].strip().casefold()] != u["email"].strip()],
    }
    for name, group in groups.items():
        assert group, f"the sandbox data has no {name} emails"
        assert all(table[u["id"]] == portaildf.data.expected_kind(u["email"]) is not None for u in group), name


def test_unknown_users_are_never_overwritten(portaildf, sql):
    expected = portaildf.data.expected_kinds()
    unknown = [user_id for user_id, kind in expected.items() if kind is None]
    sql(f"UPDATE {SCHEMA}.users SET kind = 'set by hand' WHERE id = ANY(%s::uuid[])", (unknown,))
    sync()
    table = kinds(sql)
    assert all(table[user_id] == "set by hand" for user_id in unknown)


def test_dry_run_writes_nothing_and_reports_the_transitions(portaildf, sql):
    sync()
    changed = portaildf.control("mutate", {"k": 6})["ids"]
    before, old_kinds = versions(sql), kinds(sql)

    _, report = sync({"dry_run": True})
    assert versions(sql) == before
    assert report["dry_run"] and report["updated"] == 6
    users = {u["email"]: u["id"] for u in portaildf.data.app_users() if u["email"]}
    transitions = Counter(f"{old_kinds[users[e]]} -> {portaildf.data.expected_kind(e)}" for e in changed)
    assert report["transitions"] == dict(transitions)
    assert sql(f"SELECT count(*) FROM {SCHEMA}.sync_runs WHERE dry_run")[0][0] == 1

    _, real = sync()
    assert real["updated"] == 6 and real["transitions"] == dict(transitions)
    assert kinds(sql) == portaildf.data.expected_kinds()


def test_limit_and_only_missing(portaildf, sql):
    _, report = sync({"limit": 50})
    assert report["processed"] == 50 and report["chunks"] == 1
    first_50 = [r[0] for r in sql(f"SELECT id::text FROM {SCHEMA}.users WHERE btrim(email) <> '' ORDER BY id LIMIT 50")]
    expected = portaildf.data.expected_kinds()
    assert {i for i, k in kinds(sql).items() if k is not None} == {i for i in first_50 if expected[i]}

    _, missing = sync({"only_missing": True})
    assert missing["mode"] == "only_missing"
    assert (
        missing["processed"] == sum(1 for u in portaildf.data.app_users() if u["email"]) - (report["updated"])
    )  # those that got a kind are not asked again
    assert kinds(sql) == expected


def test_5xx_timeouts_and_429_bursts_end_with_the_fault_free_table(portaildf, sql):
    portaildf.control("faults", {"error_rate": 0.25, "truncate_rate": 0.05, "burst_429": 4, "seed": 5})
    _, report = sync()
    assert kinds(sql) == portaildf.data.expected_kinds()
    assert report["failed"] == 0
    assert report["retries"] > 0 and report["throttled"] >= 4
    stats = portaildf.state()["stats"]
    assert stats["errors_injected"] > 0 and stats["throttled_burst"] == 4


def test_lookups_that_time_out_are_retried_to_the_fault_free_table(portaildf, sql):
    conn = json.loads(portaildf_conn(portaildf.url))
    os.environ["AIRFLOW_CONN_PORTAILDF_API"] = json.dumps({**conn, "extra": {**conn["extra"], "timeout": 0.3}})
    portaildf.control("faults", {"slow_rate": 0.05, "slow_seconds": 1.0, "seed": 3})
    _, report = sync({"limit": 120})
    assert report["retries"] > 0 and report["failed"] == 0
    expected = portaildf.data.expected_kinds()
    assert {i: k for i, k in kinds(sql).items() if k} == {i: expected[i] for i, k in kinds(sql).items() if k}
    assert sum(1 for k in kinds(sql).values() if k) == report["updated"] > 0


def test_a_lookup_that_keeps_failing_is_reported_and_the_rest_land(portaildf, sql):
    os.environ["AIRFLOW_CONN_PORTAILDF_API"] = portaildf_conn(portaildf.url, max_retries="0")
    portaildf.control("faults", {"error_rate": 0.2, "seed": 11})
    _, report = sync()
    assert 0 < report["failed"] < report["processed"]
    assert all("HTTP 50" in f["reason"] for f in report["failures"])
    failed = {f["user_id"] for f in report["failures"]}
    table, expected = kinds(sql), portaildf.data.expected_kinds()
    for user in portaildf.data.app_users():
        assert table[user["id"]] == (None if user["id"] in failed else expected[user["id"]])


def test_an_unreachable_api_fails_the_run_and_leaves_the_table_as_it_was(portaildf, sql):
    sync()
    portaildf.control("mutate", {"k": 3})
    before = versions(sql)
    os.environ["AIRFLOW_CONN_PORTAILDF_API"] = portaildf_conn(portaildf.url, max_retries="1")
    portaildf.control("faults", {"error_rate": 1.0})
    _, states = run_dag(DAG_ID, {"limit": 20, "batch_size": 10})
    assert "failed" in states.values() and states["update_kinds"] != "success", states
    assert versions(sql) == before


@pytest.mark.parametrize("api_version, login_path", [("1", "/api/api-token-auth/"), ("2", "/api/token/")])
def test_bad_credentials_fail_the_run_after_one_login_attempt(portaildf, sql, api_version, login_path):
    """The sensor asks without credentials (a 401 means the API is up), so the only login is the first
    chunk's: its workers share it, nobody retries it (no client retry, no Airflow retry), and the later
    chunks do not try again."""
    conn = json.loads(portaildf_conn(portaildf.url, api_version=api_version))
    os.environ["AIRFLOW_CONN_PORTAILDF_API"] = json.dumps({**conn, "password": "wrong"})
    run, states = run_dag(DAG_ID, {**SMALL_CHUNKS})
    assert states["look_up_chunk"] == "failed" and states["update_kinds"] != "success", states
    chunks = [ti for ti in run.get_task_instances() if ti.task_id == "look_up_chunk"]
    assert len(chunks) == 3 and {str(ti.state) for ti in chunks} == {"failed"}
    assert {ti.try_number for ti in chunks} == {1}  # no Airflow retry
    assert portaildf.state()["stats"]["paths"][login_path] == 1
    assert all(kind is None for kind in kinds(sql).values())


def test_api_v2_bearer_tokens_renewed_when_they_expire(portaildf, sql):
    os.environ["AIRFLOW_CONN_PORTAILDF_API"] = portaildf_conn(portaildf.url, api_version="2")
    portaildf.app.state.accounts.access_ttl = 2  # expires mid-run, not before a fresh one is used: renewed on 401
    try:
        _, report = sync({"num_workers": 2})
    finally:
        portaildf.app.state.accounts.access_ttl = 300
    assert kinds(sql) == portaildf.data.expected_kinds()
    assert report["failed"] == 0


def test_a_missing_users_table_is_a_clear_error(portaildf_sandbox, sql, fresh_schema):
    sql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    sql(f"CREATE SCHEMA {SCHEMA}; CREATE TABLE {SCHEMA}.users (id uuid PRIMARY KEY, email text)")
    with pytest.raises(Exception, match=r"must exist with columns id, email, kind \(missing: kind\)"):
        fresh_schema(DAG_ID, SCHEMA, drop=False)


def test_no_secret_reaches_logs_xcom_or_staging(portaildf, sql, capfd):
    run, _ = sync()
    token = portaildf.app.state.accounts.v1_token()
    places = {"console": "".join(capfd.readouterr())}
    for path in Path(AIRFLOW_HOME).rglob("*"):
        if path.is_file() and path.suffix in (".log", ".json", ".ndjson", ""):
            places[str(path)] = path.read_text(errors="replace")
    places["xcom"] = json.dumps([xcom(run, t) for t in get_dag(DAG_ID).task_ids if t != "api_available"], default=str)
    places["sync_runs"] = json.dumps(sql(f"SELECT report FROM {SCHEMA}.sync_runs"), default=str)
    for secret in (PORTAILDF_PASSWORD, token):
        assert not [name for name, text in places.items() if secret in text]


def test_no_email_reaches_the_logs_or_the_report_when_lookups_fail(portaildf, sql, capfd):
    """Failed lookups (and, in a second run, a chunk where every lookup fails) are reported and logged by
    user id; the emails travel only in the requests' query strings, which no log or reason shows."""
    os.environ["AIRFLOW_CONN_PORTAILDF_API"] = portaildf_conn(portaildf.url, max_retries="1")
    portaildf.control("faults", {"error_rate": 0.3, "seed": 2})
    _, report = sync()
    assert report["failed"] > 0 and report["not_found"] > 0
    assert {f["user_id"] for f in report["failures"]} <= set(kinds(sql))
    portaildf.control("faults", {"error_rate": 1.0})
    _, states = run_dag(DAG_ID, {"limit": 20, "batch_size": 10})
    assert states["look_up_chunk"] == "failed"

    places = {"console": "".join(capfd.readouterr())}
    for path in Path(AIRFLOW_HOME).rglob("*.log"):
        places[str(path)] = path.read_text(errors="replace")
    places["sync_runs"] = json.dumps(sql(f"SELECT report FROM {SCHEMA}.sync_runs"), ensure_ascii=False)
    assert "failed" in places["console"] and "HTTP 5" in places["console"]  # the failures were logged
    emails = {u["email"].strip() for u in portaildf.data.app_users() if u["email"]}
    forms = emails | {quote(e) for e in emails} | {quote_plus(e) for e in emails}
    leaks = {name: [e for e in forms if e in text] for name, text in places.items()}
    assert not {name: found for name, found in leaks.items() if found}


def test_a_failed_lookup_reason_and_the_client_logs_hold_no_query_string(monkeypatch, caplog):
    """A connection error's text names the URL it tried, query included: cut out of the reason and of
    urllib3's own log lines (DEBUG request lines, WARNING retries)."""
    import logging
    import socket

    from usersync import portaildf as portaildf_api
    from usersync.api import ApiClient

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens there once closed
    monkeypatch.setenv(
        "AIRFLOW_CONN_DEAD_API",
        json.dumps(
            {"conn_type": "http", "host": f"http://127.0.0.1:{port}", "extra": {"backoff": "0.01", "max_retries": "1"}}
        ),
    )
    caplog.set_level(logging.DEBUG)
    email = "marie.curie+zlv@exemple.gouv.fr"
    answer = portaildf_api.lookup_user(ApiClient("dead_api"), {"id": "user-7", "email": email})
    assert answer["outcome"] == "failed" and "ConnectionError" in answer["reason"]
    assert "/api/utilisateurs?…" in answer["reason"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "/api/utilisateurs" in logged
    for form in (email, quote(email), quote_plus(email), "marie"):
        assert form not in answer["reason"] and form not in logged and form not in json.dumps(answer)


@pytest.fixture
def twins(pg, sql, fresh_schema, monkeypatch):
    """A case-insensitive directory where some users' addresses also belong, in another letter case, to
    other people with other flags; the application's users table filled with its users."""
    from conftest import PORTAILDF_LOGIN

    from sandbox.common import serve
    from sandbox.portaildf import PortailDFData, create_app

    data = PortailDFData(users=300, seed=8, case_twins=0.3)
    app = create_app(data, username=PORTAILDF_LOGIN, password=PORTAILDF_PASSWORD, per_second=100)
    with serve(app) as url:
        monkeypatch.setenv("AIRFLOW_CONN_PORTAILDF_API", portaildf_conn(url))
        sql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        seed_portaildf_users(pg.url, SCHEMA, data.app_users())
        fresh_schema(DAG_ID, SCHEMA, drop=False)
        yield data


def test_case_variant_duplicates_never_give_a_user_someone_elses_kind(twins, sql):
    _, report = sync()

    table, own = kinds(sql), twins.own_kinds()
    assert table == twins.expected_kinds()
    assert all(table[i] in (own[i], None) for i in table)  # a user's own kind, or none
    users = {u["id"]: u["email"].strip() for u in twins.app_users() if u["email"]}
    ambiguous = {
        i for i, email in users.items() if len({(r["exterieur"], r["gestionnaire"]) for r in twins.find_all(email)}) > 1
    }
    unresolved = {i for i in ambiguous if all(r["email"] != users[i] for r in twins.find_all(users[i]))}
    assert ambiguous - unresolved and unresolved  # the exact address settles some, not all
    assert all(table[i] == own[i] for i in ambiguous - unresolved)
    assert all(table[i] is None for i in unresolved)
    assert report["ambiguous"] == len(ambiguous)
    assert {f["user_id"] for f in report["failures"]} == unresolved
    assert all(f["reason"].startswith("ambiguous: 2 directory records") for f in report["failures"])


def test_a_postgres_crash_between_stage_and_write_loses_nothing(portaildf, sql, monkeypatch):
    from usersync import load

    write = load.upsert

    def after_a_crash(db, entity, **kwargs):
        sql(f"TRUNCATE {SCHEMA}.users_delta")  # what crash recovery does to an unlogged table
        return write(db, entity, **kwargs)

    monkeypatch.setattr(load, "upsert", after_a_crash)
    run, report = sync()

    assert kinds(sql) == portaildf.data.expected_kinds()
    assert report["updated"] == sum(kind is not None for kind in portaildf.data.expected_kinds().values()) > 0
    assert xcom(run, "update_kinds")["restaged"] == xcom(run, "stage_answers")["staged"]


def test_overlapping_runs_whose_stages_and_writes_interleave_end_exact(portaildf, sql, monkeypatch):
    """Stage of run A, stage of run B, write of A, write of B (a retry, a manual run during a scheduled one):
    each write finds the delta not its own and stages its run again; the kinds end as the directory has them."""
    from usersync import load, staging

    sync()
    monkeypatch.setattr(staging, "clean_up", lambda dag_id, run_id: None)  # run A's files stay: it is not over
    write, held = load.upsert, []
    portaildf.control("mutate", {"k": 20})
    nothing = {"updated": 0, "unchanged": 0, "transitions": {}, "kinds": {}, "not_found": 0, "failed": 0}
    nothing |= {"ambiguous": 0, "not_found_ids": [], "failures": []}
    monkeypatch.setattr(load, "upsert", lambda db, entity, *, run_id, **kwargs: held.append(run_id) or nothing)
    sync()  # run A: looks up and stages, its write held back
    portaildf.control("mutate", {"k": 20})
    written_by_a = []

    def after_run_a_writes(db, entity, *, run_id, **kwargs):
        written_by_a.append(write(db, entity, run_id=held[0], **kwargs))
        return write(db, entity, run_id=run_id, **kwargs)

    monkeypatch.setattr(load, "upsert", after_run_a_writes)
    run, report = sync()  # run B: stages, then run A writes, then run B writes

    assert written_by_a[0]["updated"] == 20 and written_by_a[0]["restaged"] > 0
    assert report["updated"] == 20 and xcom(run, "update_kinds")["restaged"] == xcom(run, "stage_answers")["staged"]
    assert kinds(sql) == portaildf.data.expected_kinds()


def test_hostile_answers_are_quarantined_with_their_reason_while_the_rest_land(portaildf, sql):
    hostile = portaildf.control("hostile")["ids"]
    _, report = sync()

    reasons = dict(
        sql(f'SELECT substring(record #>> \'{{}}\' FROM \'"user_id":"([^"]+)"\'), reason FROM {SCHEMA}.quarantine')
    )
    assert "unsupported Unicode escape sequence" in reasons.pop(hostile["nul"])
    assert "surrogate" in reasons.pop(hostile["lone_surrogate"])
    assert reasons == {} and report["quarantined"] == 2
    expected = portaildf.data.expected_kinds()
    assert expected[hostile["nul"]] is not None and expected[hostile["lone_surrogate"]] is not None
    assert kinds(sql) == {**expected, hostile["nul"]: None, hostile["lone_surrogate"]: None}  # left as they were
