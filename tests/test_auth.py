"""usersync.auth: the auth flows (client credentials, rotating refresh tokens) and how a refused login fails,
over real HTTP against the sandboxes."""

from __future__ import annotations

import pytest
from conftest import CLIENT_ID, CLIENT_SECRET
from usersync import intra42
from usersync.api import ApiError

STUDENTS_ONLY = {"filter[kind]": "student", "filter[alumni?]": "false"}


def test_one_token_serves_every_page_and_is_renewed_when_it_expires(intra42_sandbox):
    intra42_sandbox.control("reset")
    api = intra42.client("intra42_api")
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


def test_bad_credentials_fail_clearly(intra42_sandbox, monkeypatch):
    import json

    from conftest import intra42_conn

    conn = json.loads(intra42_conn(intra42_sandbox.url, rate_limit="40/s"))
    conn["password"] = "wrong"
    monkeypatch.setenv("AIRFLOW_CONN_INTRA42_API", json.dumps(conn))
    with pytest.raises(ApiError, match="401"):
        intra42.client("intra42_api").fetch_json("GET", "/v2/cursus/21/users")


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
    store, query = Store(), "{ allUsers { id } }"
    first, second = gazelle.client("gazelle_api", store), gazelle.client("gazelle_api", store)
    execute(first, gazelle.GRAPHQL_PATH, query, {})
    assert execute(second, gazelle.GRAPHQL_PATH, query, {})["allUsers"]
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
    assert execute(third, gazelle.GRAPHQL_PATH, query, {})["allUsers"]  # invalid_grant, then adopts
    assert gazelle_sandbox.state()["refreshes"] == 2


def test_a_short_lived_token_serves_the_pages_of_its_lifetime():
    """A 20 s token is renewed when under 2 s remain (a tenth of its lifetime), not a minute early, i.e.
    before every page; a long-lived one a minute before it expires."""
    import time

    from conftest import intra42_conn
    from usersync.auth import renewal_margin

    from sandbox.common import serve
    from sandbox.intra42 import Intra42Data, create_app

    assert (renewal_margin(20), renewal_margin(7200)) == (2.0, 60.0)
    app = create_app(
        Intra42Data(students=300, seed=1),
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        per_second=1000,
        per_hour=100000,
        token_ttl=20,
    )
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
