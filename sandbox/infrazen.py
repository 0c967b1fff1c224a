"""Sandbox of the cloud-provider APIs InfraZen syncs: Yandex Cloud, Selectel, Beget (spec: specs/infrazen.md).

``InfraZenData`` generates, from a seed, both sides of the bulk sync: the InfraZen application's ``users`` and
``cloud_providers`` rows (credentials as the app stores them) and, behind those credentials, each provider account
(Yandex clouds/folders/instances/disks, Selectel projects/servers/volumes/hourly consumption, Beget VPS/cloud
services/domains/account info). ``create_app`` serves all three providers from one server, each real host under a
path prefix, so a sync whose hosts come from templates can be pointed at it:

    Yandex    https://{service}.api.cloud.yandex.net   ->  <base>/yandex/{service}
    Selectel  https://api.selectel.ru                   ->  <base>/selectel/api
              https://cloud.api.selcloud.ru (identity)  ->  <base>/selectel/cloud
              https://{region}.cloud.api.selcloud.ru    ->  <base>/selectel/regions/{region}
    Beget     https://api.beget.com (legacy and cloud)  ->  <base>/beget

Per-account fault switches (``POST /_sandbox/account_faults``): refused credentials, 5xx, 429 bursts, slow answers,
tokens that die after N calls (expiry mid-sync), Selectel billing failure, Beget legacy envelope errors.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import itertools
import json
import math
import random
import secrets
import string
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from fastapi import FastAPI, Request
from starlette.responses import Response

from sandbox.common import Controls, Faults, Sandbox, install, json_response
from sandbox.portaildf import PeakRateLimiter

PROVIDERS = ("yandex", "selectel", "beget")
IAM_AUDIENCE = "https://iam.api.cloud.yandex.net/iam/v1/tokens"
YANDEX_PAGE_SIZE, YANDEX_MAX_PAGE_SIZE = 100, 1000  # api-design-guide: default 100, 0-1000
DEFAULT_LIMITS = {"yandex": [(20, 1.0)], "selectel": [(20, 1.0)], "beget": [(10, 1.0)]}
RETRY_GRACE = 0.1  # seconds: a request this soon after a 429 may have been sent before the client read it

# The one RSA key every generated Yandex service-account key uses (a test key: generating one per account is
# slow, and the credentials must be the same in every process that builds the data from a seed).
SERVICE_ACCOUNT_PRIVATE_KEY = """\
-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCsNqSL2NE810rO
Ym5ruti5hFC2fjUQI788oPL9/1M2s5Dlr8fCrTBoc0bj1X1PW9ZI7IYTX5vSnUhj
/7b+xmf2rNeEZEYRrvCGYZeZnVlnz+/bpmoNdxWGk+6pyHd7nZJWg7l91YL4YSR5
Et+7sbAKmMan5AsLKDzk8MdPo78Iiex6JvHUVEIbt5bbsBLl1cN+yCpEg0AnHpYj
E8sVd0fl0bAGs6JNVzvzqt7G/l9ka2gYonsM8qp0C4j3OdLyq5eH10VWZKv1Wwa+
gyAdG7vJSVoMJ/5di9KupC09nqPajzqKdaRHGAAEy8KDgbrwnuhBfutGn/7CqAtf
sm57ojblAgMBAAECggEADxl+bXWeCP3ehQCL6n24RXHkys9/kxHzUVtSWvNxZiUx
8fWq5/ab/TiIUW81XMkyXXQBoH68UKfyQjRYZPfcAzyt6+GH5EKIu9ugOXuarHfG
seViPJqBpGphnXjigw/ylgvYLoCTSnhoBIajX9dpVlCFcJCV6E1Ho5I6A5FZrWOX
libU2uaY62w2Ifi/mTkrq4Jx91X9yPOz7OQkDN6voVJxQeMQTwhXLern/M31OJkN
USXVKM++n4ufACxkHfW/J8MUyqguSuP7oqR/Yg2AAIZoDUGQJ7CkImwxZWwaZevF
sJGYPK/e4V3PcYcjV3py3aM3l+ZS8M3kriDdIgvp6QKBgQDgSj1JI29aAC6XLadz
rzBeHBsB5QoSpoTUFqBYNUH9ONeEuqydsjDawgrkmuf8zBG47eDkUjGwMGHgOEPD
8gF1jzT3ao1CFjvpckHradZUHuhQe/WKqfivUIPeaz+fPuiwVovB9XrWkMbVHgsd
M/GTGsxOhJN8CcqN8XKjPJiODQKBgQDEj5bWtncTHtZTSEjzPM3rc/qwNPlKD9qv
Y4ifxXpyF3Ymg+98iFIQO8oxfrK8KXk4B3+sX/D5DGuFF5mMDVtC8xaI9nT4Pdi2
Pwz1MN1xdzG7bNGRrxtCgX7/XxW6kxyJ8UwpHqd2F5+gljtQUE4zi318glhMdBvC
84KCG+VuOQKBgQDMWRdpUY2cVFoehwvvzIem1riMi18YCvsuOMcyVqOe0HEbjvDC
ZJ06UlyWV8RRgKQM9z5VB8YZnpsuLFUha5aEw0sguMWmlpdTZDRHBhCuZ9KFscrO
4XmgUR00QkafEjPypYeD2eJnJ1TgyxSZMMBCpMHML+Inusv/cyJdM1JS6QKBgEKV
QUtKU9uuPnvHqK58kmSHzQuTZj6oUDPJS6aThn7PY754Qs+0fdfx6PQLLxB+HAnW
wHDrrv0uL93NuL2waJGtNpz+n3DXwmk5wnHsM5cUAUyz9+mZn2pP420uEHY7DxfL
HTlwoNln9zK2sTDrgxIC1mcu4CpFyoGnazYXrQhBAoGAGjIjAzrYoYSyKK0AL74K
5M/ncmVnU3OwF9X7GuDs0m+I+/Wr7aXB+M++maRK3wO1E7tYGs5L0DFKTRivh61L
EaH8nfCv1YYTU0jZvJwY/81ODouyHivkrMTddzC0H5TQcYEcWtODkrVbJSv9b839
UgLbzP/fi5f/G34GImnvVPQ=
-----END PRIVATE KEY-----

"""

# ---------------------------------------------------------------------------------------------- data

_ALNUM = string.ascii_lowercase + string.digits
_FIRST = (
    "ivan", "olga", "sergey", "anna", "dmitry", "elena", "pavel", "maria", "alexey", "irina", "nikolay", "tatiana",
    "andrey", "natalia", "mikhail", "svetlana", "yuri", "ekaterina", "artem", "daria",
)  # fmt: skip
_LAST = (
    "ivanov", "petrova", "smirnov", "kuznetsova", "popov", "vasilieva", "sokolov", "mikhailova", "novikov",
    "fedorova", "morozov", "volkova", "lebedev", "kozlova", "egorov", "pavlova", "orlov", "semenova",
)  # fmt: skip
_DOMAINS = ("example.ru", "mail.ru", "yandex.ru", "gmail.com", "startup.io", "finops.dev", "company.com")
_YC_ZONES = ("ru-central1-a", "ru-central1-b", "ru-central1-d")
_SEL_REGIONS = ("ru-1", "ru-3", "ru-7", "ru-9")
# Selectel flavors (id -> vcpus, ram MB, disk GB): ids as in the public catalogue's fixed-line flavors.
_FLAVORS = {
    "1011": ("SL1.1-1024", 1, 1024, 0), "1013": ("SL1.1-2048", 1, 2048, 0), "1015": ("SL1.2-4096", 2, 4096, 0),
    "1017": ("SL1.2-8192", 2, 8192, 0), "1019": ("SL1.4-16384", 4, 16384, 0), "1311": ("SL1.8-32768", 8, 32768, 0),
}  # fmt: skip
_BEGET_CLOUD = (("MYSQL5", "database"), ("POSTGRESQL", "database"), ("S_3", "storage"), ("REDIS", "cloud_service"))

# Estimated-cost rates (spec §3 Yandex fallback rates, RUB): per core-hour, per GB-hour, public IP per hour,
# disk per GB-month.
YC_CORE_HOUR, YC_RAM_GB_HOUR, YC_PUBLIC_IP_HOUR = 1.12, 0.30, 0.2592
YC_DISK_GB_MONTH = {"network-hdd": 2.24, "network-ssd": 9.1104}
BEGET_DOMAIN_DAILY = 50 / 365
GiB = 2**30


def _yc_id(rnd: random.Random, prefix: str) -> str:
    """Yandex Cloud ids: 20 chars, a 3-char prefix per kind (b1g clouds/folders, fhm instances, epd disks...)."""
    return prefix + "".join(rnd.choice(_ALNUM) for _ in range(17))


def _token(rnd: random.Random, length: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rnd.choice(alphabet) for _ in range(length))


def _uuid(rnd: random.Random) -> str:
    h = f"{rnd.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _compact(record: dict) -> dict:
    """proto3 JSON as Yandex sends it: empty strings, lists and maps are left out."""
    return {k: v for k, v in record.items() if v not in ("", [], {}, None)}


class InfraZenData:
    """Deterministic users, providers and provider accounts, a function of (users, seed, big_folder_vms).

    Application side: ``app_users()`` (≈4 % demouser, ≈5 % inactive, a few admins) and ``app_providers()``
    (``cloud_providers`` rows, ``credentials`` as the app stores them): users with no provider, with only
    manual (``auto_sync`` false) or disabled providers, with one, two or three auto-sync providers, ≈10 % with a
    soft-deleted provider too. The first eligible user's first Yandex account has a folder of ``big_folder_vms``
    VMs; one eligible user's Selectel provider holds credentials the providers refuse (``bad_provider_ids``).

    Provider side: ``accounts[provider][account_id]``, the raw records the APIs serve. Ground truth:
    ``expected_resources(provider_id)`` (what a correct sync writes, per the spec's rules) and ``expected_total``.
    """

    def __init__(self, users: int = 300, seed: int = 0, big_folder_vms: int = 150):
        if users < 0:
            raise ValueError("users must be >= 0")
        self.user_count, self.seed, self.big_folder_vms = users, seed, big_folder_vms
        self._lock = threading.RLock()
        self._generate()
        self.reset()

    # ------------------------------------------------------------------ generation

    def _generate(self) -> None:
        rnd = random.Random(f"infrazen:{self.seed}:{self.user_count}")
        start = datetime(2025, 1, 6, 9, tzinfo=UTC)
        self._users: list[dict] = []
        self._providers: list[dict] = []
        used_emails: set[str] = set()
        for uid in range(1, self.user_count + 1):
            role = rnd.choices(("user", "admin", "super_admin", "demouser"), (90, 4, 1, 5))[0]
            email = f"{rnd.choice(_FIRST)}.{rnd.choice(_LAST)}@{rnd.choice(_DOMAINS)}"
            while email in used_emails:
                email = email.replace("@", f"{rnd.randint(1, 99)}@", 1)
            used_emails.add(email)
            created = start + timedelta(hours=7 * uid, minutes=rnd.randrange(60))
            self._users.append(
                {"id": uid, "email": email, "role": role, "is_active": rnd.random() > 0.05, "created_at": created}
            )
            profile = rnd.choices(("none", "manual", "one", "two", "three"), (6, 6, 44, 30, 14))[0]
            count = {"none": 0, "manual": rnd.randint(1, 2), "one": 1, "two": 2, "three": 3}[profile]
            kinds = rnd.sample(PROVIDERS, count)
            specs = [(kind, profile != "manual", False) for kind in kinds]
            if rnd.random() < 0.10:  # a provider the user deleted (soft): never synced
                specs.insert(rnd.randint(0, len(specs)), (rnd.choice(PROVIDERS), True, True))
            for n, (kind, auto, deleted) in enumerate(specs):
                pid = len(self._providers) + 1
                manual_kind = rnd.random() < 0.5  # "manual" users: auto_sync off, or the provider disabled
                when = created + timedelta(days=1 + n, minutes=rnd.randrange(600))
                self._providers.append(
                    {
                        "id": pid,
                        "user_id": uid,
                        "provider_type": kind,
                        "connection_name": f"{kind.capitalize()} {('prod', 'main', 'staging', 'old')[n % 4]} {n + 1}",
                        "is_active": not deleted and (auto or manual_kind),
                        "is_deleted": deleted,
                        "deleted_at": when + timedelta(days=30) if deleted else None,
                        "auto_sync": auto or not manual_kind,
                        "created_at": when,
                    }
                )
        eligible = [p for p in self._providers if self.is_eligible(p)]
        big = next((p["id"] for p in eligible if p["provider_type"] == "yandex"), None)
        bad = next(
            (
                p["id"]
                for p in eligible
                if p["provider_type"] == "selectel" and sum(q["user_id"] == p["user_id"] for q in eligible) > 1
            ),
            None,
        )
        self.big_folder_provider_id = big
        self.bad_provider_ids = {bad} if bad else set()
        self.accounts: dict[str, dict[str, dict]] = {kind: {} for kind in PROVIDERS}
        self._account_of: dict[int, str] = {}
        for p in self._providers:
            build = {"yandex": self._yandex, "selectel": self._selectel, "beget": self._beget}[p["provider_type"]]
            for attempt in itertools.count():  # an account id drawn twice (a Beget login...): draw again
                arnd = random.Random(f"infrazen:{self.seed}:account:{p['id']}" + (f":{attempt}" if attempt else ""))
                account, credentials = build(arnd, p, big=p["id"] == big)
                if account["account_id"] not in self.accounts[p["provider_type"]]:
                    break
            p["account_id"], p["credentials"] = account["account_id"], credentials
            self._account_of[p["id"]] = account["account_id"]
            if p["id"] in self.bad_provider_ids:
                p["credentials"] = self._refused(p["provider_type"], credentials)
            else:
                self.accounts[p["provider_type"]][account["account_id"]] = account
        self._index()

    def is_eligible(self, provider: dict) -> bool:
        """The bulk sync's rule (spec §1): an active non-demo user's auto-sync, active, not deleted provider."""
        user = self._users[provider["user_id"] - 1]
        return (
            user["is_active"]
            and user["role"] != "demouser"
            and provider["auto_sync"]
            and provider["is_active"]
            and not provider["is_deleted"]
        )

    @staticmethod
    def _refused(kind: str, credentials: dict) -> dict:
        """The same shape with secrets no provider knows (a revoked key)."""
        if kind == "selectel":
            return {**credentials, "api_key": credentials["api_key"][::-1], "service_password": "revoked"}
        if kind == "beget":
            return {**credentials, "password": "revoked"}
        return {"oauth_token": "y0_revoked" + credentials.get("oauth_token", "")[10:]}

    def _yandex(self, rnd: random.Random, provider: dict, big: bool) -> tuple[dict, dict]:
        cloud_id = _yc_id(rnd, "b1g")
        created = provider["created_at"] - timedelta(days=rnd.randint(30, 600))
        service_account = rnd.random() < 0.3
        if service_account:
            key = {
                "id": _yc_id(rnd, "ajk"),
                "service_account_id": _yc_id(rnd, "aje"),
                "private_key": SERVICE_ACCOUNT_PRIVATE_KEY,
            }
            credentials: dict = {"service_account_key": key}
        else:
            credentials = {"oauth_token": "y0_" + _token(rnd, 56, string.ascii_letters + string.digits + "-_")}
        folders = []
        for name in ("default", "prod", "staging")[: rnd.randint(1, 3)]:
            folders.append(
                _compact(
                    {
                        "id": _yc_id(rnd, "b1g"),
                        "cloudId": cloud_id,
                        "createdAt": _rfc3339(created),
                        "name": name,
                        "status": "ACTIVE",
                    }
                )
            )
        instances: dict[str, list[dict]] = {}
        disks: dict[str, list[dict]] = {}
        for f, folder in enumerate(folders):
            count = (
                self.big_folder_vms if big and f == 0 else rnd.choices((0, 1, 2, 3, 5, 8), (10, 25, 25, 20, 12, 8))[0]
            )
            instances[folder["id"]], disks[folder["id"]] = [], []
            for k in range(count):
                vm, vm_disks = self._yc_instance(rnd, folder, f"{folder['name']}-vm-{k + 1}", created)
                instances[folder["id"]].append(vm)
                disks[folder["id"]].extend(vm_disks)
            for k in range(rnd.choices((0, 1, 2), (60, 30, 10))[0]):  # detached disks: billed on their own
                disks[folder["id"]].append(
                    self._yc_disk(rnd, folder, f"{folder['name']}-spare-{k + 1}", rnd.choice(_YC_ZONES), None, created)
                )
            rnd.shuffle(disks[folder["id"]])  # the API lists disks by id, not by instance
            disks[folder["id"]].sort(key=lambda d: d["id"])
            instances[folder["id"]].sort(key=lambda i: i["id"])
        account = {
            "account_id": cloud_id,
            "credentials": credentials,
            "clouds": [
                _compact(
                    {
                        "id": cloud_id,
                        "createdAt": _rfc3339(created),
                        "name": f"cloud-{provider['user_id']}",
                        "organizationId": _yc_id(rnd, "bpf"),
                    }
                )
            ],
            # A service account with folder roles only sees no cloud: the sync finds its folder through it.
            "clouds_visible": not (service_account and rnd.random() < 0.3),
            "folders": folders,
            "instances": instances,
            "disks": disks,
        }
        if service_account:
            account["service_account"] = {
                "id": key["service_account_id"],
                "folderId": folders[0]["id"],
                "createdAt": _rfc3339(created),
                "name": "finops-reader",
            }
        return account, credentials

    def _yc_disk(self, rnd, folder, name, zone, instance_id, created) -> dict:
        return _compact(
            {
                "id": _yc_id(rnd, "epd"),
                "folderId": folder["id"],
                "createdAt": _rfc3339(created + timedelta(days=rnd.randint(0, 200))),
                "name": name,
                "typeId": rnd.choice(("network-hdd", "network-ssd")),
                "zoneId": zone,
                "size": str(rnd.choice((10, 20, 30, 50, 100, 200)) * GiB),
                "blockSize": "4096",
                "productIds": ["f2e6lfmn4el9ukk5mb7i"],
                "status": "READY",
                "instanceIds": [instance_id] if instance_id else [],
            }
        )

    def _yc_instance(self, rnd, folder, name, created) -> tuple[dict, list[dict]]:
        zone = rnd.choice(_YC_ZONES)
        iid = _yc_id(rnd, "fhm")
        cores = rnd.choice((2, 2, 4, 8))
        boot = self._yc_disk(rnd, folder, f"{name}-boot", zone, iid, created)
        extra = [self._yc_disk(rnd, folder, f"{name}-data", zone, iid, created) for _ in range(rnd.random() < 0.25)]
        address = {"address": f"10.{rnd.randint(128, 131)}.0.{rnd.randint(3, 250)}"}
        if rnd.random() < 0.4:
            address["oneToOneNat"] = {
                "address": f"51.250.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}",
                "ipVersion": "IPV4",
            }
        labels = {
            k: v for k, v in (("env", rnd.choice(("prod", "dev", ""))), ("team", rnd.choice(("core", "", "")))) if v
        }
        vm = _compact(
            {
                "id": iid,
                "folderId": folder["id"],
                "createdAt": _rfc3339(created + timedelta(days=rnd.randint(0, 200))),
                "name": name,
                "labels": labels,
                "zoneId": zone,
                "platformId": "standard-v3",
                "resources": {
                    "memory": str(cores * rnd.choice((1, 2, 4)) * GiB),
                    "cores": str(cores),
                    "coreFraction": str(rnd.choice((100, 100, 50, 20))),
                },
                "status": "RUNNING" if rnd.random() < 0.8 else "STOPPED",
                "bootDisk": {"mode": "READ_WRITE", "deviceName": boot["id"], "autoDelete": True, "diskId": boot["id"]},
                "secondaryDisks": [{"mode": "READ_WRITE", "deviceName": d["id"], "diskId": d["id"]} for d in extra],
                "networkInterfaces": [
                    {
                        "index": "0",
                        "macAddress": ":".join(f"{rnd.randrange(256):02x}" for _ in range(6)),
                        "subnetId": _yc_id(rnd, "e9b"),
                        "primaryV4Address": address,
                    }
                ],
                "fqdn": f"{name}.ru-central1.internal",
                "networkSettings": {"type": "STANDARD"},
            }
        )
        return vm, [boot, *extra]

    def _selectel(self, rnd: random.Random, provider: dict, big: bool) -> tuple[dict, dict]:
        name = str(rnd.randint(100_000, 999_999))
        credentials = {
            "api_key": _token(rnd, 40),
            "service_username": f"finops-{name}",
            "service_password": _token(rnd, 20),
        }
        project = {"id": f"{rnd.getrandbits(128):032x}", "name": "My First Project", "enabled": True}
        regions = sorted(rnd.sample(_SEL_REGIONS, rnd.choice((1, 1, 2))))
        created = provider["created_at"] - timedelta(days=rnd.randint(30, 600))
        servers, volumes, billing = [], [], []

        def bill(obj_id, obj_name, obj_type, parent, zone, metric, kopecks):
            billing.append(
                {
                    "object": {"id": obj_id, "name": obj_name, "type": obj_type, "parent_id": parent},
                    "metric": {"id": metric, "region": zone},
                    "kopecks": kopecks,
                    "provision_start": _rfc3339(created),
                }
            )

        for k in range(rnd.choices((0, 1, 2, 3, 5), (10, 30, 30, 20, 10))[0]):
            region = rnd.choice(regions)
            zone = region + rnd.choice("ab")
            flavor = rnd.choice(list(_FLAVORS))
            _, vcpus, ram, _ = _FLAVORS[flavor]
            sid = _uuid(rnd)
            servers.append(
                {
                    "id": sid,
                    "name": f"server-{k + 1}",
                    "status": "ACTIVE" if rnd.random() < 0.85 else "SHUTOFF",
                    "tenant_id": project["id"],
                    "flavor": {"id": flavor, "links": []},
                    "region": region,
                    "OS-EXT-AZ:availability_zone": zone,
                    "created": _rfc3339(created),
                    "updated": _rfc3339(created),
                    "addresses": {
                        "net": [{"addr": f"192.168.0.{rnd.randint(2, 250)}", "version": 4, "OS-EXT-IPS:type": "fixed"}]
                    },
                    "metadata": {"owner": rnd.choice(("ops", "dev"))} if rnd.random() < 0.5 else {},
                }
            )
            bill(sid, f"server-{k + 1}", "cloud_vm", project["id"], zone, "compute_cores", vcpus * rnd.randint(60, 90))
            bill(
                sid,
                f"server-{k + 1}",
                "cloud_vm",
                project["id"],
                zone,
                "compute_ram",
                ram // 1024 * rnd.randint(25, 35),
            )
            size = rnd.choice((10, 20, 40, 80))
            vid = _uuid(rnd)
            volumes.append(
                {
                    "id": vid,
                    "name": f"disk-for-server-{k + 1}",
                    "size": size,
                    "status": "in-use",
                    "volume_type": f"universal.{zone}",
                    "availability_zone": zone,
                    "region": region,
                    "attachments": [{"server_id": sid, "device": "/dev/sda", "attachment_id": _uuid(rnd)}],
                    "bootable": "true",
                }
            )
            bill(vid, volumes[-1]["name"], "volume_universal", sid, zone, "volume_gigabytes_universal", size * 2)
        for k in range(rnd.choices((0, 1, 2), (60, 30, 10))[0]):
            region = rnd.choice(regions)
            zone = region + "a"
            vid, size = _uuid(rnd), rnd.choice((50, 100, 500))
            volumes.append(
                {
                    "id": vid,
                    "name": f"backup-{k + 1}",
                    "size": size,
                    "status": "available",
                    "volume_type": f"basic.{zone}",
                    "availability_zone": zone,
                    "region": region,
                    "attachments": [],
                    "bootable": "false",
                }
            )
            bill(vid, f"backup-{k + 1}", "volume_basic", project["id"], zone, "volume_gigabytes_basic", size)
        if rnd.random() < 0.3:
            bill(_uuid(rnd), "pg-main", "dbaas_postgresql", project["id"], regions[0] + "a", "dbaas_cpu", 420)
        if rnd.random() < 0.1:  # billed, but gone from OpenStack (deleted this hour): still written as RUNNING
            bill(_uuid(rnd), "ghost-vm", "cloud_vm", project["id"], regions[0] + "b", "compute_cores", 150)
        servers.sort(key=lambda s: s["id"])
        volumes.sort(key=lambda v: v["id"])
        account = {
            "account_id": name,
            "credentials": credentials,
            "project": project,
            "regions": regions,
            "servers": servers,
            "volumes": volumes,
            "billing": billing,
        }
        return account, credentials

    def _beget(self, rnd: random.Random, provider: dict, big: bool) -> tuple[dict, dict]:
        login = f"{rnd.choice(_LAST)[:6]}{rnd.randint(10, 99)}{rnd.choice('abcdefgh')}"
        credentials = {"username": login, "password": _token(rnd, 16), "api_url": "https://api.beget.com"}
        vps = []
        for k in range(rnd.choices((0, 1, 2, 3), (20, 40, 30, 10))[0]):
            cpu = rnd.choice((1, 2, 4))
            day = rnd.choice((0, 0, 25.5, 41.0, 77.3))
            month = round(day * 30, 2) if day else rnd.choice((450.0, 990.0))
            vps.append(
                {
                    "id": f"{rnd.getrandbits(64):016x}",
                    "display_name": f"vps-{k + 1}",
                    "hostname": f"{login}-{k + 1}.vps.beget.tech",
                    "status": rnd.choice(("RUNNING", "RUNNING", "STOPPED")),
                    "ip_address": f"45.{rnd.randint(80, 95)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}",
                    "region": rnd.choice(("ru1", "ru2", "kz1")),
                    "configuration": {
                        "cpu_count": cpu,
                        "memory": cpu * 2048,
                        "disk_size": cpu * 20480,
                        "price_day": day,
                        "price_month": month,
                    },
                }
            )
        services = []
        for k in range(rnd.choices((0, 1, 2), (50, 35, 15))[0]):
            kind, _ = rnd.choice(_BEGET_CLOUD)
            day = 0.0 if kind == "S_3" and rnd.random() < 0.5 else rnd.choice((3.2, 12.0, 18.4))
            services.append(
                {
                    "id": f"{rnd.getrandbits(64):016x}",
                    "type": kind,
                    "display_name": f"{kind.lower()}-{k + 1}",
                    "status": "ACTIVE",
                    "region": "ru1",
                    "price_day": day,
                    "price_month": round(day * 30, 2),
                }
            )
        domains = []
        for k in range(rnd.choices((0, 1, 2, 4), (30, 40, 20, 10))[0]):
            registered = rnd.random() < 0.6
            day = datetime(2022, 1, 1) + timedelta(days=rnd.randint(0, 900))
            domains.append(
                {
                    "id": rnd.randint(1_000_000, 9_999_999),
                    "fqdn": f"{login}{k + 1}.ru",
                    "date_register": day.date().isoformat() if registered else None,
                    "date_expire": (day + timedelta(days=365 * 4)).date().isoformat() if registered else None,
                    "auto_renew": int(registered and rnd.random() < 0.7),
                    "is_under_control": 1,
                    "registrar": "beget" if registered else "",
                }
            )
        rate = rnd.choice((8.6, 12.9, 25.8))
        info = {
            "plan_name": rnd.choice(("Blog", "Start", "Noble", "Great")),
            "user_balance": round(rnd.uniform(0, 3000), 2),
            "user_rate_current": f"{rate}",
            "user_rate_month": f"{round(rate * 30, 2)}",
            "user_rate_year": f"{round(rate * 365, 2)}",
            "user_days_to_block": rnd.randint(0, 300),
            "user_bill": "0",
            "user_is_year_plan": "0",
        }
        account = {
            "account_id": login,
            "credentials": credentials,
            "customer_id": rnd.randint(100_000, 999_999),
            "vps": vps,
            "services": services,
            "domains": domains,
            "account_info": info,
        }
        return account, credentials

    def _index(self) -> None:
        self._yandex_oauth, self._yandex_keys = {}, {}
        self._selectel_keys, self._selectel_users = {}, {}
        for acct_id, a in self.accounts["yandex"].items():
            c = a["credentials"]
            if "oauth_token" in c:
                self._yandex_oauth[c["oauth_token"]] = acct_id
            else:
                self._yandex_keys[c["service_account_key"]["id"]] = acct_id
        for acct_id, a in self.accounts["selectel"].items():
            self._selectel_keys[a["credentials"]["api_key"]] = acct_id
            self._selectel_users[(a["credentials"]["service_username"], acct_id)] = acct_id

    # ------------------------------------------------------------------ lookups (used by the app)

    def yandex_by_oauth(self, token: str) -> str | None:
        return self._yandex_oauth.get(token)

    def yandex_by_key(self, key_id: str) -> str | None:
        return self._yandex_keys.get(key_id)

    def selectel_by_api_key(self, api_key: str) -> str | None:
        return self._selectel_keys.get(api_key)

    def selectel_by_user(self, username: str, domain: str, password: str) -> str | None:
        acct = self._selectel_users.get((username, domain))
        ok = acct and hmac.compare_digest(self.accounts["selectel"][acct]["credentials"]["service_password"], password)
        return acct if ok else None

    def beget_login(self, login: str, password: str) -> str | None:
        a = self.accounts["beget"].get(login)
        return login if a and hmac.compare_digest(a["credentials"]["password"], password) else None

    def instance_list(self, account_id: str, folder_id: str) -> list[dict]:
        with self._lock:
            return [self._instance_now(i) for i in self.accounts["yandex"][account_id]["instances"].get(folder_id, [])]

    def _instance_now(self, vm: dict) -> dict:
        status = self._status.get(vm["id"])
        return {**vm, "status": status} if status else vm

    # ------------------------------------------------------------------ application side, ground truth

    def app_users(self) -> list[dict]:
        """``users`` rows: id, email, role, is_active, created_at."""
        return [dict(u) for u in self._users]

    def app_providers(self) -> list[dict]:
        """``cloud_providers`` rows; ``credentials`` is a dict (the app stores it as plain JSON text)."""
        return [{**p, "credentials": dict(p["credentials"])} for p in self._providers]

    def provider(self, provider_id: int) -> dict:
        return self._providers[provider_id - 1]

    def account(self, provider_id: int) -> dict:
        """The provider account behind a cloud_providers row (KeyError for refused credentials)."""
        p = self._providers[provider_id - 1]
        return self.accounts[p["provider_type"]][self._account_of[provider_id]]

    def account_id(self, provider_id: int) -> str:
        return self._account_of[provider_id]

    def eligible_users(self) -> list[int]:
        """Users the bulk sync takes: active, not demouser (whether or not they have a provider), id order."""
        return [u["id"] for u in self._users if u["is_active"] and u["role"] != "demouser"]

    def eligible_providers(self, user_id: int) -> list[dict]:
        """The user's providers a sync syncs, in created_at order."""
        mine = [p for p in self._providers if p["user_id"] == user_id and self.is_eligible(p)]
        return sorted(mine, key=lambda p: p["created_at"])

    def expected_resources(self, provider_id: int) -> list[dict]:
        """What a correct sync of this provider finds (spec §3 "Rows"): resource_id, resource_type, name, region,
        status, daily_cost (RUB, 4 decimals), in resource_id order. KeyError for refused credentials."""
        p = self._providers[provider_id - 1]
        account = self.account(provider_id)
        with self._lock:
            rows = {"yandex": _yandex_rows, "selectel": _selectel_rows, "beget": _beget_rows}[p["provider_type"]](
                self, account
            )
        return sorted(rows, key=lambda r: (r["resource_type"], r["resource_id"]))

    def expected_tags(self, provider_id: int) -> dict[tuple[str, str], dict[str, str]]:
        """The resource_tags a correct sync stores, by (resource_type, resource_id): Yandex instance labels and
        the metadata of Selectel's billed servers (Beget has none). Resources without tags are left out."""
        p = self._providers[provider_id - 1]
        account = self.account(provider_id)
        with self._lock:
            if p["provider_type"] == "yandex":
                found = [vm for f in account["folders"] for vm in account["instances"].get(f["id"], [])]
                tags = {("server", vm["id"]): vm.get("labels", {}) for vm in found}
            elif p["provider_type"] == "selectel":
                billed = {r["resource_id"] for r in _selectel_rows(self, account)}
                tags = {("server", s["id"]): s.get("metadata", {}) for s in account["servers"] if s["id"] in billed}
            else:
                tags = {}
        return {key: {k: str(v) for k, v in t.items()} for key, t in tags.items() if t}

    def expected_total(self, provider_id: int) -> float:
        return round(sum(r["daily_cost"] for r in self.expected_resources(provider_id)), 2)

    # ------------------------------------------------------------------ changes

    def mutate(self, k: int) -> list[str]:
        """Start or stop k Yandex instances (other ones on each call); return their ids."""
        with self._lock:
            vms = [vm for a in self.accounts["yandex"].values() for f in a["instances"].values() for vm in f]
            ids = []
            for _ in range(min(k, len(vms))):
                vm = vms[(self._mutations * 7919) % len(vms)]
                self._mutations += 1
                now = self._instance_now(vm)["status"]
                self._status[vm["id"]] = "STOPPED" if now == "RUNNING" else "RUNNING"
                ids.append(vm["id"])
            return ids

    def reset(self) -> None:
        with self._lock:
            self._status: dict[str, str] = {}
            self._mutations = 0

    def describe(self) -> dict[str, object]:
        eligible = [p for p in self._providers if self.is_eligible(p)]
        return {
            "users": self.user_count,
            "seed": self.seed,
            "providers": len(self._providers),
            "eligible_users": len(self.eligible_users()),
            "eligible_providers": len(eligible),
            "accounts": {k: len(v) for k, v in self.accounts.items()},
            "big_folder_provider_id": self.big_folder_provider_id,
            "bad_provider_ids": sorted(self.bad_provider_ids),
            "mutated": len(self._status),
        }


def _yandex_rows(data: InfraZenData, account: dict) -> list[dict]:
    """Instances (with their attached disks folded in) and detached disks, with the spec's estimated cost."""
    rows = []
    for folder in account["folders"]:
        disks = {d["id"]: d for d in account["disks"][folder["id"]]}

        def disk_daily(d: dict) -> float:
            return int(d["size"]) / GiB * YC_DISK_GB_MONTH[d["typeId"]] / 730 * 24

        for vm in data.instance_list(account["account_id"], folder["id"]):
            attached = [vm["bootDisk"]["diskId"]] + [d["diskId"] for d in vm.get("secondaryDisks", [])]
            daily = sum(disk_daily(disks[d]) for d in attached)
            nat = vm["networkInterfaces"][0]["primaryV4Address"].get("oneToOneNat")
            if vm["status"] == "RUNNING":
                hourly = (
                    int(vm["resources"]["cores"]) * YC_CORE_HOUR + int(vm["resources"]["memory"]) / GiB * YC_RAM_GB_HOUR
                )
                daily += (hourly + (YC_PUBLIC_IP_HOUR if nat else 0)) * 24
            rows.append(
                {
                    "resource_id": vm["id"],
                    "resource_type": "server",
                    "resource_name": vm["name"],
                    "region": vm["zoneId"],
                    "status": vm["status"],
                    "daily_cost": round(daily, 4),
                }
            )
        for d in disks.values():
            if not d.get("instanceIds"):
                rows.append(
                    {
                        "resource_id": d["id"],
                        "resource_type": "volume",
                        "resource_name": d["name"],
                        "region": d["zoneId"],
                        "status": d["status"],
                        "daily_cost": round(disk_daily(d), 4),
                    }
                )
    return rows


def selectel_type(billing_type: str) -> str:
    """Spec §3 Selectel types: cloud_vm, volume_*, share_*, dbaas_*, mks_*, else other_service."""
    if billing_type == "cloud_vm":
        return "server"
    for prefix, kind in (("volume_", "volume"), ("share_", "file_storage"), ("dbaas_", "database")):
        if billing_type.startswith(prefix):
            return kind
    if billing_type.startswith("mks_"):
        return "kubernetes_" + billing_type[4:]
    return "other_service"


def _selectel_rows(data: InfraZenData, account: dict) -> list[dict]:
    project = account["project"]["id"]
    kopecks: dict[str, int] = {}
    objects: dict[str, dict] = {}
    for row in account["billing"]:
        obj = row["object"]
        owner = obj["id"] if obj["parent_id"] == project else obj["parent_id"]  # children merged into the VM
        kopecks[owner] = kopecks.get(owner, 0) + row["kopecks"]
        if obj["parent_id"] == project:
            objects[owner] = {**obj, "zone": row["metric"]["region"]}
    servers = {s["id"]: s for s in account["servers"]}
    rows = []
    for oid, obj in objects.items():
        server = servers.get(oid)
        status = {"ACTIVE": "RUNNING", "SHUTOFF": "STOPPED"}.get(server["status"], server["status"]) if server else None
        if obj["type"] == "cloud_vm" and status is None:
            status = "RUNNING"  # billed but missing from OpenStack
        rows.append(
            {
                "resource_id": oid,
                "resource_type": selectel_type(obj["type"]),
                "resource_name": obj["name"],
                "region": obj["zone"][:-1] if obj["zone"][-1].isalpha() else obj["zone"],
                "status": status or "ACTIVE",
                "daily_cost": round(kopecks[oid] / 100 * 24, 4),
            }
        )
    return rows


def beget_cloud_type(kind: str) -> str:
    if kind.startswith(("MYSQL", "POSTGRES")):
        return "database"
    return "storage" if kind == "S_3" else "cloud_service"


def _beget_rows(data: InfraZenData, account: dict) -> list[dict]:
    rows = []
    for v in account["vps"]:
        conf = v["configuration"]
        daily = conf["price_day"] if conf["price_day"] > 0 else conf["price_month"] / 30
        rows.append(
            {
                "resource_id": v["id"],
                "resource_type": "server",
                "resource_name": v["display_name"],
                "region": v["region"],
                "status": v["status"],
                "daily_cost": round(daily, 4),
            }
        )
    for s in account["services"]:
        kind = beget_cloud_type(s["type"])
        daily = s["price_day"] or (0.01 if s["type"] == "S_3" else 0.0)
        rows.append(
            {
                "resource_id": s["id"],
                "resource_type": kind,
                "resource_name": s["display_name"],
                "region": s["region"],
                "status": s["status"],
                "daily_cost": round(daily, 4),
            }
        )
    for d in account["domains"]:
        if d["registrar"]:
            rows.append(
                {
                    "resource_id": str(d["id"]),
                    "resource_type": "domain",
                    "resource_name": d["fqdn"],
                    "region": "global",
                    "status": "ACTIVE",
                    "daily_cost": round(BEGET_DOMAIN_DAILY, 4),
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------- faults, tokens


@dataclass
class AccountFaults:
    """Fault switches of one provider account (``POST /_sandbox/account_faults``); API calls only, except
    ``auth_fail`` which also refuses the token/auth endpoints."""

    auth_fail: bool = False  # the credentials are refused everywhere (a revoked key)
    error_status: int = 0  # answer the account's API calls with this 5xx...
    error_count: int = -1  # ...this many times (-1: until cleared)
    burst_429: int = 0  # the next N API calls get 429
    retry_after: float = 1.0  # Retry-After of those 429s
    latency: float = 0.0  # seconds added to each API call (slow answers; client timeouts)
    expire_after_calls: int = 0  # tokens issued from now on die after N API calls (expiry mid-sync); 0: off
    billing_fail: bool = False  # Selectel consumption answers 500
    envelope_error: bool = False  # Beget legacy calls answer HTTP 200 with an error envelope
    lists_fail: bool = False  # Beget cloud lists (VPS, services) answer 500: the original swallowed them into []

    def update(self, values: dict) -> None:
        kinds = {f.name: f.type for f in dataclasses.fields(self)}
        unknown = sorted(set(values) - set(kinds))
        if unknown:
            raise ValueError(f"unknown account fault(s): {', '.join(unknown)}")
        for name, value in values.items():
            kind = kinds[name]
            if kind == "bool":
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be true or false")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number")
            elif kind == "int" and value != int(value):
                raise ValueError(f"{name} must be an integer")
            if name == "error_status" and value not in (0, 500, 502, 503, 504):
                raise ValueError("error_status must be 0 or one of 500, 502, 503, 504")
            setattr(self, name, int(value) if kind == "int" else value)


class Tokens:
    """Bearer tokens of every provider: value -> [provider, account, expires_at (epoch), calls left or None]."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, list] = {}

    def issue(self, provider: str, account: str, ttl: float, calls: int, value: str) -> float:
        expires_at = time.time() + ttl
        with self._lock:
            self._tokens[value] = [provider, account, expires_at, calls or None]
        return expires_at

    def use(self, provider: str, value: str | None) -> tuple[str | None, str]:
        """(account, "valid") and one call counted, or (None, "invalid" | "expired")."""
        with self._lock:
            entry = self._tokens.get(value or "")
            if entry is None or entry[0] != provider:
                return None, "invalid"
            if time.time() >= entry[2] or entry[3] == 0:
                return None, "expired"
            if entry[3] is not None:
                entry[3] -= 1
            return entry[1], "valid"

    def expire_all(self) -> int:
        now = time.time()
        with self._lock:
            alive = [e for e in self._tokens.values() if e[2] > now]
            for entry in alive:
                entry[2] = now
            return len(alive)

    def describe(self) -> dict[str, int]:
        now = time.time()
        with self._lock:
            live = [e[0] for e in self._tokens.values() if e[2] > now and e[3] != 0]
        return {p: live.count(p) for p in PROVIDERS}


_PUBLIC_KEY = None


def _service_account_public_key():
    global _PUBLIC_KEY
    if _PUBLIC_KEY is None:
        from cryptography.hazmat.primitives import serialization

        _PUBLIC_KEY = serialization.load_pem_private_key(SERVICE_ACCOUNT_PRIVATE_KEY.encode(), None).public_key()
    return _PUBLIC_KEY


def _nanos(epoch: float) -> str:
    """Yandex timestamps: RFC 3339 with nanoseconds, e.g. 2026-11-28T05:40:46.123456789Z."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}000Z"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# ---------------------------------------------------------------------------------------------- error bodies


def yc_error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """google.rpc.Status, as every Yandex Cloud REST API answers errors."""
    return json_response({"code": code, "message": message, "details": []}, status, headers)


def selectel_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    titles = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests"}
    body = {"error": {"code": status, "title": titles.get(status, "Error"), "message": message}}
    return json_response(body, status, headers)


def beget_envelope_error(code: str, text: str) -> Response:
    """The legacy API's request-level error: HTTP 200 all the same."""
    return json_response({"status": "error", "error_code": code, "error_text": text})


_GRPC_CODE = {400: 3, 401: 16, 403: 7, 404: 5, 429: 8, 500: 13, 502: 14, 503: 14, 504: 4}


def _error_for(provider: str, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    if provider in ("yandex", "beget"):  # Beget's cloud API is a gRPC gateway too (guess)
        return yc_error(status, _GRPC_CODE.get(status, 2), message, headers)
    return selectel_error(status, message, headers)


# ---------------------------------------------------------------------------------------------- app


def create_app(
    data: InfraZenData | None = None,
    *,
    limits: dict[str, list[tuple[int, float]]] | None = None,
    iam_ttl: float = 3600.0,
    keystone_ttl: float = 86_400.0,
    beget_ttl: float = 86_400.0,
    faults: Faults | None = None,
) -> FastAPI:
    """The three providers' sandbox. ``app.state.data`` is the InfraZenData, ``app.state.sandbox`` the Sandbox
    (faults common to every account, stats), ``app.state.account_faults`` {(provider, account_id): AccountFaults},
    ``app.state.limiters`` {provider: PeakRateLimiter} (one window log per account).

    ``limits``: {provider: [(count, window_seconds), ...]} per account, default ``DEFAULT_LIMITS``. ``iam_ttl``:
    Yandex IAM token lifetime (the real one is ≤ 12 h; short values make clients renew mid-sync).
    """
    data = data if data is not None else InfraZenData()
    limits = {**DEFAULT_LIMITS, **(limits or {})}
    sandbox = Sandbox("infrazen", [(1_000_000, 1.0)], faults)  # limits are per provider: see limiters
    limiters = {p: PeakRateLimiter(limits[p]) for p in PROVIDERS}
    tokens = Tokens()
    account_faults: dict[tuple[str, str], AccountFaults] = {}
    lock = threading.Lock()
    told_to_wait: dict[Hashable, tuple[float, float]] = {}  # account -> (429 sent at, Retry-After), monotonic
    early = dict.fromkeys(PROVIDERS, 0)  # requests that came back before their Retry-After was over

    def reset_state() -> None:
        data.reset()
        with lock:
            account_faults.clear()
            told_to_wait.clear()
            early.update(dict.fromkeys(PROVIDERS, 0))
        for limiter in limiters.values():
            limiter.reset()

    def rate_state() -> dict:
        rate = {}
        for p, limiter in limiters.items():
            d = limiter.describe()
            over = sum(max(0, w["max_accepted_in_window"] - w["limit"]) for w in d["windows"])
            rate[p] = {**d, "over_limit_accepted": over, "early_after_429": early[p]}
        return rate

    app = FastAPI(
        title="InfraZen providers sandbox", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False
    )
    app.state.data = data
    app.state.tokens = tokens
    app.state.account_faults = account_faults
    app.state.limiters = limiters
    install(
        app,
        sandbox,
        Controls(
            describe=data.describe,
            mutate=data.mutate,
            reset_data=reset_state,
            expire_tokens=tokens.expire_all,
            extra_state=lambda: {
                "tokens": tokens.describe(),
                "rate": rate_state(),
                "account_faults": [
                    {"provider": p, "account": a, **dataclasses.asdict(f)}
                    for (p, a), f in sorted(account_faults.items())
                ],
            },
        ),
    )

    @app.post("/_sandbox/account_faults")
    async def set_account_faults(request: Request) -> Response:
        """{"provider", "account", <AccountFaults fields>...} or {"provider", "account", "clear": true}."""
        try:
            body = json.loads(await request.body() or b"{}")
            provider, account = body.pop("provider", None), body.pop("account", None)
            if provider not in PROVIDERS or account not in data.accounts[provider]:
                raise ValueError(f"unknown provider/account: {provider!r}/{account!r}")
            with lock:
                if body.pop("clear", False):
                    account_faults.pop((provider, account), None)
                    return json_response({})
                faults_now = dataclasses.replace(account_faults.get((provider, account), AccountFaults()))
                faults_now.update(body)
                account_faults[(provider, account)] = faults_now
        except (ValueError, AttributeError) as exc:
            return json_response({"error": str(exc)}, 400)
        return json_response(dataclasses.asdict(faults_now))

    def faults_of(provider: str, account: str | None) -> AccountFaults:
        return account_faults.get((provider, account or ""), AccountFaults())

    def refused(provider: str, account: str | None) -> bool:
        return account is None or faults_of(provider, account).auth_fail

    async def gate(provider: str, account: str, roll, throttled=None) -> Response | None:
        """Account latency, then 429s (account burst, global burst, the account's limit), then 5xx."""
        f = faults_of(provider, account)
        if f.latency:
            await asyncio.sleep(f.latency)
        key = (provider, account)
        now = time.monotonic()
        throttled = throttled or (
            lambda seconds: _error_for(
                provider, 429, "Too many requests", {"Retry-After": str(max(1, math.ceil(seconds)))}
            )
        )
        with lock:
            sent, wait = told_to_wait.get(key, (0.0, 0.0))
            if sent + RETRY_GRACE < now < sent + wait:
                early[provider] += 1
            retry_after = None
            if f.burst_429 > 0:
                f.burst_429 -= 1
                retry_after = f.retry_after
            elif sandbox.faults.burst_429 > 0:
                sandbox.faults.burst_429 -= 1
                retry_after = sandbox.faults.burst_retry_after
        kind = "throttled_burst"
        if retry_after is None:
            allowed, retry_after, _ = limiters[provider].check(key)
            kind = None if allowed else "throttled_limit"
        if kind:
            seconds = max(1, math.ceil(retry_after))
            with lock:
                told_to_wait[key] = (time.monotonic(), seconds)
            sandbox.stats.add("throttled")
            sandbox.stats.add(kind)
            return throttled(seconds)
        status = roll.error_status
        with lock:
            if f.error_status and f.error_count != 0:
                f.error_count -= 1 if f.error_count > 0 else 0
                status = f.error_status
        if status:
            sandbox.stats.add("errors_injected")
            return _error_for(provider, status, "Internal error" if status == 500 else "Service unavailable")
        return None

    def unauthorized(provider: str, message: str) -> Response:
        sandbox.stats.add("unauthorized")
        return _error_for(provider, 401, message)

    # -------------------------------------------------------------- Yandex Cloud

    def verify_jwt(token: str) -> str | None:
        """The account whose service-account key signed this PS256 JWT for the IAM audience, or None."""
        try:
            account = data.yandex_by_key(str(jwt.get_unverified_header(token).get("kid")))
            if account is None:
                return None
            key = data.accounts["yandex"][account]["credentials"]["service_account_key"]
            claims = jwt.decode(
                token,
                _service_account_public_key(),
                algorithms=["PS256"],
                audience=IAM_AUDIENCE,
                issuer=key["service_account_id"],
                options={"require": ["exp", "iat"]},
            )
        except jwt.PyJWTError:
            return None
        return account if claims["exp"] - claims["iat"] <= 3600 else None

    @app.post("/yandex/iam/iam/v1/tokens")
    async def iam_token(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            return yc_error(400, 3, "Request body is not a valid JSON object")
        if "yandexPassportOauthToken" in body:
            account = data.yandex_by_oauth(str(body["yandexPassportOauthToken"]))
        elif "jwt" in body:
            account = verify_jwt(str(body["jwt"]))
        else:
            return yc_error(400, 3, "Exactly one of yandexPassportOauthToken, jwt must be specified")
        if refused("yandex", account):
            return unauthorized("yandex", "The token is invalid" if "jwt" not in body else "Invalid JWT")
        value = "t1." + secrets.token_urlsafe(96)
        expires_at = tokens.issue("yandex", account, iam_ttl, faults_of("yandex", account).expire_after_calls, value)
        sandbox.stats.add("tokens_issued")
        return json_response({"iamToken": value, "expiresAt": _nanos(expires_at)})

    def yc_page(request: Request, items: list[dict], key: str, scope: str) -> Response:
        """api-design-guide pagination: pageSize 0-1000 (0 = 100), opaque pageToken, nextPageToken when more."""
        query = request.query_params
        try:
            size = int(query.get("pageSize") or 0)
        except ValueError:
            return yc_error(400, 3, "Illegal argument page_size")
        if not 0 <= size <= YANDEX_MAX_PAGE_SIZE:
            return yc_error(400, 3, f"Illegal argument page_size: must be between 0 and {YANDEX_MAX_PAGE_SIZE}")
        size = size or YANDEX_PAGE_SIZE
        offset = 0
        if query.get("pageToken"):
            try:
                token_scope, offset = json.loads(_unb64(query["pageToken"]))
                if token_scope != scope or not isinstance(offset, int) or offset < 0:
                    raise ValueError
            except (ValueError, TypeError):
                return yc_error(400, 3, "Invalid page token")
        chunk = items[offset : offset + size]
        body: dict = {key: chunk} if chunk else {}  # proto3 JSON: an empty list is left out
        if offset + size < len(items):
            body["nextPageToken"] = _b64(json.dumps([scope, offset + size]).encode())
        return json_response(body)

    def yandex_route(request: Request, service: str, path: str, account: dict) -> Response:
        query = request.query_params
        folders = {f["id"]: f for f in account["folders"]}
        denied = yc_error(403, 7, "Permission denied")
        if request.method == "POST":
            if path == "monitoring/v2/data/read":
                return json_response({"metrics": []})
            return yc_error(404, 5, "Not found")
        if path == "resource-manager/v1/clouds":
            return yc_page(request, account["clouds"] if account["clouds_visible"] else [], "clouds", "clouds")
        if path == "resource-manager/v1/folders":
            if query.get("cloudId") != account["account_id"]:
                return denied if query.get("cloudId") else yc_error(400, 3, "Illegal argument cloud_id")
            return yc_page(request, account["folders"], "folders", "folders")
        if path.startswith("resource-manager/v1/folders/"):
            folder = folders.get(path.rsplit("/", 1)[1])
            return json_response(folder) if folder else denied
        if path.startswith("iam/v1/serviceAccounts/"):
            sa = account.get("service_account")
            return json_response(sa) if sa and sa["id"] == path.rsplit("/", 1)[1] else denied
        if path.startswith(f"{service}/") and "folderId" in query:
            folder_id = query["folderId"]
            if folder_id not in folders:
                return denied
            if path == "compute/v1/instances":
                items = data.instance_list(account["account_id"], folder_id)
                return yc_page(request, items, "instances", f"instances:{folder_id}")
            if path == "compute/v1/disks":
                return yc_page(request, account["disks"][folder_id], "disks", f"disks:{folder_id}")
            return json_response({})  # snapshots, images, networks, load balancers, registries...: empty
        return yc_error(404, 5, "Not found")

    @app.api_route("/yandex/{service}/{path:path}", methods=["GET", "POST"])
    async def yandex_api(request: Request, service: str, path: str) -> Response:
        roll = sandbox.roll()
        if roll.latency:
            await asyncio.sleep(roll.latency)
        header = request.headers.get("authorization", "")
        account, state = tokens.use("yandex", header[7:] if header.startswith("Bearer ") else None)
        if account is None or refused("yandex", account):
            message = "The token has expired" if state == "expired" else "The token is invalid"
            return unauthorized("yandex", message)
        early_response = await gate("yandex", account, roll)
        if early_response is not None:
            return early_response
        return sandbox.finish(yandex_route(request, service, path, data.accounts["yandex"][account]), roll)

    # -------------------------------------------------------------- Selectel

    async def selectel_x_token(request: Request, handler) -> Response:
        roll = sandbox.roll()
        if roll.latency:
            await asyncio.sleep(roll.latency)
        account = data.selectel_by_api_key(request.headers.get("x-token", ""))
        if refused("selectel", account):
            return unauthorized("selectel", "Invalid token")
        early_response = await gate("selectel", account, roll)
        if early_response is not None:
            return early_response
        return sandbox.finish(handler(data.accounts["selectel"][account]), roll)

    @app.get("/selectel/api/vpc/resell/v2/{what}")
    async def resell(request: Request, what: str) -> Response:
        def handler(a: dict) -> Response:
            if what == "accounts":
                return json_response({"account": {"name": a["account_id"], "enabled": True, "locked": False}})
            if what == "projects":
                return json_response({"projects": [a["project"]]})
            if what == "users":
                return json_response(
                    {
                        "users": [
                            {
                                "id": a["project"]["id"][:16],
                                "enabled": True,
                                "name": a["credentials"]["service_username"],
                            }
                        ]
                    }
                )
            if what == "capabilities":
                return json_response({"capabilities": {"regions": [{"name": r} for r in a["regions"]]}})
            return selectel_error(404, "Not found")

        return await selectel_x_token(request, handler)

    @app.get("/selectel/api/v1/cloud_billing/statistic/consumption")
    async def consumption(request: Request) -> Response:
        query = request.query_params
        try:
            start = datetime.fromisoformat(query["start"]).replace(tzinfo=UTC, minute=0, second=0)
            end = datetime.fromisoformat(query["end"]).replace(tzinfo=UTC)
            if query["period_group_type"] != "hour" or end < start or end - start > timedelta(days=2):
                raise ValueError
        except (KeyError, ValueError):
            return json_response({"status": "error", "error": "invalid parameters"}, 400)
        keys = set(query.getlist("provider_keys")) or {"vpc"}

        def handler(a: dict) -> Response:
            if faults_of("selectel", a["account_id"]).billing_fail:
                return json_response(
                    {"status": "error", "error": "billing statistics are temporarily unavailable"}, 500
                )
            finished = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)  # hours billed so far
            rows, hour = [], start
            while hour <= end and hour < finished:
                for item in a["billing"]:
                    service = item["object"]["type"].split("_")[0]
                    if ({"dbaas": "dbaas", "mks": "mks"}.get(service, "vpc")) not in keys:
                        continue
                    rows.append(
                        {
                            "object": item["object"],
                            "metric": {**item["metric"], "quantity": 1},
                            "project": {"id": a["project"]["id"], "name": a["project"]["name"]},
                            "value": item["kopecks"],
                            "period": hour.strftime("%Y-%m-%dT%H:%M:%S"),
                            "provision_start": item["provision_start"],
                        }
                    )
                hour += timedelta(hours=1)
            return json_response({"status": "success", "data": rows})

        return await selectel_x_token(request, handler)

    @app.post("/selectel/cloud/identity/v3/auth/tokens")
    async def keystone(request: Request) -> Response:
        try:
            auth = json.loads(await request.body() or b"{}")["auth"]
            user = auth["identity"]["password"]["user"]
            account = data.selectel_by_user(str(user["name"]), str(user["domain"]["name"]), str(user["password"]))
            project_id = (auth.get("scope") or {}).get("project", {}).get("id")
        except (ValueError, KeyError, TypeError, AttributeError):
            return selectel_error(
                400,
                "Expecting to find identity in auth. The server could not comply with the "
                "request since it is either malformed or otherwise incorrect.",
            )
        if refused("selectel", account):
            return unauthorized("selectel", "The request you have made requires authentication.")
        a = data.accounts["selectel"][account]
        if project_id is not None and project_id != a["project"]["id"]:
            return unauthorized("selectel", f"User is not authorized for project {project_id}.")
        value = "gAAAAAB" + secrets.token_urlsafe(132)
        expires_at = tokens.issue(
            "selectel", account, keystone_ttl, faults_of("selectel", account).expire_after_calls, value
        )
        sandbox.stats.add("tokens_issued")
        base = str(request.base_url).rstrip("/")
        catalog = []
        if project_id:
            for kind, name, tail in (
                ("compute", "nova", "compute/v2.1"),
                ("volumev3", "cinderv3", f"volume/v3/{project_id}"),
                ("sharev2", "manila", f"share/v2/{project_id}"),
            ):
                endpoints = [
                    {
                        "id": f"{hashlib.md5(f'{kind}{r}'.encode()).hexdigest()}",
                        "interface": "public",
                        "region": r,
                        "region_id": r,
                        "url": f"{base}/selectel/regions/{r}/{tail}",
                    }
                    for r in a["regions"]
                ]
                catalog.append({"type": kind, "name": name, "endpoints": endpoints})
        token = {
            "methods": ["password"],
            "expires_at": _nanos(expires_at)[:-4] + "Z",
            "issued_at": _nanos(time.time())[:-4] + "Z",
            "user": {"name": a["credentials"]["service_username"], "domain": {"name": account}},
        }
        if project_id:
            token.update(
                project={"id": project_id, "name": a["project"]["name"], "domain": {"name": account}}, catalog=catalog
            )
        response = json_response({"token": token}, 201, {"X-Subject-Token": value})
        return response

    @app.get("/selectel/regions/{region}/{path:path}")
    async def openstack(request: Request, region: str, path: str) -> Response:
        roll = sandbox.roll()
        if roll.latency:
            await asyncio.sleep(roll.latency)
        account, _ = tokens.use("selectel", request.headers.get("x-auth-token"))
        if refused("selectel", account):
            return unauthorized("selectel", "The request you have made requires authentication.")
        a = data.accounts["selectel"][account]
        if region not in a["regions"]:
            return selectel_error(404, f"Region {region} has no endpoint for this project")
        early_response = await gate("selectel", account, roll)
        if early_response is not None:
            return early_response
        project = a["project"]["id"]

        def listing(key: str, items: list[dict]) -> Response:
            """Nova/Cinder ``limit`` + ``marker`` pagination, ``<key>_links`` with rel=next when limited."""
            items = [{k: v for k, v in item.items() if k != "region"} for item in items if item["region"] == region]
            query = request.query_params
            if query.get("marker"):
                ids = [i["id"] for i in items]
                if query["marker"] not in ids:
                    return selectel_error(400, f"marker [{query['marker']}] not found")
                items = items[ids.index(query["marker"]) + 1 :]
            body: dict = {key: items}
            if query.get("limit", "").isdigit():
                limit = int(query["limit"])
                if len(items) > limit:
                    items = items[:limit]
                    body = {
                        key: items,
                        f"{key}_links": [
                            {
                                "rel": "next",
                                "href": f"{request.url.remove_query_params('marker')}&marker={items[-1]['id']}"
                                if "?" in str(request.url)
                                else f"{request.url}?marker={items[-1]['id']}",
                            }
                        ],
                    }
            return json_response(body)

        if path == "compute/v2.1/servers/detail":
            response = listing("servers", a["servers"])
        elif path.startswith("compute/v2.1/flavors/"):
            flavor_id = path.rsplit("/", 1)[1]
            if flavor_id not in _FLAVORS:
                response = json_response(
                    {"itemNotFound": {"code": 404, "message": f"Flavor {flavor_id} could not be found."}}, 404
                )
            else:
                name, vcpus, ram, disk = _FLAVORS[flavor_id]
                response = json_response(
                    {"flavor": {"id": flavor_id, "name": name, "vcpus": vcpus, "ram": ram, "disk": disk}}
                )
        elif path == f"volume/v3/{project}/volumes/detail":
            response = listing("volumes", a["volumes"])
        elif path == f"share/v2/{project}/shares/detail":
            response = json_response({"shares": []})
        else:
            response = selectel_error(404, "The resource could not be found.")
        return sandbox.finish(response, roll)

    # -------------------------------------------------------------- Beget

    beget_secret = hashlib.sha256(f"beget:{data.seed}".encode()).digest()

    @app.post("/beget/v1/auth")
    async def beget_auth(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
            account = data.beget_login(str(body["login"]), str(body["password"]))
        except (ValueError, KeyError, TypeError):
            return json_response({"error": "login and password are required"})
        if refused("beget", account):
            sandbox.stats.add("unauthorized")
            return json_response({"error": "Incorrect login or password"})  # HTTP 200 (guess: see README)
        a = data.accounts["beget"][account]
        now = int(time.time())
        claims = {
            "customerId": a["customer_id"],
            "customerLogin": account,
            "iat": now,
            "exp": now + int(beget_ttl),
            "jti": secrets.token_hex(8),
        }
        value = jwt.encode(claims, beget_secret, algorithm="HS256")
        tokens.issue("beget", account, beget_ttl, faults_of("beget", account).expire_after_calls, value)
        sandbox.stats.add("tokens_issued")
        refresh = jwt.encode({**claims, "typ": "refresh", "exp": now + 30 * 86400}, beget_secret, algorithm="HS256")
        return json_response({"token": value, "refresh_token": refresh})

    @app.get("/beget/v1/{path:path}")
    async def beget_cloud(request: Request, path: str) -> Response:
        roll = sandbox.roll()
        if roll.latency:
            await asyncio.sleep(roll.latency)
        header = request.headers.get("authorization", "")
        account, state = tokens.use("beget", header[7:] if header.startswith("Bearer ") else None)
        if refused("beget", account):
            return unauthorized("beget", "token is expired" if state == "expired" else "token is invalid")
        early_response = await gate("beget", account, roll)
        if early_response is not None:
            return early_response
        a = data.accounts["beget"][account]
        if faults_of("beget", account).lists_fail and path in ("vps/server/list", "cloud"):
            sandbox.stats.add("errors_injected")
            return yc_error(500, 13, "Internal error")
        if path == "vps/server/list":
            response = json_response({"vps": a["vps"]})
        elif path == "cloud":
            response = json_response({"service": a["services"]})
        elif path.startswith(("vps/statistic/", "cloud/s3/")):
            response = json_response({})
        else:
            response = yc_error(404, 5, "Not Found")
        return sandbox.finish(response, roll)

    @app.api_route("/beget/api/{section}/{method}", methods=["GET", "POST"])
    async def beget_legacy(request: Request, section: str, method: str) -> Response:
        roll = sandbox.roll()
        if roll.latency:
            await asyncio.sleep(roll.latency)
        params = dict(request.query_params)
        if request.method == "POST":
            params.update({k: v for k, v in (await request.form()).items() if isinstance(v, str)})
        account = data.beget_login(params.get("login", ""), params.get("passwd", ""))
        if refused("beget", account):
            sandbox.stats.add("unauthorized")
            return beget_envelope_error("AUTH_ERROR", "Incorrect login or password")

        def limit_error(seconds: int) -> Response:
            return beget_envelope_error("LIMIT_ERROR", f"Request limit exceeded, try again in {seconds} s")

        early_response = await gate("beget", account, roll, throttled=limit_error)
        if early_response is not None:
            return early_response
        a = data.accounts["beget"][account]
        if faults_of("beget", account).envelope_error:
            errors = [{"error_code": "INTERNAL_ERROR", "error_text": "Internal error, try again later"}]
            return json_response({"status": "success", "answer": {"status": "error", "errors": errors}})
        results = {("user", "getAccountInfo"): a["account_info"], ("domain", "getList"): a["domains"]}
        if (section, method) not in results:
            return beget_envelope_error("METHOD_FAILED", f"Unknown method {section}/{method}")
        return sandbox.finish(
            json_response({"status": "success", "answer": {"status": "success", "result": results[(section, method)]}}),
            roll,
        )

    return app
