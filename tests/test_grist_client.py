"""The Grist client against the Grist sandbox over real HTTP."""

from __future__ import annotations

import json
import threading

import pytest
import requests
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
            "deposited": "2026-01-15",
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


def test_delete_by_key_and_read(client, data):
    client.ensure_schema({"Dossiers": DOSSIERS})
    client.add_or_update("Dossiers", rows(20), key=["number"])

    assert client.delete("Dossiers", "number", [3, 5, 99]) == 2
    numbers = [r["fields"]["number"] for r in client.records("Dossiers")]
    assert numbers == [n for n in range(1, 21) if n not in (3, 5)]
    assert [r["fields"]["number"] for r in client.records("Dossiers", filter={"number": [7, 8]})] == [7, 8]
    assert client.delete("Dossiers", "number", range(1000, 3000)) == 0  # several filter calls, nothing found


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
