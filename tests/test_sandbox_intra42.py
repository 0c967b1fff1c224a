"""The 42 intra API sandbox, over real HTTP (sandbox.common.serve + requests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from sandbox.common import Faults, RateLimiter, serve
from sandbox.intra42 import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Intra42Data, Query, create_app, to_ms

STUDENTS = 240  # + 10 extras = 250 records
CREDENTIALS = {
    "grant_type": "client_credentials",
    "client_id": DEFAULT_CLIENT_ID,
    "client_secret": DEFAULT_CLIENT_SECRET,
}
STUDENT_FILTER = {"filter[kind]": "student", "filter[alumni?]": "false"}


@pytest.fixture(scope="module")
def sandbox():
    """One server for the module, with limits no test reaches."""
    data = Intra42Data(students=STUDENTS, seed=7)
    app = create_app(data, per_second=100_000, per_hour=1_000_000)
    with serve(app) as url:
        yield url, app


def get_token(url: str) -> str:
    response = requests.post(f"{url}/oauth/token", data=CREDENTIALS, timeout=5)
    response.raise_for_status()
    return response.json()["access_token"]


@pytest.fixture
def api(url):
    """A session that sends a fresh bearer token; ``api.get("/v2/...")`` takes paths."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {get_token(url)}"
    get = session.get
    session.get = lambda path, **kw: get(path if path.startswith("http") else url + path, timeout=5, **kw)
    yield session
    session.close()


def set_faults(url: str, **faults) -> None:
    requests.post(f"{url}/_sandbox/faults", json=faults, timeout=5).raise_for_status()


def state(url: str) -> dict:
    return requests.get(f"{url}/_sandbox/state", timeout=5).json()


# ------------------------------------------------------------------------------------------ auth


def test_token_flow(url):
    for path in ("/oauth/token", "/v2/oauth/token"):
        response = requests.post(url + path, data=CREDENTIALS, timeout=5)
        assert response.status_code == 200
        body = response.json()
        assert body["token_type"] == "bearer" and body["expires_in"] == 7200 and body["scope"] == "public"
        assert len(body["access_token"]) == 64 and abs(body["created_at"] - time.time()) < 5
    # Client credentials in HTTP Basic auth instead of the form.
    response = requests.post(
        f"{url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET),
        timeout=5,
    )
    assert response.status_code == 200
    info = requests.get(
        f"{url}/oauth/token/info",
        headers={"Authorization": f"Bearer {response.json()['access_token']}"},
        timeout=5,
    ).json()
    assert info["application"] == {"uid": DEFAULT_CLIENT_ID} and 7100 < info["expires_in_seconds"] <= 7200
    assert state(url)["stats"]["tokens_issued"] == 3


def test_bad_credentials_are_401_invalid_client(url):
    response = requests.post(f"{url}/oauth/token", data={**CREDENTIALS, "client_secret": "nope"}, timeout=5)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    response = requests.post(f"{url}/oauth/token", data={**CREDENTIALS, "grant_type": "password"}, timeout=5)
    assert response.status_code == 400 and response.json()["error"] == "unsupported_grant_type"


def test_missing_or_unknown_token_is_401_invalid(url):
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        response = requests.get(f"{url}/v2/cursus/21/users", headers=headers, timeout=5)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == (
            'Bearer realm="42 API", error="invalid_token", error_description="The access token is invalid"'
        )
        assert response.headers["X-Hourly-RateLimit-Limit"] == "1000000"
    # The token may also come as a query parameter.
    response = requests.get(f"{url}/v2/cursus/21/users", params={"access_token": get_token(url)}, timeout=5)
    assert response.status_code == 200
    assert state(url)["stats"]["unauthorized"] == 2


def test_expired_token_is_401_expired(url, api):
    assert api.get("/v2/cursus/21/users").status_code == 200
    assert requests.post(f"{url}/_sandbox/expire_tokens", timeout=5).json()["expired"] >= 1
    response = api.get("/v2/cursus/21/users")
    assert response.status_code == 401
    assert 'error_description="The access token expired"' in response.headers["WWW-Authenticate"]
    fresh = {"Authorization": f"Bearer {get_token(url)}"}
    assert api.get("/v2/cursus/21/users", headers=fresh).status_code == 200


def test_token_lifetime():
    app = create_app(Intra42Data(students=10), token_ttl=0.3)
    with serve(app) as url:
        headers = {"Authorization": f"Bearer {get_token(url)}"}
        assert requests.get(f"{url}/v2/users", headers=headers, timeout=5).status_code == 200
        time.sleep(0.4)
        response = requests.get(f"{url}/v2/users", headers=headers, timeout=5)
        assert response.status_code == 401 and "expired" in response.headers["WWW-Authenticate"]


# ------------------------------------------------------------------------------------------ pages


def test_pagination_headers_and_links(api, url):
    response = api.get("/v2/cursus/21/users", params={**STUDENT_FILTER, "per_page": 50, "page": 2})
    assert response.status_code == 200
    assert len(response.json()) == 50
    h = response.headers
    assert (h["X-Page"], h["X-Per-Page"], h["X-Total"]) == ("2", "50", str(STUDENTS))
    assert h["Cache-Control"] == "max-age=0, private, must-revalidate"
    assert h["X-Application-Id"] and h["X-Request-Id"] and float(h["X-Runtime"]) >= 0
    assert h["Content-Type"] == "application/json; charset=utf-8"
    links = response.links
    assert {rel: link["url"].rsplit("page=", 1)[1] for rel, link in links.items()} == {
        "next": "3",
        "prev": "1",
        "first": "1",
        "last": "5",
    }
    # Absolute links that keep the other parameters: following "next" gives page 3 of the same query.
    assert links["next"]["url"].startswith(f"{url}/v2/cursus/21/users?")
    following = api.get(links["next"]["url"])
    assert following.headers["X-Page"] == "3" and following.headers["X-Total"] == str(STUDENTS)
    expected = api.get("/v2/cursus/21/users", params={**STUDENT_FILTER, "per_page": 50, "page": 3})
    assert following.json() == expected.json()

    first = api.get("/v2/cursus/21/users", params={**STUDENT_FILTER, "per_page": 50})
    assert set(first.links) == {"next", "last"}
    last = api.get("/v2/cursus/21/users", params={**STUDENT_FILTER, "per_page": 50, "page": 5})
    assert set(last.links) == {"prev", "first"} and len(last.json()) == 40


def test_both_pagination_styles(api):
    plain = api.get("/v2/cursus/21/users", params={"page": 3, "per_page": 7})
    brackets = api.get("/v2/cursus/21/users", params={"page[number]": 3, "page[size]": 7})
    assert plain.json() == brackets.json() and len(plain.json()) == 7
    assert brackets.headers["X-Page"] == "3" and brackets.headers["X-Per-Page"] == "7"
    # Links use page=N but keep page[size].
    assert "page%5Bsize%5D=7" in brackets.links["next"]["url"]
    assert api.get(brackets.links["next"]["url"]).json() == api.get("/v2/users?page=4&per_page=7").json()


def test_per_page_default_and_clamp(api):
    default = api.get("/v2/cursus/21/users")
    assert default.headers["X-Per-Page"] == "30" and len(default.json()) == 30
    clamped = api.get("/v2/cursus/21/users", params={"per_page": 500})
    assert clamped.headers["X-Per-Page"] == "100" and len(clamped.json()) == 100


def test_walking_all_pages_gives_the_ground_truth(api, data):
    records, page = [], 1
    while True:
        response = api.get(
            "/v2/cursus/21/users", params={**STUDENT_FILTER, "sort": "id", "per_page": 100, "page": page}
        )
        assert response.headers["X-Total"] == str(STUDENTS)
        if not response.json():
            break
        records += response.json()
        page += 1
    assert page == 4  # past the last page: []
    assert records == data.students()
    assert len(records) == STUDENTS and all(r["kind"] == "student" and not r["alumni?"] for r in records)


# ------------------------------------------------------------------------------------------ queries


def all_records(api, **params) -> list[dict]:
    response = api.get("/v2/cursus/21/users", params={"per_page": 100, **params})
    assert int(response.headers["X-Total"]) <= 100
    return response.json()


def test_filters(api, data):
    everyone = data.matching()
    assert len(everyone) == STUDENTS + STUDENTS // 24
    extras = [r for r in everyone if r["kind"] != "student" or r["alumni?"]]
    assert {r["kind"] for r in extras} >= {"external", "admin"} and any(r["alumni?"] for r in extras)

    externals = all_records(api, **{"filter[kind]": "external,admin"})
    assert externals == [r for r in everyone[::-1] if r["kind"] in ("external", "admin")]  # default sort -id
    staff = all_records(api, **{"filter[staff?]": "true"})
    assert staff and all(r["staff?"] and r["kind"] == "admin" for r in staff)
    alumni = all_records(api, **{"filter[alumni?]": "true"})
    assert alumni and all(r["alumni?"] and r["alumnized_at"] for r in alumni)

    picked = everyone[3], everyone[100]
    by_id = all_records(api, **{"filter[id]": f"{picked[0]['id']},{picked[1]['id']}"})
    assert {r["id"] for r in by_id} == {picked[0]["id"], picked[1]["id"]}
    assert all_records(api, **{"filter[login]": picked[1]["login"]}) == [picked[1]]
    year = picked[0]["pool_year"]
    assert all(r["pool_year"] == year for r in all_records(api, **{"filter[pool_year]": year}))

    assert api.get("/v2/cursus/21/users", params={"filter[nope]": "1"}).status_code == 400
    assert api.get("/v2/cursus/21/users", params={"filter[alumni?]": "maybe"}).status_code == 400


def test_range_on_updated_at_and_id(api, data):
    students = data.students()
    bound = sorted(r["updated_at"] for r in students)[len(students) // 2]  # an existing value: inclusive
    lo, hi = to_ms(bound), to_ms("2025-03-01T00:00:00Z")
    expected = [r for r in students if lo <= to_ms(r["updated_at"]) <= hi]
    params = {**STUDENT_FILTER, "range[updated_at]": f"{bound},2025-03-01T00:00:00Z", "sort": "id"}
    assert all_records(api, **params) == expected and bound in {r["updated_at"] for r in expected}
    # The same instants written with an offset.
    paris_summer = timezone(timedelta(hours=2))
    start = datetime.fromisoformat(bound).astimezone(paris_summer).isoformat(timespec="milliseconds")
    params["range[updated_at]"] = f"{start},2025-03-01T02:00:00+02:00"
    assert all_records(api, **params) == expected

    ids = [r["id"] for r in students]
    in_range = all_records(api, **{**STUDENT_FILTER, "range[id]": f"{ids[10]},{ids[20]}", "sort": "id"})
    assert [r["id"] for r in in_range] == ids[10:21]
    assert api.get("/v2/users", params={"range[updated_at]": "yesterday,today"}).status_code == 400


def test_sort(api, data):
    default = api.get("/v2/cursus/21/users", params={"per_page": 100}).json()
    assert [r["id"] for r in default] == sorted((r["id"] for r in data.matching()), reverse=True)[:100]
    by_update = all_records(api, **{"filter[kind]": "external,admin", "sort": "-updated_at,id"})
    keys = [(r["updated_at"], -r["id"]) for r in by_update]
    assert keys == sorted(keys, reverse=True)
    alumni = all_records(api, **{"filter[alumni?]": "true", "sort": "pool_year,-id"})
    keys = [(r["pool_year"], -r["id"]) for r in alumni]
    assert keys == sorted(keys)
    assert api.get("/v2/users", params={"sort": "-nope"}).status_code == 400


def test_cursus_slug_other_cursus_and_single_user(api, data):
    params = {"sort": "id", "per_page": 20}
    assert api.get("/v2/cursus/42cursus/users", params=params).json() == data.matching()[:20]
    other = api.get("/v2/cursus/9/users")
    assert other.status_code == 200 and other.json() == [] and other.headers["X-Total"] == "0"
    record = data.students()[5]
    by_id = api.get(f"/v2/users/{record['id']}").json()
    assert {k: by_id[k] for k in record} == record
    assert by_id["cursus_users"][0]["cursus_id"] == 21 and by_id["campus"]
    assert api.get(f"/v2/users/{record['login']}").json()["id"] == record["id"]
    assert api.get("/v2/users/1").status_code == 404


# ------------------------------------------------------------------------------------------ rate limit


def test_rate_limiter_sliding_windows():
    now = [1000.0]
    limiter = RateLimiter([(2, 1.0), (5, 60.0)], clock=lambda: now[0])
    assert limiter.check("a") == (True, 0.0, {1.0: 1, 60.0: 4})
    now[0] += 0.4
    assert limiter.check("a")[0]
    allowed, retry_after, remaining = limiter.check("a")
    assert not allowed and retry_after == pytest.approx(0.6) and remaining == {1.0: 0, 60.0: 3}
    assert limiter.check("b")[0]  # keys are independent
    now[0] += 0.6  # the first request leaves the 1 s window; the refused one was not recorded
    assert limiter.check("a")[0]
    now[0] += 1.0
    assert limiter.check("a")[0] and limiter.check("a")[0]  # 5 in the minute now
    allowed, retry_after, remaining = limiter.check("a")
    assert not allowed and retry_after == pytest.approx(58.0) and remaining == {1.0: 0, 60.0: 0}
    assert limiter.peek("a") == {1.0: 0, 60.0: 0}


def test_rate_limit_429_and_headers():
    with serve(create_app(Intra42Data(students=30), per_second=2, per_hour=3)) as url:
        headers = {"Authorization": f"Bearer {get_token(url)}"}

        def call():
            return requests.get(f"{url}/v2/cursus/21/users", headers=headers, timeout=5)

        first, second, third = call(), call(), call()
        assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
        assert first.headers["X-Secondly-RateLimit-Limit"] == "2"
        assert first.headers["X-Secondly-RateLimit-Remaining"] == "1"
        assert second.headers["X-Secondly-RateLimit-Remaining"] == "0"
        assert second.headers["X-Hourly-RateLimit-Limit"] == "3"
        assert second.headers["X-Hourly-RateLimit-Remaining"] == "1"
        assert third.headers["Retry-After"] == "1" and third.json()["error"] == "Too Many Requests"
        assert third.headers["X-Secondly-RateLimit-Remaining"] == "0"
        # Token requests are not limited.
        assert requests.post(f"{url}/oauth/token", data=CREDENTIALS, timeout=5).status_code == 200
        time.sleep(1.05)
        assert call().status_code == 200  # third of the hour
        hourly = call()
        assert hourly.status_code == 429 and int(hourly.headers["Retry-After"]) > 3500
        assert hourly.headers["X-Hourly-RateLimit-Remaining"] == "0"
        stats = state(url)["stats"]
        assert (stats["throttled"], stats["throttled_limit"], stats["throttled_burst"]) == (2, 2, 0)


# ------------------------------------------------------------------------------------------ faults


def test_error_rate(api, url):
    set_faults(url, error_rate=1.0)
    statuses = {api.get("/v2/cursus/21/users").status_code for _ in range(12)}
    assert statuses <= {500, 502, 503} and len(statuses) > 1
    assert requests.post(f"{url}/oauth/token", data=CREDENTIALS, timeout=5).status_code == 200
    assert state(url)["stats"]["errors_injected"] == 12

    def sequence():
        set_faults(url, error_rate=0.5, seed=3)
        return [api.get("/v2/users").status_code for _ in range(16)]

    first = sequence()
    assert 200 in first and set(first) - {200}
    assert sequence() == first  # same seed and requests: same faults


def test_burst_429(api, url):
    set_faults(url, burst_429=2, burst_retry_after=3)
    first, second, third = (api.get("/v2/cursus/21/users") for _ in range(3))
    assert (first.status_code, second.status_code, third.status_code) == (429, 429, 200)
    assert first.headers["Retry-After"] == "3" and "X-Secondly-RateLimit-Remaining" in first.headers
    stats = state(url)
    assert stats["stats"]["throttled_burst"] == 2 and stats["faults"]["burst_429"] == 0


def test_latency(api, url):
    set_faults(url, latency=0.3)
    started = time.perf_counter()
    assert api.get("/v2/cursus/21/users").status_code == 200
    assert time.perf_counter() - started >= 0.3
    started = time.perf_counter()
    requests.post(f"{url}/oauth/token", data=CREDENTIALS, timeout=5).raise_for_status()
    assert time.perf_counter() - started < 0.3  # faults only hit the API endpoints


def test_truncated_bodies(api, url):
    full = api.get("/v2/cursus/21/users")
    set_faults(url, truncate_rate=1.0)
    cut = api.get("/v2/cursus/21/users")
    assert cut.status_code == 200
    assert int(cut.headers["Content-Length"]) == len(cut.content) < len(full.content)
    assert full.content.startswith(cut.content)
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.content)
    assert state(url)["stats"]["truncated"] == 1


def test_duplicated_records(api, url):
    params = {"sort": "id", "per_page": 10}
    clean = [api.get("/v2/users", params={**params, "page": n}).json() for n in (1, 2)]
    set_faults(url, duplicate_rate=1.0)
    page1 = api.get("/v2/users", params={**params, "page": 1}).json()
    repeated = len(page1) - 10  # a first page repeats its own last records
    assert 1 <= repeated <= 3 and page1 == clean[0][-repeated:] + clean[0]
    page2 = api.get("/v2/users", params={**params, "page": 2})
    repeated = len(page2.json()) - 10
    assert 1 <= repeated <= 3 and page2.headers["X-Total"] == str(STUDENTS + STUDENTS // 24)
    assert page2.json() == clean[0][-repeated:] + clean[1]
    assert state(url)["stats"]["duplicated"] == 2


def test_fault_control_endpoint(url):
    bad = requests.post(f"{url}/_sandbox/faults", json={"error_rate": 2}, timeout=5)
    assert bad.status_code == 400
    assert requests.post(f"{url}/_sandbox/faults", json={"nope": 1}, timeout=5).status_code == 400
    set_faults(url, error_rate=0.25, latency=0.01)
    faults = state(url)["faults"]
    assert faults["error_rate"] == 0.25 and faults["latency"] == 0.01 and faults["truncate_rate"] == 0
    requests.post(f"{url}/_sandbox/reset", timeout=5).raise_for_status()
    assert state(url)["faults"] == Faults().as_dict()
    faults = Faults()
    faults.update({"burst_429": 3})
    with pytest.raises(ValueError):
        faults.update({"burst_429": 1.5})


def test_state_counts_requests(api, url):
    api.get("/v2/cursus/21/users")
    api.get("/v2/cursus/21/users")
    current = state(url)
    assert current["stats"]["paths"] == {"/oauth/token": 1, "/v2/cursus/21/users": 2}
    assert current["stats"]["requests"] == 3  # control endpoints are not counted
    assert current["data"]["records"] == STUDENTS + STUDENTS // 24 and current["api"] == "intra42"


# ------------------------------------------------------------------------------------------ data


def test_mutate_changes_exactly_k_students(api, url, data):
    before = data.students()
    started = datetime.now(UTC)
    ids = requests.post(f"{url}/_sandbox/mutate", json={"k": 5}, timeout=5).json()["ids"]
    after = data.students()
    assert len(ids) == 5 == len(set(ids))
    changed = {b["id"] for b, a in zip(before, after, strict=True) if a != b}
    assert changed == set(ids)
    for b, a in zip(before, after, strict=True):
        if a["id"] in changed:
            assert a["location"] != b["location"] and a["wallet"] != b["wallet"]
            updated = datetime.fromisoformat(a["updated_at"])
            assert updated > datetime.fromisoformat(b["updated_at"])
            assert updated >= started - timedelta(seconds=1)
    # What an incremental sync sees through the API.
    since = (started - timedelta(seconds=1)).isoformat()
    recent = all_records(api, **{**STUDENT_FILTER, "range[updated_at]": f"{since},2100-01-01T00:00:00Z"})
    assert {r["id"] for r in recent} == set(ids)
    assert [r for r in after if r["id"] in changed] == sorted(recent, key=lambda r: r["id"])
    # A second call changes other students; reset restores the original data.
    assert not set(data.mutate(5)) & set(ids)
    requests.post(f"{url}/_sandbox/reset", timeout=5).raise_for_status()
    assert data.students() == before


def test_data_is_deterministic_and_realistic():
    assert Intra42Data(students=300, seed=3).students() == Intra42Data(students=300, seed=3).students()
    assert Intra42Data(students=300, seed=3).students() != Intra42Data(students=300, seed=4).students()
    data = Intra42Data(3000, seed=5, updated_from="2024-06-01T00:00:00Z", updated_to="2024-07-01T00:00Z")
    everyone = data.matching()
    students = data.students()
    assert len(students) == 3000 and 0.03 < len(everyone) / 3000 - 1 < 0.05
    logins = [r["login"] for r in everyone]
    assert len(set(logins)) == len(logins)
    assert all(r["email"] == f"{r['login']}@student.42.fr" for r in everyone)
    ids = [r["id"] for r in everyone]
    assert len(set(ids)) == len(ids) and ids[-1] - ids[0] + 1 > len(ids)  # unique, with gaps
    lo, hi = to_ms("2024-06-01T00:00:00Z"), to_ms("2024-07-01T00:00:00Z")
    for r in everyone:
        assert to_ms(r["created_at"]) < to_ms(r["updated_at"])
        assert lo <= to_ms(r["updated_at"]) < hi and r["updated_at"].endswith("Z")
    student = students[0]
    assert isinstance(student["pool_year"], str) and student["phone"] == "hidden"
    assert student["url"] == f"https://api.intra.42.fr/v2/users/{student['login']}"
    names = "".join(r["first_name"] + r["last_name"] + (r["usual_first_name"] or "") for r in everyone)
    assert {"é", "ñ", "ł"} <= set(names) and any(ord(c) > 0x3000 for c in names)
    located = sum(r["location"] is not None for r in students) / len(students)
    assert 0.03 < located < 0.3


def test_default_dataset_is_fast_to_build():
    started = time.perf_counter()
    data = Intra42Data()
    assert len(data.positions(Query.build({"kind": "student", "alumni?": "false"}))) == 40335
    assert time.perf_counter() - started < 2.0


# ------------------------------------------------------------------------------------------ CLI


def test_cli_serves_until_interrupted():
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "intra42", "--port", "0", "--students", "50", "--per-second", "5"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        line = process.stdout.readline()
        url = line.split("listening on ", 1)[1].split()[0]
        current = state(url)
        assert current["data"]["students"] == 50 and current["limits"][0] == {"limit": 5, "window": 1.0}
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
