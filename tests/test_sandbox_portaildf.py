"""The Portail DF API sandbox, over real HTTP (sandbox.common.serve + requests)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import requests

from sandbox.common import serve
from sandbox.portaildf import DEFAULT_PASSWORD, DEFAULT_USERNAME, KINDS, PortailDFData, create_app

ROOT = Path(__file__).resolve().parents[1]
USERS = 300
CREDENTIALS = {"username": DEFAULT_USERNAME, "password": DEFAULT_PASSWORD}
RECORD_TYPES = {
    "id_user": (int,),
    "email": (str,),
    "date_rattachement": (str,),
    "structure": (int,),
    "date_expiration": (str, type(None)),
    "exterieur": (bool,),
    "gestionnaire": (bool,),
    "groupe": (int, type(None)),
    "cgu_valide": (str, type(None)),
    "str_mandataire": (type(None),),
}


@pytest.fixture(scope="module")
def sandbox():
    """One server for the module, with a limit no test reaches."""
    data = PortailDFData(users=USERS, seed=5)
    app = create_app(data, per_second=100_000)
    with serve(app) as url:
        yield url, app


def v1_token(url: str) -> str:
    response = requests.post(f"{url}/api/api-token-auth/", data=CREDENTIALS, timeout=5)
    response.raise_for_status()
    return response.json()["token"]


def v2_tokens(url: str) -> dict:
    response = requests.post(f"{url}/api/token/", json=CREDENTIALS, timeout=5)
    response.raise_for_status()
    return response.json()


def session(url: str, authorization: str) -> requests.Session:
    """A session sending ``authorization``; ``.get("/api/...")`` takes paths or absolute URLs."""
    s = requests.Session()
    s.headers["Authorization"] = authorization
    get = s.get
    s.get = lambda path, **kw: get(path if path.startswith("http") else url + path, timeout=10, **kw)
    return s


@pytest.fixture
def api(url):
    with session(url, f"Token {v1_token(url)}") as s:
        yield s


def lookup(api, email: str) -> dict:
    response = api.get("/api/utilisateurs", params={"email": email})
    assert response.status_code == 200, response.text
    return response.json()


def set_faults(url: str, **faults) -> None:
    requests.post(f"{url}/_sandbox/faults", json=faults, timeout=5).raise_for_status()


def state(url: str) -> dict:
    return requests.get(f"{url}/_sandbox/state", timeout=5).json()


def repair(link: str) -> str:
    """What a client must do with the server's next links."""
    return link.replace("%23", "").replace("#", "")


def jwt_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# ------------------------------------------------------------------------------------------ auth


def test_v1_token_from_form_multipart_or_json(url):
    form = requests.post(f"{url}/api/api-token-auth/", data=CREDENTIALS, timeout=5)
    multipart = requests.post(
        f"{url}/api/api-token-auth/", files={k: (None, v) for k, v in CREDENTIALS.items()}, timeout=5
    )
    as_json = requests.post(f"{url}/api/api-token-auth/", json=CREDENTIALS, timeout=5)
    tokens = {r.json()["token"] for r in (form, multipart, as_json)}
    assert len(tokens) == 1  # DRF: one token per user
    token = tokens.pop()
    assert len(token) == 40 and int(token, 16) >= 0
    assert form.headers["Content-Type"] == "application/json"
    for scheme in ("Token", "token"):  # DRF compares the keyword case-insensitively
        response = requests.get(f"{url}/api/structures", headers={"Authorization": f"{scheme} {token}"}, timeout=5)
        assert response.status_code == 200
    assert state(url)["stats"]["tokens_issued"] == 3


def test_v1_errors(url):
    bad = requests.post(f"{url}/api/api-token-auth/", data={**CREDENTIALS, "password": "nope"}, timeout=5)
    assert bad.status_code == 400
    assert bad.json() == {"non_field_errors": ["Unable to log in with provided credentials."]}
    missing = requests.post(f"{url}/api/api-token-auth/", json={"username": DEFAULT_USERNAME}, timeout=5)
    assert missing.status_code == 400 and missing.json() == {"password": ["This field is required."]}
    cases = {
        "Token 0123456789abcdef0123456789abcdef01234567": "Invalid token.",
        "Token": "Invalid token header. No credentials provided.",
        "Token a b": "Invalid token header. Token string should not contain spaces.",
    }
    for header, detail in cases.items():
        response = requests.get(f"{url}/api/utilisateurs", headers={"Authorization": header}, timeout=5)
        assert response.status_code == 401 and response.json() == {"detail": detail}
        assert response.headers["WWW-Authenticate"] == "Token"
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}):
        response = requests.get(f"{url}/api/utilisateurs", headers=headers, timeout=5)
        assert response.status_code == 401
        assert response.json() == {"detail": "Authentication credentials were not provided."}
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert state(url)["stats"]["unauthorized"] == 6


def test_v2_tokens_refresh_and_errors(url):
    pair = v2_tokens(url)
    assert list(pair) == ["refresh", "access"]
    access, refresh = pair["access"], pair["refresh"]
    assert access.count(".") == 2 and jwt_claims(access)["token_type"] == "access"
    claims = jwt_claims(access)
    assert 299 <= claims["exp"] - claims["iat"] <= 301 and claims["user_id"] == 1
    assert requests.get(f"{url}/api/structures", headers={"Authorization": f"Bearer {access}"}, timeout=5).ok

    def call(header: str) -> requests.Response:
        return requests.get(f"{url}/api/structures", headers={"Authorization": header}, timeout=5)

    for header in (f"Bearer {refresh}", f"Bearer {access}x", f"Token {access}"):
        response = call(header)
        assert response.status_code == 401
    assert call(f"Bearer {refresh}").json()["code"] == "token_not_valid"
    assert call(f"Bearer {refresh}").json()["detail"] == "Given token not valid for any token type"
    assert call(f"Token {access}").json() == {"detail": "Invalid token."}
    # SimpleJWT compares "Bearer" case-sensitively: "bearer" is no credentials at all.
    assert call(f"bearer {access}").json() == {"detail": "Authentication credentials were not provided."}
    assert call("Bearer a b").json()["code"] == "bad_authorization_header"

    bad = requests.post(f"{url}/api/token/", json={**CREDENTIALS, "password": "nope"}, timeout=5)
    assert bad.status_code == 401
    assert bad.json() == {"detail": "No active account found with the given credentials"}
    assert bad.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    refreshed = requests.post(f"{url}/api/token/refresh/", json={"refresh": refresh}, timeout=5)
    assert refreshed.status_code == 200 and list(refreshed.json()) == ["access"]
    assert call(f"Bearer {refreshed.json()['access']}").status_code == 200
    wrong = requests.post(f"{url}/api/token/refresh/", json={"refresh": access}, timeout=5)
    assert wrong.status_code == 401 and wrong.json()["code"] == "token_not_valid"
    assert requests.get(f"{url}/api/token/", timeout=5).json() == {"detail": 'Method "GET" not allowed.'}


def test_v2_access_token_expires():
    with serve(create_app(PortailDFData(users=20), access_ttl=0.3)) as url:
        pair = v2_tokens(url)
        headers = {"Authorization": f"Bearer {pair['access']}"}
        assert requests.get(f"{url}/api/utilisateurs", headers=headers, timeout=5).status_code == 200
        time.sleep(0.4)
        response = requests.get(f"{url}/api/utilisateurs", headers=headers, timeout=5)
        assert response.status_code == 401
        body = response.json()
        assert body["code"] == "token_not_valid" and body["messages"][0]["token_type"] == "access"
        access = requests.post(f"{url}/api/token/refresh/", json={"refresh": pair["refresh"]}, timeout=5).json()
        headers = {"Authorization": f"Bearer {access['access']}"}
        assert requests.get(f"{url}/api/utilisateurs", headers=headers, timeout=5).status_code == 200
        assert state(url)["tokens"] == {"v1": 0, "v2_access_valid": 1, "v2_refresh_valid": 1}


def test_expire_tokens_control(url):
    old_v1, pair = v1_token(url), v2_tokens(url)
    headers = ({"Authorization": f"Token {old_v1}"}, {"Authorization": f"Bearer {pair['access']}"})
    assert all(requests.get(f"{url}/api/structures", headers=h, timeout=5).ok for h in headers)
    assert requests.post(f"{url}/_sandbox/expire_tokens", timeout=5).json()["expired"] >= 2
    v1, v2 = (requests.get(f"{url}/api/structures", headers=h, timeout=5) for h in headers)
    assert v1.status_code == 401 and v1.json() == {"detail": "Invalid token."}
    assert v2.status_code == 401 and v2.json()["code"] == "token_not_valid"
    new_v1 = v1_token(url)
    assert new_v1 != old_v1
    assert requests.get(f"{url}/api/structures", headers={"Authorization": f"Token {new_v1}"}, timeout=5).ok
    refreshed = requests.post(f"{url}/api/token/refresh/", json={"refresh": pair["refresh"]}, timeout=5)
    assert refreshed.status_code == 200  # refresh tokens survive


# ------------------------------------------------------------------------------------------ lookups


def test_lookup_found_and_not_found(api, data):
    record = data.records()[7]
    body = lookup(api, record["email"])
    assert body == {"count": 1, "next": None, "previous": None, "results": [record]}
    found = body["results"][0]
    assert list(found) == list(RECORD_TYPES)
    for field, types in RECORD_TYPES.items():
        assert type(found[field]) in types, field
    for field in ("date_rattachement", "date_expiration", "cgu_valide"):
        for r in data.records():
            if r[field] is not None:
                moment = datetime.fromisoformat(r[field])
                assert moment.utcoffset() in (timedelta(hours=1), timedelta(hours=2)), r[field]
                assert r[field][-6:] in ("+01:00", "+02:00")
    assert lookup(api, "nobody@nowhere.example") == {"count": 0, "next": None, "previous": None, "results": []}


def test_lookup_is_case_insensitive_exact(api, data):
    record = next(r for r in data.records() if r["email"].isascii() and "+" not in r["email"])
    assert lookup(api, record["email"].upper())["results"] == [record]
    assert lookup(api, f"  {record['email']} ")["count"] == 1  # the form field strips the value
    local, domain = record["email"].split("@")
    assert lookup(api, f"{local[1:]}@{domain}")["count"] == 0  # no "contains"
    assert lookup(api, record["email"] + "x")["count"] == 0
    # App users whose stored case differs from the directory's.
    differing = [
        u["email"]
        for u in data.app_users()
        if u["email"] and data.find(u["email"]) and data.find(u["email"])["email"] != u["email"]
    ]
    assert differing
    for email in differing[:5]:
        body = lookup(api, email)
        assert body["count"] == 1 and body["results"][0]["email"].casefold() == email.casefold()


def test_case_twins_a_case_insensitive_directory_with_case_variant_duplicates():
    """case_twins: some known users have a twin, the same address in another letter case with other flags;
    a lookup answers both, in no fixed order. The ground truth is the user's own record when the address
    is exact, or when the twins agree; otherwise (no exact match, different flags) nobody can tell."""
    data = PortailDFData(users=400, seed=3, case_twins=0.3)
    plain = PortailDFData(users=400, seed=3)
    assert data.app_users() == plain.app_users() and data.records()[: len(plain)] == plain.records()
    twins = data.records()[len(plain) :]
    assert len(twins) > 50
    with serve(create_app(data, per_second=100_000)) as url, session(url, f"Token {v1_token(url)}") as api:
        firsts = set()
        for twin in twins[:40]:
            results = lookup(api, twin["email"].lower())["results"]
            assert len(results) == 2 and len({r["email"] for r in results}) == 2
            assert len({(r["exterieur"], r["gestionnaire"]) for r in results}) == 2  # different flags
            firsts.add(results[0]["id_user"] == twin["id_user"])
        assert firsts == {True, False}  # the asked-for case is not always first
    own, expected = data.own_kinds(), data.expected_kinds()
    assert own == plain.expected_kinds()  # everyone keeps their own record
    ambiguous = [i for i in own if expected[i] != own[i]]
    assert ambiguous and all(expected[i] is None for i in ambiguous)  # never someone else's kind
    for user in data.app_users():
        if user["id"] in ambiguous:
            assert all(r["email"] != user["email"] for r in data.find_all(user["email"]))


def test_plus_sign_must_be_percent_encoded(api, url, data):
    email = next(r["email"] for r in data.records() if "+" in r["email"] and r["email"].isascii())
    assert lookup(api, email)["count"] == 1  # requests sends %2B
    raw = api.get(f"{url}/api/utilisateurs?email={email.replace('+', '%2B')}").json()
    assert raw["count"] == 1 and raw["results"][0]["email"] == email
    naive = api.get(f"{url}/api/utilisateurs?email={email}").json()  # a literal + is a space
    assert naive == {"count": 0, "next": None, "previous": None, "results": []}


def test_unicode_emails(api, data):
    accented = [r for r in data.records() if not r["email"].isascii()]
    non_latin = [r for r in accented if not any("a" <= c <= "z" for c in r["email"].split("@")[0].lower())]
    assert accented and non_latin
    for record in accented[:3] + non_latin[:2]:
        assert lookup(api, record["email"])["results"] == [record]
    caps = next(r for r in accented if r["email"][0].isalpha() and not r["email"][0].isascii())
    assert lookup(api, caps["email"].upper())["results"] == [caps]  # 'ÉLODIE...' matches 'élodie...'


def test_blank_email_is_no_filter(api, data):
    """django-filter ignores a blank value: a client sending email= gets everyone (a trap, not a match)."""
    body = api.get("/api/utilisateurs", params={"email": " "}).json()
    assert body["count"] == len(data) and len(body["results"]) == 100
    assert api.get("/api/utilisateurs", params={"email": "a\x00b"}).status_code == 400


def test_every_app_user_gets_its_expected_kind(api, data):
    """The ground truth, through HTTP: every app user's lookup gives expected_kind()."""
    kinds = {}
    for user in data.app_users():
        if user["email"] is None:
            kinds[user["id"]] = None
            continue
        results = lookup(api, user["email"].strip())["results"]
        kinds[user["id"]] = KINDS[(results[0]["exterieur"], results[0]["gestionnaire"])] if results else None
    assert kinds == data.expected_kinds()
    assert data.expected_kind(None) is None and data.expected_kind("") is None


# ------------------------------------------------------------------------------------------ pages


def test_walk_with_repaired_quirky_links(api, url, data):
    page = api.get("/api/utilisateurs", params={"page_size": 50}).json()
    assert page["count"] == len(data) and page["previous"] is None
    records, links = list(page["results"]), []
    while page["next"]:
        links.append(page["next"])
        assert page["next"].startswith("http://127.0.0.1:") and "page_size=50" in page["next"]
        page = api.get(repair(page["next"])).json()
        records += page["results"]
        if len(links) == 1:
            assert page["previous"] == f"{url}/api/utilisateurs/?page_size=50"  # page 2: no page parameter
    assert records == data.records()  # each record exactly once, in id_user order
    assert len(links) == -(-len(data) // 50) - 1
    assert all("/api/utilisateurs/%23?page=" in link for link in links[0::2])  # to pages 2, 4...
    assert all("#?page=" in link and "%23" not in link for link in links[1::2])  # to pages 3, 5...
    # Unrepaired: the literal %23 path does not exist, and the '#' link (fragment dropped) is page 1 again.
    broken = api.get(links[0])
    assert broken.status_code == 404 and broken.json() == {"detail": "Not found."}
    assert api.get(links[1]).json()["results"] == data.records(0, 100)


def test_links_scheme_and_quirk_switch(api, url):
    forwarded = {"X-Forwarded-Proto": "https"}
    quirky = api.get("/api/structures", params={"page_size": 2}, headers=forwarded).json()
    assert quirky["next"].startswith("http://") and "%23" in quirky["next"]
    with serve(create_app(PortailDFData(users=60, seed=1), link_quirks=False)) as clean_url:
        headers = {"Authorization": f"Token {v1_token(clean_url)}", **forwarded}
        body = requests.get(f"{clean_url}/api/utilisateurs/?page_size=10&page=2", headers=headers, timeout=5).json()
        host = clean_url.removeprefix("http://")
        assert body["next"] == f"https://{host}/api/utilisateurs/?page=3&page_size=10"
        assert body["previous"] == f"https://{host}/api/utilisateurs/?page_size=10"


def test_page_size_and_invalid_pages(api, data):
    assert len(api.get("/api/utilisateurs").json()["results"]) == 100  # default page size
    for size in ("0", "-3", "x"):
        assert len(api.get("/api/utilisateurs", params={"page_size": size}).json()["results"]) == 100
    big = PortailDFData(users=900, seed=2)
    assert len(big) > 1000
    with serve(create_app(big, per_second=1000)) as big_url:
        headers = {"Authorization": f"Token {v1_token(big_url)}"}
        body = requests.get(f"{big_url}/api/utilisateurs?page_size=5000", headers=headers, timeout=10).json()
        assert len(body["results"]) == 1000 and body["next"]  # capped
    last = api.get("/api/utilisateurs", params={"page": "last", "page_size": 50}).json()
    assert last["next"] is None and last["results"] == data.records()[-(len(data) % 50 or 50) :]
    for page in ("0", "99", "2.0", "x"):
        response = api.get("/api/utilisateurs", params={"page": page, "page_size": 50})
        assert response.status_code == 404 and response.json() == {"detail": "Invalid page."}
    # Trailing slash or not, the same answer.
    assert (
        api.get("/api/utilisateurs/?page=2").json()["results"] == api.get("/api/utilisateurs?page=2").json()["results"]
    )


def test_structures(api, data):
    body = api.get("/api/structures").json()
    assert body["count"] == data.structure_count() and body["results"] == data.structures()
    structure = data.structures()[3]
    assert set(structure) == {
        "id_structure", "raison_sociale", "siret", "naf", "formjur", "mandataire", "niveau_acces",
        "acces_df_ano", "acces_df_non_ano", "acces_lovac",
    }  # fmt: skip
    assert len(structure["siret"]) == 14 and structure["siret"].isdigit()
    for path in (f"/api/structures/{structure['id_structure']}", f"/api/structures/{structure['id_structure']}/"):
        assert api.get(path).json() == structure
    for path in ("/api/structures/999999", "/api/structures/abc"):
        response = api.get(path)
        assert response.status_code == 404 and response.json() == {"detail": "Not found."}
    known = {s["id_structure"] for s in data.structures()}
    assert {r["structure"] for r in data.records()} <= known


# ------------------------------------------------------------------------------------------ rate limit


def test_rate_limit_429_drf_body_and_proof():
    with serve(create_app(PortailDFData(users=30), per_second=3)) as url:
        headers = {"Authorization": f"Token {v1_token(url)}"}

        def call():
            return requests.get(f"{url}/api/structures", headers=headers, timeout=5)

        statuses = [call().status_code for _ in range(3)]
        refused = call()
        assert statuses == [200, 200, 200] and refused.status_code == 429
        assert refused.headers["Retry-After"] == "1"
        assert refused.json() == {"detail": "Request was throttled. Expected available in 1 second."}
        # The limit is per account: a V2 token of the same account is throttled too; token requests are not.
        bearer = {"Authorization": f"Bearer {v2_tokens(url)['access']}"}
        assert requests.get(f"{url}/api/structures", headers=bearer, timeout=5).status_code == 429
        # A 401 does not reach the limiter.
        assert requests.get(f"{url}/api/structures", timeout=5).status_code == 401
        current = state(url)
        assert current["stats"]["throttled"] == current["stats"]["throttled_limit"] == 2
        window = current["rate"]["windows"][0]
        assert window == {"limit": 3, "window": 1.0, "max_accepted_in_window": 3, "max_attempted_in_window": 5}
        assert current["rate"]["accepted"] == 3 and current["rate"]["attempted"] == 5
        time.sleep(1.05)
        assert call().status_code == 200


def test_concurrent_hammering_never_accepts_over_the_limit():
    with serve(create_app(PortailDFData(users=30), per_second=5)) as url:
        headers = {"Authorization": f"Token {v1_token(url)}"}
        with ThreadPoolExecutor(20) as pool:
            statuses = list(
                pool.map(
                    lambda _: requests.get(f"{url}/api/structures", headers=headers, timeout=10).status_code, range(60)
                )
            )
        assert set(statuses) == {200, 429}
        rate = state(url)["rate"]
        assert rate["accepted"] == statuses.count(200) and rate["attempted"] == 60
        assert rate["windows"][0]["max_accepted_in_window"] <= 5 < rate["windows"][0]["max_attempted_in_window"]


def test_burst_429_uses_drf_wording(api, url):
    set_faults(url, burst_429=1, burst_retry_after=3)
    first, second = api.get("/api/structures"), api.get("/api/structures")
    assert (first.status_code, second.status_code) == (429, 200)
    assert first.headers["Retry-After"] == "3"
    assert first.json() == {"detail": "Request was throttled. Expected available in 3 seconds."}
    assert state(url)["stats"]["throttled_burst"] == 1


# ------------------------------------------------------------------------------------------ faults


def test_latency_overlaps_under_concurrency(url, data):
    set_faults(url, latency=0.2)
    token = v1_token(url)
    emails = [r["email"] for r in data.records()[:20]]

    def one(email: str) -> int:
        headers = {"Authorization": f"Token {token}"}
        return requests.get(f"{url}/api/utilisateurs", params={"email": email}, headers=headers, timeout=10).json()[
            "count"
        ]

    started = time.perf_counter()
    with ThreadPoolExecutor(20) as pool:
        counts = list(pool.map(one, emails))
    elapsed = time.perf_counter() - started
    assert counts == [1] * 20
    assert 0.2 <= elapsed < 2.0  # sequential would take 4 s
    started = time.perf_counter()
    v1_token(url)
    assert time.perf_counter() - started < 0.2  # token endpoints have no faults


def test_error_rate(api, url):
    set_faults(url, error_rate=1.0)
    responses = [api.get("/api/utilisateurs") for _ in range(12)]
    assert {r.status_code for r in responses} <= {500, 502, 503} and len({r.status_code for r in responses}) > 1
    django = next(r for r in responses if r.status_code == 500)
    assert "<h1>Server Error (500)</h1>" in django.text and django.headers["Content-Type"].startswith("text/html")
    assert requests.post(f"{url}/api/token/", json=CREDENTIALS, timeout=5).status_code == 200
    assert state(url)["stats"]["errors_injected"] == 12

    def sequence():
        set_faults(url, error_rate=0.5, seed=3)
        return [api.get("/api/structures").status_code for _ in range(16)]

    first = sequence()
    assert 200 in first and set(first) - {200}
    assert sequence() == first


def test_truncate_duplicate_corrupt(api, url, data):
    full = api.get("/api/structures")
    set_faults(url, truncate_rate=1.0)
    cut = api.get("/api/structures")
    assert cut.status_code == 200 and full.content.startswith(cut.content) and len(cut.content) < len(full.content)
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.content)

    set_faults(url, truncate_rate=0, duplicate_rate=1.0)
    page2 = api.get("/api/utilisateurs", params={"page": 2, "page_size": 20}).json()
    repeated = len(page2["results"]) - 20
    assert 1 <= repeated <= 3 and page2["count"] == len(data)
    assert page2["results"] == data.records(20 - repeated, 40)
    assert lookup(api, data.records()[0]["email"])["results"] == [data.records()[0]]  # lookups: no duplicates

    set_faults(url, duplicate_rate=0, corrupt_rate=1.0)
    broken = [lookup(api, r["email"])["results"][0] for r in data.records()[:12]]
    assert all(b != r for b, r in zip(broken, data.records()[:12], strict=True))
    assert any(b.get("exterieur") == "oui" for b in broken) or any("gestionnaire" not in b for b in broken)
    assert state(url)["stats"]["corrupted"] == 12 and state(url)["stats"]["duplicated"] == 1


# ------------------------------------------------------------------------------------------ data


def test_mutate_and_reset(api, url, data):
    before = {u["id"]: k for u, k in zip(data.app_users(), data.expected_kinds().values(), strict=True)}
    records = data.records()
    emails = requests.post(f"{url}/_sandbox/mutate", json={"k": 5}, timeout=5).json()["ids"]
    assert len(set(emails)) == 5
    app_emails = {u["email"] for u in data.app_users()}
    assert set(emails) <= app_emails
    after = data.expected_kinds()
    changed = {i for i in before if before[i] != after[i]}
    by_id = {u["id"]: u["email"] for u in data.app_users()}
    assert {by_id[i] for i in changed} == set(emails)
    for email in emails:
        result = lookup(api, email)["results"][0]
        assert KINDS[(result["exterieur"], result["gestionnaire"])] == data.expected_kind(email)
    assert sum(a != b for a, b in zip(records, data.records(), strict=True)) == 5
    assert state(url)["data"]["mutated"] == 5
    assert not set(data.mutate(5)) & set(emails)  # other users next time
    requests.post(f"{url}/_sandbox/reset", timeout=5).raise_for_status()
    assert data.records() == records and data.expected_kinds() == before
    # Deterministic: the same data and calls mutate the same users.
    assert PortailDFData(USERS, seed=5).mutate(5) == emails


def test_generated_data_invariants():
    data = PortailDFData(users=2000, seed=11)
    users = data.app_users()
    assert len(users) == 2000 and len({u["id"] for u in users}) == 2000
    emails = [u["email"] for u in users if u["email"] is not None]
    kinds = [data.expected_kind(e) for e in emails]
    assert 0.02 < 1 - len(emails) / 2000 < 0.04  # null emails
    assert 0.08 < kinds.count(None) / 2000 < 0.12  # unknown to the directory
    assert 0.80 < (len(kinds) - kinds.count(None)) / 2000 < 0.90
    counts = {kind: kinds.count(kind) for kind in KINDS.values()}
    assert min(counts.values()) > 100  # all four combinations well represented
    assert len({e.casefold() for e in emails}) == len(emails)
    directory = data.records()
    assert len(directory) == 2000 - 60 - 200 + 500
    assert len({r["email"].casefold() for r in directory}) == len(directory)
    ids = [r["id_user"] for r in directory]
    assert ids == sorted(set(ids)) and ids[-1] - ids[0] + 1 > len(ids)
    assert all(list(r) == list(RECORD_TYPES) for r in directory)
    known = [e for e, k in zip(emails, kinds, strict=True) if k is not None]
    differing = [e for e in known if data.find(e)["email"] != e]
    assert 0.05 < len(differing) / len(known) < 0.2
    assert any(e != e.lower() for e in differing) and any(
        data.find(e)["email"] != data.find(e)["email"].lower() for e in differing
    )
    assert sum("+" in e for e in known) > 20 and sum(not e.isascii() for e in known) > 20
    assert any(not any("a" <= c <= "z" for c in e.lower()) for e in known)  # 用户@例子.公司
    assert any("+" in e for e in emails if data.expected_kind(e) is None)
    assert data.describe()["directory_only"] == 500
    # Determinism by seed.
    assert PortailDFData(300, seed=3).app_users() == PortailDFData(300, seed=3).app_users()
    assert PortailDFData(300, seed=3).records() == PortailDFData(300, seed=3).records()
    assert PortailDFData(300, seed=3).app_users() != PortailDFData(300, seed=4).app_users()


def test_ten_thousand_users_build():
    # Speed is the benchmarks' business (bench/), not a timed assertion's: this checks the sizes and lookups.
    data = PortailDFData(users=10_000)
    assert len(data.app_users()) == 10_000 and len(data) == 8700 + 2500
    emails = [u["email"] for u in data.app_users() if u["email"]]
    assert {data.expected_kind(email) for email in emails} - {None} <= set(KINDS.values())


def test_state_keys(api, url):
    api.get("/api/utilisateurs")
    current = state(url)
    assert current["api"] == "portaildf"
    assert current["stats"]["paths"] == {"/api/api-token-auth/": 1, "/api/utilisateurs": 1}
    assert set(current["data"]) >= {"app_users", "known", "unknown", "null_email", "directory_users", "mutated"}
    assert current["data"]["app_users"] == USERS
    assert set(current["rate"]) == {"accepted", "attempted", "windows"}
    assert current["rate"]["accepted"] == 1  # reset cleared the earlier tests' requests


# ------------------------------------------------------------------------------------------ CLI


def test_cli_help_and_serve():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "sandbox", "portaildf", "--port", "0"]
    helped = subprocess.run([*command, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0 and "--access-ttl" in helped.stdout and "--no-link-quirks" in helped.stdout
    process = subprocess.Popen(
        [*command, "--users", "40", "--per-second", "7", "--no-link-quirks"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        url = process.stdout.readline().split("listening on ", 1)[1].split()[0]
        current = state(url)
        assert current["data"]["app_users"] == 40 and current["limits"] == [{"limit": 7, "window": 1.0}]
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
