"""The Grist sandbox over real HTTP: the behaviours of grist-core that a sync depends on."""

from __future__ import annotations

import json
import threading

import pytest
import requests

from sandbox.grist import DEFAULT_API_KEY, DEFAULT_DOC_ID, MAX_BODY_BYTES

DOC = DEFAULT_DOC_ID


@pytest.fixture(scope="module")
def sandbox():
    from sandbox.common import serve
    from sandbox.grist import create_app

    app = create_app()
    with serve(app) as url:
        yield url, app


@pytest.fixture
def api(url):
    """A session with the API key, and helpers on the document."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {DEFAULT_API_KEY}"
    session.doc = f"{url}/api/docs/{DOC}"
    return session


def make_table(api, table: str, columns: dict[str, str]) -> str:
    body = {"tables": [{"id": table, "columns": [{"id": c, "fields": {"type": t}} for c, t in columns.items()]}]}
    response = api.post(f"{api.doc}/tables", json=body)
    assert response.status_code == 200, response.text
    return response.json()["tables"][0]["id"]


def grist_state(url) -> dict:
    return requests.get(f"{url}/_sandbox/state", timeout=5).json()["grist"]


# ------------------------------------------------------------------------------------------ identifiers


def test_table_and_column_ids_are_normalised_and_an_existing_id_gets_a_number(api, data):
    assert (
        make_table(api, "dossiers", {"first name": "Text", "2x": "Int", "Prénom Ü": "Text", "class": "Text"})
        == "Dossiers"
    )
    assert make_table(api, "dossiers", {}) == "Dossiers2"  # no error: a second table
    assert make_table(api, "my table", {}) == "My_table"
    assert make_table(api, "2024 data", {}) == "T2024_data"
    assert make_table(api, "People1", {}) == "People1"
    assert make_table(api, "people1", {}) == "People1_2"  # ends in a digit: "_2", case-insensitive clash

    columns = api.get(f"{api.doc}/tables/Dossiers/columns").json()["columns"]
    assert [c["id"] for c in columns] == ["first_name", "c2x", "Prenom_U", "cclass"]
    added = api.post(
        f"{api.doc}/tables/Dossiers/columns",
        json={
            "columns": [
                {"id": "first_name", "fields": {"type": "Text"}},
                {"fields": {}},
                {"fields": {"label": "Date de dépôt"}},
                {"id": "id"},
            ]
        },
    )
    assert added.json() == {"columns": [{"id": "first_name2"}, {"id": "A"}, {"id": "Date_de_depot"}, {"id": "id2"}]}
    assert data.tables(DOC) == ["Dossiers", "Dossiers2", "My_table", "T2024_data", "People1", "People1_2"]
    listed = api.get(f"{api.doc}/tables").json()["tables"]
    assert [t["id"] for t in listed] == data.tables(DOC)
    assert listed[0]["fields"]["tableRef"] == 1 and listed[1]["fields"]["tableRef"] == 2


def test_relabelling_a_tied_column_renames_its_id_unless_untied(api, data):
    make_table(api, "T", {"a": "Text", "b": "Text"})
    api.put(f"{api.doc}/tables/T/records", json={"records": [{"require": {"a": "x"}, "fields": {"b": "y"}}]})
    assert (
        api.patch(
            f"{api.doc}/tables/T/columns",
            json={
                "columns": [
                    {"id": "a", "fields": {"label": "Nom complet"}},
                    {"id": "b", "fields": {"label": "Autre", "untieColIdFromLabel": True}},
                ]
            },
        ).status_code
        == 200
    )
    assert list(data.columns(DOC, "T")) == ["Nom_complet", "b"]
    assert data.records(DOC, "T") == [{"id": 1, "fields": {"Nom_complet": "x", "b": "y"}}]
    missing = api.patch(f"{api.doc}/tables/T/columns", json={"columns": [{"id": "zz", "fields": {"label": "Z"}}]})
    assert missing.status_code == 404 and missing.json() == {"error": 'Column not found "zz"'}


# ------------------------------------------------------------------------------------------ add-or-update


def test_put_records_adds_or_updates_and_says_which(api, data):
    make_table(api, "People", {"email": "Text", "name": "Text", "age": "Int"})
    first = api.put(
        f"{api.doc}/tables/People/records",
        json={
            "records": [
                {"require": {"email": "a@x"}, "fields": {"name": "Ann", "age": 30}},
                {"require": {"email": "b@x"}, "fields": {"name": "Bob"}},
            ]
        },
    )
    assert first.status_code == 200
    assert first.json() == {"recordIds": [[1], [2]], "addRecordIds": [1, 2], "updateRecordIds": []}

    second = api.put(
        f"{api.doc}/tables/People/records",
        json={
            "records": [
                {"require": {"email": "b@x"}, "fields": {"name": "Bobby"}},
                {"require": {"email": "c@x"}, "fields": {"name": "Cy", "email": "ignored@x"}},  # fields win on add
            ]
        },
    )
    assert second.json() == {"recordIds": [[2], [3]], "addRecordIds": [3], "updateRecordIds": [[2]]}
    assert [r["fields"] for r in data.records(DOC, "People")] == [
        {"email": "a@x", "name": "Ann", "age": 30},
        {"email": "b@x", "name": "Bobby", "age": 0},  # age never written: the Int default
        {"email": "ignored@x", "name": "Cy", "age": 0},
    ]

    # Several matches: the first only by default, all with onmany=all, none with onmany=none.
    api.put(f"{api.doc}/tables/People/records", json={"records": [{"require": {"age": 0}, "fields": {"name": "Z"}}]})
    assert [r["fields"]["name"] for r in data.records(DOC, "People")] == ["Ann", "Z", "Cy"]
    everyone = api.put(
        f"{api.doc}/tables/People/records",
        params={"onmany": "all"},
        json={"records": [{"require": {"age": 0}, "fields": {"name": "W"}}]},
    )
    assert everyone.json()["updateRecordIds"] == [[2, 3]]
    nobody = api.put(
        f"{api.doc}/tables/People/records",
        params={"onmany": "none"},
        json={"records": [{"require": {"age": 0}, "fields": {"name": "V"}}]},
    )
    assert nobody.json() == {"recordIds": [[]], "addRecordIds": [], "updateRecordIds": []}

    # noadd / noupdate.
    no_add = api.put(
        f"{api.doc}/tables/People/records",
        params={"noadd": "true"},
        json={"records": [{"require": {"email": "new@x"}, "fields": {"name": "N"}}]},
    )
    assert no_add.json()["addRecordIds"] == [] and len(data.records(DOC, "People")) == 3
    no_update = api.put(
        f"{api.doc}/tables/People/records",
        params={"noupdate": "1"},
        json={"records": [{"require": {"email": "a@x"}, "fields": {"name": "Changed"}}]},
    )
    assert no_update.json()["updateRecordIds"] == [] and data.records(DOC, "People")[0]["fields"]["name"] == "Ann"


def test_put_records_refusals(api, data):
    make_table(api, "People", {"email": "Text", "name": "Text"})
    url = f"{api.doc}/tables/People/records"

    empty = api.put(url, json={"records": [{"require": {}, "fields": {"name": "all"}}]})
    assert empty.status_code == 400 and empty.json()["error"].startswith("[Sandbox]")
    unknown = api.put(url, json={"records": [{"require": {"mail": "a"}, "fields": {"name": "x"}}]})
    assert unknown.status_code == 400 and unknown.json() == {"error": 'Invalid column "mail"'}
    twice = api.put(
        url,
        json={
            "records": [
                {"require": {"email": "a"}, "fields": {"name": "1"}},
                {"require": {"email": "a"}, "fields": {"name": "2"}},
            ]
        },
    )
    assert twice.status_code == 400 and "require values must be unique" in twice.json()["error"]
    for body in ({}, {"records": []}, {"records": [{"fields": {"name": "no require"}}]}):
        refused = api.put(url, json=body)
        assert refused.status_code == 400 and refused.json()["error"] == "Invalid payload"
    assert data.records(DOC, "People") == []

    api.post(url, json={"records": [{"fields": {"name": "p"}}, {"fields": {"name": "q"}}]})
    every = {"records": [{"require": {}, "fields": {"name": "r"}}]}  # matches every row; onmany still applies
    assert api.put(url, params={"allow_empty_require": "true"}, json=every).status_code == 200
    assert [r["fields"]["name"] for r in data.records(DOC, "People")] == ["r", "q"]
    api.put(url, params={"allow_empty_require": "true", "onmany": "all"}, json=every)
    assert [r["fields"]["name"] for r in data.records(DOC, "People")] == ["r", "r"]


def test_put_records_answers_null_like_servers_before_1_7_13():
    from sandbox.common import serve
    from sandbox.grist import create_app

    with serve(create_app(upsert_returns_ids=False)) as url:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {DEFAULT_API_KEY}"
        session.doc = f"{url}/api/docs/{DOC}"
        make_table(session, "T", {"k": "Int"})
        answer = session.put(f"{session.doc}/tables/T/records", json={"records": [{"require": {"k": 1}}]})
        assert answer.status_code == 200 and answer.content == b"null"


# ------------------------------------------------------------------------------------------ columns


def test_put_columns_updates_adds_and_with_replaceall_removes_the_rest(api, data):
    make_table(api, "T", {"a": "Text", "b": "Text", "c": "Int"})
    url = f"{api.doc}/tables/T/columns"
    answer = api.put(
        url, json={"columns": [{"id": "c", "fields": {"type": "Numeric"}}, {"id": "d", "fields": {"type": "Bool"}}]}
    )
    assert answer.status_code == 200 and answer.content == b"null"
    assert {k: v["type"] for k, v in data.columns(DOC, "T").items()} == {
        "a": "Text",
        "b": "Text",
        "c": "Numeric",
        "d": "Bool",
    }

    api.put(url, params={"noadd": "true"}, json={"columns": [{"id": "e", "fields": {"type": "Text"}}]})
    assert "e" not in data.columns(DOC, "T")
    api.put(url, params={"noupdate": "true"}, json={"columns": [{"id": "a", "fields": {"type": "Int"}}]})
    assert data.columns(DOC, "T")["a"]["type"] == "Text"

    api.put(
        url,
        params={"replaceall": "true"},
        json={"columns": [{"id": "a", "fields": {"type": "Text"}}, {"id": "f", "fields": {"type": "Date"}}]},
    )
    assert list(data.columns(DOC, "T")) == ["a", "f"]  # b, c, d removed; manualSort (hidden) kept
    hidden = api.get(url, params={"hidden": "true"}).json()["columns"]
    assert [c["id"] for c in hidden] == ["manualSort", "a", "f"]
    assert api.delete(f"{url}/f").status_code == 200 and list(data.columns(DOC, "T")) == ["a"]
    assert api.delete(f"{url}/nope").json() == {"error": 'Invalid column "nope"'}


# ------------------------------------------------------------------------------------------ limits


def test_a_body_over_1_mb_is_refused_with_413_and_writes_nothing(api, url, data):
    make_table(api, "T", {"t": "Text"})

    def body(total: int) -> bytes:
        envelope = len(b'{"records":[{"fields":{"t":""}}]}')
        return json.dumps({"records": [{"fields": {"t": "x" * (total - envelope)}}]}, separators=(",", ":")).encode()

    headers = {"Content-Type": "application/json"}
    over = api.post(f"{api.doc}/tables/T/records", data=body(MAX_BODY_BYTES + 1), headers=headers)
    assert over.status_code == 413 and over.json() == {"error": "request entity too large"}
    assert data.records(DOC, "T") == []
    at_limit = api.post(f"{api.doc}/tables/T/records", data=body(MAX_BODY_BYTES), headers=headers)
    assert at_limit.status_code == 200 and len(data.records(DOC, "T")) == 1
    assert grist_state(url)["status_413"] == 1


def test_the_eleventh_request_in_flight_on_a_document_gets_429(api, url, sandbox):
    make_table(api, "T", {"t": "Text"})
    requests.post(f"{url}/_sandbox/faults", json={"latency": 0.6}, timeout=5).raise_for_status()
    start, answers = threading.Barrier(11), []

    def get():
        start.wait()
        answers.append(api.get(f"{api.doc}/tables/T/records", timeout=10))

    threads = [threading.Thread(target=get) for _ in range(11)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    refused = [a for a in answers if a.status_code == 429]
    assert sorted(a.status_code for a in answers) == [200] * 10 + [429]
    assert refused[0].json() == {"error": f"Too many backlogged requests for document {DOC} - try again later?"}
    assert "Retry-After" not in refused[0].headers
    state = grist_state(url)
    assert state["status_429"] == 1 and state["max_in_flight"] == 11 and state["in_flight"] == 0


def test_a_body_without_json_content_type_is_ignored(api, url, data):
    make_table(api, "T", {"t": "Text"})
    body = json.dumps({"records": [{"fields": {"t": "x"}}]})
    as_text = api.post(f"{api.doc}/tables/T/records", data=body, headers={"Content-Type": "text/plain"})
    assert as_text.status_code == 400 and as_text.json()["error"] == "Invalid payload"
    untyped = api.post(f"{api.doc}/tables/T/records", data=body.encode())  # requests sends no Content-Type
    assert untyped.status_code == 400
    huge = api.post(
        f"{api.doc}/tables/T/records", data="x" * (2 * MAX_BODY_BYTES), headers={"Content-Type": "text/plain"}
    )
    assert huge.status_code == 400  # never read, so never too large
    with_charset = api.post(
        f"{api.doc}/tables/T/records", data=body, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert with_charset.status_code == 200 and data.records(DOC, "T") == [{"id": 1, "fields": {"t": "x"}}]
    anonymous = requests.post(f"{api.doc}/tables/T/records", data=body, timeout=5)
    assert anonymous.status_code == 401 and anonymous.json()["error"].startswith("Unauthenticated requests")


def test_authentication_and_not_found_errors(api, url):
    make_table(api, "T", {"t": "Text"})
    tables = f"{api.doc}/tables"
    bad = requests.get(tables, headers={"Authorization": "Bearer wrong-key"}, timeout=5)
    assert bad.status_code == 401 and bad.json() == {"error": "Bad request: invalid API key"}
    basic = requests.get(tables, headers={"Authorization": f"Basic {DEFAULT_API_KEY}"}, timeout=5)
    assert basic.status_code == 401 and "expected 'Bearer'" in basic.json()["error"]
    anonymous = requests.get(tables, timeout=5)
    assert anonymous.status_code == 403 and anonymous.json()["error"] == "No view access"
    assert api.get(f"{url}/api/docs/nodoc/tables").json() == {"error": "document not found"}
    missing = api.get(f"{api.doc}/tables/Nope/records")
    assert missing.status_code == 404 and missing.json() == {"error": 'Table not found "Nope"'}
    by_ref = api.get(f"{api.doc}/tables/1/records")  # the numeric tableRef works too
    assert by_ref.status_code == 200
    route = api.get(f"{url}/api/nothing/here")
    assert route.status_code == 404 and route.json() == {"error": "not found: /api/nothing/here"}
    assert grist_state(url)["unauthorized"] == 3


# ------------------------------------------------------------------------------------------ cell values


def test_cell_values_are_stored_per_column_type(api, data):
    types = {
        "text": "Text",
        "num": "Numeric",
        "int": "Int",
        "flag": "Bool",
        "day": "Date",
        "at": "DateTime:Europe/Paris",
        "choice": "Choice",
        "tags": "ChoiceList",
        "ref": "Ref:Other",
        "files": "Attachments",
        "any": "Any",
    }
    make_table(api, "Other", {"x": "Text"})
    make_table(api, "Cells", types)
    rows = [
        {
            "text": 5,
            "num": "1,234.5",
            "int": "41",
            "flag": "yes",
            "day": "2024-01-31",
            "at": "2024-01-31T10:00:00",
            "choice": "New",
            "tags": ["L", "a", "b"],
            "ref": 3,
            "files": ["L", 1, 2],
            "any": {"k": 1},
        },
        {
            "text": "t",
            "num": 2,
            "int": 3.7,
            "flag": 1,
            "day": 1706659200,
            "at": "2024-01-31T10:00:00Z",
            "choice": "Not a choice",
            "tags": "a, c",
            "ref": None,
            "files": ["L"],
            "any": ["L", 1],
        },
        {
            "text": "t",
            "num": "n/a",
            "int": "abc",
            "flag": "maybe",
            "day": "someday",
            "at": None,
            "choice": "",
            "tags": [],
            "ref": "2",
            "files": None,
            "any": None,
        },
        {"text": "only text"},  # the other columns take their defaults
    ]
    answer = api.post(f"{api.doc}/tables/Cells/records", json={"records": [{"fields": r} for r in rows[:3]]})
    assert answer.json() == {"records": [{"id": 1}, {"id": 2}, {"id": 3}]}
    api.post(f"{api.doc}/tables/Cells/records", json={"records": [{"fields": rows[3]}]})

    stored = [r["fields"] for r in data.records(DOC, "Cells")]
    assert stored[0] == {
        "text": "5",
        "num": 1234.5,
        "int": 41,
        "flag": True,
        "day": 1706659200,
        "at": 1706691600,
        "choice": "New",
        "tags": ["L", "a", "b"],
        "ref": 3,
        "files": ["L", 1, 2],
        "any": {"k": 1},
    }
    assert stored[1] == {
        "text": "t",
        "num": 2,
        "int": 3,
        "flag": True,
        "day": 1706659200,
        "at": 1706695200,
        "choice": "Not a choice",
        "tags": ["L", "a", "c"],
        "ref": 0,
        "files": None,
        "any": ["L", 1],
    }
    # What does not fit is kept as sent (no error); empty lists read back null.
    assert stored[2] == {
        "text": "t",
        "num": "n/a",
        "int": "abc",
        "flag": "maybe",
        "day": "someday",
        "at": None,
        "choice": "",
        "tags": None,
        "ref": 2,
        "files": None,
        "any": None,
    }
    assert stored[3] == {
        "text": "only text",
        "num": 0,
        "int": 0,
        "flag": False,
        "day": None,
        "at": None,
        "choice": "",
        "tags": None,
        "ref": 0,
        "files": None,
        "any": None,
    }
    assert api.get(f"{api.doc}/tables/Cells/records", params={"filter": '{"id": [1]}'}).json()["records"][0] == {
        "id": 1,
        "fields": stored[0],
    }

    # noparse: strings stay strings.
    api.post(
        f"{api.doc}/tables/Cells/records",
        params={"noparse": "true"},
        json={"records": [{"fields": {"int": "41", "day": "2024-01-31", "tags": "a, b", "flag": "yes"}}]},
    )
    raw = data.records(DOC, "Cells")[-1]["fields"]
    assert (raw["int"], raw["day"], raw["tags"], raw["flag"]) == ("41", "2024-01-31", "a, b", "yes")


def test_records_with_different_fields_in_one_post_get_null_for_what_they_omit(api, data):
    make_table(api, "T", {"a": "Text", "b": "Int"})
    api.post(f"{api.doc}/tables/T/records", json={"records": [{"fields": {"a": "x"}}, {"fields": {"b": 2}}]})
    assert [r["fields"] for r in data.records(DOC, "T")] == [{"a": "x", "b": None}, {"a": None, "b": 2}]


# ------------------------------------------------------------------------------------------ reads, updates, deletes


def test_get_records_filter_sort_limit(api):
    make_table(api, "T", {"name": "Text", "n": "Int"})
    api.post(
        f"{api.doc}/tables/T/records",
        json={"records": [{"fields": {"name": x, "n": n}} for x, n in (("b", 2), ("a", 3), ("c", 1), ("a", 1))]},
    )
    url = f"{api.doc}/tables/T/records"

    def names(**params):
        answer = api.get(url, params={k: v for k, v in params.items() if k != "headers"}, headers=params.get("headers"))
        return [(r["fields"]["name"], r["fields"]["n"]) for r in answer.json()["records"]]

    assert names(filter=json.dumps({"name": ["a", "c"]})) == [("a", 3), ("c", 1), ("a", 1)]
    assert names(filter=json.dumps({"name": ["a"], "n": [1]})) == [("a", 1)]
    assert names(sort="name,-n") == [("a", 3), ("a", 1), ("b", 2), ("c", 1)]
    assert names(sort="-n", limit="2") == [("a", 3), ("b", 2)]
    assert names(limit="0") == names()
    assert names(headers={"X-Sort": "n,name", "X-Limit": "1"}) == [("a", 1)]
    bad = api.get(url, params={"filter": json.dumps({"name": "a"})})
    assert bad.status_code == 400 and bad.json() == {"error": "Invalid query: filter values must be arrays"}
    assert "manualSort" in api.get(url, params={"hidden": "true"}).json()["records"][0]["fields"]
    assert "manualSort" not in api.get(url).json()["records"][0]["fields"]


def test_patch_and_delete_records(api, data):
    make_table(api, "T", {"a": "Text", "b": "Int"})
    api.post(f"{api.doc}/tables/T/records", json={"records": [{"fields": {"a": x}} for x in "pqrs"]})
    url = f"{api.doc}/tables/T/records"

    assert api.patch(url, json={"records": [{"id": 1, "fields": {"a": "P", "b": 1}}]}).content == b"null"
    mixed = api.patch(url, json={"records": [{"id": 2, "fields": {"a": "Q"}}, {"id": 3, "fields": {"b": 3}}]})
    assert mixed.status_code == 400 and "same fields" in mixed.json()["error"]
    ghost = api.patch(url, json={"records": [{"id": 99, "fields": {"a": "?"}}]})
    assert ghost.status_code == 400 and ghost.json() == {"error": "Invalid row id 99"}

    assert api.post(f"{url}/delete", json=[2]).content == b"null"
    assert api.post(f"{api.doc}/tables/T/data/delete", json=[3]).status_code == 200
    assert api.post(f"{url}/delete", json=[99]).json() == {"error": "Invalid row id 99"}
    assert [(r["id"], r["fields"]["a"]) for r in data.records(DOC, "T")] == [(1, "P"), (4, "s")]
    assert api.post(f"{api.doc}/apply", json=[["RemoveTable", "T"]]).status_code == 200
    assert data.tables(DOC) == []


# ------------------------------------------------------------------------------------------ controls and counters


def test_controls_a_person_adds_a_column_and_edits_a_cell_and_the_counters(api, url, data):
    make_table(api, "T", {"a": "Text"})
    api.put(f"{api.doc}/tables/T/records", json={"records": [{"require": {"a": "x"}}]})
    added = requests.post(
        f"{url}/_sandbox/docs/{DOC}/tables/T/columns", json={"id": "Notes perso", "fields": {"type": "Text"}}, timeout=5
    )
    assert added.json() == {"id": "Notes_perso"}
    requests.post(f"{url}/_sandbox/docs/{DOC}/tables/T/records/1", json={"Notes_perso": "à rappeler"}, timeout=5)
    assert data.records(DOC, "T") == [{"id": 1, "fields": {"a": "x", "Notes_perso": "à rappeler"}}]

    state = grist_state(url)
    assert state["endpoints"] == {"POST tables": 1, "PUT records": 1} and state["writes"] == 2
    assert state["rows_written"] == 1  # the controls are not API calls

    requests.post(f"{url}/_sandbox/reset", timeout=5).raise_for_status()
    assert data.tables(DOC) == [] and grist_state(url)["writes"] == 0
    other = requests.post(f"{url}/_sandbox/docs", json={"id": "otherDoc"}, timeout=5).json()
    assert api.get(f"{url}/api/docs/{other['id']}/tables").json() == {"tables": []}
