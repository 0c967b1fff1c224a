"""ds_to_grist__<name> end to end: dag.test() against the DS and Grist sandboxes over HTTP and a real Postgres."""

from __future__ import annotations

import json
import os
from datetime import datetime

import pytest
import requests
from dagrun import ROOT, xcom
from usersync import ds, ds_grist

from sandbox.common import serve
from sandbox.ds import DEFAULT_TOKEN, DSData, TokenRights
from sandbox.ds import create_app as ds_app
from sandbox.grist import DEFAULT_API_KEY, DEFAULT_DOC_ID
from sandbox.grist import create_app as grist_app

DEMARCHE, SMALL, BIG = 101, 102, 103
DOC, OTHER_DOC, BIG_DOC = DEFAULT_DOC_ID, "otherDoc", "bigDoc"
CONFIG = f"""
configurations:
  - {{name: main, demarche: {DEMARCHE}, document: {DOC}, ds_conn: ds_api, grist_conn: grist_api}}
  - {{name: small, demarche: {SMALL}, document: {OTHER_DOC}, time: "06:30"}}
  - {{name: same_doc, demarche: {SMALL}, document: {DOC}, time: "00:00"}}
  - {{name: filtered, demarche: {DEMARCHE}, document: filteredDoc,
     filters: {{states: [en_instruction, accepte], groupes: [1011, 1012], deposited_from: 2025-03-01,
               deposited_to: 2025-09-30}}}}
  - {{name: big, demarche: {BIG}, document: {BIG_DOC}}}
  - {{name: disabled, demarche: {DEMARCHE}, document: {DOC}, enabled: false}}
"""


def run_dag(dag_id: str, conf: dict | None = None):
    """tests/dagrun.run_dag for the DAGs dags/ds_to_grist.py generates (parsed afresh: a run's conf is merged
    into the Param objects its DAG shares)."""
    from datetime import timedelta

    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags" / "ds_to_grist.py")).get_dag(dag_id)
    for task in dag.tasks:
        task.retry_delay = task.max_retry_delay = timedelta(0)
    run = dag.test(run_conf=conf or {})
    return run, {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def conn(url: str, secret: str) -> str:
    return json.dumps(
        {
            "conn_type": "http",
            "host": url,
            "password": secret,
            "extra": {"backoff": "0.05", "max_retries": "6", "timeout": 30},
        }
    )


@pytest.fixture(scope="module")
def sandboxes(pg, airflow_db, tmp_path_factory):
    config = tmp_path_factory.mktemp("ds_to_grist") / "ds_to_grist.yaml"
    config.write_text(CONFIG)
    os.environ["USERSYNC_DS_TO_GRIST_CONFIG"] = str(config)
    os.environ["AIRFLOW_CONN_DS_TO_GRIST_DB"] = pg.url.replace("postgresql://", "postgres://")
    data = DSData(((DEMARCHE, 150, 40), (SMALL, 40, 12), (BIG, 5000, 6)), seed=5)
    with (
        serve(ds_app(data, tokens={DEFAULT_TOKEN: TokenRights()}, rate_limit=100_000)) as ds_url,
        serve(grist_app()) as grist_url,
    ):
        os.environ["AIRFLOW_CONN_DS_API"] = conn(ds_url, DEFAULT_TOKEN)
        os.environ["AIRFLOW_CONN_GRIST_API"] = conn(grist_url, DEFAULT_API_KEY)
        yield ds_url, grist_url
    del os.environ["USERSYNC_DS_TO_GRIST_CONFIG"]  # other modules parse the repository's configurations


@pytest.fixture
def apis(sandboxes, sql):
    ds_url, grist_url = sandboxes
    for url in sandboxes:
        requests.post(f"{url}/_sandbox/reset", timeout=10).raise_for_status()
    for doc in (OTHER_DOC, "filteredDoc", BIG_DOC):
        requests.post(f"{grist_url}/_sandbox/docs", json={"id": doc}, timeout=10).raise_for_status()
    for name in ("main", "small", "same_doc", "filtered", "big"):
        sql(f"DROP SCHEMA IF EXISTS ds_{name} CASCADE")
    return ds_url, grist_url


def grist_state(grist_url) -> dict:
    return requests.get(f"{grist_url}/_sandbox/state", timeout=10).json()["grist"]


def grist_records(grist_url, table: str, doc: str = DOC) -> list[dict]:
    answer = requests.get(
        f"{grist_url}/api/docs/{doc}/tables/{table}/records",
        timeout=30,
        headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"},
    )
    answer.raise_for_status()
    return [r["fields"] for r in answer.json()["records"]]


def expected(demarche: int, keep=lambda d: True) -> dict[str, list[dict]]:
    """What the four Grist tables must hold: every dossier DS lists, flattened (read apart from the DAG)."""
    api = ds.client("ds_api")
    schema = ds.schema(ds.fetch_descriptors(api, demarche))
    tables = {t: [] for t in ds.TABLES}
    for dossier in ds.fetch_all(ds.dossiers_paginator(api, demarche), ds.first_page()):
        if keep(dossier):
            for table, rows in ds.flatten(dossier, schema).items():
                tables[table] += rows
    return tables


def normalised(rows: list[dict], key: str) -> list[dict]:
    def cell(v):
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    return sorted(({k: cell(v) for k, v in row.items() if k != "manualSort"} for row in rows), key=lambda r: r[key])


def assert_grist_equals_ds(grist_url, demarche=DEMARCHE, doc=DOC, keep=lambda d: True):
    truth = expected(demarche, keep)
    for table, (grist_table, key) in ds_grist.TABLES.items():
        if table == "instructeurs":
            continue
        got = normalised(grist_records(grist_url, grist_table, doc), key[0])
        want = normalised(truth[table], key[0])
        assert len(got) == len(want), table
        assert [{k: g.get(k) for k in w} for g, w in zip(got, want, strict=True)] == want, table


def test_first_run_mirrors_ds_in_grist_then_a_second_run_writes_nothing(apis, sql):
    ds_url, grist_url = apis
    run, states = run_dag("ds_to_grist__main")
    assert set(states.values()) == {"success"}, states
    assert_grist_equals_ds(grist_url)
    report = xcom(run, "report_run")
    assert report["fetched"] == 150 and report["mode"] == "full"
    assert report["grist"]["Dossiers"]["added"] == 150
    assert report["columns_added"]["Champs"]
    assert len(grist_records(grist_url, "Instructeurs")) == len(
        ds.instructeur_rows(ds.fetch_groupes(ds.client("ds_api"), DEMARCHE))
    )
    assert sql("SELECT count(*) FROM ds_main.dossiers") == [(150,)]
    assert sql("SELECT status FROM ds_main.sync_runs") == [("success",)]

    writes = grist_state(grist_url)["writes"]
    run, states = run_dag("ds_to_grist__main")
    assert set(states.values()) == {"success"}, states
    assert grist_state(grist_url)["writes"] == writes  # not one write call
    report = xcom(run, "report_run")
    assert report["mode"] == "incremental" and report["fetched"] == 0


def test_k_changed_dossiers_rewrite_k_rows_and_deleted_ones_disappear(apis):
    ds_url, grist_url = apis
    run_dag("ds_to_grist__main")
    changed = requests.post(f"{ds_url}/_sandbox/mutate", json={"k": 5, "demarche": DEMARCHE}, timeout=10).json()["ids"]
    gone = next(r["number"] for r in grist_records(grist_url, "Dossiers") if r["number"] not in changed)
    requests.post(f"{ds_url}/_sandbox/delete_dossier", json={"number": gone}, timeout=10).raise_for_status()
    rows_before = grist_state(grist_url)["rows_written"]
    run, states = run_dag("ds_to_grist__main")
    assert set(states.values()) == {"success"}, states
    report = xcom(run, "report_run")
    assert report["fetched"] == 5
    assert report["mirror"]["dossiers"]["updated"] + report["mirror"]["champs"]["updated"] >= 5
    written = report["grist"]
    assert (
        written["Dossiers"]["written"] == 5 and written["Champs"]["written"] + written["Annotations"]["written"] <= 10
    )
    assert written["Dossiers"]["added"] == 0
    assert report["dossiers_removed"] == 1 and written["Dossiers"]["removed"] == 1
    assert gone not in {r["number"] for r in grist_records(grist_url, "Dossiers")}
    assert_grist_equals_ds(grist_url)
    assert grist_state(grist_url)["rows_written"] - rows_before == sum(t["written"] for t in written.values())


def test_a_new_field_adds_a_column_and_a_hand_added_column_stays(apis):
    ds_url, grist_url = apis
    run_dag("ds_to_grist__main")
    requests.post(
        f"{grist_url}/_sandbox/docs/{DOC}/tables/Champs/columns", json={"id": "remarque"}, timeout=10
    ).raise_for_status()
    descriptor = requests.post(
        f"{ds_url}/_sandbox/add_field", json={"demarche": DEMARCHE, "type": "decimal_number"}, timeout=10
    ).json()["descriptor"]
    run, states = run_dag("ds_to_grist__main")
    assert set(states.values()) == {"success"}, states
    column = ds.column_id(descriptor["id"])
    assert xcom(run, "report_run")["columns_added"] == {"Champs": [column]}
    columns = requests.get(
        f"{grist_url}/api/docs/{DOC}/tables/Champs/columns",
        timeout=10,
        headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"},
    ).json()["columns"]
    types = {c["id"]: c["fields"]["type"] for c in columns}
    assert types[column] == "Numeric" and "remarque" in types
    assert_grist_equals_ds(grist_url)


@pytest.mark.parametrize("which", ["ds", "grist"])
def test_a_wrong_token_or_key_fails_clearly_and_writes_nothing(apis, sql, which, monkeypatch):
    ds_url, grist_url = apis
    if which == "ds":
        monkeypatch.setenv("AIRFLOW_CONN_DS_API", conn(ds_url, "not-the-token"))
    else:
        monkeypatch.setenv("AIRFLOW_CONN_GRIST_API", conn(grist_url, "not-the-key"))
    run, states = run_dag("ds_to_grist__main")
    assert states["match_grist_schema"] == "failed", states
    assert grist_state(grist_url)["writes"] == 0
    errors = sql("SELECT errors FROM ds_main.sync_runs")[0][0]
    assert ("refused the token" if which == "ds" else "refused the API key") in json.dumps(errors)
    assert "not-the-" not in json.dumps(errors)


def test_filters_select_exactly_the_matching_dossiers(apis):
    ds_url, grist_url = apis
    run, states = run_dag("ds_to_grist__filtered")
    assert set(states.values()) == {"success"}, states

    def keep(d):
        return (
            d["state"] in ("en_instruction", "accepte")
            and d["groupeInstructeur"]["number"] in (1011, 1012)
            and "2025-03-01" <= d["dateDepot"][:10] <= "2025-09-30"
        )

    assert_grist_equals_ds(grist_url, doc="filteredDoc", keep=keep)
    assert 0 < len(grist_records(grist_url, "Dossiers", "filteredDoc")) < 150


def test_schedules_offsets_and_limits(sandboxes):  # sandboxes: the DAG file reads this module's configurations
    configs = {c.name: c for c in ds_grist.configurations(CONFIG)}
    assert "disabled" not in configs
    assert configs["main"].cron == "0 0 * * *"
    assert configs["same_doc"].cron == "15 0 * * *"  # second on the main document
    assert configs["small"].cron == "30 6 * * *"
    assert configs["filtered"].cron == "0 0 * * *"
    from airflow.dag_processing.dagbag import DagBag

    # parsed afresh: the cached tests/dagrun.dagbag() holds the repository's configurations
    dag = DagBag(dag_folder=str(ROOT / "dags" / "ds_to_grist.py")).get_dag("ds_to_grist__same_doc")
    assert dag.max_active_runs == 1 and dag.dagrun_timeout.total_seconds() == 7200
    assert dag.timetable.expression == "15 0 * * *" and str(dag.timetable.timezone) == "Europe/Paris"
    assert all(t.retries >= 1 for t in dag.tasks)


def test_no_secret_in_logs_xcom_or_staging(apis, caplog, sql):
    run, states = run_dag("ds_to_grist__main", conf={"full_refresh": True})
    assert set(states.values()) == {"success"}, states
    report = json.dumps(xcom(run, "report_run"))
    stored = json.dumps(sql("SELECT report FROM ds_main.sync_runs"), default=str)
    for secret in (DEFAULT_TOKEN, DEFAULT_API_KEY):
        assert secret not in caplog.text and secret not in report and secret not in stored


def test_a_5000_row_first_load_stays_under_1_mb_and_10_in_flight(apis):
    ds_url, grist_url = apis
    # Grist's data engine takes its time: the bodies of a table overlap in flight.
    requests.post(f"{grist_url}/_sandbox/faults", json={"latency": 0.5}, timeout=10).raise_for_status()
    try:
        run, states = run_dag("ds_to_grist__big")
    finally:
        requests.post(f"{grist_url}/_sandbox/faults", json={"latency": 0}, timeout=10)
    assert set(states.values()) == {"success"}, states
    state = grist_state(grist_url)
    assert state["status_413"] == 0 and state["status_429"] == 0
    assert 1 < state["max_in_flight"] <= 10
    assert state["endpoints"]["PUT records"] > 4  # the tables' 5,000 rows each went in several bodies
    assert len(grist_records(grist_url, "Dossiers", BIG_DOC)) == 5000
    assert xcom(run, "report_run")["grist"]["Champs"]["added"] == 5000


def test_ds_429s_and_5xx_are_obeyed_and_the_result_equals_the_fault_free_one(apis):
    ds_url, grist_url = apis
    requests.post(
        f"{ds_url}/_sandbox/faults",
        json={"burst_429": 3, "burst_retry_after": 1, "error_rate": 0.2, "seed": 1},
        timeout=10,
    ).raise_for_status()
    try:
        run, states = run_dag("ds_to_grist__main")
    finally:
        requests.post(f"{ds_url}/_sandbox/faults", json={"burst_429": 0, "error_rate": 0}, timeout=10)
    assert set(states.values()) == {"success"}, states
    report = xcom(run, "report_run")
    assert report["ds_api"]["throttled"] == 3 and report["ds_api"]["retries"] >= 1
    assert_grist_equals_ds(grist_url)


def test_dry_run_writes_nothing_and_full_refresh_rewrites_every_row(apis, sql):
    ds_url, grist_url = apis
    run, states = run_dag("ds_to_grist__main", conf={"dry_run": True})
    assert set(states.values()) == {"success"}, states
    assert grist_state(grist_url)["writes"] == 0
    assert sql("SELECT to_regclass('ds_main.dossiers')") == [(None,)]  # the mirror rolled back
    assert xcom(run, "report_run")["grist"]["Dossiers.to_write"] == 150
    run_dag("ds_to_grist__main")
    rows = grist_state(grist_url)["rows_written"]
    run, states = run_dag("ds_to_grist__main", conf={"full_refresh": True})
    assert xcom(run, "report_run")["grist"]["Dossiers"]["updated"] == 150
    assert grist_state(grist_url)["rows_written"] - rows == sum(len(t) for t in expected(DEMARCHE).values()) + len(
        grist_records(grist_url, "Instructeurs")
    )


def test_since_overrides_the_watermark(apis):
    ds_url, grist_url = apis
    run_dag("ds_to_grist__main")
    since = "2025-09-01T00:00:00+00:00"
    run, states = run_dag("ds_to_grist__main", conf={"since": since})
    assert set(states.values()) == {"success"}, states
    report = xcom(run, "report_run")
    truth = ds.fetch_all(ds.dossiers_paginator(ds.client("ds_api"), DEMARCHE), ds.first_page())
    moment = datetime.fromisoformat(since)
    updated = [d for d in truth if datetime.fromisoformat(d["dateDerniereModification"]) >= moment]
    assert 0 < report["fetched"] == len(updated) < 150 and report["since"] == since
    assert sum(t["written"] for t in report["grist"].values()) == 0  # read again, nothing changed


def test_instructeurs_are_kept_in_step(apis):
    ds_url, grist_url = apis
    run_dag("ds_to_grist__main")
    groupes = {g["number"]: g for g in ds.fetch_groupes(ds.client("ds_api"), DEMARCHE)}
    first, second, third = (groupes[n] for n in sorted(groupes))
    assert len(first["instructeurs"]) >= 1 and len(second["instructeurs"]) >= 2 and len(third["instructeurs"]) >= 1
    changes = [  # one instructor added and one whose email changed; one removed; a group renamed (its rows change)
        {"number": first["number"], "instructeurs": [
            {**first["instructeurs"][0], "email": "nouvelle.adresse@example.gouv.fr"},
            *first["instructeurs"][1:],
            {"email": "arrivee.recente@example.gouv.fr"},
        ]},
        {"number": second["number"], "instructeurs": second["instructeurs"][1:]},
        {"number": third["number"], "label": "Instruction Est"},
    ]  # fmt: skip
    for change in changes:
        requests.post(f"{ds_url}/_sandbox/groupe", json=change, timeout=10).raise_for_status()
    run, states = run_dag("ds_to_grist__main")
    assert set(states.values()) == {"success"}, states
    renamed = len(third["instructeurs"])
    report = xcom(run, "report_run")
    assert report["grist"]["Instructeurs"] == {"written": 2 + renamed, "added": 1, "updated": 1 + renamed, "removed": 1}
    assert report["mirror"]["instructeurs"]["inserted"] == 1 and report["mirror"]["instructeurs"]["removed"] == 1
    want = ds.instructeur_rows(ds.fetch_groupes(ds.client("ds_api"), DEMARCHE))
    got = grist_records(grist_url, "Instructeurs")
    key = ("groupe_number", "instructeur_id")
    assert sorted(({k: r[k] for k in want[0]} for r in got), key=lambda r: [r[k] for k in key]) == sorted(
        want, key=lambda r: [r[k] for k in key]
    )
    assert "arrivee.recente@example.gouv.fr" in {r["email"] for r in got}


def test_an_unreadable_dossier_is_quarantined_with_its_reason_and_the_rest_land(apis, sql):
    ds_url, grist_url = apis
    descriptors = ds.fetch_descriptors(ds.client("ds_api"), DEMARCHE)
    integer = next(
        d
        for d in descriptors["activeRevision"]["champDescriptors"]
        if d["__typename"] == "IntegerNumberChampDescriptor"
    )
    number = expected(DEMARCHE)["dossiers"][10]["number"]
    huge = "1" * 20  # a BigInt DS serves, past what a Postgres bigint (and a Grist Int) holds
    requests.post(
        f"{ds_url}/_sandbox/update_dossier",
        json={"number": number, "champs": {integer["id"]: {"value": huge, "stringValue": huge}}},
        timeout=10,
    ).raise_for_status()
    run, states = run_dag("ds_to_grist__main")
    assert set(states.values()) == {"success"}, states
    report = xcom(run, "report_run")
    assert report["quarantined_dossiers"] == 1 and report["grist"]["Dossiers"]["added"] == 149
    [(entity, reason, record)] = sql("SELECT entity, reason, record FROM ds_main.quarantine")
    assert entity == "champs" and ds.column_id(integer["id"]) in reason and record["number"] == number
    assert_grist_equals_ds(grist_url, keep=lambda d: d["number"] != number)
    for table in ("Dossiers", "Champs", "Annotations", "Repetable_rows"):
        assert number not in {r["number"] for r in grist_records(grist_url, table)}, table


def test_a_dossier_that_leaves_the_filters_disappears_from_grist(apis):
    ds_url, grist_url = apis
    run_dag("ds_to_grist__filtered")
    selects = next(c for c in ds_grist.configurations(CONFIG) if c.name == "filtered").selects
    dossiers = ds.fetch_all(ds.dossiers_paginator(ds.client("ds_api"), DEMARCHE), ds.first_page())
    inside = [d["number"] for d in dossiers if selects(d)]
    entering = next(
        d["number"]
        for d in dossiers
        if not selects(d) and selects({**d, "state": "accepte", "groupeInstructeur": {"number": 1011}})
    )
    in_grist = {r["number"] for r in grist_records(grist_url, "Dossiers", "filteredDoc")}
    assert set(inside) == in_grist
    changes = [
        {"number": inside[0], "state": "refuse"},  # a state the configuration does not select
        {"number": inside[1], "group": 1013},  # a group it does not select
        {"number": entering, "state": "accepte", "group": 1011},  # and one that now passes the filters
    ]
    for change in changes:
        requests.post(f"{ds_url}/_sandbox/update_dossier", json=change, timeout=10).raise_for_status()
    run, states = run_dag("ds_to_grist__filtered")
    assert set(states.values()) == {"success"}, states
    report = xcom(run, "report_run")
    assert report["mode"] == "incremental" and report["dossiers_deselected"] == 2
    assert report["grist"]["Dossiers"]["removed"] == 2 and report["grist"]["Dossiers"]["added"] == 1
    assert_grist_equals_ds(grist_url, doc="filteredDoc", keep=selects)
    in_grist = {r["number"] for r in grist_records(grist_url, "Dossiers", "filteredDoc")}
    assert inside[0] not in in_grist and inside[1] not in in_grist and entering in in_grist

    # A full read lists the selected states only: a dossier it no longer lists leaves too.
    requests.post(
        f"{ds_url}/_sandbox/update_dossier", json={"number": inside[2], "state": "sans_suite"}, timeout=10
    ).raise_for_status()
    run, states = run_dag("ds_to_grist__filtered", conf={"full_refresh": True})
    assert set(states.values()) == {"success"}, states
    report = xcom(run, "report_run")
    assert report["mode"] == "full" and report["dossiers_deselected"] == 1
    assert inside[2] not in {r["number"] for r in grist_records(grist_url, "Dossiers", "filteredDoc")}
    assert_grist_equals_ds(grist_url, doc="filteredDoc", keep=selects)
