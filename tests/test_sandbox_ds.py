"""The Démarches Simplifiées sandbox (GraphQL API v2), over real HTTP."""

from __future__ import annotations

import re
import time

import pytest
import requests

from sandbox.common import serve
from sandbox.ds import (
    DEFAULT_TOKEN,
    GRAPHQL_PATH,
    KINDS,
    PERSISTED_QUERIES,
    DSData,
    TokenRights,
    create_app,
    iso,
)

BEARER = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
PAGE = """query($n: Int!, $first: Int, $last: Int, $after: String, $state: DossierState, $createdSince: ISO8601DateTime,
                 $updatedSince: ISO8601DateTime) {
  demarche(number: $n) {
    dossiers(first: $first, last: $last, after: $after, state: $state, createdSince: $createdSince,
             updatedSince: $updatedSince) {
      pageInfo { hasNextPage endCursor }
      nodes { number state dateDepot dateDerniereModification }
    }
  }
}"""
PLAIN_CHAMPS = "query($n: Int!) { dossier(number: $n) { champs { __typename champDescriptorId stringValue } } }"
TYPED_CHAMPS = """query($n: Int!) { dossier(number: $n) { champs { __typename champDescriptorId
  ... on AddressChamp { address { label } } ... on YesNoChamp { selected: value } ... on DatetimeChamp { datetime }
  ... on DropDownListChamp { value } ... on HeaderSectionChamp { level } ... on ExplicationChamp { __typename }
  ... on CommuneChamp { commune { code } } ... on DepartementChamp { departement { code } }
  ... on RegionChamp { region { code } } ... on PaysChamp { pays { code } } } } }"""


@pytest.fixture(scope="module")
def sandbox():
    data = DSData(((101, 130, 40), (102, 60, 12)), seed=5)
    tokens = {
        DEFAULT_TOKEN: TokenRights(),
        "only-102": TokenRights(demarches=frozenset({102})),
        "expired": TokenRights(expired=True),
        "elsewhere": TokenRights(forbidden_network=True),
    }
    app = create_app(data, tokens=tokens, rate_limit=100_000)
    with serve(app) as url:
        yield url, app


def post(url: str, body: dict, headers: dict | None = None) -> requests.Response:
    return requests.post(url + GRAPHQL_PATH, json=body, headers=BEARER if headers is None else headers, timeout=30)


def ok(url: str, query: str, variables: dict | None = None, headers: dict | None = None) -> dict:
    response = post(url, {"query": query, "variables": variables or {}}, headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert not body.get("errors"), body
    return body["data"]


def walk(url: str, first: int | None = None, **variables) -> tuple[list[dict], int]:
    nodes, after, pages = [], None, 0
    while True:
        page = ok(url, PAGE, {"n": 102, "first": first, "after": after, **variables})["demarche"]["dossiers"]
        nodes += page["nodes"]
        pages += 1
        if not page["pageInfo"]["hasNextPage"]:
            return nodes, pages
        after = page["pageInfo"]["endCursor"]


def test_pages_walk_every_dossier_once_in_deposit_order(url, data):
    nodes, pages = walk(url, first=25)
    truth = data.truth(102)
    assert [n["number"] for n in nodes] == [t["number"] for t in truth]
    assert pages == 3 and len(nodes) == 60
    assert [n["dateDepot"] for n in nodes] == [t["dateDepot"] for t in truth]


def test_page_size_is_clamped_to_100_and_first_with_last_is_refused(url):
    page = ok(url, PAGE, {"n": 101, "first": 500})["demarche"]["dossiers"]
    assert len(page["nodes"]) == 100 and page["pageInfo"]["hasNextPage"]
    assert len(ok(url, PAGE, {"n": 101})["demarche"]["dossiers"]["nodes"]) == 100  # default 100
    body = post(url, {"query": PAGE, "variables": {"n": 101, "first": 5, "last": 5}}).json()
    assert body["data"] is None and body["errors"][0]["extensions"]["code"] == "bad_request"


def test_filters_created_since_state_and_updated_since_wins(url, data, sandbox):
    truth = data.truth(102)
    since = truth[30]["dateDepot"]
    nodes, _ = walk(url, createdSince=since)
    assert [n["number"] for n in nodes] == [t["number"] for t in truth[30:]]
    accepted, _ = walk(url, state="accepte")
    assert {n["number"] for n in accepted} == {t["number"] for t in truth if t["state"] == "accepte"}
    # one state per query: a list is not a DossierState
    body = post(url, {"query": PAGE, "variables": {"n": 102, "state": ["accepte", "refuse"]}}).json()
    assert body["errors"] and "data" in body and body["data"] is None
    changed = requests.post(f"{url}/_sandbox/mutate", json={"k": 3, "demarche": 102}, timeout=10).json()["ids"]
    moment = iso(int((time.time() - 60) * 1_000_000))
    nodes, _ = walk(url, createdSince=truth[-1]["dateDepot"], updatedSince=moment)  # createdSince ignored
    assert sorted(n["number"] for n in nodes) == changed
    modified = [n["dateDerniereModification"] for n in nodes]
    assert modified == sorted(modified)  # ordered by update time


def test_typename_depends_on_the_fragments_the_query_names(url, data):
    number = data.truth(101)[0]["number"]
    kinds = {c["champDescriptorId"]: c["_kind"] for c in data.champs(data.by_number[number])}
    plain = {c["champDescriptorId"]: c["__typename"] for c in ok(url, PLAIN_CHAMPS, {"n": number})["dossier"]["champs"]}
    typed = {c["champDescriptorId"]: c["__typename"] for c in ok(url, TYPED_CHAMPS, {"n": number})["dossier"]["champs"]}
    for descriptor_id, kind in kinds.items():
        assert typed[descriptor_id] == kind
        expected = {
            "AddressChamp": "TextChamp",
            "CommuneChamp": "TextChamp",
            "DepartementChamp": "TextChamp",
            "RegionChamp": "TextChamp",
            "PaysChamp": "TextChamp",
            "HeaderSectionChamp": "TextChamp",
            "ExplicationChamp": "TextChamp",
            "DropDownListChamp": "TextChamp",
            "YesNoChamp": "CheckboxChamp",
            "DatetimeChamp": "DateChamp",
        }.get(kind, kind)
        assert plain[descriptor_id] == expected
    assert set(kinds.values()) == {champ for _, champ in KINDS.values()}  # every champ type is generated


def test_invalid_queries_fail_like_the_real_server(url):
    unknown = post(url, {"query": "{ demarche(number: 101) { nope } }"})
    assert unknown.status_code == 200 and "data" not in unknown.json()
    assert "nope" in unknown.json()["errors"][0]["message"]
    broken = post(url, {"query": "{ demarche(number: 101) { id "})
    assert broken.status_code == 400 and broken.json()["errors"][0]["extensions"]["code"] == "graphql_parse_failed"
    # DS does not apply OverlappingFieldsCanBeMerged: the official persisted query (which breaks it) runs
    body = post(
        url,
        {
            "query": PERSISTED_QUERIES["ds-query-v2"],
            "operationName": "getDemarche",
            "variables": {"demarcheNumber": 102, "includeDossiers": True, "first": 2},
        },
    ).json()
    assert "errors" not in body and len(body["data"]["demarche"]["dossiers"]["nodes"]) == 2


def test_token_forms_and_errors(url):
    query = {"query": "{ demarche(number: 102) { number } }"}
    for header in (f"Bearer {DEFAULT_TOKEN}", f"Bearer token={DEFAULT_TOKEN}", f'Token token="{DEFAULT_TOKEN}"'):
        assert post(url, query, {"Authorization": header}).json() == {"data": {"demarche": {"number": 102}}}
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": f"bearer {DEFAULT_TOKEN}"}):
        refused = post(url, query, headers)
        assert refused.status_code == 403
        assert refused.json() == {
            "errors": [
                {"message": "Without a token, only persisted queries are allowed", "extensions": {"code": "forbidden"}}
            ],
            "data": None,
        }
    expired = post(url, query, {"Authorization": "Bearer expired"})
    assert expired.status_code == 401 and expired.json()["errors"][0]["message"] == "Token expired"
    assert post(url, query, {"Authorization": "Bearer elsewhere"}).status_code == 403
    hidden = post(url, {"query": "{ demarche(number: 101) { number } }"}, {"Authorization": "Bearer only-102"})
    assert hidden.status_code == 200
    assert hidden.json()["errors"][0]["message"] == "An object of type Demarche was hidden due to permissions"
    assert hidden.json()["errors"][0]["extensions"]["code"] == "unauthorized"
    persisted = post(
        url, {"queryId": "ds-query-v2", "operationName": "getDemarche", "variables": {"demarcheNumber": 102}}, {}
    )
    assert persisted.status_code == 200 and persisted.json()["errors"][0]["extensions"]["code"] == "unauthorized"
    missing = post(url, {"query": "{ demarche(number: 999) { number } }"}).json()
    assert missing["errors"][0]["message"] == "Demarche not found"


def test_deleted_dossiers_and_new_fields(url, data):
    number = data.truth(102)[5]["number"]
    requests.post(f"{url}/_sandbox/delete_dossier", json={"number": number}, timeout=10).raise_for_status()
    nodes, _ = walk(url)
    assert number not in {n["number"] for n in nodes} and len(nodes) == 59
    deleted = ok(
        url,
        '{ demarche(number: 102) { deletedDossiers(deletedSince: "2026-01-01T00:00:00Z") '
        "{ nodes { number reason dateSupression } } } }",
    )["demarche"]["deletedDossiers"]["nodes"]
    assert [d["number"] for d in deleted] == [number]
    added = requests.post(
        f"{url}/_sandbox/add_field", json={"demarche": 102, "type": "yes_no", "label": "Nouveau"}, timeout=10
    ).json()["descriptor"]
    labels = ok(url, "{ demarche(number: 102) { activeRevision { champDescriptors { id label } } } }")
    assert labels["demarche"]["activeRevision"]["champDescriptors"][-1] == {"id": added["id"], "label": "Nouveau"}


def test_throttle_answers_429_with_ratelimit_reset_and_no_retry_after():
    app = create_app(DSData(((101, 5, 3), (102, 1, 1))), rate_limit=3, rate_period=60)
    with serve(app) as url:
        query = {"query": "{ demarche(number: 101) { number } }"}
        answers = [post(url, query) for _ in range(5)]
        other = post(url, query, {"Authorization": f"Token token={DEFAULT_TOKEN}"})  # another header value
        state = requests.get(f"{url}/_sandbox/state", timeout=10).json()
    window_end = (int(time.time()) // 60 + 1) * 60
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429] and other.status_code == 200
    throttled = answers[-1]
    assert "Retry-After" not in throttled.headers
    assert throttled.headers["RateLimit-Remaining"] == "0"
    assert int(throttled.headers["RateLimit-Reset"]) in (window_end, window_end - 60)
    assert throttled.headers["Content-Type"].startswith("text/plain") and "cowboy" in throttled.text
    assert state["rate"]["throttled"] == 2 and state["rate"]["max_in_window"] == 5


def test_throttle_off_counts_what_it_would_have_refused():
    app = create_app(DSData(((101, 5, 3), (102, 1, 1))), rate_limit=2, enforce_limit=False)
    with serve(app) as url:
        codes = [post(url, {"query": "{ demarche(number: 101) { number } }"}).status_code for _ in range(4)]
        rate = requests.get(f"{url}/_sandbox/state", timeout=10).json()["rate"]
    assert codes == [200] * 4 and rate["over_limit_accepted"] == 2 and rate["throttled"] == 0


def test_storm_of_429_and_5xx_faults(url):
    requests.post(f"{url}/_sandbox/faults", json={"burst_429": 2, "burst_retry_after": 3}, timeout=10)
    query = {"query": "{ demarche(number: 101) { number } }"}
    first, second, third = (post(url, query) for _ in range(3))
    assert first.status_code == second.status_code == 429 and third.status_code == 200
    assert "Retry-After" not in first.headers and int(first.headers["RateLimit-Reset"]) >= time.time() + 1
    requests.post(f"{url}/_sandbox/faults", json={"error_rate": 1}, timeout=10)
    assert post(url, query).status_code in (500, 502, 503)


def test_the_plain_executor_answers_exactly_as_graphql_core():
    """Pages of dossiers are answered by the sandbox's plain executor: for the client's queries and every
    operation of the persisted query (all parts included), its answer must be graphql-core's."""
    from pathlib import Path

    from graphql import execute_sync, parse

    from sandbox.ds import SCHEMA, Context, PlainExecutor, Unusual, fragment_types

    data = DSData(((101, 150, 40),), seed=5)
    number = data.demarches[101].dossiers[7].number
    # every include flag the persisted query's operations take, set
    included = {name: True for name in set(re.findall(r"\$(include\w+)", PERSISTED_QUERIES["ds-query-v2"]))}
    queries = [
        (path.read_text(), None, {"demarcheNumber": 101, "first": 100, "after": None})
        for path in sorted((Path(__file__).resolve().parents[1] / "include" / "graphql" / "ds").glob("*.graphql"))
    ]
    persisted = PERSISTED_QUERIES["ds-query-v2"]
    queries += [
        (persisted, "getDemarche", {"demarcheNumber": 101, "first": 100, **included}),
        (persisted, "getGroupeInstructeur", {"groupeInstructeurNumber": 1012, "first": 50, **included}),
        (persisted, "getDossier", {"dossierNumber": number, **included}),
        (persisted, "getDemarcheDescriptor", {"demarche": {"number": 101}, **included}),
        (TYPED_CHAMPS, None, {"n": number}),
    ]
    for query, operation, variables in queries:
        document = parse(query)
        want = execute_sync(
            SCHEMA,
            document,
            variable_values=variables,
            operation_name=operation,
            context_value=Context(data, fragment_types(document), None),
        )
        assert not want.errors and want.data, (operation, want.errors)
        got = PlainExecutor(SCHEMA, document, variables, operation, Context(data, fragment_types(document), None))
        assert got.run() == want.data, (operation, query[:60])
    with pytest.raises(Unusual):  # a resolver's error is graphql-core's to report
        document = parse(PAGE)
        PlainExecutor(SCHEMA, document, {"n": 999}, None, Context(data, fragment_types(document), None)).run()
