"""The Gazelle private-API sandbox (GraphQL on Gazelle's real schema), over real HTTP (sandbox.common.serve +
requests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest
import requests

from sandbox.common import Sandbox, serve
from sandbox.gazelle import (
    DEFAULT_API_KEY,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_REFRESH_TOKEN,
    ROOT_FIELDS,
    GazelleData,
    GazelleFaults,
    create_app,
    decode_cursor,
    encode_cursor,
)

ANCHOR = date(2026, 11, 20)
ANCHOR_MIDNIGHT = "2026-11-20T00:00:00Z"
CLIENTS = 300
KEY = {"x-gazelle-api-key": DEFAULT_API_KEY}
REDIRECT = "https://usersync.example/oauth/callback"
CLIENT = {"client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET}

USER = "id firstName lastName email status createdAt updatedAt"
CONTACT = (
    "id firstName lastName title wantsEmail wantsText defaultEmail { email } defaultPhone { phoneNumber } "
    "defaultLocation { street1 street2 municipality postalCode region } createdAt updatedAt"
)
CLIENT_FIELDS = (
    "id companyName status clientType tags preferredTechnicianId personalNotes preferenceNotes createdAt updatedAt "
    f"localization {{ locale }} defaultContact {{ {CONTACT} }} allContacts {{ nodes {{ {CONTACT} }} }}"
)
PIANO = (
    "id client { id } make model serialNumber type year status location notes createdAt updatedAt "
    "damppChaserInstalled damppChaserHumidistatModel damppChaserMfgDate"
)
EVENT = (
    "id title start duration isAllDay type status notes confirmedByClient createdAt updatedAt "
    "client { id } user { id } allEventPianos { nodes { piano { id } } }"
)
ENTRY = "id occurredAt type summary comment client { id } piano { id } user { id } invoice { id } estimate { id }"


@pytest.fixture(scope="module")
def sandbox():
    """One server for the module, with a rate limit no test reaches."""
    data = GazelleData(clients=CLIENTS, technicians=4, seed=11, anchor=ANCHOR)
    app = create_app(data, per_second=100_000)
    with serve(app) as url:
        yield url, app


def gql(url: str, query: str, variables: dict | None = None, headers: dict | None = None) -> requests.Response:
    body = {"query": query} if variables is None else {"query": query, "variables": variables}
    return requests.post(f"{url}/graphql/private/", json=body, headers=KEY if headers is None else headers, timeout=10)


def ok(url: str, query: str, variables: dict | None = None, headers: dict | None = None) -> dict:
    response = gql(url, query, variables, headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


def walk(url: str, field: str, selection: str, args: str = "", first: int = 100) -> list[dict]:
    """Every node of a root connection, following endCursor until hasNextPage is false."""
    query = (
        f"query($after: String) {{ {field}(first: {first}, after: $after{args}) "
        f"{{ totalCount pageInfo {{ hasNextPage hasPreviousPage endCursor }} nodes {{ {selection} }} }} }}"
    )
    nodes, after, total = [], None, None
    while True:
        page = ok(url, query, {"after": after})[field]
        assert total in (None, page["totalCount"])
        total = page["totalCount"]
        assert page["pageInfo"]["hasPreviousPage"] == (after is not None)
        nodes += page["nodes"]
        if not page["pageInfo"]["hasNextPage"]:
            break
        assert len(page["nodes"]) == first
        after = page["pageInfo"]["endCursor"]
    assert len(nodes) == total
    return nodes


def post_token(url: str, **params) -> requests.Response:
    return requests.post(f"{url}/developer/oauth/token", data=params, timeout=5)


def set_faults(url: str, **faults) -> None:
    requests.post(f"{url}/_sandbox/faults", json=faults, timeout=5).raise_for_status()


def state(url: str) -> dict:
    return requests.get(f"{url}/_sandbox/state", timeout=5).json()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------------------------------------ OAuth and auth


def test_authorization_code_grant_then_rotating_refresh_tokens(url):
    authorize = requests.get(
        f"{url}/developer/oauth/authorize",
        params={"client_id": DEFAULT_CLIENT_ID, "response_type": "code", "redirect_uri": REDIRECT, "state": "xyz"},
        allow_redirects=False,
        timeout=5,
    )
    assert authorize.status_code == 302
    location = urlsplit(authorize.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    query = parse_qs(location.query)
    assert query["state"] == ["xyz"]
    code = query["code"][0]

    # The code must come back with the same redirect_uri, once.
    mismatch = post_token(url, grant_type="authorization_code", code=code, redirect_uri=REDIRECT + "x", **CLIENT)
    assert mismatch.status_code == 400 and mismatch.json()["error"] == "invalid_grant"
    authorize = requests.get(
        f"{url}/developer/oauth/authorize",
        params={"client_id": DEFAULT_CLIENT_ID, "response_type": "code", "redirect_uri": REDIRECT},
        allow_redirects=False,
        timeout=5,
    )
    code = parse_qs(urlsplit(authorize.headers["Location"]).query)["code"][0]
    response = post_token(url, grant_type="authorization_code", code=code, redirect_uri=REDIRECT, **CLIENT)
    assert response.status_code == 200
    first = response.json()
    assert set(first) == {"access_token", "token_type", "expires_in", "refresh_token", "scope", "created_at"}
    assert first["token_type"] == "Bearer" and first["expires_in"] == 3600
    assert abs(first["created_at"] - time.time()) < 5
    reused = post_token(url, grant_type="authorization_code", code=code, redirect_uri=REDIRECT, **CLIENT)
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    assert len(ok(url, "{ allUsers { id } }", headers=bearer(first["access_token"]))["allUsers"]) == 4

    # Refresh: a new refresh token each time, the used one is revoked.
    second = post_token(url, grant_type="refresh_token", refresh_token=first["refresh_token"], **CLIENT)
    assert second.status_code == 200
    second = second.json()
    assert second["refresh_token"] != first["refresh_token"] and second["access_token"] != first["access_token"]
    replay = post_token(url, grant_type="refresh_token", refresh_token=first["refresh_token"], **CLIENT)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert replay.json()["error_description"]
    third = post_token(url, grant_type="refresh_token", refresh_token=second["refresh_token"], **CLIENT)
    assert third.status_code == 200
    assert ok(url, "{ allUsers { id } }", headers=bearer(third.json()["access_token"]))
    current = state(url)
    # The initial refresh token and the last one are valid; two refreshes happened.
    assert (current["refreshes"], current["refresh_tokens"]) == (2, 2)
    assert current["stats"]["tokens_issued"] == 3


def test_initial_refresh_token_json_body_and_reset(url):
    body = {"grant_type": "refresh_token", "refresh_token": DEFAULT_REFRESH_TOKEN, **CLIENT}
    response = requests.post(f"{url}/developer/oauth/token", json=body, timeout=5)
    assert response.status_code == 200 and response.json()["refresh_token"] != DEFAULT_REFRESH_TOKEN
    assert ok(url, "{ allClients(first: 1) { totalCount } }", headers=bearer(response.json()["access_token"]))
    assert requests.post(f"{url}/developer/oauth/token", json=body, timeout=5).json()["error"] == "invalid_grant"
    assert state(url)["refreshes"] == 1
    # A reset makes the initial refresh token usable again (each test can start from it).
    requests.post(f"{url}/_sandbox/reset", timeout=5).raise_for_status()
    assert state(url)["refreshes"] == 0
    assert requests.post(f"{url}/developer/oauth/token", json=body, timeout=5).status_code == 200


def test_bad_token_requests(url):
    refresh = {"grant_type": "refresh_token", "refresh_token": DEFAULT_REFRESH_TOKEN}
    bad_client = post_token(url, **refresh, client_id=DEFAULT_CLIENT_ID, client_secret="nope")
    assert bad_client.status_code == 401 and bad_client.json()["error"] == "invalid_client"
    unknown = post_token(url, grant_type="refresh_token", refresh_token="nope", **CLIENT)
    assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_grant"
    credentials = post_token(url, grant_type="client_credentials", **CLIENT)
    assert credentials.status_code == 400 and credentials.json()["error"] == "unsupported_grant_type"
    assert post_token(url, **CLIENT).json()["error"] == "invalid_request"
    wrong_app = requests.get(
        f"{url}/developer/oauth/authorize",
        params={"client_id": "other", "response_type": "code", "redirect_uri": REDIRECT},
        allow_redirects=False,
        timeout=5,
    )
    assert wrong_app.status_code == 401
    # HTTP Basic client authentication works too.
    basic = requests.post(
        f"{url}/developer/oauth/token", data=refresh, auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET), timeout=5
    )
    assert basic.status_code == 200


def test_api_key_and_401s(url):
    assert len(ok(url, "{ allUsers { id } }")["allUsers"]) == 4
    for headers, words in (
        ({}, "no credentials"),
        ({"x-gazelle-api-key": "wrong"}, "invalid API key"),
        (bearer("not-a-token"), "invalid access token"),
    ):
        response = gql(url, "{ allUsers { id } }", headers=headers)
        assert response.status_code == 401
        error = response.json()["errors"][0]
        assert error["message"].startswith("Unauthorized: ") and words in error["message"]
        assert error["extensions"] == {"code": "UNAUTHENTICATED"}
    assert state(url)["stats"]["unauthorized"] == 3
    # Without the trailing slash too.
    response = requests.post(f"{url}/graphql/private", json={"query": "{ allUsers { id } }"}, headers=KEY)
    assert response.status_code == 200 and len(response.json()["data"]["allUsers"]) == 4


def test_expired_access_token(url):
    tokens = post_token(url, grant_type="refresh_token", refresh_token=DEFAULT_REFRESH_TOKEN, **CLIENT).json()
    assert gql(url, "{ allUsers { id } }", headers=bearer(tokens["access_token"])).status_code == 200
    assert requests.post(f"{url}/_sandbox/expire_tokens", timeout=5).json()["expired"] >= 1
    response = gql(url, "{ allUsers { id } }", headers=bearer(tokens["access_token"]))
    assert response.status_code == 401 and "expired" in response.json()["errors"][0]["message"]
    # Refresh tokens are not expired by it.
    fresh = post_token(url, grant_type="refresh_token", refresh_token=tokens["refresh_token"], **CLIENT).json()
    assert gql(url, "{ allUsers { id } }", headers=bearer(fresh["access_token"])).status_code == 200


def test_token_lifetime_and_rate_limit_per_credential():
    app = create_app(GazelleData(clients=10, anchor=ANCHOR), per_second=2, token_ttl=1)
    with serve(app) as url:
        tokens = post_token(url, grant_type="refresh_token", refresh_token=DEFAULT_REFRESH_TOKEN, **CLIENT).json()
        assert tokens["expires_in"] == 1
        query = "{ allUsers { id } }"
        statuses = [gql(url, query).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        limited = gql(url, query)
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
        # Another credential has its own window; token requests are never limited.
        assert gql(url, query, headers=bearer(tokens["access_token"])).status_code == 200
        for _ in range(3):
            assert post_token(url, grant_type="refresh_token", refresh_token="x", **CLIENT).status_code == 400
        stats = state(url)["stats"]
        assert (stats["throttled"], stats["throttled_limit"]) == (2, 2)
        time.sleep(1.05)
        response = gql(url, query, headers=bearer(tokens["access_token"]))
        assert response.status_code == 401 and "expired" in response.json()["errors"][0]["message"]
        assert gql(url, query).status_code == 200  # the api key's window reopened


# ------------------------------------------------------------------------------------------ lists vs ground truth


def test_users_clients_pianos_walked_to_the_end_equal_the_ground_truth(url, data):
    assert ok(url, f"{{ allUsers {{ {USER} }} }}")["allUsers"] == data.users()  # a plain list, no paging
    clients = walk(url, "allClients", CLIENT_FIELDS)
    for client in clients:
        client["contacts"] = client.pop("allContacts")["nodes"]
    assert clients == data.clients() and len(clients) == CLIENTS
    assert [c["id"] for c in clients] == sorted(c["id"] for c in clients)  # default order: id ascending
    assert walk(url, "allPianos", PIANO, first=37) == data.pianos()


def test_events_and_timeline_walked_to_the_end_equal_the_ground_truth(url, data):
    events = walk(url, "allEventsBatched", EVENT)
    assert events == data.events() and len(events) > 300
    entries = walk(url, "allTimelineEntries", ENTRY)
    assert entries == data.timeline() and len(entries) > 300


def test_sort_orders(url, data):
    nodes = walk(url, "allClients", "id createdAt", args=", sortBy: [CREATED_AT_DESC]")
    assert [n["id"] for n in nodes] == [c["id"] for c in data.clients(sort_by="CREATED_AT_DESC")]
    keys = [n["createdAt"] for n in nodes]
    assert keys == sorted(keys, reverse=True) and keys[0] < ANCHOR_MIDNIGHT
    pianos = walk(url, "allPianos", "id createdAt", args=", sortBy: [CREATED_AT_ASC]")
    assert [p["createdAt"] for p in pianos] == sorted(p["createdAt"] for p in pianos)
    starts = [e["start"] for e in walk(url, "allEventsBatched", "start", args=", sortBy: [START_DESC]")]
    assert starts == sorted(starts, reverse=True)
    # A value the schema has but the sandbox does not order by is refused, not ignored.
    body = gql(url, "{ allClients(sortBy: [CITY_ASC]) { totalCount } }").json()
    assert "not simulated" in body["errors"][0]["message"]


def test_cursors_are_offsets(url):
    assert encode_cursor(100) == "MTAw" and decode_cursor("MTAw") == 100
    page = ok(url, "{ allClients(first: 5) { edges { cursor node { id } } pageInfo { startCursor endCursor } } }")
    edges = page["allClients"]["edges"]
    assert [decode_cursor(e["cursor"]) for e in edges] == [1, 2, 3, 4, 5]
    assert page["allClients"]["pageInfo"] == {"startCursor": edges[0]["cursor"], "endCursor": edges[-1]["cursor"]}
    after = ok(url, "query($a: String) { allClients(first: 2, after: $a) { nodes { id } } }", {"a": edges[2]["cursor"]})
    assert [n["id"] for n in after["allClients"]["nodes"]] == [e["node"]["id"] for e in edges[3:5]]
    empty = ok(url, "{ allClients(first: 0) { nodes { id } pageInfo { hasNextPage endCursor } } }")["allClients"]
    assert empty == {"nodes": [], "pageInfo": {"hasNextPage": True, "endCursor": None}}


# ------------------------------------------------------------------------------------------ filters and nesting


def test_event_date_filters_are_inclusive(url, data):
    query = "query($f: PrivateAllEventsFilter) { allEventsBatched(first: 100, filters: $f) { nodes { id start } } }"
    day = ANCHOR - timedelta(days=3)
    one_day = ok(url, query, {"f": {"startOn": day.isoformat(), "endOn": day.isoformat()}})
    ids = [e["id"] for e in one_day["allEventsBatched"]["nodes"]]
    assert ids and ids == [e["id"] for e in data.events(day, day)]
    # Days are the account's (America/Toronto): an evening appointment starts on the next UTC day.
    zone = ZoneInfo("America/Toronto")
    assert all(
        datetime.fromisoformat(e["start"]).astimezone(zone).date() == day for e in one_day["allEventsBatched"]["nodes"]
    )
    three = ok(url, query, {"f": {"startOn": (day - timedelta(days=2)).isoformat(), "endOn": day.isoformat()}})
    per_day = sum(len(data.events(day - timedelta(days=n), day - timedelta(days=n))) for n in range(3))
    assert len(three["allEventsBatched"]["nodes"]) == per_day > len(ids)
    # Start dates span anchor-120 .. anchor+30.
    everything = data.events()
    first = min(datetime.fromisoformat(e["start"]).astimezone(zone) for e in everything).date().isoformat()
    last = max(datetime.fromisoformat(e["start"]).astimezone(zone) for e in everything).date().isoformat()
    assert (ANCHOR - timedelta(days=120)).isoformat() <= first <= (ANCHOR - timedelta(days=117)).isoformat()
    assert (ANCHOR + timedelta(days=27)).isoformat() <= last <= (ANCHOR + timedelta(days=30)).isoformat()

    others = walk(url, "allEventsBatched", "type client { id }", args=", filters: {type: [PERSONAL, MEMO]}")
    assert others and all(e["type"] in ("PERSONAL", "MEMO") and e["client"] is None for e in others)
    client_id = everything[0]["client"]["id"] if everything[0]["client"] else everything[1]["client"]["id"]
    of_client = walk(url, "allEventsBatched", "id client { id }", args=f', filters: {{clientId: ["{client_id}"]}}')
    assert {e["id"] for e in of_client} == {e["id"] for e in everything if (e["client"] or {}).get("id") == client_id}


def test_timeline_lower_bound_filter(url, data):
    entries = data.timeline(sort_by="OCCURRED_AT_ASC")
    lo = entries[100]["occurredAt"]  # an existing value: the bound is inclusive (occurredAtGet = "on or after")
    expected = sorted(e["id"] for e in entries if lo <= e["occurredAt"])
    got = walk(url, "allTimelineEntries", "id occurredAt", args=f', occurredAtGet: "{lo}"', first=50)
    assert [e["id"] for e in got] == expected == [e["id"] for e in data.timeline(datetime.fromisoformat(lo))]
    # The same instant with an offset.
    shifted = datetime.fromisoformat(lo).astimezone(timezone(timedelta(hours=2))).isoformat()
    query = "query($a: CoreDateTime) { allTimelineEntries(occurredAtGet: $a) { totalCount } }"
    assert ok(url, query, {"a": shifted})["allTimelineEntries"]["totalCount"] == len(expected)
    # All entries occurred in the 400 days before the anchor.
    assert entries[0]["occurredAt"] >= (ANCHOR - timedelta(days=400)).isoformat()
    assert entries[-1]["occurredAt"] < ANCHOR_MIDNIGHT
    with_piano = next(e for e in entries if e["piano"])
    pid = with_piano["piano"]["id"]
    by_piano = walk(url, "allTimelineEntries", "piano { id }", args=f', pianoId: "{pid}"')
    assert by_piano and all(e["piano"]["id"] == pid for e in by_piano)
    invoices = walk(url, "allTimelineEntries", "type invoice { id }", args=", types: [INVOICE, USER_COMMENT]")
    assert invoices and {e["type"] for e in invoices} == {"INVOICE", "USER_COMMENT"}
    assert all((e["invoice"] is not None) == (e["type"] == "INVOICE") for e in invoices)


def test_nested_contacts_pagination(url, data):
    client = next(c for c in data.clients() if len(c["contacts"]) >= 2)
    query = (
        "query($id: String!, $after: String) { client(id: $id) { defaultContact { id } "
        "allContacts(first: 1, after: $after) { totalCount nodes { id } pageInfo { hasNextPage endCursor } } } }"
    )
    page = ok(url, query, {"id": client["id"]})["client"]
    contacts = page["allContacts"]
    assert page["defaultContact"]["id"] == client["contacts"][0]["id"] == contacts["nodes"][0]["id"]
    assert contacts["totalCount"] == len(client["contacts"]) and contacts["pageInfo"]["hasNextPage"]
    after = contacts["pageInfo"]["endCursor"]
    second = ok(url, query, {"id": client["id"], "after": after})["client"]["allContacts"]["nodes"]
    assert second == [{"id": client["contacts"][1]["id"]}]
    assert 1 <= min(len(c["contacts"]) for c in data.clients()) <= max(len(c["contacts"]) for c in data.clients()) <= 3


def test_references_resolve(url, data):
    clients = {c["id"]: c for c in data.clients()}
    pianos = {p["id"]: p for p in data.pianos()}
    nodes = walk(url, "allPianos", "id client { id companyName defaultContact { lastName } }")
    assert all(n["client"]["companyName"] == clients[n["client"]["id"]]["companyName"] for n in nodes)
    assert all(n["client"]["id"] == pianos[n["id"]]["client"]["id"] for n in nodes)
    events = walk(
        url,
        "allEventsBatched",
        "type client { id allPianos { nodes { id } } } user { id firstName } "
        "allEventPianos { nodes { piano { id client { id } } } }",
    )
    users = {u["id"]: u for u in data.users()}
    for event in events:
        assert event["user"]["firstName"] == users[event["user"]["id"]]["firstName"]
        links = event["allEventPianos"]["nodes"]
        if event["type"] == "APPOINTMENT":
            owned = {p["id"] for p in event["client"]["allPianos"]["nodes"]}
            assert 1 <= len(links) <= 2
            assert all(link["piano"]["client"]["id"] == event["client"]["id"] for link in links)
            assert {link["piano"]["id"] for link in links} <= owned
        else:
            assert event["client"] is None and links == []
    entries = walk(url, "allTimelineEntries", "client { id } piano { client { id } } user { id }")
    assert all(e["piano"] is None or e["piano"]["client"]["id"] == e["client"]["id"] for e in entries)
    assert all(e["user"] is None or e["user"]["id"] in users for e in entries)
    one = data.pianos()[7]
    assert ok(url, f'{{ piano(id: "{one["id"]}") {{ {PIANO} }} }}')["piano"] == one
    assert ok(url, '{ piano(id: "pno_nope") { id } }') == {"piano": None}


# ------------------------------------------------------------------------------------------ errors


def test_invalid_queries_are_graphql_errors(url):
    cases = [
        ("{ allClients { nodes { id }", None, "Syntax Error"),
        ("{ allClients { nodes { nope } } }", None, "nope"),
        ("{ allClients(nope: 1) { totalCount } }", None, "nope"),
        ("{ allEventsBatched(filters: {type: [NOPE]}) { totalCount } }", None, "NOPE"),
        ("query($n: Int) { allClients(first: $n) { totalCount } }", {"n": "abc"}, "$n"),
        ("query($d: CoreDate) { allEventsBatched(filters: {startOn: $d}) { totalCount } }", {"d": "2026-13-01"}, "$d"),
        ('{ allTimelineEntries(occurredAtGet: "yesterday") { totalCount } }', None, "CoreDateTime"),
        ("mutation { allClients { totalCount } }", None, "PrivateMutation"),
        # Shapes Gazelle's real schema rejects (the first version of the sync used them).
        ("{ allUsers(first: 10) { id } }", None, "first"),
        ("{ allUsers { nodes { id } } }", None, "nodes"),
        ("{ allClients(sortBy: [UPDATED_AT_DESC]) { totalCount } }", None, "UPDATED_AT_DESC"),
        ("{ allPianos(sortBy: [UPDATED_AT_DESC]) { totalCount } }", None, "UPDATED_AT_DESC"),
        ("{ allClients { nodes { contacts { nodes { id } } } } }", None, "contacts"),
        ('{ allTimelineEntries(occurredAtGte: "2026-01-01T00:00:00Z") { totalCount } }', None, "occurredAtGte"),
        ("{ allTimelineEntries(sortBy: [OCCURRED_AT_ASC]) { totalCount } }", None, "sortBy"),
    ]
    for query, variables, words in cases:
        response = gql(url, query, variables)
        assert response.status_code == 200, query
        body = response.json()
        assert "data" not in body and body["errors"], query
        assert words in body["errors"][0]["message"] and body["errors"][0]["locations"], (query, body)


def test_resolver_errors_null_the_field(url):
    # The root connections are non-null in Gazelle's schema: their error nulls the whole data.
    body = gql(url, "{ allClients(first: 101) { totalCount } allUsers { id } }").json()
    assert body["data"] is None
    assert body["errors"][0]["message"] == "first must be <= 100" and body["errors"][0]["path"] == ["allClients"]
    body = gql(url, '{ allPianos(after: "not a cursor!") { totalCount } }').json()
    assert body["data"] is None and body["errors"][0]["message"] == "Invalid cursor"
    assert gql(url, "{ allPianos(first: -1) { totalCount } }").json()["errors"][0]["message"] == "first must be >= 0"
    body = gql(url, "{ allClients(first: 2) { nodes { id allContacts(first: 500) { totalCount } } } }").json()
    assert body["data"]["allClients"]["nodes"][0] is None  # allContacts is non-null: the error nulls the node
    assert body["errors"][0]["path"] == ["allClients", "nodes", 0, "allContacts"]


def test_malformed_bodies_are_400(url):
    for body in (b"not json", b'{"variables": {}}', b"[]", b'{"query": ""}'):
        response = requests.post(f"{url}/graphql/private/", data=body, headers=KEY, timeout=5)
        assert response.status_code == 400, body
        assert response.json()["errors"][0]["message"]
    bad_variables = {"query": "{ allUsers { id } }", "variables": [1]}
    assert requests.post(f"{url}/graphql/private/", json=bad_variables, headers=KEY, timeout=5).status_code == 400


# ------------------------------------------------------------------------------------------ stats and faults


def test_requests_counted_per_root_field(url):
    ok(url, "{ allClients(first: 1) { totalCount } }")
    ok(url, "{ a: allClients(first: 1) { totalCount } b: allClients { totalCount } allPianos { totalCount } }")
    ok(url, "query Q { ...F } fragment F on PrivateQuery { allTimelineEntries(first: 1) { totalCount } }")
    gql(url, "{ allUsers { nope } }")  # invalid: never executed, not counted
    queries = state(url)["queries"]
    assert queries == {**dict.fromkeys(ROOT_FIELDS, 0), "allClients": 2, "allPianos": 1, "allTimelineEntries": 1}
    assert queries["allUsers"] == 0
    requests.post(f"{url}/_sandbox/reset", timeout=5).raise_for_status()
    assert set(state(url)["queries"].values()) == {0}


def test_graphql_errors_fault(url):
    set_faults(url, graphql_errors=2)
    for _ in range(2):
        response = gql(url, "{ allUsers { id } }")
        assert response.status_code == 200
        assert response.json() == {
            "data": None,
            "errors": [{"message": "Internal server error", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}],
        }
    assert len(ok(url, "{ allUsers { id } }")["allUsers"]) == 4
    current = state(url)
    assert current["faults"]["graphql_errors"] == 0 and current["graphql_errors_injected"] == 2
    assert requests.post(f"{url}/_sandbox/faults", json={"graphql_errors": 1.5}, timeout=5).status_code == 400
    # The subclass works with the common Sandbox.
    sandbox = Sandbox("x", [(1, 1.0)], GazelleFaults())
    sandbox.set_faults({"graphql_errors": 3, "error_rate": 0.5})
    assert sandbox.faults.as_dict()["graphql_errors"] == 3
    sandbox.reset()
    assert sandbox.faults.graphql_errors == 0


def test_burst_429_and_error_rate(url):
    set_faults(url, burst_429=1, burst_retry_after=2)
    first, second = gql(url, "{ allUsers { id } }"), gql(url, "{ allUsers { id } }")
    assert (first.status_code, first.headers["Retry-After"], second.status_code) == (429, "2", 200)
    set_faults(url, error_rate=1.0)
    statuses = {gql(url, "{ allUsers { id } }").status_code for _ in range(8)}
    assert statuses <= {500, 502, 503} and statuses
    assert post_token(url, grant_type="refresh_token", refresh_token=DEFAULT_REFRESH_TOKEN, **CLIENT).status_code == 200
    stats = state(url)["stats"]
    assert (stats["throttled_burst"], stats["errors_injected"]) == (1, 8)


# ------------------------------------------------------------------------------------------ data changes


def test_mutate_changes_records_and_their_updated_at(url, data):
    before = data.clients()
    started = datetime.now(UTC).replace(microsecond=0)
    ids = requests.post(f"{url}/_sandbox/mutate", json={"k": 3}, timeout=5).json()["ids"]
    assert len(set(ids)) == 3
    old = {c["id"]: c for c in before}
    for client_id in ids:
        node = ok(url, f'{{ client(id: "{client_id}") {{ updatedAt personalNotes }} }}')["client"]
        assert datetime.fromisoformat(node["updatedAt"]) >= started
        assert node["personalNotes"] != old[client_id]["personalNotes"]
    changed = {c["id"] for c in data.clients() if c != old[c["id"]]}
    assert changed == set(ids)

    pianos = requests.post(f"{url}/_sandbox/mutate_pianos", json={"k": 2}, timeout=5).json()["ids"]
    assert [p["id"] for p in data.pianos(sort_by="UPDATED_AT_DESC")[:2]] == sorted(pianos)
    assert state(url)["data"]["mutated"] == {"clients": 3, "pianos": 2}
    assert requests.post(f"{url}/_sandbox/mutate_pianos", json={"k": -1}, timeout=5).status_code == 400
    assert not set(data.mutate(3)) & set(ids)  # later calls pick other clients
    requests.post(f"{url}/_sandbox/reset", timeout=5).raise_for_status()
    assert data.clients() == before


def test_remove_and_failing_root_fields(url, data):
    event = data.events()[0]
    removed = requests.post(f"{url}/_sandbox/remove", json={"kind": "events", "id": event["id"]}, timeout=5)
    assert removed.json() == {"removed": True} and event["id"] not in {e["id"] for e in data.events()}
    assert requests.post(f"{url}/_sandbox/remove", json={"kind": "nope", "id": "x"}, timeout=5).status_code == 400
    requests.post(f"{url}/_sandbox/fail_fields", json={"fields": ["allClients"]}, timeout=5).raise_for_status()
    failed = gql(url, "{ allClients { totalCount } }").json()
    assert failed == {
        "data": None,
        "errors": [{"message": "Internal server error", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}],
    }
    assert len(ok(url, "{ allUsers { id } }")["allUsers"]) == 4  # other root fields answer
    assert state(url)["failing_fields"] == ["allClients"]
    requests.post(f"{url}/_sandbox/reset", timeout=5).raise_for_status()
    assert ok(url, "{ allClients { totalCount } }") and event["id"] in {e["id"] for e in data.events()}


def test_hire_adds_a_technician(url, data):
    hired = requests.post(f"{url}/_sandbox/hire", timeout=5).json()["user"]
    assert hired["id"].startswith("usr_") and hired["createdAt"] == hired["updatedAt"] >= ANCHOR_MIDNIGHT
    users = ok(url, f"{{ allUsers {{ {USER} }} }}")["allUsers"]
    assert len(users) == 5 and users == data.users() and hired in users
    assert state(url)["data"]["hired"] == 1


# ------------------------------------------------------------------------------------------ generated data


def test_data_is_deterministic_consistent_and_fast():
    def snapshot(data: GazelleData) -> tuple:
        return data.users(), data.clients(), data.pianos(), data.events(), data.timeline()

    a = GazelleData(clients=120, seed=3, anchor=ANCHOR)
    assert snapshot(a) == snapshot(GazelleData(clients=120, seed=3, anchor=ANCHOR))
    assert snapshot(a)[1] != GazelleData(clients=120, seed=4, anchor=ANCHOR).clients()
    big = GazelleData(anchor=ANCHOR)
    described = big.describe()
    assert described["clients"] == 850 and described["users"] == 5
    assert 1.1 < described["pianos"] / 850 < 1.5 and 1.2 < described["contacts"] / 850 < 2.0

    users = {u["id"] for u in big.users()}
    clients = {c["id"]: c for c in big.clients()}
    pianos = {p["id"]: p for p in big.pianos()}
    stamps = [u["updatedAt"] for u in big.users()] + [p["updatedAt"] for p in pianos.values()]
    for client in clients.values():
        assert client["defaultContact"] == client["contacts"][0] and 1 <= len(client["contacts"]) <= 3
        assert client["preferredTechnicianId"] in users | {None}
        stamps += [client["createdAt"], client["updatedAt"]] + [c["updatedAt"] for c in client["contacts"]]
        assert all(c["createdAt"] >= client["createdAt"] for c in client["contacts"])
    assert max(stamps) < ANCHOR_MIDNIGHT and min(stamps) >= (ANCHOR - timedelta(days=3 * 365 + 1)).isoformat()
    assert all(p["client"]["id"] in clients and p["createdAt"] <= p["updatedAt"] for p in pianos.values())
    events = big.events()
    assert len(events) > 150 * 3  # several per day
    for event in events:
        assert event["user"]["id"] in users and event["createdAt"] <= event["updatedAt"] < ANCHOR_MIDNIGHT
        assert event["createdAt"] < event["start"]
        for link in event["allEventPianos"]["nodes"]:
            assert pianos[link["piano"]["id"]]["client"]["id"] == event["client"]["id"]
    assert {e["type"] for e in events} == {"APPOINTMENT", "PERSONAL", "MEMO", "SYNCED"}
    for entry in big.timeline():
        assert entry["client"]["id"] in clients and (entry["user"] is None or entry["user"]["id"] in users)
        assert entry["piano"] is None or pianos[entry["piano"]["id"]]["client"]["id"] == entry["client"]["id"]
    text = "".join(
        c["defaultContact"]["firstName"] + c["defaultContact"]["lastName"] + (c["companyName"] or "")
        for c in clients.values()
    )
    assert {"é", "è", "ç", "ô", "ï"} <= set(text)
    assert any(c["companyName"] is None for c in clients.values()) and any(c["tags"] for c in clients.values())
    prefixes = {x["id"][:4] for x in events} | {x["id"][:4] for x in big.timeline()}
    assert prefixes == {"evt_", "tle_"} and all(k.startswith("cli_") for k in clients)
    # The anchor defaults to today (UTC).
    assert GazelleData(clients=1).anchor == datetime.now(UTC).date()


# ------------------------------------------------------------------------------------------ CLI


def test_cli():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = [sys.executable, "-m", "sandbox", "gazelle"]
    helped = subprocess.run([*command, "--help"], cwd=root, env=env, capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0 and "--anchor" in helped.stdout and "--graphql-errors" in helped.stdout
    process = subprocess.Popen(
        [*command, "--port", "0", "--clients", "20", "--anchor", "2026-01-15", "--per-second", "5"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        url = process.stdout.readline().split("listening on ", 1)[1].split()[0]
        current = state(url)
        assert current["api"] == "gazelle" and current["data"]["clients"] == 20
        assert current["data"]["anchor"] == "2026-01-15" and current["limits"] == [{"limit": 5, "window": 1.0}]
        assert ok(url, "{ allClients { totalCount } }")["allClients"]["totalCount"] == 20
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0


def test_hostile_records_are_served_as_json_escapes(url, data):
    hostile = requests.post(f"{url}/_sandbox/hostile", timeout=5).json()["ids"]
    body = gql(url, f"{{ allClients(first: 100) {{ nodes {{ {CLIENT_FIELDS} }} }} }}").text
    body += "".join(
        gql(
            url,
            f'{{ allClients(first: 100, after: "{encode_cursor(n)}") {{ nodes {{ id companyName '
            f"personalNotes updatedAt }} }} }}",
        ).text
        for n in (100, 200)
    )
    assert '"Nul\\u0000l"' in body and '"Half \\ud83d"' in body  # valid JSON; Postgres refuses both
    assert '"2026-02-30T10:00:00Z"' in body and '"2025-06-01T10:00:00+99:00"' in body
    client = data.get("clients", hostile["contact_hour_25"])
    assert client["contacts"][0]["createdAt"] == "2025-06-01T25:00:00Z"
    assert data.get("pianos", hostile["year_0000"])["damppChaserMfgDate"] == "0000-06-01"
    assert data.get("events", hostile["event_no_such_date"])["createdAt"] == "2026-04-31T09:00:00Z"
    assert data.get("timeline", hostile["timeline_hour_25"])["occurredAt"] == "2026-11-19T25:00:00Z"
    requests.post(f"{url}/_sandbox/reset", timeout=5).raise_for_status()
    assert data.get("pianos", hostile["year_0000"])["damppChaserMfgDate"] != "0000-06-01"
