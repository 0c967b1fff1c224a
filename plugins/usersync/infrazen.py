"""InfraZen's cloud-provider clients (spec: /work/shared/specs/infrazen.md §3): Yandex Cloud, Selectel, Beget.

``sync_provider(provider_type, credentials, hosts)`` reads one ``cloud_providers`` account: it authenticates,
lists every resource paged to the end, and returns the resources normalized to InfraZen's ``resources`` fields
plus the provider's totals (``ProviderSync``), or raises ``ProviderError`` with the provider's own error text.
Each call builds its own HTTP client, so each provider account runs under its own rate limit.

Every host comes from ``hosts`` (the provider connection's host and extras), never from code, so a sync can be
pointed at the sandbox, a proxy or a private endpoint:

    yandex    host           https://{service}.api.cloud.yandex.net    ({service}: iam, resource-manager, compute)
    selectel  host           https://api.selectel.ru                    (X-Token APIs: accounts, projects, billing)
              identity_host  https://cloud.api.selcloud.ru             (Keystone: /identity/v3/auth/tokens)
              region_host    https://{region}.cloud.api.selcloud.ru    (OpenStack: compute, volume)
    beget     host           https://api.beget.com                      (legacy API: /api/...)
              cloud_host     the credentials' api_url, else ``host``  (cloud API: /v1/...)

The HTTP layer is usersync.api's ``ApiClient.from_url`` (retries with backoff on 5xx/timeouts, 429 + Retry-After
pauses, a sliding-window limiter, token renewal on 401, a given-up 5xx's body in its error): the credentials come
from the app's table, not from an Airflow connection; every call gives an absolute URL (one account, many hosts).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from usersync.api import ApiClient, ApiError, AuthError
from usersync.auth import RenewableToken
from usersync.masking import mask_secrets

log = logging.getLogger(__name__)

PROVIDER_TYPES = ("yandex", "selectel", "beget")
DEFAULT_HOSTS: dict[str, dict[str, str]] = {
    "yandex": {"host": "https://{service}.api.cloud.yandex.net"},
    "selectel": {
        "host": "https://api.selectel.ru",
        "identity_host": "https://cloud.api.selcloud.ru",
        "region_host": "https://{region}.cloud.api.selcloud.ru",
    },
    "beget": {"host": "https://api.beget.com"},
}
# Per account; the providers publish none (Yandex: 429 above some req/s): conservative defaults.
DEFAULT_RATE_LIMITS = {"yandex": "10/s", "selectel": "10/s", "beget": "5/s"}
IAM_AUDIENCE = "https://iam.api.cloud.yandex.net/iam/v1/tokens"  # the JWT's aud, wherever the call goes
YANDEX_MAX_PAGE_SIZE = 1000

# Yandex estimated cost (spec §3, fallback rates, RUB): per core-hour, per GB of RAM-hour, public IP per hour,
# disks per GB-month (730 h).
YC_CORE_HOUR, YC_RAM_GB_HOUR, YC_PUBLIC_IP_HOUR = 1.12, 0.30, 0.2592
YC_DISK_GB_MONTH = {"network-hdd": 2.24, "network-ssd": 9.1104}
BEGET_DOMAIN_DAILY = 50 / 365  # a registered domain: 50 RUB a year
GiB = 2**30


class ProviderError(Exception):
    """A provider could not be synced. ``connection``: it failed before any resource was read (credentials
    refused, host unreachable: the spec's "Connection failed: …"). The message is the provider's own error."""

    def __init__(self, message: str, *, connection: bool = False, stats: dict | None = None, duration: float = 0.0):
        super().__init__(message)
        self.connection, self.stats, self.duration = connection, stats or {}, duration


@dataclass
class ProviderSync:
    """One provider account read to the end."""

    provider_type: str
    account_id: str | None  # the provider's own account name (Selectel account, Yandex cloud, Beget login)
    resources: list[dict]  # normalized records, see _record()
    total_daily_cost: float  # RUB per day, Σ daily_cost
    errors: list[str] = field(default_factory=list)  # sub-calls that failed without failing the provider
    metadata: dict = field(default_factory=dict)  # plan, balance, regions...: for sync_config / provider_metadata
    stats: dict = field(default_factory=dict)  # api_calls, throttled, retries, token_renewals
    duration: float = 0.0  # seconds

    @property
    def complete(self) -> bool:
        """Every list was read: resources missing from it are really gone (safe to mark inactive)."""
        return not self.errors


def _record(
    resource_id: str,
    resource_type: str,
    name: str,
    service: str,
    region: str,
    status: str | None,
    daily: float,
    *,
    billing_period: str,
    external_ip: str | None = None,
    config: dict | None = None,
    tags: dict | None = None,
) -> dict:
    """A ``resources`` row as the sync stages it: daily_cost (= effective_cost) in RUB, original_cost = ×30."""
    daily = round(daily, 4)
    return {
        "resource_id": str(resource_id), "resource_type": resource_type, "resource_name": name or str(resource_id),
        "service_name": service, "region": region or "global", "status": status, "external_ip": external_ip,
        "daily_cost": daily, "effective_cost": daily, "original_cost": round(daily * 30, 4), "currency": "RUB",
        "billing_period": billing_period, "cost_period": "daily", "cost_frequency": "daily",
        "provider_config": config or {}, "tags": {str(k): str(v) for k, v in (tags or {}).items()},
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------- HTTP


def _expires_in(expires_at: str) -> float:
    """Seconds until an RFC 3339 instant with up to nanoseconds ('2026-11-28T05:44:06.993112000Z')."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", expires_at.strip()).replace("Z", "+00:00")
    return (datetime.fromisoformat(text) - datetime.now(UTC)).total_seconds()


# ---------------------------------------------------------------------------------------------- Yandex Cloud


class IamToken(RenewableToken):
    """Yandex IAM token from a service-account key (PS256 JWT) or an OAuth token; renewed a little before its
    ``expiresAt`` (a tenth of its life, at most 5 min: the original's margin) and when an API answers 401."""

    def __init__(self, credentials: dict, url: str):
        super().__init__()
        self.credentials, self.url = credentials, url

    def _fetch(self, client: ApiClient) -> None:
        key = self.credentials.get("service_account_key")
        if key:
            import jwt

            now = int(time.time())
            claims = {"aud": IAM_AUDIENCE, "iss": key["service_account_id"], "iat": now, "exp": now + 3600}
            body = {"jwt": jwt.encode(claims, key["private_key"], algorithm="PS256", headers={"kid": key["id"]})}
        elif self.credentials.get("oauth_token"):
            body = {"yandexPassportOauthToken": self.credentials["oauth_token"]}
        else:
            raise AuthError("Yandex credentials hold neither service_account_key nor oauth_token")
        answer = client.obtain_token(self.url, json=body)
        self.token = answer["iamToken"]
        mask_secrets([self.token])
        life = max(0.0, _expires_in(answer["expiresAt"]))
        self.renew_at = time.monotonic() + life - min(300.0, life / 10)
        client.stats.add(token_renewals=1)


class YandexClient:
    def __init__(self, credentials: dict, hosts: dict[str, str], http: ApiClient, page_size: int):
        self.credentials, self.template, self.page_size = credentials, hosts["host"], page_size
        self.http = http.with_auth(IamToken(credentials, self.url("iam", "iam/v1/tokens")))
        self.clouds: list[dict] = []

    def url(self, service: str, path: str) -> str:
        return f"{self.template.format(service=service).rstrip('/')}/{path}"

    def list(self, service: str, path: str, key: str, **params: str) -> list[dict]:
        """Every page: ``pageSize``/``pageToken`` until no ``nextPageToken`` (the original stopped at 100)."""
        items: list[dict] = []
        seen: set[str] = set()
        token = None
        while True:
            query = {**params, "pageSize": str(self.page_size), **({"pageToken": token} if token else {})}
            body = self.http.get_json(self.url(service, path), params=query)
            items.extend(body.get(key, []))  # proto3 JSON leaves an empty list out
            token = body.get("nextPageToken")
            if not token:
                return items
            if token in seen:
                raise ApiError(f"{path}: the API repeated a nextPageToken")
            seen.add(token)

    def connect(self) -> str | None:
        """IAM token + clouds: the original's test_connection and discovery in one."""
        self.clouds = self.list("resource-manager", "resource-manager/v1/clouds", "clouds")
        return self.clouds[0]["id"] if self.clouds else None

    def folders(self) -> list[dict]:
        """Folders of every cloud; a service account that sees no cloud finds its cloud through its own folder."""
        clouds = [c["id"] for c in self.clouds]
        key = self.credentials.get("service_account_key")
        if not clouds and key:
            account = self.http.get_json(self.url("iam", f"iam/v1/serviceAccounts/{key['service_account_id']}"))
            folder = f"resource-manager/v1/folders/{account['folderId']}"
            home = self.http.get_json(self.url("resource-manager", folder))
            clouds = [home["cloudId"]]
        path = "resource-manager/v1/folders"
        return [f for cloud in clouds for f in self.list("resource-manager", path, "folders", cloudId=cloud)]

    def resources(self) -> tuple[list[dict], dict]:
        rows = []
        folders = self.folders()
        for folder in folders:
            disks = {d["id"]: d for d in self.list("compute", "compute/v1/disks", "disks", folderId=folder["id"])}
            for vm in self.list("compute", "compute/v1/instances", "instances", folderId=folder["id"]):
                rows.append(self.instance(vm, disks, folder))
            rows += [self.disk(d, folder) for d in disks.values() if not d.get("instanceIds")]
        clouds = sorted({f["cloudId"] for f in folders})
        return rows, {"clouds": clouds, "folders": len(folders)}

    @staticmethod
    def disk_daily(disk: dict) -> float:
        rate = YC_DISK_GB_MONTH.get(disk.get("typeId", ""), YC_DISK_GB_MONTH["network-hdd"])
        return int(disk.get("size", 0)) / GiB * rate / 730 * 24

    def instance(self, vm: dict, disks: dict[str, dict], folder: dict) -> dict:
        """Estimated cost (spec §3): RUNNING (cores×rate + GB×rate + public IP)×24 + attached disks; STOPPED:
        disks only. Attached disks are folded into the VM."""
        attached = [vm.get("bootDisk", {}).get("diskId")] + [d.get("diskId") for d in vm.get("secondaryDisks", [])]
        own = [disks[d] for d in attached if d in disks]
        daily = sum(map(self.disk_daily, own))
        resources = vm.get("resources", {})
        cores, memory = int(resources.get("cores", 0)), int(resources.get("memory", 0)) / GiB
        addresses = [nic.get("primaryV4Address", {}) for nic in vm.get("networkInterfaces", [])]
        public = next((a["oneToOneNat"]["address"] for a in addresses if a.get("oneToOneNat", {}).get("address")), None)
        if vm.get("status") == "RUNNING":
            daily += (cores * YC_CORE_HOUR + memory * YC_RAM_GB_HOUR + (YC_PUBLIC_IP_HOUR if public else 0)) * 24
        config = {"folder_id": folder["id"], "cloud_id": folder.get("cloudId"), "platform_id": vm.get("platformId"),
                  "cores": cores, "memory_gb": memory, "core_fraction": int(resources.get("coreFraction", 100)),
                  "private_ip": next((a.get("address") for a in addresses), None),
                  "disks": [{"id": d["id"], "type": d.get("typeId"), "size_gb": int(d.get("size", 0)) / GiB}
                            for d in own]}  # fmt: skip
        return _record(vm["id"], "server", vm.get("name", ""), "Compute Cloud", vm.get("zoneId", ""),
                       vm.get("status"), daily, billing_period="hourly", external_ip=public, config=config,
                       tags=vm.get("labels"))  # fmt: skip

    def disk(self, disk: dict, folder: dict) -> dict:
        config = {"folder_id": folder["id"], "type": disk.get("typeId"), "size_gb": int(disk.get("size", 0)) / GiB}
        return _record(disk["id"], "volume", disk.get("name", ""), "Compute Cloud", disk.get("zoneId", ""),
                       disk.get("status"), self.disk_daily(disk), billing_period="hourly", config=config,
                       tags=disk.get("labels"))  # fmt: skip


# ---------------------------------------------------------------------------------------------- Selectel


class KeystoneToken(RenewableToken):
    """Selectel's OpenStack token: Keystone password auth scoped to the account's first project → 201 with the
    token in ``X-Subject-Token`` and the regions in the catalog; re-issued when an OpenStack API answers 401."""

    header, scheme = "X-Auth-Token", ""

    def __init__(self, url: str, credentials: dict):
        super().__init__()
        self.url, self.credentials = url, credentials
        self.account = self.project = None
        self.regions: list[str] = []

    def _fetch(self, client: ApiClient) -> None:
        user = {"name": self.credentials["service_username"], "domain": {"name": self.account},
                "password": self.credentials["service_password"]}  # fmt: skip
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": user}},
                         "scope": {"project": {"id": self.project}}}}  # fmt: skip
        try:
            response = client.request("POST", self.url, authenticated=False, json=body)
        except AuthError:
            raise
        except ApiError as exc:
            raise AuthError(f"Keystone authentication failed: {exc}") from exc
        self.token = response.headers.get("X-Subject-Token")
        if response.status_code != 201 or not self.token:
            raise AuthError(f"Keystone answered {response.status_code} without X-Subject-Token")
        mask_secrets([self.token])
        catalog = response.json()["token"].get("catalog", [])
        self.regions = sorted({e["region"] for s in catalog if s.get("type") == "compute"
                               for e in s.get("endpoints", []) if e.get("interface") == "public"})  # fmt: skip
        client.stats.add(token_renewals=1)


OPENSTACK_STATUS = {"ACTIVE": "RUNNING", "SHUTOFF": "STOPPED"}


def selectel_type(billing_type: str) -> str:
    """Spec §3: cloud_vm → server, volume_* → volume, share_* → file_storage, dbaas_* → database,
    mks_* → kubernetes_*, else other_service."""
    if billing_type == "cloud_vm":
        return "server"
    for prefix, kind in (("volume_", "volume"), ("share_", "file_storage"), ("dbaas_", "database")):
        if billing_type.startswith(prefix):
            return kind
    if billing_type.startswith("mks_"):
        return "kubernetes_" + billing_type[4:]
    return "other_service"


def kopecks_per_hour_to_daily(kopecks: float) -> float:
    """Selectel bills hourly in kopecks: k → k/100 RUB × 24 h."""
    return kopecks / 100 * 24


class SelectelClient:
    PROVIDER_KEYS = ("vpc", "mks", "dbaas", "craas")

    def __init__(self, credentials: dict, hosts: dict[str, str], http: ApiClient, page_size: int):
        self.credentials, self.hosts, self.page_size = credentials, hosts, page_size
        self.api = hosts["host"].rstrip("/")
        self.http = http  # X-Token calls (a static key: a 401 is final)
        self.keystone = KeystoneToken(f"{hosts['identity_host'].rstrip('/')}/identity/v3/auth/tokens", credentials)
        self.openstack = http.with_auth(self.keystone)
        self.headers = {"X-Token": credentials["api_key"]}

    def x_token(self, path: str, **params: Any) -> Any:
        return self.http.get_json(f"{self.api}/{path}", headers=self.headers, params=params)

    def connect(self) -> str:
        """X-Token (account → its name, the Keystone domain) and Keystone, as the original's connection test."""
        account = self.x_token("vpc/resell/v2/accounts")["account"]["name"]
        projects = self.x_token("vpc/resell/v2/projects").get("projects", [])
        if not projects:
            raise ApiError(f"Selectel account {account} has no project")
        self.keystone.account, self.keystone.project = account, projects[0]["id"]
        self.keystone.renew(self.openstack)
        return account

    def region_url(self, region: str, path: str) -> str:
        return f"{self.hosts['region_host'].format(region=region).rstrip('/')}/{path}"

    def openstack_list(self, region: str, path: str, key: str) -> list[dict]:
        """Nova/Cinder pages: ``limit`` + ``marker`` (the last id) until a page is not full."""
        items: list[dict] = []
        marker = None
        while True:
            params = {"limit": self.page_size, **({"marker": marker} if marker else {})}
            page = self.openstack.get_json(self.region_url(region, path), params=params).get(key, [])
            items += page
            if len(page) < self.page_size or not page:
                return items
            marker = page[-1]["id"]

    def billing(self, now: datetime) -> list[dict]:
        """The last 2 hours' consumption, hour by hour. A failure fails the provider (the original turned it into
        ``{}`` and marked every resource inactive)."""
        hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        params = {"provider_keys": list(self.PROVIDER_KEYS), "start": (hour - timedelta(hours=2)).isoformat()[:19],
                  "end": hour.replace(minute=59, second=59).isoformat()[:19], "locale": "ru",
                  "group_type": "project_object_region_metric", "period_group_type": "hour"}  # fmt: skip
        body = self.x_token("v1/cloud_billing/statistic/consumption", **params)
        if not isinstance(body, dict) or body.get("status") != "success":
            raise ApiError(f"Selectel billing answered {json.dumps(body)[:300]}")
        return body.get("data") or []

    def resources(self, now: datetime | None = None) -> tuple[list[dict], dict]:
        project = self.keystone.project
        rows = self.billing(now or datetime.now(UTC))
        servers, volumes, flavors = {}, {}, {}
        for region in self.keystone.regions:
            for server in self.openstack_list(region, "compute/v2.1/servers/detail", "servers"):
                servers[server["id"]] = server
            for volume in self.openstack_list(region, f"volume/v3/{project}/volumes/detail", "volumes"):
                volumes[volume["id"]] = volume
            for flavor_id in {s.get("flavor", {}).get("id") for s in servers.values()} - set(flavors) - {None}:
                url = self.region_url(region, f"compute/v2.1/flavors/{flavor_id}")
                flavors[flavor_id] = self.openstack.get_json(url)["flavor"]
        # Latest hour per object; children (parent_id ≠ project: a VM's disks) merged into their parent.
        latest = max((r["period"] for r in rows), default=None)
        objects: dict[str, dict] = {}
        for row in rows:
            if row["period"] != latest:
                continue
            obj = row["object"]
            owner = obj["id"] if obj.get("parent_id") in (project, None) else obj["parent_id"]
            entry = objects.setdefault(owner, {"kopecks": 0, "children": [], "metrics": {}})
            entry["kopecks"] += row["value"]
            if owner == obj["id"]:
                entry.update(object=obj, zone=row["metric"].get("region", ""))
                entry["metrics"][row["metric"]["id"]] = row["value"]
            elif obj["id"] not in entry["children"]:
                entry["children"].append(obj["id"])
        records = []
        for oid, entry in objects.items():
            obj = entry.get("object") or {"id": oid, "name": oid, "type": "cloud_vm"}  # only its disks are billed
            zone = entry.get("zone", "")
            server = servers.get(oid)
            status = OPENSTACK_STATUS.get(server["status"], server["status"]) if server else None
            if obj["type"] == "cloud_vm" and status is None:
                status = "RUNNING"  # billed this hour but gone from OpenStack: the original writes it as running
            config = {"project_id": project, "zone": zone, "billing_type": obj["type"], "children": entry["children"],
                      "kopecks_per_hour": entry["kopecks"], "metrics": entry["metrics"]}  # fmt: skip
            external_ip = None
            if server:
                flavor = flavors.get(server.get("flavor", {}).get("id"), {})
                config["flavor"] = {k: flavor.get(k) for k in ("id", "name", "vcpus", "ram")}
                addresses = [a for net in server.get("addresses", {}).values() for a in net]
                external_ip = next((a["addr"] for a in addresses if a.get("OS-EXT-IPS:type") == "floating"), None)
            if oid in volumes:
                config.update(size_gb=volumes[oid].get("size"), volume_type=volumes[oid].get("volume_type"))
            records.append(_record(
                oid, selectel_type(obj["type"]), obj.get("name", ""), obj["type"].split("_")[0],
                re.sub(r"[a-z]$", "", zone), status or "ACTIVE", kopecks_per_hour_to_daily(entry["kopecks"]),
                billing_period="hourly", external_ip=external_ip, config=config,
                tags=(server or {}).get("metadata"),
            ))  # fmt: skip
        return records, {"project_id": project, "regions": self.keystone.regions, "billing_hour": latest}


# ---------------------------------------------------------------------------------------------- Beget


class BegetToken(RenewableToken):
    """The cloud API's JWT (``POST /v1/auth``): the original never renewed it; here a 401 logs in again."""

    def __init__(self, url: str, login: str, password: str):
        super().__init__()
        self.url, self.login, self.password = url, login, password

    def _fetch(self, client: ApiClient) -> None:
        answer = client.obtain_token(self.url, json={"login": self.login, "password": self.password})
        if not isinstance(answer, dict) or not answer.get("token"):  # {"error": …} comes with HTTP 200
            raise AuthError(f"Beget cloud login refused: {(answer or {}).get('error', answer)}")
        self.token = answer["token"]
        mask_secrets([self.token])
        client.stats.add(token_renewals=1)


def beget_cloud_type(kind: str) -> str:
    if kind.startswith(("MYSQL", "POSTGRES")):
        return "database"
    return "storage" if kind == "S_3" else "cloud_service"


class BegetClient:
    LIMIT_WAITS = 10  # LIMIT_ERROR envelopes in a row before giving up

    def __init__(self, credentials: dict, hosts: dict[str, str], http: ApiClient, page_size: int):
        self.login, self.password = credentials["username"], credentials["password"]
        self.api = hosts["host"].rstrip("/")
        # The connection's cloud_host wins over the credentials' api_url: a redirect must catch every call.
        cloud = (hosts.get("cloud_host") or credentials.get("api_url") or hosts["host"]).rstrip("/")
        self.cloud = cloud
        self.http = http
        self.bearer = http.with_auth(BegetToken(f"{cloud}/v1/auth", self.login, self.password))
        self.errors: list[str] = []

    def legacy(self, method: str) -> Any:
        """The legacy API: POST form (credentials kept out of URLs and logs). Errors come as HTTP 200 envelopes:
        ``{status: error, error_code, error_text}`` for the request, ``answer.status: error`` for the method."""
        form = {"login": self.login, "passwd": self.password, "output_format": "json"}
        for _ in range(self.LIMIT_WAITS):
            body = self.http.fetch_json("POST", f"{self.api}/api/{method}", data=form)[0]
            if not isinstance(body, dict):
                raise ApiError(f"Beget {method}: unexpected answer {str(body)[:200]}")
            if body.get("status") == "error":
                code, text = body.get("error_code"), body.get("error_text")
                if code == "AUTH_ERROR":
                    raise AuthError(f"Beget {method}: {code}: {text}")
                if code == "LIMIT_ERROR":  # the legacy API's 429
                    self.http.stats.add(throttled=1)
                    self.http.limiter.pause(1.0)
                    continue
                raise ApiError(f"Beget {method}: {code}: {text}")
            answer = body.get("answer") or {}
            if answer.get("status") != "success":
                errors = "; ".join(f"{e.get('error_code')}: {e.get('error_text')}" for e in answer.get("errors", []))
                raise ApiError(f"Beget {method}: {errors or json.dumps(answer)[:200]}")
            return answer.get("result")
        raise ApiError(f"Beget {method}: still LIMIT_ERROR after {self.LIMIT_WAITS} waits")

    def connect(self) -> str:
        """Account billing data, then the cloud login: both are needed for a sync."""
        try:
            self.account_info = self.legacy("user/getAccountInfo") or {}
        except AuthError:
            raise
        except ApiError as exc:
            raise ApiError(f"Account billing data unavailable: {exc}") from exc
        self.bearer.auth.renew(self.bearer)
        return self.login

    def optional(self, what: str, call) -> list:
        """A list the original swallowed into []: kept as an error (the provider is then partial)."""
        try:
            return call()
        except AuthError:
            raise
        except ApiError as exc:
            self.errors.append(f"{what}: {exc}")
            log.warning("Beget %s", self.errors[-1])
            return []

    def resources(self) -> tuple[list[dict], dict]:
        cloud = self.bearer.get_json
        vps = self.optional("VPS list", lambda: cloud(f"{self.cloud}/v1/vps/server/list").get("vps", []))
        services = self.optional("cloud services", lambda: cloud(f"{self.cloud}/v1/cloud").get("service", []))
        domains = self.optional("domains", lambda: self.legacy("domain/getList") or [])
        rows = []
        for v in vps:
            conf = v.get("configuration", {})
            day = float(conf.get("price_day") or 0)
            daily = day if day > 0 else float(conf.get("price_month") or 0) / 30
            config = {k: conf.get(k) for k in ("cpu_count", "memory", "disk_size", "price_day", "price_month")}
            rows.append(
                _record(
                    v["id"],
                    "server",
                    v.get("display_name") or v.get("hostname", ""),
                    "VPS",
                    v.get("region", ""),
                    v.get("status"),
                    daily,
                    billing_period="daily",
                    external_ip=v.get("ip_address"),
                    config={**config, "hostname": v.get("hostname")},
                )
            )
        for s in services:
            day = float(s.get("price_day") or 0)
            daily = day or (0.01 if s.get("type") == "S_3" else 0.0)  # the original's floor for a free S3 bucket
            rows.append(
                _record(
                    s["id"],
                    beget_cloud_type(s.get("type", "")),
                    s.get("display_name", ""),
                    "Cloud",
                    s.get("region", ""),
                    s.get("status"),
                    daily,
                    billing_period="daily",
                    config={"type": s.get("type"), "price_month": s.get("price_month")},
                )
            )
        for d in domains:
            if d.get("registrar"):  # registered through Beget: billed yearly
                config = {k: d.get(k) for k in ("date_register", "date_expire", "auto_renew", "registrar")}
                rows.append(
                    _record(
                        str(d["id"]),
                        "domain",
                        d.get("fqdn", ""),
                        "Domains",
                        "global",
                        "ACTIVE",
                        BEGET_DOMAIN_DAILY,
                        billing_period="yearly",
                        config=config,
                    )
                )
        info = self.account_info
        metadata = {k: info.get(k) for k in ("plan_name", "user_balance", "user_rate_current", "user_rate_month",
                                             "user_days_to_block")}  # fmt: skip
        return rows, metadata


CLIENTS = {"yandex": YandexClient, "selectel": SelectelClient, "beget": BegetClient}


# ---------------------------------------------------------------------------------------------- entry point


def sync_provider(
    provider_type: str,
    credentials: dict | str,
    hosts: dict[str, str] | None = None,
    *,
    rate_limit: str | None = None,
    timeout: float = 30.0,
    max_retries: int = 5,
    backoff: float = 1.0,
    page_size: int = YANDEX_MAX_PAGE_SIZE,
) -> ProviderSync:
    """Read every resource of one provider account (a ``cloud_providers`` row's type and credentials, the dict or
    the JSON text the app stores). ``hosts`` overrides ``DEFAULT_HOSTS[provider_type]``; ``rate_limit`` ("10/s")
    is this account's own limit. Raises ProviderError (``connection=True`` when nothing could be read)."""
    if provider_type not in CLIENTS:
        raise ProviderError(f"unknown provider type {provider_type!r}", connection=True)
    started = time.monotonic()
    if isinstance(credentials, str):
        try:
            credentials = json.loads(credentials)
        except ValueError:
            credentials = None
    if not isinstance(credentials, dict):  # the app's column is text: one bad row must not fail the chunk
        raise ProviderError("Connection failed: credentials are not a JSON object", connection=True)
    mask_secrets(_secrets(credentials))
    http = ApiClient.from_url(
        name=f"infrazen_{provider_type}", rate_limit=rate_limit or DEFAULT_RATE_LIMITS[provider_type],
        timeout=timeout, max_retries=max_retries, backoff=backoff,
    )  # fmt: skip
    try:
        client = CLIENTS[provider_type](credentials, {**DEFAULT_HOSTS[provider_type], **(hosts or {})}, http,
                                        min(page_size, YANDEX_MAX_PAGE_SIZE))  # fmt: skip
    except KeyError as exc:
        raise ProviderError(f"Connection failed: credentials lack {exc}", connection=True) from None
    stage = "Connection failed"
    try:
        account_id = client.connect()
        stage = "Sync failed"
        resources, metadata = client.resources()
    except (ApiError, KeyError, TypeError, ValueError) as exc:
        message = str(exc) if isinstance(exc, ApiError) else f"unexpected answer: {type(exc).__name__}: {exc}"
        raise ProviderError(
            f"{stage}: {message}",
            connection=stage == "Connection failed",
            stats=http.stats.as_dict(),
            duration=time.monotonic() - started,
        ) from exc
    return ProviderSync(
        provider_type=provider_type, account_id=account_id, resources=resources,
        total_daily_cost=round(sum(r["daily_cost"] for r in resources), 2),
        errors=list(getattr(client, "errors", [])), metadata=metadata, stats=http.stats.as_dict(),
        duration=time.monotonic() - started,
    )  # fmt: skip


def credential_secrets(credentials: dict | str) -> list[str]:
    """The secret values of a cloud_providers.credentials (dict or the JSON text the app stores; none when that
    text is not a JSON object: the provider's sync then fails on it)."""
    if isinstance(credentials, str):
        try:
            credentials = json.loads(credentials)
        except ValueError:
            return []
    return _secrets(credentials) if isinstance(credentials, dict) else []


def _secrets(credentials: dict) -> list[str]:
    found = []
    for key, value in credentials.items():
        if isinstance(value, dict):
            found += _secrets(value)
        elif key in ("oauth_token", "private_key", "api_key", "service_password", "password") and value:
            found.append(str(value))
    return found
