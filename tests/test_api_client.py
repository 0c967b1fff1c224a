"""The HTTP layer and the resumable fetch, over real HTTP against the 42 sandbox."""

from __future__ import annotations

import pytest
from conftest import CLIENT_ID, CLIENT_SECRET
from usersync import intra42, staging
from usersync.api import ApiError, RateLimiter, parse_rate_limit

STUDENTS_ONLY = {"filter[kind]": "student", "filter[alumni?]": "false"}


@pytest.fixture
def api(intra42_sandbox):
    intra42_sandbox.control("reset")
    return intra42.client("intra42_api")


def test_parse_rate_limit():
    assert parse_rate_limit("2/s, 1200/h") == [(2, 1.0), (1200, 3600.0)]
    assert parse_rate_limit("100/5m") == [(100, 300.0)]
    assert parse_rate_limit(None) == []
    with pytest.raises(ValueError, match="bad rate_limit"):
        parse_rate_limit("fast")


def test_limiter_never_lets_more_than_count_calls_start_within_a_period():
    import threading
    import time

    limiter, starts = RateLimiter([(5, 0.3)]), []

    def caller():
        for _ in range(6):
            slot = limiter.acquire()
            starts.append(time.monotonic())
            time.sleep(0.02)  # the call's latency
            limiter.release(slot)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(starts) == 24
    busiest = max(sum(1 for t in starts if first <= t < first + 0.3) for first in starts)
    assert busiest == 5


def test_one_token_serves_every_page_and_is_renewed_when_it_expires(api, intra42_sandbox):
    pages = intra42.users_paginator(api, 21, STUDENTS_ONLY, per_page=100)
    state = {"after_id": 0}
    for _ in range(3):
        state = pages(state).next
    assert intra42_sandbox.state()["stats"]["tokens_issued"] == 1

    intra42_sandbox.control("expire_tokens")
    page = pages(state)

    assert len(page.records) == 100
    assert intra42_sandbox.state()["stats"]["tokens_issued"] == 2
    assert api.stats.token_renewals == 2


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


def test_bad_credentials_fail_clearly(intra42_sandbox, monkeypatch):
    import json

    from conftest import intra42_conn

    conn = json.loads(intra42_conn(intra42_sandbox.url, rate_limit="40/s"))
    conn["password"] = "wrong"
    monkeypatch.setenv("AIRFLOW_CONN_INTRA42_API", json.dumps(conn))
    with pytest.raises(ApiError, match="401"):
        intra42.client("intra42_api").fetch_json("GET", "/v2/cursus/21/users")


def test_5xx_and_truncated_bodies_are_retried_then_given_up(api, intra42_sandbox):
    intra42_sandbox.control("faults", {"truncate_rate": 1.0})
    with pytest.raises(ApiError, match="unreadable JSON.*gave up after 6 retries"):
        api.fetch_json("GET", "/v2/cursus/21/users")
    intra42_sandbox.control("faults", {"error_rate": 1.0})
    with pytest.raises(ApiError, match="HTTP 5\\d\\d.*gave up after 6 retries"):
        api.fetch_json("GET", "/v2/cursus/21/users")


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
    manifest = staging.fetch_to_staging(prefix, lambda s: resumed.append(s["after_id"]) or retry_pages(s),
                                        {"after_id": 0}, retry_api)

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


def test_a_client_taking_over_waits_for_the_places_its_predecessor_still_holds():
    import time

    before = RateLimiter([(3, 0.5), (100, 3600.0)])
    for _ in range(3):
        before.release(before.acquire())
    after = RateLimiter([(3, 0.5), (100, 3600.0)])
    after.continue_from(before.history())
    started = time.monotonic()
    after.release(after.acquire())
    assert time.monotonic() - started >= 0.4  # the predecessor's 3 calls filled the half-second window

    fresh = RateLimiter([(3, 0.5)])
    started = time.monotonic()
    fresh.release(fresh.acquire())
    assert time.monotonic() - started < 0.1


def test_sensors_do_not_send_the_extras_usersync_reads(gazelle_sandbox):
    import requests
    from airflow.providers.http.hooks.http import HttpHook
    from usersync.api import SENSOR_HEADERS

    session = HttpHook(http_conn_id="gazelle_api").get_conn()  # extras: refresh_token, rate_limit, ...
    assert "refresh_token" in session.headers  # what HttpHook does with extras
    prepared = session.prepare_request(requests.Request("GET", "http://example.invalid/", headers=SENSOR_HEADERS))
    assert not {"refresh_token", "rate_limit", "backoff", "max_retries"} & {h.lower() for h in prepared.headers}


def test_concurrent_gazelle_clients_share_one_rotation(gazelle_sandbox):
    """Two clients start from the same saved state: the first refreshes, the second adopts its token; one
    whose refresh token was rotated by another meanwhile (invalid_grant) adopts the newer saved one."""
    from usersync import gazelle
    from usersync.graphql_api import execute

    class Store:
        state = None

        def load(self):
            return self.state

        def save(self, state):
            self.state = dict(state)

    gazelle_sandbox.control("reset")
    store, query = Store(), "{ allUsers(first: 1) { nodes { id } } }"
    first, second = gazelle.client("gazelle_api", store), gazelle.client("gazelle_api", store)
    execute(first, gazelle.GRAPHQL_PATH, query, {})
    assert execute(second, gazelle.GRAPHQL_PATH, query, {})["allUsers"]["nodes"]
    assert gazelle_sandbox.state()["refreshes"] == 1  # one refresh served both

    stale = {**store.state, "expires_at": 0}  # what a third task read before the first rotated it again
    gazelle_sandbox.control("expire_tokens")
    execute(first, gazelle.GRAPHQL_PATH, query, {})  # 401 -> refresh -> the rotation is saved

    class Behind(Store):
        reads = 0

        def load(self):
            self.reads += 1
            return stale if self.reads == 1 else store.state

    third = gazelle.client("gazelle_api", Behind())
    third.auth.ADOPT_WAITS = (0.01,)
    assert execute(third, gazelle.GRAPHQL_PATH, query, {})["allUsers"]["nodes"]  # invalid_grant, then adopts
    assert gazelle_sandbox.state()["refreshes"] == 2


def test_the_sensor_sends_the_password_only_where_asked(gazelle_sandbox):
    import requests
    from airflow.providers.http.hooks.http import HttpHook
    from usersync.dag_parts import api_sensor

    for send_login, expect_basic in ((False, False), (True, True)):
        sensor = api_sensor("gazelle_api", "graphql/private/", send_login=send_login)
        session = HttpHook(http_conn_id="gazelle_api").get_conn()
        request = requests.Request("GET", "http://example.invalid/", headers=sensor.headers,
                                   **sensor.request_kwargs)
        prepared = session.prepare_request(request)
        assert ("Authorization" in prepared.headers) is expect_basic


def test_a_divided_limiter_keeps_to_its_share():
    limiter = RateLimiter([(10, 1.0), (1200, 3600.0)])
    limiter.divide(4)
    assert limiter.limits == [(2, 1.0), (300, 3600.0)]
    limiter.divide(1000)
    assert limiter.limits == [(1, 1.0), (1, 3600.0)]


@pytest.fixture
def cutting_server(monkeypatch):
    """A raw HTTP server whose first answers stop mid-body (declared length or chunked), then answer whole;
    AIRFLOW_CONN_CUT_API points at it. Yields the list of cuts to make, in order ("length" or "chunked")."""
    import json
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
    monkeypatch.setenv("AIRFLOW_CONN_CUT_API", json.dumps({
        "conn_type": "http", "host": f"http://127.0.0.1:{port}",
        "extra": {"backoff": "0.01", "max_retries": "3", "timeout": 5}}))
    yield cuts
    listener.close()


def test_an_answer_cut_mid_body_is_retried(cutting_server):
    from usersync.api import ApiClient

    cutting_server.extend(["length", "chunked", "length"])
    api = ApiClient("cut_api")
    body, _ = api.fetch_json("GET", "/anything", params={"email": "marie.curie@exemple.gouv.fr"})
    assert body["ok"] is True
    assert api.stats.retries == 3 and api.stats.calls == 4

    cutting_server.extend(["length"] * 4)
    with pytest.raises(ApiError, match="ChunkedEncodingError.*gave up after 3 retries") as failure:
        api.fetch_json("GET", "/anything", params={"email": "marie.curie@exemple.gouv.fr"})
    assert "marie" not in str(failure.value)


def test_a_short_lived_token_serves_the_pages_of_its_lifetime():
    """A 20 s token is renewed when under 2 s remain (a tenth of its lifetime), not a minute early, i.e.
    before every page; a long-lived one a minute before it expires."""
    import time

    from conftest import intra42_conn
    from usersync.api import renewal_margin

    from sandbox.common import serve
    from sandbox.intra42 import Intra42Data, create_app

    assert (renewal_margin(20), renewal_margin(7200)) == (2.0, 60.0)
    app = create_app(Intra42Data(students=300, seed=1), client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                     per_second=1000, per_hour=100000, token_ttl=20)
    with serve(app) as url, pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_INTRA42_API", intra42_conn(url, rate_limit="1000/s"))
        api = intra42.client("intra42_api")
        pages, state = intra42.users_paginator(api, 21, STUDENTS_ONLY, per_page=10), {"after_id": 0}
        for _ in range(10):
            state = pages(state).next
        assert app.state.sandbox.stats.tokens_issued == 1

        api.auth.renew_at = time.monotonic()  # as if 18 s had passed: under 2 s left
        pages(state)
        stats = app.state.sandbox.stats
        assert (stats.tokens_issued, stats.unauthorized) == (2, 0)  # renewed before, not after, a 401


def test_a_refused_login_is_asked_once_by_every_thread_together(intra42_sandbox, monkeypatch):
    import json
    from concurrent.futures import ThreadPoolExecutor

    from conftest import intra42_conn
    from usersync.api import AuthError

    conn = json.loads(intra42_conn(intra42_sandbox.url, rate_limit="40/s"))
    monkeypatch.setenv("AIRFLOW_CONN_INTRA42_API", json.dumps({**conn, "password": "wrong"}))
    intra42_sandbox.control("reset")
    api = intra42.client("intra42_api")

    def call(_):
        with pytest.raises(AuthError, match="401"):
            api.fetch_json("GET", "/v2/cursus/21/users")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(call, range(24)))
    assert intra42_sandbox.state()["stats"]["paths"]["/oauth/token"] == 1
    assert api.stats.retries == 0


def test_a_token_endpoint_that_is_down_is_not_a_refusal(cutting_server):
    from usersync.api import ApiClient, AuthError, OAuth2ClientCredentials

    cutting_server.extend(["length"] * 4)  # every try of the token call is cut: given up, but not refused
    api = ApiClient("cut_api", auth=OAuth2ClientCredentials())
    with pytest.raises(ApiError, match="gave up after 3 retries") as failure:
        api.fetch_json("GET", "/anything")
    assert not isinstance(failure.value, AuthError)  # so Airflow retries the task
    assert api.refused is None


def test_bad_credentials_fail_an_intra42_run_after_one_login_attempt(intra42_sandbox, pg, airflow_db, monkeypatch):
    """The sensor's POST /oauth/token is the run's only login: a 401 fails it at once (no poking again, no
    task retry), and the fetch, downstream of it, never logs in."""
    import json

    from conftest import intra42_conn
    from dagrun import run_dag

    conn = json.loads(intra42_conn(intra42_sandbox.url, rate_limit="40/s"))
    monkeypatch.setenv("AIRFLOW_CONN_INTRA42_API", json.dumps({**conn, "password": "wrong"}))
    intra42_sandbox.control("reset")
    run, states = run_dag("intra42_users")
    assert states["api_available"] == "failed" and states["fetch_users"] == "upstream_failed", states
    sensor = next(ti for ti in run.get_task_instances() if ti.task_id == "api_available")
    assert sensor.try_number == 1
    assert intra42_sandbox.state()["stats"]["paths"]["/oauth/token"] == 1
