"""The Grist client against the Grist sandbox over real HTTP."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import jsonschema
import pytest
import requests
import yaml
from usersync.api import AuthError
from usersync.grist import Column, GristClient, batches, grist_id

from sandbox.grist import DEFAULT_API_KEY, DEFAULT_DOC_ID

DOC = DEFAULT_DOC_ID
DOSSIERS = [
    Column("number", "Int", "Numéro"),
    Column("state", "Choice", "État", choices=("en_construction", "accepte")),
    Column("labels", "ChoiceList", choices=("urgent",)),
    Column("deposited", "Date"),
    Column("text", "Text"),
]


@pytest.fixture(scope="module")
def sandbox():
    from sandbox.common import serve
    from sandbox.grist import create_app

    app = create_app()
    with serve(app) as url:
        yield url, app


def grist_conn(url: str, key: str = DEFAULT_API_KEY) -> str:
    return json.dumps(
        {
            "conn_type": "http",
            "host": url,
            "password": key,
            "extra": {"backoff": "0.05", "max_retries": "3", "timeout": 30},
        }
    )


@pytest.fixture
def client(url, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_GRIST_API", grist_conn(url))
    return GristClient("grist_api", DOC)


def state(url) -> dict:
    return requests.get(f"{url}/_sandbox/state", timeout=5).json()["grist"]


def by_hand(url: str, method: str, path: str, body: dict) -> None:
    """What a person does in the Grist UI (the same API calls)."""
    requests.request(
        method,
        f"{url}/api/docs/{DOC}/tables/Dossiers/{path}",
        json=body,
        timeout=5,
        headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"},
    ).raise_for_status()


def rows(n: int, text_bytes: int = 10, start: int = 1) -> list[dict]:
    return [
        {
            "number": i,
            "state": "accepte" if i % 3 else "en_construction",
            "labels": ["L", "urgent"],
            "deposited": 1768435200,  # Grist's encoding of 2026-01-15 (sent with noparse)
            "text": f"dossier {i} " + "é" * (text_bytes // 2),
        }
        for i in range(start, start + n)
    ]


def test_grist_ids():
    assert grist_id("dossiers", table=True) == "Dossiers"
    assert grist_id("Prénom Ü") == "Prenom_U"
    assert grist_id("2x") == "c2x" and grist_id("2x", table=True) == "T2x"
    assert grist_id("class") == "cclass"


def test_batches_measure_the_encoded_body():
    records = [{"require": {"k": i}, "fields": {"t": "é" * 100}} for i in range(50)]
    chunks = list(batches(records, max_bytes=2000))
    assert [r for _, chunk in chunks for r in chunk] == records
    assert all(0 < len(body) <= 2000 for body, _ in chunks)
    assert all(json.loads(body) == {"records": chunk} for body, chunk in chunks)
    assert len(chunks) == len(list(batches(records, max_bytes=2000 + 1)))  # tight: 2,000 bytes fill up
    huge = {"require": {"k": 0}, "fields": {"t": "x" * 3000}}
    assert list(batches([huge], max_bytes=2000)) == [(b"", [huge])]


def test_a_5000_row_first_load_stays_under_1_mb_and_10_in_flight(client, url, data, sandbox):
    client.ensure_schema({"Dossiers": DOSSIERS})
    # Each call spends 0.5 s in the document: the client's calls overlap as much as it lets them.
    requests.post(f"{url}/_sandbox/faults", json={"latency": 0.5}, timeout=5).raise_for_status()
    sent = rows(5000, text_bytes=2000)  # ~2 KB a row: ~11 MB in all

    result = client.add_or_update("Dossiers", sent, key=["number"])

    assert result.calls >= 11 and result.rows == 5000 and result.too_large == []
    assert result.added == 5000 and result.updated == 0
    assert result.max_body_bytes <= 1_000_000
    seen = state(url)
    assert seen["status_413"] == 0 and seen["status_429"] == 0
    assert 1 < seen["max_in_flight"] <= 10  # calls overlapped, never past the limit
    assert seen["endpoints"]["PUT records"] == result.calls
    stored = {r["fields"]["number"]: r["fields"] for r in data.records(DOC, "Dossiers")}
    assert len(stored) == 5000
    assert stored[7] == {
        "number": 7,
        "state": "accepte",
        "labels": ["L", "urgent"],
        "deposited": 1768435200,
        "text": sent[6]["text"],
    }


def test_clients_of_one_document_share_its_in_flight_limit(url, data, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_GRIST_API", grist_conn(url))
    first, second = GristClient("grist_api", DOC), GristClient("grist_api", DOC)
    first.ensure_schema({"Dossiers": DOSSIERS})
    requests.post(f"{url}/_sandbox/faults", json={"latency": 0.5}, timeout=5).raise_for_status()
    results = {}

    def load(name, client, start):
        results[name] = client.add_or_update("Dossiers", rows(3000, 2000, start), key=["number"])

    threads = [
        threading.Thread(target=load, args=("a", first, 1)),
        threading.Thread(target=load, args=("b", second, 5001)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results["a"].rows == results["b"].rows == 3000
    assert results["a"].calls + results["b"].calls > 10
    seen = state(url)
    assert seen["status_429"] == 0 and 1 < seen["max_in_flight"] <= 10
    assert len(data.records(DOC, "Dossiers")) == 6000


def test_schema_evolution_adds_what_is_declared_and_keeps_a_hand_added_column(client, url, data):
    created = client.ensure_schema({"Dossiers": DOSSIERS[:3]})
    assert created.tables_created == ["Dossiers"]
    assert created.columns_added == {"Dossiers": ["number", "state", "labels"]}
    columns = data.columns(DOC, "Dossiers")
    assert columns["number"]["label"] == "Numéro" and columns["number"]["untieColIdFromLabel"] is True
    assert json.loads(columns["state"]["widgetOptions"]) == {"choices": ["en_construction", "accepte"]}
    client.add_or_update("Dossiers", [{"number": 1, "state": "accepte"}], key=["number"])

    # A person adds a column and fills it, and adds a choice with a colour.
    requests.post(
        f"{url}/_sandbox/docs/{DOC}/tables/Dossiers/columns",
        json={"id": "notes", "fields": {"type": "Text"}},
        timeout=5,
    ).raise_for_status()
    requests.post(
        f"{url}/_sandbox/docs/{DOC}/tables/Dossiers/records/1", json={"notes": "rappeler"}, timeout=5
    ).raise_for_status()
    person = json.dumps(
        {"choices": ["en_construction", "accepte", "a_revoir"], "choiceOptions": {"accepte": {"fillColor": "#00FF00"}}}
    )
    by_hand(url, "PATCH", "columns", {"columns": [{"id": "state", "fields": {"widgetOptions": person}}]})

    # The démarche gains fields and a choice.
    declared = [*DOSSIERS, Column("state", "Choice", choices=("en_construction", "accepte", "refuse"))]
    declared = [c for i, c in enumerate(declared) if c.id != "state" or i == len(declared) - 1]
    changes = client.ensure_schema({"Dossiers": declared})

    assert changes.tables_created == []
    assert changes.columns_added == {"Dossiers": ["deposited", "text"]}
    assert changes.choices_added == {"Dossiers.state": ["refuse"]}
    assert changes.undeclared == {"Dossiers": ["notes"]}
    assert changes.type_conflicts == {}
    columns = data.columns(DOC, "Dossiers")
    assert list(columns) == ["number", "state", "labels", "notes", "deposited", "text"]
    assert columns["deposited"]["type"] == "Date"
    assert json.loads(columns["state"]["widgetOptions"]) == {
        "choices": ["en_construction", "accepte", "a_revoir", "refuse"],
        "choiceOptions": {"accepte": {"fillColor": "#00FF00"}},
    }
    assert data.records(DOC, "Dossiers")[0]["fields"]["notes"] == "rappeler"

    # In step: nothing more is written. A column a person retyped is reported, not retyped back.
    writes = state(url)["writes"]
    assert not client.ensure_schema({"Dossiers": declared}).changed
    assert state(url)["writes"] == writes
    by_hand(url, "PATCH", "columns", {"columns": [{"id": "text", "fields": {"type": "Any"}}]})
    conflicts = client.ensure_schema({"Dossiers": declared}).type_conflicts
    assert conflicts == {"Dossiers.text": ("Text", "Any")}
    assert data.columns(DOC, "Dossiers")["text"]["type"] == "Any"


def test_declared_ids_must_be_grist_ids(client, data):
    with pytest.raises(ValueError, match="Grist would call it 'Dossiers'"):
        client.ensure_schema({"dossiers": []})
    with pytest.raises(ValueError, match="'Prenom_U'"):
        client.ensure_schema({"Dossiers": [Column("Prénom Ü")]})
    assert data.tables(DOC) == []


def test_add_or_update_is_idempotent_and_rewrites_only_what_it_is_given(client, url, data):
    client.ensure_schema({"Dossiers": DOSSIERS})
    first = client.add_or_update("Dossiers", rows(300), key=["number"])
    before = data.records(DOC, "Dossiers")

    again = client.add_or_update("Dossiers", rows(300), key=["number"])

    assert (first.added, first.updated, again.added, again.updated) == (300, 0, 0, 300)
    assert data.records(DOC, "Dossiers") == before
    changed = [{**r, "text": "changed"} for r in rows(3, start=10)]
    third = client.add_or_update("Dossiers", changed, key=["number"])
    assert (third.added, third.updated) == (0, 3)
    assert [r["fields"]["number"] for r in data.records(DOC, "Dossiers") if r["fields"]["text"] == "changed"] == [
        10,
        11,
        12,
    ]
    assert len(data.records(DOC, "Dossiers")) == 300


def test_rows_repeating_a_key_in_one_call_keep_the_last(client, data):
    client.ensure_schema({"Dossiers": DOSSIERS})
    result = client.add_or_update(
        "Dossiers", [{"number": 1, "text": "old"}, {"number": 1, "text": "new"}], key=["number"]
    )
    assert result.added == 1 and [r["fields"]["text"] for r in data.records(DOC, "Dossiers")] == ["new"]


def test_delete_by_key_and_read(client, data, url):
    client.ensure_schema({"Dossiers": DOSSIERS})
    client.add_or_update("Dossiers", rows(20), key=["number"])

    assert client.delete("Dossiers", [{"number": n} for n in (3, 5, 99)]) == 2
    numbers = [r["fields"]["number"] for r in client.records("Dossiers")]
    assert numbers == [n for n in range(1, 21) if n not in (3, 5)]
    assert [r["fields"]["number"] for r in client.records("Dossiers", filter={"number": [7, 8]})] == [7, 8]
    calls = state(url)["endpoints"].get("GET records", 0)
    assert client.delete("Dossiers", [{"number": n} for n in range(1000, 3000)]) == 0
    assert state(url)["endpoints"]["GET records"] - calls > 1  # the filter split over several URLs
    # A key of two columns: only the records matching both values of one key go.
    client.add_or_update("Dossiers", [{"number": n, "text": t} for n, t in ((7, "a"), (8, "b"))], key=["number"])
    assert client.delete("Dossiers", [{"number": 7, "text": "b"}, {"number": 8, "text": "b"}]) == 1
    assert [r["fields"]["number"] for r in client.records("Dossiers", filter={"number": [7, 8]})] == [7]


def test_a_wrong_key_fails_with_a_clear_message_and_writes_nothing(url, data, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_GRIST_API", grist_conn(url, key="not-the-key-s3cr3t"))
    client = GristClient("grist_api", DOC)
    with pytest.raises(AuthError, match="refused the API key of connection grist_api") as refused:
        client.ensure_schema({"Dossiers": DOSSIERS})
    assert "not-the-key-s3cr3t" not in str(refused.value)
    assert data.tables(DOC) == [] and state(url)["writes"] == 0
    assert state(url)["unauthorized"] == 1  # no retry: a key cannot be renewed


def test_a_missing_document_or_key_is_named(url, monkeypatch):
    from usersync.api import ApiError

    monkeypatch.setenv("AIRFLOW_CONN_GRIST_API", grist_conn(url))
    with pytest.raises(ApiError, match="Grist has no document nodoc"):
        GristClient("grist_api", "nodoc").tables()
    monkeypatch.setenv("AIRFLOW_CONN_GRIST_API", grist_conn(url, key=""))
    with pytest.raises(AuthError, match="has no password"):
        GristClient("grist_api", DOC)


def test_an_old_server_that_answers_null(monkeypatch):
    from sandbox.common import serve
    from sandbox.grist import create_app

    with serve(create_app(upsert_returns_ids=False)) as url:
        monkeypatch.setenv("AIRFLOW_CONN_GRIST_API", grist_conn(url))
        client = GristClient("grist_api", DOC)
        client.ensure_schema({"Dossiers": DOSSIERS})
        result = client.add_or_update("Dossiers", rows(10), key=["number"])
        assert (result.rows, result.added, result.updated) == (10, None, None)
        assert len(client.records("Dossiers")) == 10


def test_writes_whose_answer_was_lost_are_retried_without_duplicates(client, url, data):
    requests.post(f"{url}/_sandbox/faults", json={"lost_answers": 1}, timeout=5).raise_for_status()
    changes = client.ensure_schema({"Dossiers": DOSSIERS})  # applied, 502, retried: Dossiers2 made, removed
    assert changes.tables_created == ["Dossiers"] and data.tables(DOC) == ["Dossiers"]

    requests.post(f"{url}/_sandbox/faults", json={"lost_answers": 2}, timeout=5).raise_for_status()
    client.add_or_update("Dossiers", rows(50), key=["number"])  # add-or-update is idempotent
    client.ensure_schema({"Dossiers": [*DOSSIERS, Column("extra", "Int")]})  # PUT columns?noupdate too
    assert [r["fields"]["number"] for r in data.records(DOC, "Dossiers")] == list(range(1, 51))
    assert list(data.columns(DOC, "Dossiers"))[-1:] == ["extra"]
    assert client.api.stats.retries == 3


# ---------------------------------------------------------------------------------------------- OpenAPI

OPENAPI = yaml.safe_load((Path(__file__).resolve().parents[1] / "sandbox" / "grist_spec" / "grist.yml").read_text())


def _resolved(node: dict) -> dict:
    while "$ref" in node:
        target = OPENAPI
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def check_against_openapi(method: str, path: str, params: dict | None, body: bytes | None, headers, answer) -> None:
    """One call as the client sent it, and Grist's answer, against grist.yml: the operation exists, every query
    parameter is declared with a valid value, the body and the answer validate against their schemas."""
    operations = [
        item[method.lower()]
        for template, item in OPENAPI["paths"].items()
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path) and method.lower() in item
    ]
    assert len(operations) == 1, f"{method} {path} is not one operation of grist.yml"
    operation = operations[0]
    declared = {p["name"]: p["schema"] for p in map(_resolved, operation.get("parameters", [])) if p["in"] == "query"}
    for name, value in (params or {}).items():
        assert name in declared, f"{method} {path}: no query parameter {name!r} in grist.yml"
        schema = declared[name]
        if schema.get("type") == "boolean":
            assert value in ("true", "false"), f"{name}={value!r} is no boolean"
        if "enum" in schema:
            assert value in schema["enum"], f"{name}={value!r}"

    def valid(document, schema: dict) -> None:
        jsonschema.Draft4Validator({**schema, "components": OPENAPI["components"]}).validate(document)

    request_body = operation.get("requestBody")
    if body is None:
        assert not (request_body or {}).get("required"), f"{method} {path} needs a body"
    else:
        assert request_body, f"{method} {path} takes no body"
        assert (headers or {}).get("Content-Type") == "application/json"
        valid(json.loads(body), request_body["content"]["application/json"]["schema"])
    content = (operation["responses"].get(200) or operation["responses"].get("200") or {}).get("content")
    if content:  # an empty RefList (recalcDeps) reads back null, which grist.yml's schemas do not allow for
        valid(_without_nulls(answer), content["application/json"]["schema"])


def _without_nulls(value):
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def test_every_call_the_client_makes_follows_grists_openapi(client, url):
    calls = []
    fetch = client.api.fetch_json

    def recording(method, path, *, data=None, params=None, headers=None):
        answer, response = fetch(method, path, data=data, params=params, headers=headers)
        calls.append((method, path.removeprefix("/api"), params, data, headers, answer))
        return answer, response

    client.api.fetch_json = recording
    client.ensure_schema({"Dossiers": DOSSIERS[:2], "Notes": [Column("number", "Int")]})  # POST tables
    widened = [DOSSIERS[0], Column("state", "Choice", choices=("en_construction", "accepte", "refuse")), *DOSSIERS[2:]]
    client.ensure_schema({"Dossiers": widened})  # PUT columns (added), PATCH columns (choices)
    client.add_or_update("Dossiers", rows(30), key=["number"])  # PUT records: adds
    client.add_or_update("Dossiers", rows(5, text_bytes=3), key=["number"])  # and updates
    client.records("Dossiers", filter={"number": [1, 2]}, sort="-number", hidden=True)
    assert client.delete("Dossiers", [{"number": 3}, {"number": 4}]) == 2
    sent = {(method, re.sub(r"^/docs/[^/]+", "", path)) for method, path, *_ in calls}
    assert sent == {
        ("GET", "/tables"),
        ("POST", "/tables"),
        ("GET", "/tables/Dossiers/columns"),
        ("PUT", "/tables/Dossiers/columns"),
        ("PATCH", "/tables/Dossiers/columns"),
        ("PUT", "/tables/Dossiers/records"),
        ("GET", "/tables/Dossiers/records"),
        ("POST", "/tables/Dossiers/data/delete"),
    }
    for call in calls:
        check_against_openapi(*call)
    puts = [c for c in calls if c[0] == "PUT" and c[1].endswith("/records")]
    assert all(params == {"noparse": "true"} for _, _, params, *_ in puts)  # cells go in Grist's encoding
    for _, _, _, body, _, answer in puts:  # grist-core >= 1.7.13 answers with the ids, in the records' order
        records = json.loads(body)["records"]
        assert set(answer) == {"recordIds", "addRecordIds", "updateRecordIds"} and len(answer["recordIds"]) == len(
            records
        )
        assert all(r.keys() == {"require", "fields"} and list(r["require"]) == ["number"] for r in records)


def test_the_openapi_check_catches_what_grist_yml_does_not_allow():
    with pytest.raises(AssertionError, match="no query parameter 'onmay'"):
        check_against_openapi("PUT", "/docs/d/tables/T/records", {"onmay": "all"}, None, None, None)
    with pytest.raises(AssertionError, match="onmany='some'"):
        check_against_openapi("PUT", "/docs/d/tables/T/records", {"onmany": "some"}, None, None, None)
    with pytest.raises(jsonschema.ValidationError, match="'require' is a required property"):
        body = json.dumps({"records": [{"fields": {"a": 1}}]}).encode()
        check_against_openapi("PUT", "/docs/d/tables/T/records", None, body, {"Content-Type": "application/json"}, None)
    with pytest.raises(AssertionError, match="is not one operation"):
        check_against_openapi("POST", "/docs/d/tables/T/records/delete", None, b"[1]", None, None)
