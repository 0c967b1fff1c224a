"""infrazen_bulk_sync end to end: dag.test() against the InfraZen sandbox over HTTP and a real Postgres; the
tables are compared with the sandbox's ground truth."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import AIRFLOW_HOME, Sandbox
from dagrun import run_dag, xcom

DAG, SCHEMA = "infrazen_bulk_sync", "infrazen"
USERS, SEED, BIG = 40, 5, 130
FIELDS = ("resource_id", "resource_type", "resource_name", "region", "status", "daily_cost")


def provider_conns(url: str, rate_limit: str = "15/s", **extra) -> dict[str, str]:
    """AIRFLOW_CONN_INFRAZEN_*: the providers' host templates pointed at the sandbox, short backoffs."""
    common = {"rate_limit": rate_limit, "backoff": "0.05", "max_retries": "6", "timeout": "10", **extra}
    hosts = {
        "yandex": {"host": f"{url}/yandex/{{service}}", "extra": {**common, "page_size": "50"}},
        "selectel": {"host": f"{url}/selectel/api", "extra": {**common, "identity_host": f"{url}/selectel/cloud",
                                                               "region_host": f"{url}/selectel/regions/{{region}}"}},
        "beget": {"host": f"{url}/beget", "extra": {**common, "cloud_host": f"{url}/beget"}},
    }  # fmt: skip
    return {f"AIRFLOW_CONN_INFRAZEN_{k.upper()}": json.dumps({"conn_type": "http", **v}) for k, v in hosts.items()}


@pytest.fixture(scope="module")
def infrazen_sandbox(pg):
    from sandbox.common import serve
    from sandbox.infrazen import InfraZenData, create_app

    app = create_app(InfraZenData(USERS, SEED, BIG), limits={p: [(20, 1.0)] for p in ("yandex", "selectel", "beget")})
    with serve(app) as url:
        os.environ.update(provider_conns(url))
        os.environ["AIRFLOW_CONN_INFRAZEN_DB"] = pg.url.replace("postgresql://", "postgres://")
        yield Sandbox(url, app)


@pytest.fixture
def infrazen(infrazen_sandbox, airflow_db, sql, pg):
    """The reset sandbox, and the application's tables freshly seeded with its users and providers."""
    from tools.app_tables import seed_infrazen

    infrazen_sandbox.control("reset")
    sql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    data = infrazen_sandbox.data
    seed_infrazen(pg.url, SCHEMA, data.app_users(), data.app_providers())
    return infrazen_sandbox


def account_faults(sandbox: Sandbox, provider: dict, **values) -> None:
    sandbox.control(
        "account_faults", {"provider": provider["provider_type"], "account": provider["account_id"], **values}
    )


def stored(sql, provider_id: int) -> list[dict]:
    rows = sql(
        f"SELECT {', '.join(FIELDS)} FROM {SCHEMA}.resources WHERE provider_id = %s AND is_active "
        "ORDER BY resource_type, resource_id",
        (provider_id,),
    )
    return [dict(zip(FIELDS, row, strict=True)) for row in rows]


def outcome(sql, user_id: int) -> tuple:
    return sql(
        f"SELECT sync_status, total_providers_synced, successful_providers, failed_providers "
        f"FROM {SCHEMA}.complete_syncs WHERE user_id = %s ORDER BY id DESC LIMIT 1",
        (user_id,),
    )[0]


def stored_tags(sql, provider_id: int) -> dict[tuple[str, str], dict[str, str]]:
    tags: dict[tuple[str, str], dict[str, str]] = {}
    for kind, rid, key, value in sql(
        f"SELECT r.resource_type, r.resource_id, t.tag_key, t.tag_value FROM {SCHEMA}.resource_tags t "
        f"JOIN {SCHEMA}.resources r ON r.id = t.resource_id WHERE r.provider_id = %s",
        (provider_id,),
    ):
        tags.setdefault((kind, rid), {})[key] = value
    return tags


def latest_states(sql, provider_id: int) -> list[dict]:
    """The resource_states of the provider's last sync_snapshots row, as expected_resources() plus the action."""
    rows = sql(
        f"SELECT s.provider_resource_id, s.resource_type, s.resource_name, s.region, s.status, s.effective_cost, "
        f"s.state_action FROM {SCHEMA}.resource_states s JOIN {SCHEMA}.resources r ON r.id = s.resource_id "
        f"AND r.resource_id = s.provider_resource_id AND r.resource_type = s.resource_type AND r.provider_id = %s "
        f"WHERE s.sync_snapshot_id = (SELECT max(id) FROM {SCHEMA}.sync_snapshots WHERE provider_id = %s) "
        "ORDER BY s.resource_type, s.provider_resource_id",
        (provider_id, provider_id),
    )
    return [dict(zip((*FIELDS, "state_action"), row, strict=True)) for row in rows]


def synced_users(data) -> list[int]:
    return [u for u in data.eligible_users() if data.eligible_providers(u)]


def test_every_eligible_user_synced_as_the_ground_truth(infrazen, sql, caplog):
    data = infrazen.data
    run, states = run_dag(DAG)
    assert str(run.state) == "success", states
    assert data.bad_provider_ids, "the seed must hold a provider with refused credentials"
    bad = next(iter(data.bad_provider_ids))
    bad_user = data.provider(bad)["user_id"]

    # Eligibility: a complete_syncs row per user with a syncable provider, none for demo/inactive/skipped users.
    users = [r[0] for r in sql(f"SELECT user_id FROM {SCHEMA}.complete_syncs ORDER BY user_id")]
    assert users == synced_users(data)
    excluded = {u["id"] for u in data.app_users() if u["role"] == "demouser" or not u["is_active"]}
    assert excluded and not excluded & set(users)
    providers = sql(f"SELECT provider_id FROM {SCHEMA}.sync_snapshots ORDER BY provider_id")
    expected = sorted(p["id"] for u in synced_users(data) for p in data.eligible_providers(u))
    assert [p for (p,) in providers] == expected  # soft-deleted, inactive, manual providers never read
    assert sql(
        f"SELECT count(*) FROM {SCHEMA}.complete_syncs c JOIN {SCHEMA}.provider_sync_references r "
        "ON r.complete_sync_id = c.id"
    )[0][0] == len(expected)

    for pid in expected:
        if pid != bad:
            assert stored(sql, pid) == data.expected_resources(pid), pid
            # resource_states: the snapshot's state of every resource it found; resource_tags: labels, metadata.
            assert latest_states(sql, pid) == [{**r, "state_action": "created"} for r in data.expected_resources(pid)]
            assert stored_tags(sql, pid) == data.expected_tags(pid), pid
    assert sum(len(data.expected_tags(pid)) for pid in expected if pid != bad) > 10
    assert sql(f"SELECT count(*) FROM {SCHEMA}.resource_states") == sql(f"SELECT count(*) FROM {SCHEMA}.resources")
    # More than 100 VMs in one Yandex folder, paged 50 at a time: all stored.
    assert len(stored(sql, data.big_folder_provider_id)) >= BIG > 100

    # One provider refused: its rows with the real error, the user partial, the others success.
    status, n, ok, failed = outcome(sql, bad_user)
    assert (status, failed, ok) == ("partial", 1, n - 1)
    ref = sql(
        f"SELECT sync_status, error_message FROM {SCHEMA}.provider_sync_references WHERE provider_id = %s", (bad,)
    )[0]
    assert ref[0] == "error" and "Connection failed" in ref[1] and "Unknown error" not in ref[1]
    assert sql(
        f"SELECT sync_status, sync_error IS NOT NULL, last_sync IS NOT NULL FROM {SCHEMA}.cloud_providers "
        "WHERE id = %s",
        (bad,),
    )[0] == ("error", True, True)
    assert all(outcome(sql, u)[0] == "success" for u in synced_users(data) if u != bad_user)
    costs = sql(f"SELECT total_daily_cost, total_monthly_cost FROM {SCHEMA}.complete_syncs")
    assert all(abs(m - d * 30) < 0.05 for d, m in costs)

    reported = xcom(run, "report_run")
    skipped = [u for u in data.eligible_users() if not data.eligible_providers(u)]
    assert (reported["successful_users"], reported["failed_users"], reported["skipped_users"]) == (
        len(synced_users(data)),
        0,
        len(skipped),
    )
    assert reported["mode"] == "manual" and len(reported["users"]) == len(data.eligible_users())
    assert sql(f"SELECT status FROM {SCHEMA}.sync_runs WHERE run_id = %s", (run.run_id,)) == [("success",)]

    # No credential anywhere: logs, XCom, sync_runs, staging.
    secrets = [s for p in data.app_providers() for s in _secrets(p["credentials"])]
    sync_runs = json.dumps(sql(f"SELECT report FROM {SCHEMA}.sync_runs"), default=str)
    staged = "".join(f.read_text(errors="replace") for f in Path(AIRFLOW_HOME, "staging").rglob("*") if f.is_file())
    for text in (caplog.text, json.dumps(reported, default=str), sync_runs, staged):
        assert not [s for s in secrets if s in text]
    assert "@" not in "\n".join(reported["users"])  # no emails in the report lines

    # A re-run over unchanged provider data writes no resource or tag row; its snapshots' states say unchanged.
    before = sql(f"SELECT max(updated_at), count(*) FROM {SCHEMA}.resources")
    tags_before = sql(f"SELECT id, xmin::text FROM {SCHEMA}.resource_tags ORDER BY id")
    run, states = run_dag(DAG)
    assert str(run.state) == "success", states
    again = xcom(run, "report_run")
    assert (again["inserted"], again["updated"], again["marked_deleted"]) == (0, 0, 0)
    assert sql(f"SELECT max(updated_at), count(*) FROM {SCHEMA}.resources") == before
    assert sql(f"SELECT id, xmin::text FROM {SCHEMA}.resource_tags ORDER BY id") == tags_before
    for pid in expected:
        if pid != bad:
            assert latest_states(sql, pid) == [{**r, "state_action": "unchanged"} for r in data.expected_resources(pid)]

    # VMs started or stopped on the provider's side: updated, with what changed.
    mutated = infrazen.control("mutate", {"k": 6})["ids"]  # some may be accounts no eligible provider syncs
    synced_ids = {r["resource_id"] for pid in expected if pid != bad for r in data.expected_resources(pid)}
    hits = sorted(set(mutated) & synced_ids)
    assert hits
    run, states = run_dag(DAG)
    assert str(run.state) == "success", states
    assert xcom(run, "report_run")["updated"] == len(hits)
    changed = sql(
        f"SELECT provider_resource_id, has_status_change, has_cost_change, has_config_change, "
        f"previous_state ->> 'status', current_state ->> 'status', changes_detected -> 'status' ->> 'to' "
        f"FROM {SCHEMA}.resource_states WHERE state_action = 'updated' ORDER BY provider_resource_id"
    )
    assert [row[0] for row in changed] == hits
    assert all(row[1:4] == (True, True, False) and row[4] != row[5] == row[6] for row in changed), changed


def _secrets(credentials: dict) -> list[str]:
    found = []
    for key, value in credentials.items():
        if isinstance(value, dict):
            found += _secrets(value)
        elif key in ("oauth_token", "private_key", "api_key", "service_password", "password") and value:
            found.append(value if key != "private_key" else value.splitlines()[1])
    return found


def test_all_providers_down_fails_the_user_and_the_run_after_the_others(infrazen, sql):
    data = infrazen.data
    victim = next(
        u
        for u in synced_users(data)
        if len(data.eligible_providers(u)) >= 2
        and not {p["id"] for p in data.eligible_providers(u)} & data.bad_provider_ids
    )
    for p in data.eligible_providers(victim):
        account_faults(infrazen, p, error_status=503)
    run, states = run_dag(DAG)
    assert str(run.state) == "failed" and states["check_users"] == "failed", states
    assert states["report_run"] == "success"
    assert outcome(sql, victim)[0] == "error"
    errors = sql(
        f"SELECT r.sync_status, r.error_message, s.sync_status FROM {SCHEMA}.provider_sync_references r "
        f"JOIN {SCHEMA}.sync_snapshots s ON s.id = r.sync_snapshot_id JOIN {SCHEMA}.complete_syncs c "
        "ON c.id = r.complete_sync_id WHERE c.user_id = %s",
        (victim,),
    )
    assert len(errors) == len(data.eligible_providers(victim))
    assert all(r == "error" and s == "error" and "503" in e for r, e, s in errors)
    others = [u for u in synced_users(data) if u != victim]
    assert sorted(u for (u,) in sql(f"SELECT user_id FROM {SCHEMA}.complete_syncs")) == sorted(synced_users(data))
    good = [p["id"] for u in others for p in data.eligible_providers(u) if p["id"] not in data.bad_provider_ids]
    assert all(stored(sql, pid) == data.expected_resources(pid) for pid in good)
    reported = sql(f"SELECT status, report FROM {SCHEMA}.sync_runs WHERE run_id = %s", (run.run_id,))[0]
    assert reported[0] == "failed" and reported[1]["failed_users"] == 1


def test_a_database_error_rolls_back_that_user_only(infrazen, sql):
    data = infrazen.data
    victim = synced_users(data)[1]
    sql(f"""CREATE FUNCTION {SCHEMA}.refuse() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN RAISE EXCEPTION 'disk full (test)'; END $$;
            CREATE TRIGGER refuse BEFORE INSERT ON {SCHEMA}.complete_syncs FOR EACH ROW
            WHEN (NEW.user_id = {victim}) EXECUTE FUNCTION {SCHEMA}.refuse()""")
    run, states = run_dag(DAG, {"batch_size": 100})  # one chunk: the victim shares its transaction
    assert str(run.state) == "failed" and states["check_users"] == "failed", states
    mine = [p["id"] for p in data.eligible_providers(victim)]
    assert sql(f"SELECT count(*) FROM {SCHEMA}.resources WHERE provider_id = ANY(%s)", (mine,)) == [(0,)]
    assert sql(f"SELECT count(*) FROM {SCHEMA}.sync_snapshots WHERE provider_id = ANY(%s)", (mine,)) == [(0,)]
    others = [u for u in synced_users(data) if u != victim]
    assert sorted(u for (u,) in sql(f"SELECT user_id FROM {SCHEMA}.complete_syncs")) == others
    line = next(u for u in xcom(run, "report_run")["user_results"] if u["user_id"] == victim)
    assert line["status"] == "failed" and "disk full (test)" in line["error"]


def test_token_expiry_mid_sync(infrazen, sql):
    data = infrazen.data
    big = data.provider(data.big_folder_provider_id)
    account_faults(infrazen, big, expire_after_calls=2)  # every token dies after two calls: between pages
    run, states = run_dag(DAG, {"user_ids": [big["user_id"]]})
    assert str(run.state) == "success", states
    assert sql(f"SELECT sync_status, sync_error FROM {SCHEMA}.cloud_providers WHERE id = %s", (big["id"],)) == [
        ("success", None)
    ]
    assert stored(sql, big["id"]) == data.expected_resources(big["id"])


def test_429_storms_are_obeyed(infrazen, sql):
    data = infrazen.data
    infrazen.control("faults", {"burst_429": 40, "burst_retry_after": 1})
    try:
        run, states = run_dag(DAG)
    finally:
        infrazen.control("faults", {"burst_429": 0})
    assert str(run.state) == "success", states
    good = [
        p["id"] for u in synced_users(data) for p in data.eligible_providers(u) if p["id"] not in data.bad_provider_ids
    ]
    assert all(stored(sql, pid) == data.expected_resources(pid) for pid in good)
    rate = infrazen.state()["rate"]
    assert all(r["over_limit_accepted"] == 0 and r["early_after_429"] == 0 for r in rate.values()), rate
    assert xcom(run, "report_run")["throttled"] >= 40


def test_dry_run_writes_nothing_and_user_ids_narrow(infrazen, sql):
    data = infrazen.data
    run, states = run_dag(DAG, {"dry_run": True})
    assert str(run.state) == "success", states
    assert sql(
        f"SELECT (SELECT count(*) FROM {SCHEMA}.complete_syncs) + (SELECT count(*) FROM {SCHEMA}.resources)"
        f" + (SELECT count(*) FROM {SCHEMA}.sync_snapshots)"
    ) == [(0,)]
    assert sql(f"SELECT count(*) FROM {SCHEMA}.cloud_providers WHERE last_sync IS NOT NULL") == [(0,)]
    reported = xcom(run, "report_run")
    assert reported["would_sync"] == [
        f"user {u}: {len(data.eligible_providers(u))} providers" for u in synced_users(data)
    ]
    assert infrazen.state()["stats"]["requests"] == 0  # no provider asked

    excluded = next(u["id"] for u in data.app_users() if u["role"] == "demouser" or not u["is_active"])
    wanted = synced_users(data)[:2]
    run, states = run_dag(DAG, {"user_ids": [*wanted, excluded], "sync_type": "api"})
    assert str(run.state) == "success", states
    assert sql(f"SELECT user_id, sync_type FROM {SCHEMA}.complete_syncs ORDER BY user_id") == [
        (u, "api") for u in wanted
    ]


def test_a_resource_no_longer_listed_is_marked_inactive_unless_its_read_failed(infrazen, sql):
    data = infrazen.data
    user = data.provider(data.big_folder_provider_id)["user_id"]
    run, _ = run_dag(DAG, {"user_ids": [user]})
    pid = data.big_folder_provider_id
    sql(
        f"INSERT INTO {SCHEMA}.resources (provider_id, resource_id, resource_name, resource_type, service_name,"
        f" region) VALUES ({pid}, 'gone-1', 'gone', 'server', 'Compute', 'ru'), ({pid}, 'gone-2', 'gone', 'server',"
        " 'Compute', 'ru')"
    )
    account_faults(infrazen, data.provider(pid), error_status=500)
    run, _ = run_dag(DAG, {"user_ids": [user]})
    assert sql(f"SELECT count(*) FROM {SCHEMA}.resources WHERE resource_id LIKE 'gone-%%' AND is_active") == [(2,)]
    account_faults(infrazen, data.provider(pid), clear=True)
    run, states = run_dag(DAG, {"user_ids": [user]})
    assert str(run.state) == "success", states
    assert sql(f"SELECT count(*) FROM {SCHEMA}.resources WHERE resource_id LIKE 'gone-%%' AND is_active") == [(0,)]
    assert xcom(run, "report_run")["marked_deleted"] == 2
    assert sql(
        f"SELECT provider_resource_id, has_status_change, current_state -> 'is_active' FROM {SCHEMA}.resource_states "
        f"WHERE state_action = 'deleted' ORDER BY 1"
    ) == [("gone-1", True, False), ("gone-2", True, False)]


def test_bad_records_are_quarantined_once_even_when_users_are_written_one_by_one(infrazen, sql, tmp_path):
    """write_chunk on a hand-made chunk: records the resources table cannot hold are quarantined with their
    reason (once, though a database error makes the chunk be written user by user), missing values get their
    defaults, and the failed user's good records are rolled back with it."""
    from usersync.db import TargetDb
    from usersync.infrazen_bulk import user_outcome, write_chunk

    data = infrazen.data
    (kept, kept_pid), (victim, victim_pid) = ((u, data.eligible_providers(u)[0]["id"]) for u in synced_users(data)[:2])
    quarantine = Path(__file__).parents[1] / "include/sql/common/create_quarantine.sql"
    sql(f"SET search_path TO {SCHEMA}; {quarantine.read_text()}")
    sql(f"""CREATE FUNCTION {SCHEMA}.refuse() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN RAISE EXCEPTION 'disk full (test)'; END $$;
            CREATE TRIGGER refuse BEFORE INSERT ON {SCHEMA}.complete_syncs FOR EACH ROW
            WHEN (NEW.user_id = {victim}) EXECUTE FUNCTION {SCHEMA}.refuse()""")
    good = {"resource_id": "vm-1", "resource_type": "server", "resource_name": "", "region": "", "daily_cost": 1.5}
    bad = {
        "too-long": {"resource_id": "x" * 101, "resource_type": "server"},
        "text-cost": {"resource_id": "text-cost", "resource_type": "server", "daily_cost": "1.5"},
        "list-tags": {"resource_id": "list-tags", "resource_type": "server", "tags": ["a"]},
        "no-type": {"resource_id": "no-type"},
        "long-currency": {"resource_id": "long-currency", "resource_type": "server", "currency": "roubles 1234"},
    }
    resources = [{**r, "user_id": kept, "provider_id": kept_pid} for r in (good, *bad.values())]
    victims_bad = {"resource_id": "victim-bad", "resource_type": "server", "status": "s" * 51}
    resources += [{**r, "user_id": victim, "provider_id": victim_pid} for r in (good, victims_bad)]
    (tmp_path / "resources.ndjson").write_text("".join(json.dumps(r) + "\n" for r in resources))
    now = "2026-11-28T09:00:00+00:00"
    providers = [
        {"user_id": u, "provider_id": pid, "sync_order": 1, "type": "yandex", "name": f"p{pid}", "started_at": now,
         "completed_at": now, "status": "success", "error": None, "duration": 1, "resources": n, "cost": 1.5,
         "complete": True, "error_details": None, "sync_config": {}}
        for u, pid, n in ((kept, kept_pid, len(bad) + 1), (victim, victim_pid, 2))
    ]  # fmt: skip
    (tmp_path / "providers.ndjson").write_text("".join(json.dumps(p) + "\n" for p in providers))
    users = [user_outcome({"user_id": p["user_id"]}, [p], now, 1.0) for p in providers]
    (tmp_path / "users.ndjson").write_text("".join(json.dumps(u) + "\n" for u in users))

    db = TargetDb("infrazen_db", SCHEMA, sync="infrazen")
    result = write_chunk(db, f"file://{tmp_path}", run_id="run-q", sync_type="manual")

    reasons = sql(f"SELECT record->>'resource_id', reason FROM {SCHEMA}.quarantine WHERE run_id = 'run-q'")
    assert sorted(reasons) == sorted(
        [
            ("x" * 101, "resource_id: missing or not a string of at most 100 characters"),
            ("text-cost", "daily_cost: not a number"),
            ("list-tags", "tags: not an object"),
            ("no-type", "resource_type: missing or not a string of at most 50 characters"),
            ("long-currency", "currency: longer than 10"),
            ("victim-bad", "status: not a string of at most 50 characters"),  # its user's write failed: kept
        ]
    )
    assert result["quarantined"] == len(bad) + 1 and result["inserted"] == 1
    assert sql(
        f"SELECT resource_name, service_name, region, currency, daily_cost FROM {SCHEMA}.resources "
        "WHERE provider_id = %s AND resource_id = 'vm-1'",
        (kept_pid,),
    ) == [("vm-1", "", "global", "RUB", 1.5)]
    assert sql(f"SELECT count(*) FROM {SCHEMA}.resources WHERE provider_id = %s", (victim_pid,)) == [(0,)]
    line = next(u for u in result["users"] if u["user_id"] == victim)
    assert line["status"] == "failed" and "disk full (test)" in line["error"]
