"""usersync.infrazen: the provider clients against the InfraZen sandbox over HTTP."""

from __future__ import annotations

import json
import math

import pytest
import requests
from usersync.infrazen import ProviderError, kopecks_per_hour_to_daily, sync_provider

from sandbox.common import serve
from sandbox.infrazen import InfraZenData, create_app

USERS, SEED, BIG = 60, 11, 140
FIELDS = ("resource_id", "resource_type", "resource_name", "region", "status", "daily_cost")


@pytest.fixture(scope="module")
def sandbox():
    app = create_app(InfraZenData(USERS, SEED, BIG), limits={p: [(200, 1.0)] for p in ("yandex", "selectel", "beget")})
    with serve(app) as url:
        yield url, app


def hosts(url: str, provider_type: str) -> dict[str, str]:
    """The host templates that point a provider's calls at the sandbox (documented in sandbox/README.md)."""
    return {
        "yandex": {"host": f"{url}/yandex/{{service}}"},
        "selectel": {"host": f"{url}/selectel/api", "identity_host": f"{url}/selectel/cloud",
                     "region_host": f"{url}/selectel/regions/{{region}}"},
        "beget": {"host": f"{url}/beget", "cloud_host": f"{url}/beget"},
    }[provider_type]  # fmt: skip


def run(url: str, provider: dict, **options):
    options = {"rate_limit": "100/s", "backoff": 0.05, "timeout": 10, **options}
    return sync_provider(provider["provider_type"], json.dumps(provider["credentials"]),
                         hosts(url, provider["provider_type"]), **options)  # fmt: skip


def found(result) -> list[dict]:
    return sorted(
        ({k: r[k] for k in FIELDS} for r in result.resources), key=lambda r: (r["resource_type"], r["resource_id"])
    )


def pick(data: InfraZenData, kind: str, where=lambda p: True) -> dict:
    return next(p for p in data.app_providers() if p["provider_type"] == kind and data.is_eligible(p)
                and p["id"] not in data.bad_provider_ids and where(p))  # fmt: skip


def faults(url: str, provider: dict, **values) -> None:
    body = {"provider": provider["provider_type"], "account": provider["account_id"], **values}
    requests.post(f"{url}/_sandbox/account_faults", json=body, timeout=5).raise_for_status()


def rate(url: str, provider_type: str) -> dict:
    return requests.get(f"{url}/_sandbox/state", timeout=5).json()["rate"][provider_type]


@pytest.mark.parametrize("kind", ["yandex", "selectel", "beget"])
def test_every_account_read_matches_the_ground_truth(url, data, kind):
    providers = [p for p in data.app_providers() if p["provider_type"] == kind and data.is_eligible(p)
                 and p["id"] not in data.bad_provider_ids][:12]  # fmt: skip
    if kind == "yandex":  # both credential kinds, and a service account that sees no cloud
        providers += [p for p in data.app_providers() if p["provider_type"] == "yandex"
                      and "service_account_key" in p["credentials"]][:4]  # fmt: skip
    for provider in providers:
        result = run(url, provider)
        assert found(result) == data.expected_resources(provider["id"]), provider["id"]
        assert result.total_daily_cost == pytest.approx(data.expected_total(provider["id"]), abs=0.01)
        assert result.complete and result.account_id in (provider["account_id"], None)
        for record in result.resources:
            assert record["effective_cost"] == record["daily_cost"] and record["currency"] == "RUB"
            assert record["original_cost"] == pytest.approx(record["daily_cost"] * 30, abs=1e-3)


def test_more_than_100_vms_in_a_folder_are_all_read(url, data):
    provider = data.provider(data.big_folder_provider_id)
    account = data.account(provider["id"])
    folder = next(f for f, vms in account["instances"].items() if len(vms) == BIG)
    for page_size, pages in ((100, 2), (1000, 1)):
        requests.post(f"{url}/_sandbox/reset", timeout=5)
        result = run(url, provider, page_size=page_size)
        servers = {r["resource_id"] for r in result.resources if r["provider_config"].get("folder_id") == folder
                   and r["resource_type"] == "server"}  # fmt: skip
        assert servers == {vm["id"] for vm in account["instances"][folder]} and len(servers) == BIG
        calls = requests.get(f"{url}/_sandbox/state", timeout=5).json()["stats"]["paths"]
        assert calls["/yandex/compute/compute/v1/instances"] == pages + len(account["folders"]) - 1


def test_yandex_cost_follows_the_spec_formula(url, data):
    provider = data.provider(data.big_folder_provider_id)
    result = run(url, provider)
    vm = next(r for r in result.resources if r["status"] == "RUNNING" and r["external_ip"])
    c = vm["provider_config"]
    disks = sum(d["size_gb"] * {"network-hdd": 2.24, "network-ssd": 9.1104}[d["type"]] / 730 * 24 for d in c["disks"])
    assert vm["daily_cost"] == pytest.approx(
        (c["cores"] * 1.12 + c["memory_gb"] * 0.30 + 0.2592) * 24 + disks, abs=1e-3
    )
    stopped = next(r for r in result.resources if r["status"] == "STOPPED" and r["resource_type"] == "server")
    only_disks = sum(d["size_gb"] * {"network-hdd": 2.24, "network-ssd": 9.1104}[d["type"]] / 730 * 24
                     for d in stopped["provider_config"]["disks"])  # fmt: skip
    assert stopped["daily_cost"] == pytest.approx(only_disks, abs=1e-3)


@pytest.mark.parametrize("kind", ["yandex", "selectel", "beget"])
def test_token_expiry_mid_sync_is_renewed(url, data, kind):
    if kind == "yandex":
        provider = data.provider(data.big_folder_provider_id)
    else:
        provider = pick(data, kind, lambda p: len(data.expected_resources(p["id"])) >= 2)
    faults(url, provider, expire_after_calls=1)  # every token dies after one call
    result = run(url, provider, page_size=20 if kind == "yandex" else 1)
    assert found(result) == data.expected_resources(provider["id"])
    assert result.stats["token_renewals"] >= 2


def test_iam_token_renewed_before_its_short_expiry():
    data = InfraZenData(20, 1)
    with serve(create_app(data, iam_ttl=1.5)) as base:
        provider = data.provider(data.big_folder_provider_id)
        faults(base, provider, latency=0.05)
        result = run(base, provider, page_size=10)  # 150 VMs in 15 pages: several token lifetimes
        assert len(result.resources) == len(data.expected_resources(provider["id"]))
        assert result.stats["token_renewals"] >= 2
        assert requests.get(f"{base}/_sandbox/state", timeout=5).json()["stats"]["unauthorized"] == 0  # never late


def test_429_storm_is_obeyed(url, data):
    provider = data.provider(data.big_folder_provider_id)
    faults(url, provider, burst_429=4, retry_after=1)
    result = run(url, provider, page_size=50)
    assert found(result) == data.expected_resources(provider["id"])
    assert result.stats["throttled"] == 4
    state = rate(url, "yandex")
    assert state["early_after_429"] == 0 and state["over_limit_accepted"] == 0


def test_a_limit_declared_right_means_no_429_at_all():
    data = InfraZenData(20, 1)
    with serve(create_app(data, limits={"yandex": [(4, 1.0)]})) as base:
        provider = data.provider(data.big_folder_provider_id)
        result = run(base, provider, rate_limit="4/s", page_size=25)  # 6 pages of VMs + clouds, folders, disks
        assert len(result.resources) == len(data.expected_resources(provider["id"]))
        state = requests.get(f"{base}/_sandbox/state", timeout=5).json()
        assert state["stats"]["throttled"] == 0 and result.stats["throttled"] == 0
        window = state["rate"]["yandex"]["windows"][0]
        assert window["max_attempted_in_window"] <= 4 and state["rate"]["yandex"]["over_limit_accepted"] == 0
        # a client that believes in a higher limit is throttled, waits as told, and still reads everything
        requests.post(f"{base}/_sandbox/reset", timeout=5)
        result = run(base, provider, rate_limit="50/s", page_size=25)
        assert len(result.resources) == len(data.expected_resources(provider["id"]))
        state = requests.get(f"{base}/_sandbox/state", timeout=5).json()
        assert result.stats["throttled"] >= 1 and state["rate"]["yandex"]["early_after_429"] == 0


def test_bad_credentials_give_a_clear_connection_error(url, data):
    bad = data.provider(next(iter(data.bad_provider_ids)))
    with pytest.raises(ProviderError) as refused:
        run(url, bad)
    assert refused.value.connection
    message = str(refused.value)
    assert message.startswith("Connection failed:") and "401" in message and "Invalid token" in message
    assert bad["credentials"]["api_key"] not in message
    for kind in ("yandex", "beget"):
        provider = pick(data, kind)
        faults(url, provider, auth_fail=True)
        with pytest.raises(ProviderError, match="Connection failed") as error:
            run(url, provider)
        assert error.value.connection and ("401" in str(error.value) or "AUTH_ERROR" in str(error.value))
        assert provider["credentials"].get("password", "-") not in str(error.value)


def test_beget_http_200_error_envelope_is_an_error(url, data):
    provider = pick(data, "beget")
    faults(url, provider, envelope_error=True)
    with pytest.raises(ProviderError) as error:
        run(url, provider)
    assert "Account billing data unavailable" in str(error.value) and "INTERNAL_ERROR" in str(error.value)
    faults(url, provider, envelope_error=False, burst_429=2)  # LIMIT_ERROR envelopes: waited out
    result = run(url, provider)
    assert found(result) == data.expected_resources(provider["id"]) and result.stats["throttled"] == 2


def test_beget_list_failure_is_reported_not_swallowed(url, data):
    provider = pick(data, "beget", lambda p: data.account(p["id"])["vps"] and data.account(p["id"])["domains"])
    faults(url, provider, lists_fail=True)
    result = run(url, provider, max_retries=0)
    assert not result.complete and len(result.errors) == 2 and "VPS list" in result.errors[0]
    assert "Internal error" in result.errors[0]
    expected = [r for r in data.expected_resources(provider["id"]) if r["resource_type"] == "domain"]
    assert found(result) == expected  # what could be read is still there


def test_beget_login_refused_with_http_200(url, data):
    provider = pick(data, "beget")
    credentials = {**provider["credentials"], "password": "wrong"}
    with pytest.raises(ProviderError, match="AUTH_ERROR"):
        sync_provider("beget", credentials, hosts(url, "beget"), backoff=0.05)


def test_selectel_kopecks_become_rubles_per_day(url, data):
    assert kopecks_per_hour_to_daily(250) == 60.0  # 2.50 RUB an hour
    provider = pick(
        data, "selectel", lambda p: any(b["object"]["type"] == "cloud_vm" for b in data.account(p["id"])["billing"])
    )
    account = data.account(provider["id"])
    result = run(url, provider)
    vm = next(r for r in result.resources if r["resource_type"] == "server" and r["provider_config"]["children"])
    billed = sum(b["kopecks"] for b in account["billing"]
                 if vm["resource_id"] in (b["object"]["id"], b["object"]["parent_id"]))  # fmt: skip
    assert vm["daily_cost"] == pytest.approx(billed / 100 * 24) and vm["billing_period"] == "hourly"
    assert vm["region"] == vm["provider_config"]["zone"][:-1]  # billing zone ru-7b -> region ru-7


def test_selectel_billing_failure_fails_the_provider(url, data):
    provider = pick(data, "selectel")
    faults(url, provider, billing_fail=True)
    with pytest.raises(ProviderError) as error:
        run(url, provider, max_retries=1)
    assert not error.value.connection  # connected: the failure is the sync's, no resource may be deactivated
    assert "billing statistics are temporarily unavailable" in str(error.value)


def test_5xx_are_retried_and_slow_answers_time_out(url, data):
    provider = pick(data, "selectel")
    faults(url, provider, error_status=503, error_count=2)
    result = run(url, provider)
    assert result.stats["retries"] == 2 and found(result) == data.expected_resources(provider["id"])
    faults(url, provider, error_status=0, latency=1.0)
    with pytest.raises(ProviderError, match="Timeout") as error:
        run(url, provider, timeout=0.3, max_retries=1)
    assert error.value.duration >= 0.6 and error.value.stats["retries"] == 1
    assert math.isfinite(error.value.duration)


@pytest.mark.parametrize("credentials", ["{not json", "null", '["a list"]', "42"])
def test_credentials_that_are_not_a_json_object_fail_that_provider_only(credentials):
    with pytest.raises(ProviderError, match="credentials are not a JSON object") as failed:
        sync_provider("yandex", credentials, {"iam": "http://127.0.0.1:9", "api": "http://127.0.0.1:9"})
    assert failed.value.connection  # a provider outcome ("Connection failed: ..."), not a crash of the chunk
