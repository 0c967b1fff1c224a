"""usersync.ds against the DS sandbox over real HTTP: pages, descriptors, flattening, 429s, token errors."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime

import pytest
import requests
from airflow.sdk import ObjectStoragePath
from graphql import parse, validate
from usersync import ds
from usersync.api import AuthError
from usersync.graphql_api import GRAPHQL_DIR
from usersync.staging import fetch_to_staging, read_ndjson, staged_pages

from sandbox.common import serve
from sandbox.ds import DEFAULT_TOKEN, KINDS, RULES, SCHEMA, DSData, TokenRights, create_app

DEMARCHE, SMALL = 101, 102


def ds_conn(url: str, token: str = DEFAULT_TOKEN, **extra: str) -> str:
    return json.dumps(
        {
            "conn_type": "http",
            "host": url,
            "password": token,
            "extra": {"backoff": "0.05", "max_retries": "6", "timeout": 30, **extra},
        }
    )


@pytest.fixture(scope="module")
def sandbox():
    data = DSData(((DEMARCHE, 150, 40), (SMALL, 40, 12)), seed=3)
    app = create_app(
        data, tokens={DEFAULT_TOKEN: TokenRights(), "only-102": TokenRights(frozenset({SMALL}))}, rate_limit=100_000
    )
    with serve(app) as url:
        os.environ["AIRFLOW_CONN_DS_API"] = ds_conn(url, rate_limit="400/m")
        yield url, app


@pytest.fixture
def api(url):
    return ds.client("ds_api")


def fetch(api, demarche: int = DEMARCHE, **filters) -> list[dict]:
    return ds.fetch_all(ds.dossiers_paginator(api, demarche, **filters), ds.first_page())


@pytest.mark.parametrize("name", sorted(p.stem for p in (GRAPHQL_DIR / "ds").glob("*.graphql")))
def test_queries_validate_against_the_ds_schema(name):
    document = parse((GRAPHQL_DIR / "ds" / f"{name}.graphql").read_text())
    assert validate(SCHEMA, document, RULES) == []


def test_paginate_a_demarche_into_staging(api, data, tmp_path):
    prefix = ObjectStoragePath(f"file://{tmp_path}/dossiers")
    manifest = fetch_to_staging(prefix, ds.dossiers_paginator(api, DEMARCHE, page_size=60), ds.first_page(), api)
    staged = [record for page in staged_pages(prefix) for record in read_ndjson(page)]
    assert [d["number"] for d in staged] == [t["number"] for t in data.truth(DEMARCHE)]
    assert manifest["pages"] == 3 and manifest["records"] == 150 and manifest["api_calls"] == 3


def test_filters_states_and_watermark(api, data, url):
    truth = data.truth(DEMARCHE)
    chosen = ("accepte", "refuse")
    got = fetch(api, states=chosen)
    assert sorted(d["number"] for d in got) == sorted(t["number"] for t in truth if t["state"] in chosen)
    assert [d["number"] for d in fetch(api, created_since=truth[120]["dateDepot"])] == [
        t["number"] for t in truth[120:]
    ]
    groupes = {truth[0]["group"]}
    assert [d["number"] for d in fetch(api, groupes=groupes, states=("accepte",))] == [
        t["number"] for t in truth if t["group"] in groupes and t["state"] == "accepte"
    ]
    newest_first = fetch(api, order="DESC")
    assert [d["number"] for d in newest_first] == [t["number"] for t in reversed(truth)]
    changed = requests.post(f"{url}/_sandbox/mutate", json={"k": 4}, timeout=10).json()["ids"]
    since = datetime.fromtimestamp(time.time() - 30, UTC).isoformat()  # generated dossiers changed in 2025
    assert sorted(d["number"] for d in fetch(api, updated_since=since)) == changed


def test_flatten_covers_every_champ_type(api, data):
    schema = ds.schema(ds.fetch_descriptors(api, DEMARCHE))
    dossiers = fetch(api)
    tables: dict[str, list[dict]] = {t: [] for t in ds.TABLES}
    for dossier in dossiers:
        for table, rows in ds.flatten(dossier, schema).items():
            tables[table] += rows
    assert len(tables["dossiers"]) == len(tables["champs"]) == len(tables["annotations"]) == 150
    for table, columns in schema.tables.items():
        ids = [c.id for c in columns]
        assert len(ids) == len(set(ids))
        assert all(list(row) == ids for row in tables[table]), table  # every row carries every column, in order
        for column in columns:  # every column holds a value somewhere, of its Grist type
            values = [row[column.id] for row in tables[table] if row[column.id] is not None]
            assert values, (table, column)
            expected = {"Bool": bool, "Int": int, "Numeric": float, "Date": int, "ChoiceList": list}.get(
                column.type.split(":")[0], int if column.type.startswith("DateTime") else str
            )
            assert all(isinstance(v, expected) for v in values), (table, column, values[:3])
            if column.type == "Choice":
                assert set(values) <= set(column.choices), column
            if column.type == "ChoiceList" and column.choices:
                assert {v for value in values for v in value[1:]} <= set(column.choices), column
    descriptors = data.demarches[DEMARCHE].descriptors
    value_kinds = {d["type"] for d in descriptors} - {"header_section", "explication", "repetition"}
    assert len(schema.tables["champs"]) - 1 == sum(d["type"] in value_kinds for d in descriptors)
    assert {KINDS[k][1] for k in value_kinds} | {"RepetitionChamp", "HeaderSectionChamp", "ExplicationChamp"} == {
        champ for _, champ in KINDS.values()
    }
    # spot checks against the sandbox's ground truth
    first = data.truth(DEMARCHE)[0]
    row = tables["champs"][0]
    for champ in first["champs"]:
        column = ds.column_id(champ["champDescriptorId"])
        if champ["_kind"] == "AddressChamp" and champ.get("address"):
            assert row[column] == champ["address"]["label"]
        if champ["_kind"] == "MultipleDropDownListChamp" and champ.get("values"):
            assert row[column] == ["L", *champ["values"]]
        if champ["_kind"] == "DateChamp" and champ.get("date"):
            assert datetime.fromtimestamp(row[column], UTC).date().isoformat() == champ["date"]
    rows = [r for r in tables["repetable_rows"] if r["number"] == first["number"]]
    truth_rows = [(c["label"], len(c["rows"])) for c in first["champs"] + first["annotations"] if "rows" in c]
    assert len(rows) == sum(n for _, n in truth_rows)
    assert {r["block_label"] for r in rows} == {label for label, n in truth_rows if n}


def test_descriptor_columns_are_stable_and_typed(api, url):
    before = ds.schema(ds.fetch_descriptors(api, SMALL))
    requests.post(f"{url}/_sandbox/add_field", json={"demarche": SMALL, "type": "drop_down_list"}, timeout=10)
    after = ds.schema(ds.fetch_descriptors(api, SMALL))
    assert after.tables["champs"][: len(before.tables["champs"])] == before.tables["champs"]
    added = after.tables["champs"][-1]
    assert added.type == "Choice" and added.choices and added.grist()["fields"]["widgetOptions"].startswith("{")
    assert ds.column_id("Q2hhbXAtNDI=") == "champ_42"  # base64("Champ-42")


def test_429_storm_is_obeyed_and_the_result_equals_the_fault_free_one(api, sandbox, url):
    clean = fetch(api)
    sandbox[1].state.sandbox.set_faults({"burst_429": 4, "burst_retry_after": 2, "error_rate": 0.28, "seed": 0})
    stormy_api = ds.client("ds_api")
    assert fetch(stormy_api) == clean
    assert stormy_api.stats.throttled == 4 and stormy_api.stats.retries >= 1
    assert sandbox[1].state.throttle.state()["before_reset"] == 0  # it waited for every RateLimit-Reset


def test_the_real_limit_is_obeyed_by_its_ratelimit_reset():
    """No rate_limit declared: the client meets the fixed window's 429s and waits for RateLimit-Reset."""
    app = create_app(DSData(((DEMARCHE, 40, 3), (SMALL, 1, 1))), rate_limit=2, rate_period=3)
    with serve(app) as url:
        os.environ["AIRFLOW_CONN_DS_THROTTLED"] = ds_conn(url)
        api = ds.client("ds_throttled")
        got = ds.fetch_all(ds.dossiers_paginator(api, DEMARCHE, page_size=10), ds.first_page())
        state = app.state.throttle.state()
    assert [d["number"] for d in got] == [t["number"] for t in app.state.data.truth(DEMARCHE)]
    assert api.stats.throttled >= 1 and state["throttled"] == api.stats.throttled, state
    assert state["before_reset"] == 0, state
    assert state["accepted"] == 4, state  # 4 pages, each answered once


def test_wrong_token_or_demarche_fails_with_a_clear_message(url):
    os.environ["AIRFLOW_CONN_DS_BAD"] = ds_conn(url, token="not-the-token")
    with pytest.raises(AuthError, match="refused the token of connection ds_bad.*only persisted queries"):
        ds.fetch_descriptors(ds.client("ds_bad"), DEMARCHE)
    os.environ["AIRFLOW_CONN_DS_NARROW"] = ds_conn(url, token="only-102")
    with pytest.raises(AuthError, match="may not read this démarche"):
        fetch(ds.client("ds_narrow"))
    assert ds.fetch_descriptors(ds.client("ds_narrow"), SMALL)["number"] == SMALL


def test_deleted_dossiers_and_instructeurs(api, url, data):
    number = data.truth(DEMARCHE)[10]["number"]
    requests.post(f"{url}/_sandbox/delete_dossier", json={"number": number}, timeout=10).raise_for_status()
    deleted = ds.fetch_deleted(api, DEMARCHE, "2026-01-01T00:00:00+01:00")
    assert [d["number"] for d in deleted] == [number]
    assert number not in {d["number"] for d in fetch(api)}
    rows = ds.instructeur_rows(ds.fetch_groupes(api, DEMARCHE))
    truth = data.demarches[DEMARCHE].groups
    assert len(rows) == sum(len(g["instructeurs"]) for g in truth)
    assert all(list(row) == [c.id for c in ds.INSTRUCTEUR_COLUMNS] for row in rows)
    assert {(r["groupe_number"], r["email"]) for r in rows} == {
        (g["number"], i["email"]) for g in truth for i in g["instructeurs"]
    }
