"""usersync.api: the client (retries, 429 waits, errors, clients built from a URL, rate-limit sharing between
clients) and the resumable fetch, over real HTTP against the 42 sandbox and raw servers."""

from __future__ import annotations

import json
import os
import re
import time

import pytest
import requests
from conftest import CLIENT_ID, CLIENT_SECRET
from usersync import intra42, staging
from usersync.api import ApiClient, ApiError, AuthError, _retry_after
from usersync.auth import OAuth2ClientCredentials

STUDENTS_ONLY = {"filter[kind]": "student", "filter[alumni?]": "false"}


@pytest.fixture
def api(intra42_sandbox):
    intra42_sandbox.control("reset")
    return intra42.client("intra42_api")


def test_retry_after_is_obeyed(api, intra42_sandbox):
    intra42_sandbox.control("faults", {"burst_429": 2, "burst_retry_after": 0.3})
    body, _ = api.fetch_json("GET", "/v2/cursus/21/users", params={**STUDENTS_ONLY, "per_page": 5})
    assert len(body) == 5
    assert api.stats.throttled == 2
    assert intra42_sandbox.state()["stats"]["throttled"] == 2


def test_the_client_stays_under_the_declared_limit(intra42_sandbox, monkeypatch):
    """A client limited to what the server allows is never refused, even when it asks as fast as it can."""
    from conftest import intra42_conn

    intra42_sandbox.control("reset")
    monkeypatch.setenv("AIRFLOW_CONN_INTRA42_API", intra42_conn(intra42_sandbox.url, rate_limit="40/s"))
    api = intra42.client("intra42_api")
    for _ in range(60):
        api.fetch_json("GET", "/v2/cursus/21/users", params={"per_page": 1})
    assert api.stats.throttled == 0
    assert intra42_sandbox.state()["stats"]["throttled"] == 0


def test_5xx_and_truncated_bodies_are_retried_then_given_up(api, intra42_sandbox):
    intra42_sandbox.control("faults", {"truncate_rate": 1.0})
    with pytest.raises(ApiError, match="unreadable JSON.*gave up after 6 retries"):
        api.fetch_json("GET", "/v2/cursus/21/users")
    intra42_sandbox.control("faults", {"error_rate": 1.0})
    with pytest.raises(ApiError, match="HTTP 5\\d\\d.*gave up after 6 retries") as failure:
        api.fetch_json("GET", "/v2/cursus/21/users")
    # The API's own words (a JSON 500 or a proxy's 502/503 page), not just the status.
    assert re.search(r"last answer: .*(Internal Server Error|Bad Gateway|Unavailable)", str(failure.value))


def test_a_retried_fetch_resumes_after_the_pages_it_staged(api, intra42_sandbox, tmp_path):
    pages = intra42.users_paginator(api, 21, STUDENTS_ONLY, per_page=100)
    asked = []

    def crash_on_page_4(state):
        asked.append(state["after_id"])
        if len(asked) == 4:
            raise RuntimeError("worker lost")
        return pages(state)

    prefix = staging.ObjectStoragePath(f"file://{tmp_path}/run")
    with pytest.raises(RuntimeError):
        staging.fetch_to_staging(prefix, crash_on_page_4, {"after_id": 0}, api)
    assert len(staging.staged_pages(prefix)) == 3

    resumed = []
    retry_api = intra42.client("intra42_api")  # a retry is a new process: a new client
    retry_pages = intra42.users_paginator(retry_api, 21, STUDENTS_ONLY, per_page=100)
    manifest = staging.fetch_to_staging(
        prefix, lambda s: resumed.append(s["after_id"]) or retry_pages(s), {"after_id": 0}, retry_api
    )

    assert resumed[0] == asked[3]  # picks up at the page that failed, not at the start
    expected = len(intra42_sandbox.data.students())
    assert manifest["records"] == expected
    assert manifest["pages"] == -(-expected // 100)
    lines = sum(p.read_text().count("\n") for p in staging.staged_pages(prefix))
    assert lines == expected
    assert manifest["api_calls"] >= manifest["pages"]  # counts the first try's calls too

    again = staging.fetch_to_staging(prefix, pages, {"after_id": 0}, api)  # a retry after success
    assert again == manifest


def test_a_page_without_readable_ids_stops_the_walk_instead_of_looping(api, intra42_sandbox):
    intra42_sandbox.control("faults", {"corrupt_rate": 1.0})  # harmless corruptions keep ids readable
    pages = intra42.users_paginator(api, 21, STUDENTS_ONLY, per_page=10)
    assert pages({"after_id": 0}).next["after_id"] > 0

    class NoIds:
        stats = api.stats

        def fetch_json(self, method, path, **kwargs):
            body, response = api.fetch_json(method, path, **kwargs)
            return [{**r, "id": None} for r in body], response

    with pytest.raises(ApiError, match="no readable id"):
        intra42.users_paginator(NoIds(), 21, STUDENTS_ONLY, per_page=10)({"after_id": 0})


def test_sensors_do_not_send_the_extras_usersync_reads(gazelle_sandbox):
    from airflow.providers.http.hooks.http import HttpHook
    from usersync.api import SENSOR_HEADERS

    session = HttpHook(http_conn_id="gazelle_api").get_conn()  # extras: refresh_token, rate_limit, ...
    assert "refresh_token" in session.headers  # what HttpHook does with extras
    prepared = session.prepare_request(requests.Request("GET", "http://example.invalid/", headers=SENSOR_HEADERS))
    assert not {"refresh_token", "rate_limit", "backoff", "max_retries"} & {h.lower() for h in prepared.headers}


def test_the_sensor_sends_the_password_only_where_asked(gazelle_sandbox):
    from airflow.providers.http.hooks.http import HttpHook
    from usersync.dag_parts import api_sensor

    for send_login, expect_basic in ((False, False), (True, True)):
        sensor = api_sensor("gazelle_api", "graphql/private/", send_login=send_login)
        session = HttpHook(http_conn_id="gazelle_api").get_conn()
        request = requests.Request("GET", "http://example.invalid/", headers=sensor.headers, **sensor.request_kwargs)
        prepared = session.prepare_request(request)
        assert ("Authorization" in prepared.headers) is expect_basic


@pytest.fixture
def cutting_server(monkeypatch):
    """A raw HTTP server whose first answers stop mid-body (declared length or chunked), then answer whole;
    AIRFLOW_CONN_CUT_API points at it. Yields the list of cuts to make, in order ("length" or "chunked")."""
    import socket
    import threading

    cuts: list[str] = []
    listener = socket.create_server(("127.0.0.1", 0))
    body = b'{"ok": true, "padding": "' + b"x" * 200 + b'"}'

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                cut = cuts.pop(0) if cuts else None
                if cut == "length":
                    conn.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body[:40])
                elif cut == "chunked":
                    conn.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(body) + body[:40])
                else:
                    conn.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    threading.Thread(target=serve, daemon=True).start()
    port = listener.getsockname()[1]
    monkeypatch.setenv(
        "AIRFLOW_CONN_CUT_API",
        json.dumps(
            {
                "conn_type": "http",
                "host": f"http://127.0.0.1:{port}",
                "extra": {"backoff": "0.01", "max_retries": "3", "timeout": 5},
            }
        ),
    )
    yield cuts
    listener.close()


def test_an_answer_cut_mid_body_is_retried(cutting_server):
    cutting_server.extend(["length", "chunked", "length"])
    api = ApiClient("cut_api")
    body, _ = api.fetch_json("GET", "/anything", params={"email": "marie.curie@exemple.gouv.fr"})
    assert body["ok"] is True
    assert api.stats.retries == 3 and api.stats.calls == 4

    cutting_server.extend(["length"] * 4)
    with pytest.raises(ApiError, match="ChunkedEncodingError.*gave up after 3 retries") as failure:
        api.fetch_json("GET", "/anything", params={"email": "marie.curie@exemple.gouv.fr"})
    assert "marie" not in str(failure.value)


def test_a_token_endpoint_that_is_down_is_not_a_refusal(cutting_server):
    cutting_server.extend(["length"] * 4)  # every try of the token call is cut: given up, but not refused
    api = ApiClient("cut_api", auth=OAuth2ClientCredentials())
    with pytest.raises(ApiError, match="gave up after 3 retries") as failure:
        api.fetch_json("GET", "/anything")
    assert not isinstance(failure.value, AuthError)  # so Airflow retries the task
    assert api.refused is None


def _answer(**headers: str) -> requests.Response:
    response = requests.Response()
    response.status_code, response.headers = 429, requests.structures.CaseInsensitiveDict(headers)
    return response


def test_a_429_waits_as_long_as_retry_after_or_ratelimit_reset_says():
    from email.utils import formatdate

    assert _retry_after(_answer(**{"Retry-After": "2"})) == 2.0
    assert _retry_after(_answer(**{"Retry-After": "0.3"})) == 0.3
    assert 8 <= _retry_after(_answer(**{"Retry-After": formatdate(time.time() + 10, usegmt=True)})) <= 10
    assert _retry_after(_answer(**{"Retry-After": "3", "RateLimit-Reset": "50"})) == 3.0  # Retry-After first
    assert _retry_after(_answer(**{"RateLimit-Reset": "7"})) == 7.0  # seconds from now
    assert 4 <= _retry_after(_answer(**{"RateLimit-Reset": str(int(time.time()) + 5)})) <= 5  # an epoch (DS)
    assert _retry_after(_answer(**{"RateLimit-Reset": str(int(time.time()) - 30)})) == 0.0  # already past
    assert _retry_after(_answer()) == 1.0
    assert _retry_after(_answer(**{"Retry-After": "soon"})) == 1.0


def test_a_client_from_a_url_and_credentials_kept_outside_airflow(intra42_sandbox):
    """InfraZen's case: the base URL and the credentials come from the application, not from a connection."""
    intra42_sandbox.control("reset")
    api = ApiClient.from_url(
        intra42_sandbox.url + "/",
        OAuth2ClientCredentials(),
        name="some_account",
        login=CLIENT_ID,
        password=CLIENT_SECRET,
        rate_limit="40/s",
        backoff=0.05,
    )
    body = api.get_json("/v2/cursus/21/users", params={"per_page": 3})
    assert len(body) == 3 and api.stats.token_renewals == 1
    assert api.limiter.limits == [(40, 1.0)] and (api.timeout, api.max_retries) == (30.0, 5)

    wrong = ApiClient.from_url(intra42_sandbox.url, OAuth2ClientCredentials(), login=CLIENT_ID, password="wrong")
    with pytest.raises(AuthError, match="401"):
        wrong.get_json("/v2/cursus/21/users")

    anywhere = ApiClient.from_url(name="many_hosts")  # no base URL: absolute URLs only
    assert anywhere.url("https://eu.example.net/v1/x") == "https://eu.example.net/v1/x"
    with pytest.raises(ValueError, match="absolute URLs"):
        anywhere.get_json("/v2/cursus/21/users")


def test_a_client_under_another_auth_shares_the_account_limit_and_counters(intra42_sandbox):
    api = ApiClient.from_url(intra42_sandbox.url, rate_limit="5/s")
    authenticated = api.with_auth(OAuth2ClientCredentials())
    authenticated.login, authenticated.password = CLIENT_ID, CLIENT_SECRET
    authenticated.get_json("/v2/cursus/21/users", params={"per_page": 1})
    assert authenticated.limiter is api.limiter and authenticated.stats is api.stats
    assert api.auth is None and api.stats.token_renewals == 1 and api.stats.calls == 2  # token + page


def test_clients_running_at_the_same_time_keep_to_their_share(intra42_sandbox):
    """Parallel fetches of one account (its limit: 40/s): two clients as fast as they can, each told it shares
    the account with another, are never refused together; each alone would use the whole limit."""
    from concurrent.futures import ThreadPoolExecutor

    intra42_sandbox.control("reset")
    clients = [ApiClient("intra42_api", OAuth2ClientCredentials(), shared_by=2) for _ in range(2)]
    assert [c.limiter.limits for c in clients] == [[(20, 1.0)]] * 2
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda api: [api.get_json("/v2/cursus/21/users", params={"per_page": 1}) for _ in range(30)],
                      clients))  # fmt: skip
    assert intra42_sandbox.state()["stats"]["throttled"] == 0
    assert ApiClient.from_url(rate_limit="9/s,1200/h", shared_by=3).limiter.limits == [(3, 1.0), (400, 3600.0)]


def test_clients_taking_turns_hand_over_the_calls_still_in_the_windows(cutting_server, tmp_path):
    """Sequential mapped chunks: the next client waits for the places its predecessor's calls still hold, even
    when the predecessor failed; a client without the hand-over knows nothing of them."""
    url = json.loads(os.environ["AIRFLOW_CONN_CUT_API"])["host"]  # answers whole when no cut is asked
    hand_over = staging.ObjectStoragePath(f"file://{tmp_path}/_recent_calls.json")
    with pytest.raises(RuntimeError), ApiClient.from_url(url, rate_limit="3/s", hand_over=hand_over) as first:
        for _ in range(3):
            first.get_json("/anything")
        raise RuntimeError("the chunk failed after its calls")
    handed = staging.read_json(hand_over)
    assert len(handed) == 3

    with ApiClient.from_url(url, rate_limit="3/s", hand_over=hand_over) as second:
        started = time.monotonic()
        second.get_json("/anything")
        assert time.monotonic() - started >= 0.7  # the first's 3 calls filled the one-second window
    assert max(staging.read_json(hand_over)) > max(handed)  # its own call too, for the next one

    unaware = ApiClient.from_url(url, rate_limit="3/s")
    started = time.monotonic()
    unaware.get_json("/anything")
    assert time.monotonic() - started < 0.5
