"""The InfraZen providers sandbox (Yandex Cloud, Selectel, Beget), over real HTTP, and the app tables it matches."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import jwt
import pytest
import requests

from sandbox.common import serve
from sandbox.infrazen import IAM_AUDIENCE, SERVICE_ACCOUNT_PRIVATE_KEY, InfraZenData, create_app

USERS, SEED, BIG = 80, 5, 130


@pytest.fixture(scope="module")
def sandbox():
    """One server for the module, with limits no test reaches."""
    app = create_app(
        InfraZenData(USERS, SEED, BIG), limits={p: [(10_000, 1.0)] for p in ("yandex", "selectel", "beget")}
    )
    with serve(app) as url:
        yield url, app


def eligible(data: InfraZenData, kind: str, where=lambda p: True) -> dict:
    return next(p for p in data.app_providers() if p["provider_type"] == kind and data.is_eligible(p)
                and p["id"] not in data.bad_provider_ids and where(p))  # fmt: skip


def account_faults(url: str, provider: dict, **faults) -> dict:
    body = {"provider": provider["provider_type"], "account": provider["account_id"], **faults}
    response = requests.post(f"{url}/_sandbox/account_faults", json=body, timeout=5)
    response.raise_for_status()
    return response.json()


def iam(url: str, credentials: dict) -> requests.Response:
    return requests.post(f"{url}/yandex/iam/iam/v1/tokens", json=credentials, timeout=5)


def yandex_headers(url: str, provider: dict) -> dict:
    token = iam(url, {"yandexPassportOauthToken": provider["credentials"]["oauth_token"]}).json()["iamToken"]
    return {"Authorization": f"Bearer {token}"}


def yc(url: str, path: str, headers: dict, **params) -> requests.Response:
    service = path.split("/")[0]
    return requests.get(f"{url}/yandex/{service}/{path}", headers=headers, params=params, timeout=10)


def sa_jwt(key: dict, **overrides) -> str:
    now = int(time.time())
    claims = {"aud": IAM_AUDIENCE, "iss": key["service_account_id"], "iat": now, "exp": now + 3600, **overrides}
    return jwt.encode(claims, key["private_key"], algorithm="PS256", headers={"kid": key["id"]})


# ---------------------------------------------------------------------------------------------- data


def test_data_is_deterministic_and_covers_every_case():
    data, again = InfraZenData(USERS, SEED, BIG), InfraZenData(USERS, SEED, BIG)
    assert again.app_users() == data.app_users() and again.app_providers() == data.app_providers()
    assert InfraZenData(USERS, SEED + 1).app_providers() != data.app_providers()
    users = data.app_users()
    roles = Counter(u["role"] for u in users)
    assert roles["demouser"] and roles["admin"] and sum(not u["is_active"] for u in users)
    per_user = Counter(len(data.eligible_providers(u)) for u in data.eligible_users())
    assert {0, 1, 2, 3} <= set(per_user), per_user  # skipped users and users with one, two and three providers
    providers = data.app_providers()
    assert any(p["is_deleted"] and p["deleted_at"] for p in providers)
    assert any(not p["auto_sync"] and not p["is_deleted"] for p in providers)
    assert len(data.bad_provider_ids) == 1
    bad = data.provider(next(iter(data.bad_provider_ids)))
    assert data.is_eligible(bad) and len(data.eligible_providers(bad["user_id"])) > 1
    big = data.account(data.big_folder_provider_id)
    assert data.is_eligible(data.provider(data.big_folder_provider_id))
    assert max(len(v) for v in big["instances"].values()) == BIG
    assert {p["provider_type"] for p in providers} == {"yandex", "selectel", "beget"}
    assert any("service_account_key" in p["credentials"] for p in providers if p["provider_type"] == "yandex")
    # connection names are unique per user among the providers not deleted (the app's unique index)
    names = Counter((p["user_id"], p["connection_name"].lower()) for p in providers if not p["is_deleted"])
    assert max(names.values()) == 1


# ---------------------------------------------------------------------------------------------- Yandex


def test_yandex_iam_token_exchange(url, data):
    provider = eligible(data, "yandex", lambda p: "oauth_token" in p["credentials"])
    answer = iam(url, {"yandexPassportOauthToken": provider["credentials"]["oauth_token"]})
    assert answer.status_code == 200
    body = answer.json()
    assert body["iamToken"].startswith("t1.") and body["expiresAt"].endswith("000Z")
    expires = datetime.fromisoformat(body["expiresAt"][:26] + "+00:00")
    assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=1)
    refused = iam(url, {"yandexPassportOauthToken": "y0_not-a-token"})
    assert refused.status_code == 401 and refused.json()["code"] == 16
    assert iam(url, {}).json()["code"] == 3


def test_yandex_service_account_jwt(url, data):
    provider = eligible(data, "yandex", lambda p: "service_account_key" in p["credentials"])
    key = provider["credentials"]["service_account_key"]
    assert key["private_key"] == SERVICE_ACCOUNT_PRIVATE_KEY
    assert iam(url, {"jwt": sa_jwt(key)}).status_code == 200
    assert iam(url, {"jwt": sa_jwt(key, aud="https://example.com")}).status_code == 401
    assert iam(url, {"jwt": sa_jwt({**key, "id": "ajkunknown0000000000"})}).status_code == 401
    assert iam(url, {"jwt": sa_jwt(key, exp=int(time.time()) + 7200)}).status_code == 401  # over 1 h


def test_yandex_short_token_life_answers_401_code_16():
    data = InfraZenData(20, 1)
    with serve(create_app(data, iam_ttl=0.5)) as base:
        provider = eligible(data, "yandex", lambda p: "oauth_token" in p["credentials"])
        headers = yandex_headers(base, provider)
        assert yc(base, "resource-manager/v1/clouds", headers).status_code == 200
        time.sleep(0.6)
        expired = yc(base, "resource-manager/v1/clouds", headers)
        assert expired.status_code == 401
        assert expired.json() == {"code": 16, "message": "The token has expired", "details": []}


def test_yandex_instances_page_to_the_end(url, data):
    provider = data.provider(data.big_folder_provider_id)
    credentials = provider["credentials"]
    if "oauth_token" in credentials:
        headers = yandex_headers(url, provider)
    else:
        token = iam(url, {"jwt": sa_jwt(credentials["service_account_key"])}).json()["iamToken"]
        headers = {"Authorization": f"Bearer {token}"}
    account = data.account(provider["id"])
    folder = next(f for f, vms in account["instances"].items() if len(vms) == BIG)
    first = yc(url, "compute/v1/instances", headers, folderId=folder).json()
    assert len(first["instances"]) == 100 and first["nextPageToken"]  # default page size
    ids, token, pages = [], None, 0
    while True:
        body = yc(url, "compute/v1/instances", headers, folderId=folder, pageSize=50,
                  **({"pageToken": token} if token else {})).json()  # fmt: skip
        ids += [i["id"] for i in body["instances"]]
        pages += 1
        token = body.get("nextPageToken")
        if not token:
            break
    assert pages == 3 and ids == [vm["id"] for vm in account["instances"][folder]] and len(set(ids)) == BIG
    vm = body["instances"][0]
    assert isinstance(vm["resources"]["cores"], str) and int(vm["resources"]["memory"]) % 2**30 == 0  # int64 as str
    bad = yc(url, "compute/v1/instances", headers, folderId=folder, pageToken="garbage")
    assert bad.status_code == 400 and bad.json()["code"] == 3
    other_list = yc(url, "compute/v1/disks", headers, folderId=folder, pageToken=first["nextPageToken"])
    assert other_list.status_code == 400  # a token belongs to its list
    assert yc(url, "compute/v1/instances", headers, folderId=folder, pageSize=1001).status_code == 400
    assert yc(url, "compute/v1/instances", headers, folderId="b1gsomeoneelse000000").json()["code"] == 7
    assert yc(url, "compute/v1/snapshots", headers, folderId=folder).json() == {}  # other lists: empty
    disks = yc(url, "compute/v1/disks", headers, folderId=folder, pageSize=1000).json()["disks"]
    assert {d["id"] for d in disks} == {d["id"] for d in account["disks"][folder]}


def test_yandex_429_has_the_google_rpc_body_and_counts_early_retries(url, data):
    provider = eligible(data, "yandex", lambda p: "oauth_token" in p["credentials"])
    headers = yandex_headers(url, provider)
    account_faults(url, provider, burst_429=2, retry_after=2)
    throttled = yc(url, "resource-manager/v1/clouds", headers)
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "2"
    assert throttled.json() == {"code": 8, "message": "Too many requests", "details": []}
    time.sleep(0.3)
    assert yc(url, "resource-manager/v1/clouds", headers).status_code == 429  # came back too early
    time.sleep(2.1)
    assert yc(url, "resource-manager/v1/clouds", headers).status_code == 200
    rate = requests.get(f"{url}/_sandbox/state", timeout=5).json()["rate"]["yandex"]
    assert rate["early_after_429"] == 1 and rate["over_limit_accepted"] == 0


def test_rate_limit_per_account_never_accepts_over_the_limit():
    data = InfraZenData(20, 1)
    with serve(create_app(data, limits={"yandex": [(3, 1.0)]})) as base:
        one = eligible(data, "yandex", lambda p: "oauth_token" in p["credentials"])
        two = eligible(data, "yandex", lambda p: "oauth_token" in p["credentials"] and p["id"] != one["id"])
        h1, h2 = yandex_headers(base, one), yandex_headers(base, two)
        codes = [yc(base, "resource-manager/v1/clouds", h1).status_code for _ in range(5)]
        assert codes[:3] == [200] * 3 and 429 in codes[3:]
        assert yc(base, "resource-manager/v1/clouds", h2).status_code == 200  # another account: its own limit
        state = requests.get(f"{base}/_sandbox/state", timeout=5).json()
        window = state["rate"]["yandex"]["windows"][0]
        assert window["max_accepted_in_window"] == 3 and window["max_attempted_in_window"] >= 5
        assert state["rate"]["yandex"]["over_limit_accepted"] == 0 and state["stats"]["throttled_limit"] >= 1


# ---------------------------------------------------------------------------------------------- Selectel


def keystone(url: str, provider: dict, password: str | None = None, project: str | None = None):
    c = provider["credentials"]
    user = {"name": c["service_username"], "domain": {"name": provider["account_id"]},
            "password": password or c["service_password"]}  # fmt: skip
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": user}},
                     "scope": {"project": {"id": project}}}}  # fmt: skip
    return requests.post(f"{url}/selectel/cloud/identity/v3/auth/tokens", json=body, timeout=5)


def test_selectel_x_token_keystone_and_openstack(url, data):
    provider = eligible(data, "selectel", lambda p: len(data.account(p["id"])["servers"]) >= 2)
    account = data.account(provider["id"])
    x = {"X-Token": provider["credentials"]["api_key"]}
    accounts = requests.get(f"{url}/selectel/api/vpc/resell/v2/accounts", headers=x, timeout=5)
    assert accounts.json() == {"account": {"name": provider["account_id"], "enabled": True, "locked": False}}
    assert requests.get(f"{url}/selectel/api/vpc/resell/v2/accounts", headers={"X-Token": "nope"}).status_code == 401
    project = requests.get(f"{url}/selectel/api/vpc/resell/v2/projects", headers=x, timeout=5).json()["projects"][0]
    assert keystone(url, provider, password="wrong", project=project["id"]).status_code == 401
    issued = keystone(url, provider, project=project["id"])
    assert issued.status_code == 201 and issued.headers["X-Subject-Token"].startswith("gAAAAAB")
    catalog = {s["type"]: s["endpoints"] for s in issued.json()["token"]["catalog"]}
    assert {e["region"] for e in catalog["compute"]} == set(account["regions"])
    assert all(e["url"].startswith(f"{url}/selectel/regions/") for e in catalog["compute"])  # back at the sandbox
    os_headers = {"X-Auth-Token": issued.headers["X-Subject-Token"]}
    servers = []
    for endpoint in catalog["compute"]:
        page = requests.get(f"{endpoint['url']}/servers/detail", headers=os_headers, params={"limit": 1}, timeout=5)
        servers += page.json()["servers"]
        while "servers_links" in page.json():
            marker = page.json()["servers"][-1]["id"]
            page = requests.get(f"{endpoint['url']}/servers/detail", headers=os_headers,
                                params={"limit": 1, "marker": marker}, timeout=5)  # fmt: skip
            servers += page.json()["servers"]
    assert sorted(s["id"] for s in servers) == sorted(s["id"] for s in account["servers"])
    flavor = requests.get(f"{catalog['compute'][0]['url']}/flavors/{servers[0]['flavor']['id']}", headers=os_headers)
    assert set(flavor.json()["flavor"]) >= {"vcpus", "ram"}
    volumes = [
        v
        for e in catalog["volumev3"]
        for v in requests.get(f"{e['url']}/volumes/detail", headers=os_headers, timeout=5).json()["volumes"]
    ]
    assert sorted(v["id"] for v in volumes) == sorted(v["id"] for v in account["volumes"])
    assert (
        requests.get(f"{catalog['compute'][0]['url']}/servers/detail", headers={"X-Auth-Token": "x"}).status_code == 401
    )


def consumption(url: str, provider: dict, hours: int = 2) -> requests.Response:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = (hour - timedelta(hours=hours)).isoformat()[:19]
    params = {"provider_keys": ["vpc", "mks", "dbaas", "craas"], "start": start,
              "end": hour.replace(minute=59, second=59).isoformat()[:19], "locale": "ru",
              "group_type": "project_object_region_metric", "period_group_type": "hour"}  # fmt: skip
    return requests.get(f"{url}/selectel/api/v1/cloud_billing/statistic/consumption", params=params,
                        headers={"X-Token": provider["credentials"]["api_key"]}, timeout=5)  # fmt: skip


def test_selectel_consumption_in_kopecks_per_hour_with_a_failure_switch(url, data):
    provider = eligible(data, "selectel", lambda p: len(data.account(p["id"])["billing"]) >= 4)
    account = data.account(provider["id"])
    body = consumption(url, provider).json()
    assert body["status"] == "success"
    periods = sorted({r["period"] for r in body["data"]})
    assert len(periods) == 2  # the two finished hours of the window (the current one is not billed yet)
    latest = [r for r in body["data"] if r["period"] == periods[-1]]
    assert sorted(r["value"] for r in latest) == sorted(b["kopecks"] for b in account["billing"])
    assert all(isinstance(r["value"], int) and r["project"]["id"] == account["project"]["id"] for r in latest)
    assert any(r["object"]["parent_id"] != account["project"]["id"] for r in latest)  # a VM's disks: children
    account_faults(url, provider, billing_fail=True)
    failed = consumption(url, provider)
    assert failed.status_code == 500 and failed.json()["status"] == "error"


# ---------------------------------------------------------------------------------------------- Beget


def legacy(url: str, method: str, login: str, password: str) -> requests.Response:
    form = {"login": login, "passwd": password, "output_format": "json"}
    return requests.post(f"{url}/beget/api/{method}", data=form, timeout=5)


def test_beget_jwt_and_http_200_error_envelopes(url, data):
    provider = eligible(data, "beget", lambda p: data.account(p["id"])["vps"])
    c, account = provider["credentials"], data.account(provider["id"])
    login = requests.post(f"{url}/beget/v1/auth", json={"login": c["username"], "password": c["password"]}).json()
    claims = jwt.decode(login["token"], options={"verify_signature": False})
    assert claims["customerLogin"] == c["username"] and claims["exp"] > time.time() and "refresh_token" in login
    refused = requests.post(f"{url}/beget/v1/auth", json={"login": c["username"], "password": "wrong"})
    assert refused.status_code == 200 and refused.json() == {"error": "Incorrect login or password"}
    vps = requests.get(f"{url}/beget/v1/vps/server/list", headers={"Authorization": f"Bearer {login['token']}"})
    assert vps.json() == {"vps": account["vps"]}
    assert requests.get(f"{url}/beget/v1/cloud", headers={"Authorization": "Bearer x"}).status_code == 401
    info = legacy(url, "user/getAccountInfo", c["username"], c["password"])
    assert info.json()["answer"]["result"]["user_rate_current"] == account["account_info"]["user_rate_current"]
    bad = legacy(url, "user/getAccountInfo", c["username"], "wrong")
    assert bad.status_code == 200 and bad.json()["error_code"] == "AUTH_ERROR" and bad.json()["status"] == "error"
    account_faults(url, provider, envelope_error=True)
    broken = legacy(url, "domain/getList", c["username"], c["password"])
    assert broken.status_code == 200 and broken.json()["answer"]["status"] == "error"
    account_faults(url, provider, envelope_error=False, burst_429=1)
    limited = legacy(url, "domain/getList", c["username"], c["password"])
    assert limited.status_code == 200 and limited.json()["error_code"] == "LIMIT_ERROR"


# ---------------------------------------------------------------------------------------------- account faults


def test_account_faults(url, data):
    provider = eligible(data, "yandex", lambda p: "oauth_token" in p["credentials"])
    headers = yandex_headers(url, provider)
    account_faults(url, provider, error_status=503, error_count=2)
    codes = [yc(url, "resource-manager/v1/clouds", headers).status_code for _ in range(3)]
    assert codes == [503, 503, 200]
    account_faults(url, provider, latency=0.4)
    started = time.monotonic()
    assert yc(url, "resource-manager/v1/clouds", headers).status_code == 200
    assert time.monotonic() - started >= 0.4
    account_faults(url, provider, latency=0, expire_after_calls=2)
    headers = yandex_headers(url, provider)
    codes = [yc(url, "resource-manager/v1/clouds", headers).status_code for _ in range(3)]
    assert codes == [200, 200, 401]
    account_faults(url, provider, auth_fail=True)
    assert iam(url, {"yandexPassportOauthToken": provider["credentials"]["oauth_token"]}).status_code == 401
    bad = requests.post(f"{url}/_sandbox/account_faults", json={"provider": "yandex", "account": provider["account_id"],
                                                               "no_such": 1})  # fmt: skip
    assert bad.status_code == 400
    state = requests.get(f"{url}/_sandbox/state", timeout=5).json()
    assert state["account_faults"][0]["auth_fail"] is True
    requests.post(f"{url}/_sandbox/reset", timeout=5).raise_for_status()
    assert requests.get(f"{url}/_sandbox/state", timeout=5).json()["account_faults"] == []
    assert iam(url, {"yandexPassportOauthToken": provider["credentials"]["oauth_token"]}).status_code == 200


def test_expire_tokens_kills_every_provider_token(url, data):
    provider = eligible(data, "yandex", lambda p: "oauth_token" in p["credentials"])
    headers = yandex_headers(url, provider)
    assert requests.post(f"{url}/_sandbox/expire_tokens", timeout=5).json()["expired"] >= 1
    assert yc(url, "resource-manager/v1/clouds", headers).json()["message"] == "The token has expired"


def test_the_bad_provider_is_refused_everywhere(url, data):
    bad = data.provider(next(iter(data.bad_provider_ids)))
    answer = requests.get(f"{url}/selectel/api/vpc/resell/v2/accounts", timeout=5,
                          headers={"X-Token": bad["credentials"]["api_key"]})  # fmt: skip
    assert answer.status_code == 401


# ---------------------------------------------------------------------------------------------- app tables


def test_app_tables_hold_the_sandbox_users_and_credentials(pg, sql):
    from tools.app_tables import INFRAZEN_TABLE_NAMES, seed_infrazen

    data = InfraZenData(USERS, SEED, BIG)
    sql("DROP SCHEMA IF EXISTS infrazen_app CASCADE")
    added = seed_infrazen(pg.url, "infrazen_app", data.app_users(), data.app_providers())
    assert added == (USERS, len(data.app_providers()))
    assert seed_infrazen(pg.url, "infrazen_app", data.app_users(), data.app_providers()) == (0, 0)  # idempotent
    tables = {r[0] for r in sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'infrazen_app'")}
    assert tables == set(INFRAZEN_TABLE_NAMES)
    rows = sql("SELECT id, provider_type, credentials, account_id FROM infrazen_app.cloud_providers ORDER BY id")
    by_id = {p["id"]: p for p in data.app_providers()}
    assert all(json.loads(c) == by_id[i]["credentials"] and a == by_id[i]["account_id"] for i, _, c, a in rows)
    eligible_users = sql("""
        SELECT count(DISTINCT u.id) FROM infrazen_app.users u JOIN infrazen_app.cloud_providers p ON p.user_id = u.id
        WHERE u.is_active AND u.role <> 'demouser' AND p.auto_sync AND p.is_active AND NOT p.is_deleted""")[0][0]
    assert eligible_users == sum(1 for u in data.eligible_users() if data.eligible_providers(u))
    # new rows get ids after the generated ones; a second live provider with the same name is refused
    user = sql("INSERT INTO infrazen_app.users (email) VALUES ('new@example.ru') RETURNING id")[0][0]
    assert user == USERS + 1
    provider = next(p for p in by_id.values() if not p["is_deleted"])
    with pytest.raises(Exception, match="cloud_providers_user_connection_key"):
        sql(
            "INSERT INTO infrazen_app.cloud_providers"
            " (user_id, provider_type, connection_name, account_id, credentials)"
            " VALUES (%s, 'beget', upper(%s), 'x', '{}')",
            (provider["user_id"], provider["connection_name"]),
        )
