"""Sandbox of the Cerema Portail DF API (spec: /work/shared/specs/portaildf.md).

``PortailDFData`` generates, from a seed, both sides of the user-kind sync: the rows of the target application's
``users`` table (``app_users()``), the Portail DF user directory (``records()``) and the ground truth
(``expected_kind(email)``). ``create_app`` serves the directory the way its Django REST Framework server does:
V1 DRF tokens (``POST /api/api-token-auth/``) and V2 SimpleJWT tokens (``POST /api/token/``) side by side,
``GET /api/utilisateurs?email=`` (case-insensitive exact match), page-number pagination whose ``next`` links
carry the real server's defects, ``GET /api/structures[/{id}]``, DRF error bodies and a rate limit per account.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import math
import random
import secrets
import threading
import time
import unicodedata
import uuid
from collections import Counter, deque
from collections.abc import Callable, Hashable
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from sandbox.common import Controls, Faults, RateLimiter, Sandbox, install, json_response

DEFAULT_USERNAME = "usersync-sandbox"
DEFAULT_PASSWORD = "usersync-sandbox-password"
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000  # assumptions: the spec says unknown
REFRESH_TTL = 86_400.0  # SimpleJWT's default refresh lifetime (1 day)
PARIS = ZoneInfo("Europe/Paris")

# (exterieur, gestionnaire) -> the target application's users.kind (spec §3, "Kind mapping")
KINDS: dict[tuple[bool, bool], str] = {
    (True, False): "prestataire",
    (False, True): "gestionnaire",
    (True, True): "prestataire, gestionnaire",
    (False, False): "aucun",
}

# ---------------------------------------------------------------------------------------------- data

_COMBOS = ((False, False), (False, True), (True, False), (True, True))
_COMBO_WEIGHTS = (40, 30, 18, 12)
_FIRST_NAMES = (
    "jean", "marie", "pierre", "sophie", "nicolas", "isabelle", "thomas", "camille", "julien", "claire",
    "laurent", "nathalie", "olivier", "sandrine", "mathieu", "aurélie", "élodie", "françois", "hélène",
    "jérôme", "cécile", "anaïs", "noël", "zoé", "chloé", "loïc", "gaëlle", "benoît", "agnès", "rené",
)  # fmt: skip
_LAST_NAMES = (
    "dupont", "martin", "bernard", "durand", "petit", "leroy", "moreau", "simon", "laurent", "michel",
    "garcia", "roux", "fournier", "girard", "bonnet", "mercier", "lefèvre", "bénard", "géraud", "müller",
    "lemaître", "crépin", "núñez", "chevènement", "légaré", "hébert", "bézier", "aubépine",
)  # fmt: skip
_DOMAINS = (
    "gironde.gouv.fr", "ddt-33.gouv.fr", "ddtm-13.gouv.fr", "bordeaux-metropole.fr", "mairie-lyon.fr",
    "grandlyon.com", "ville-rennes.fr", "agglo-lorient.fr", "exemple.fr", "cerema.fr", "nantesmetropole.fr",
    "gmail.com", "orange.fr", "wanadoo.fr", "laposte.net", "urbanis.fr", "soliha.fr", "habitat-conseil.fr",
)  # fmt: skip
_IDN_DOMAINS = ("mairie-évry.fr", "ville-sèvres.fr", "saint-étienne-métropole.fr")
# Local parts and domains without any Latin letter (internationalised addresses, RFC 6531).
_NON_LATIN = (
    ("用户", "例子.公司"), ("张伟", "例子.中国"), ("пользователь", "пример.рф"), ("иван.петров", "почта.рф"),
    ("δοκιμή", "παράδειγμα.ελ"), ("さくら", "例え.jp"),
)  # fmt: skip
_TAGS = ("zlv", "lovac", "df", "habitat", "test")
_CITIES = (
    "Bordeaux", "Lyon", "Évry", "Sèvres", "Saint-Étienne", "Lorient", "Rennes", "Nîmes", "Besançon", "Orléans",
    "Mérignac", "Pessac", "Villeurbanne", "Nanterre", "Angoulême", "Béziers", "Châteauroux", "Agen",
)  # fmt: skip
_DEPARTMENTS = ("de la Gironde", "du Rhône", "des Bouches-du-Rhône", "d'Ille-et-Vilaine", "du Morbihan", "du Gard")


def _ascii(name: str) -> str:
    """'lefèvre' -> 'lefevre' (what most address books do with accented names)."""
    return "".join(c for c in unicodedata.normalize("NFKD", name) if c.isascii())


def _iso(moment: datetime) -> str:
    """Aware datetime -> DRF's output with TIME_ZONE = Europe/Paris: '2024-01-15T10:30:00+01:00'."""
    return moment.astimezone(PARIS).isoformat()


def _paris_midnight(day: datetime) -> datetime:
    local = day.astimezone(PARIS)
    return datetime(local.year, local.month, local.day, tzinfo=PARIS)


def _siret(rnd: random.Random) -> str:
    """14 digits passing the Luhn check, like a real SIRET."""
    digits = [rnd.randint(0, 9) for _ in range(13)]
    total = 0
    for i, d in enumerate(reversed(digits)):  # the check digit will sit right of these
        d = d * 2 if i % 2 == 0 else d
        total += d - 9 if d > 9 else d
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


def _case_variant(email: str, rnd: random.Random) -> str:
    """The same address with other letter cases: 'Jean.Dupont@Exemple.fr', 'JEAN.DUPONT@EXEMPLE.FR'..."""
    local, _, domain = email.rpartition("@")
    style = rnd.randrange(3)
    if style == 0:
        variant = email.upper()
    elif style == 1:
        variant = f"{local.title()}@{domain[:1].upper()}{domain[1:]}"
    else:
        variant = f"{local[:1].upper()}{local[1:]}@{domain}"
    return variant if variant.casefold() == email.casefold() else email


class PortailDFData:
    """Deterministic users of both sides, a function of (users, seed).

    ``users`` is the size of the application's users table: ≈3 % have a null email, ≈10 % an email the
    directory does not know, the rest (≈87 %) are in the directory, ≈12 % of those with the letter case
    differing between the two sides. The directory also holds ``users // 4`` people the application does
    not have. Email lookups are O(1) (a dict keyed by casefolded email).

    ``case_twins`` (a fraction of the known app users, default 0): the directory also holds, for each of them,
    another person whose address is the same but for its letter case (a case-insensitive directory answers
    both), with other flags. Their records follow the others (higher ids).
    """

    FIRST_USER_ID = 1000

    def __init__(self, users: int = 1234, seed: int = 0, case_twins: float = 0.0):
        if users < 0:
            raise ValueError("users must be >= 0")
        self.user_count = users
        self.seed = seed
        self.case_twins = case_twins
        self._lock = threading.RLock()
        self._generate()
        self.reset()

    # ------------------------------------------------------------------ generation

    def _generate(self) -> None:
        n = self.user_count
        rnd = random.Random(f"portaildf:{self.seed}:{n}")
        n_null, n_unknown = round(n * 0.03), round(n * 0.10)
        categories = ["null"] * n_null + ["unknown"] * n_unknown + ["known"] * (n - n_null - n_unknown)
        rnd.shuffle(categories)
        self._structures = self._make_structures(rnd, max(3, min(300, n // 30 + 3)))
        self._groups = max(1, len(self._structures) * 2)
        used: set[str] = set()  # casefolded emails of both sides: every address is unique
        # Directory: the known app users and the directory-only people, shuffled, ids increasing.
        owners: list[int | None] = [p for p, c in enumerate(categories) if c == "known"]
        owners += [None] * (n // 4)
        rnd.shuffle(owners)
        app_emails: list[str | None] = [None] * n
        self._app_dir: list[int | None] = [None] * n  # app index -> directory index
        self._base: list[dict] = []
        id_user = self.FIRST_USER_ID
        for d, owner in enumerate(owners):
            id_user += 1 if rnd.random() < 0.7 else rnd.randint(2, 6)  # increasing, with gaps
            email = self._new_email(rnd, used)
            app_email = email
            if owner is not None and rnd.random() < 0.12:
                variant = _case_variant(email, rnd)
                if rnd.random() < 0.5:
                    app_email = variant  # the application stores 'Jean.Dupont@Exemple.fr'
                else:
                    email = variant  # the directory does
            self._base.append(self._user_record(rnd, id_user, email))
            if owner is not None:
                app_emails[owner], self._app_dir[owner] = app_email, d
        for p, category in enumerate(categories):
            if category == "unknown":
                app_emails[p] = self._new_email(rnd, used)
        self._app = [
            {"id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)), "email": email, "kind": None}
            for email in app_emails
        ]
        self._add_case_twins()
        self._by_email: dict[str, list[int]] = {}
        for d, record in enumerate(self._base):
            self._by_email.setdefault(record["email"].casefold(), []).append(d)
        self._structure_index = {s["id_structure"]: i for i, s in enumerate(self._structures)}
        # Known app users in a scattered but repeatable order, for mutate().
        self._known = [p for p in range(n) if self._app_dir[p] is not None]
        m = len(self._known)
        self._mutate_step = next((s for s in range(int(m * 0.618) + 1, 2 * m + 2) if math.gcd(s, m) == 1), 1)

    def _add_case_twins(self) -> None:
        rnd = random.Random(f"portaildf:{self.seed}:{self.user_count}:twins")  # the main data stays the same
        id_user = self._base[-1]["id_user"] if self._base else self.FIRST_USER_ID
        for p, d in enumerate(self._app_dir):
            if d is None or rnd.random() >= self.case_twins:
                continue
            owner = self._base[d]
            taken = {owner["email"], self._app[p]["email"]}
            email = next((v for v in (_case_variant(owner["email"], rnd) for _ in range(6)) if v not in taken), None)
            if email is None:  # no letter to change the case of
                continue
            id_user += 1
            twin = self._user_record(rnd, id_user, email)
            own = (owner["exterieur"], owner["gestionnaire"])
            twin["exterieur"], twin["gestionnaire"] = rnd.choice([c for c in _COMBOS if c != own])
            self._base.append(twin)

    @staticmethod
    def _new_email(rnd: random.Random, used: set[str]) -> str:
        style, tag = rnd.random(), rnd.random()
        if style < 0.015:
            local, domain = rnd.choice(_NON_LATIN)  # 用户@例子.公司
        elif style < 0.09:
            local = f"{rnd.choice(_FIRST_NAMES)}.{rnd.choice(_LAST_NAMES)}"  # élodie.lefèvre@...
            domain = rnd.choice(_DOMAINS + _IDN_DOMAINS)
        else:
            first, last = _ascii(rnd.choice(_FIRST_NAMES)), _ascii(rnd.choice(_LAST_NAMES))
            local = rnd.choice((f"{first}.{last}", f"{first[0]}.{last}", f"{first}{last}", f"{first}-{last}"))
            domain = rnd.choice(_IDN_DOMAINS) if rnd.random() < 0.02 else rnd.choice(_DOMAINS)
        suffix = f"+{rnd.choice(_TAGS)}" if tag < 0.06 else ""  # marie+zlv@...
        email, number = f"{local}{suffix}@{domain}", 1
        while email.casefold() in used:
            number += 1
            email = f"{local}{number}{suffix}@{domain}"
        used.add(email.casefold())
        return email

    @staticmethod
    def _make_structures(rnd: random.Random, count: int) -> list[dict]:
        structures, id_structure = [], 0
        now = datetime(2026, 1, 1, tzinfo=UTC)
        for _ in range(count):
            id_structure += rnd.randint(1, 4)
            kind, city = rnd.random(), rnd.choice(_CITIES)
            mandataire = False
            if kind < 0.55:
                name, formjur, naf = f"Commune de {city}", "7210", "84.11Z"
            elif kind < 0.75:
                name, formjur, naf = f"Communauté d'agglomération de {city}", "7348", "84.11Z"
            elif kind < 0.85:
                name, formjur, naf = f"DDT {rnd.choice(_DEPARTMENTS)}", "7172", "84.11Z"
            else:
                name, formjur, naf = f"Bureau d'études Habitat {city}", "5710", "71.12B"
                mandataire = True

            def access(probability: float) -> str | None:
                if rnd.random() >= probability:
                    return None
                return _iso(_paris_midnight(now + timedelta(days=rnd.randint(-400, 900))))

            structures.append(
                {
                    "id_structure": id_structure,
                    "raison_sociale": name,
                    "siret": _siret(rnd),
                    "naf": naf,
                    "formjur": formjur,
                    "mandataire": mandataire,
                    "niveau_acces": rnd.choice(("df_non_ano", "df_ano", "lovac")),
                    "acces_df_ano": access(0.8),
                    "acces_df_non_ano": access(0.6),
                    "acces_lovac": access(0.4),
                }
            )
        return structures

    def _user_record(self, rnd: random.Random, id_user: int, email: str) -> dict:
        start = datetime(2019, 1, 1, tzinfo=UTC)
        attached = start + timedelta(seconds=rnd.randrange(7 * 365 * 86400))
        exterieur, gestionnaire = rnd.choices(_COMBOS, _COMBO_WEIGHTS)[0]
        expiration = None
        if rnd.random() >= 0.35:
            expiration = _iso(_paris_midnight(attached + timedelta(days=rnd.randint(365, 3 * 365))))
        group = rnd.random()
        cgu = None if rnd.random() < 0.12 else _iso(attached + timedelta(seconds=rnd.randrange(60 * 86400)))
        return {
            "id_user": id_user,
            "email": email,
            "date_rattachement": _iso(attached),
            "structure": rnd.choice(self._structures)["id_structure"],
            "date_expiration": expiration,
            "exterieur": exterieur,
            "gestionnaire": gestionnaire,
            "groupe": None if group < 0.15 else 0 if group < 0.2 else rnd.randint(1, self._groups),
            "cgu_valide": cgu,
            "str_mandataire": None,
        }

    # ------------------------------------------------------------------ directory

    def __len__(self) -> int:
        return len(self._base)

    def _record(self, d: int) -> dict:
        record = dict(self._base[d], **self._hostile.get(d, {}))
        flags = self._flags.get(d)
        if flags:
            record["exterieur"], record["gestionnaire"] = flags
        return record

    def records(self, start: int = 0, stop: int | None = None) -> list[dict]:
        """Directory records (current state), in id_user order; ``start``/``stop`` slice them."""
        with self._lock:
            return [self._record(d) for d in range(len(self._base))[start:stop]]

    def find_all(self, email: str) -> list[dict]:
        """The records whose email equals ``email`` ignoring case (Django's ``email__iexact``), in no particular
        order (a queryset without ``order_by``): with case twins, the asked address is not always first."""
        found = list(self._by_email.get(email.casefold(), ()))
        if len(found) > 1:
            random.Random(f"{self.seed}:{email.casefold()}").shuffle(found)
        with self._lock:
            return [self._record(d) for d in found]

    def find(self, email: str) -> dict | None:
        """The record that is ``email``'s: the one whose email is exactly ``email``, else the one equal ignoring
        case; None when there is none, or when several (case twins) with different flags match and none exactly."""
        records = self.find_all(email)
        exact = [r for r in records if r["email"] == email] or records
        return exact[0] if len({(r["exterieur"], r["gestionnaire"]) for r in exact}) == 1 else None

    def structures(self, start: int = 0, stop: int | None = None) -> list[dict]:
        return [dict(s) for s in self._structures[start:stop]]

    def structure_count(self) -> int:
        return len(self._structures)

    def structure(self, id_structure: int) -> dict | None:
        i = self._structure_index.get(id_structure)
        return None if i is None else dict(self._structures[i])

    # ------------------------------------------------------------------ application side, ground truth

    def app_users(self) -> list[dict]:
        """The application's users rows: ``{"id": uuid str, "email": str | None, "kind": None}``."""
        return [dict(u) for u in self._app]

    def expected_kind(self, email: str | None) -> str | None:
        """What a correct sync writes in users.kind for this email: a KINDS value, or None when not found.

        The email is matched as the server matches a query value: surrounding whitespace stripped (Django
        form field), then case-insensitively; a null or blank email finds nobody.
        """
        value = (email or "").strip()
        record = self.find(value) if value else None
        return None if record is None else KINDS[(record["exterieur"], record["gestionnaire"])]

    def expected_kinds(self) -> dict[str, str | None]:
        """{app user id: expected kind} for the whole users table."""
        return {u["id"]: self.expected_kind(u["email"]) for u in self._app}

    def own_kinds(self) -> dict[str, str | None]:
        """{app user id: the kind of that user's own directory record}, None for unknown users: a sync may
        leave a user without a kind (an ambiguous answer) but never give it another's."""
        with self._lock:
            return {
                u["id"]: None if d is None else KINDS[(self._record(d)["exterieur"], self._record(d)["gestionnaire"])]
                for u, d in zip(self._app, self._app_dir, strict=True)
            }

    # ------------------------------------------------------------------ changes

    def mutate(self, k: int) -> list[str]:
        """Change the kind of k app users known to the directory (other ones on each call, until all were
        picked) by flipping one or both flags; return their emails as the application stores them."""
        with self._lock:
            emails = []
            for _ in range(min(k, len(self._known))):
                j = self._mutations
                self._mutations += 1
                p = self._known[(j * self._mutate_step) % len(self._known)]
                d = self._app_dir[p]
                record = self._record(d)
                flip = random.Random(f"{self.seed}:mutate:{j}").randrange(3)
                self._flags[d] = (
                    record["exterieur"] != (flip in (0, 2)),
                    record["gestionnaire"] != (flip in (1, 2)),
                )
                emails.append(self._app[p]["email"])
            return emails

    def make_hostile(self) -> dict[str, str]:
        """Give two known users' directory records a text JSON can carry but Postgres cannot store (nul: a NUL
        character, lone_surrogate: a lone UTF-16 surrogate); returns the app user id of each."""
        texts = {"nul": "Nul\x00l", "lone_surrogate": "Half \ud83d"}
        with self._lock:
            ids = {}
            for n, (kind, text) in enumerate(texts.items(), start=1):
                p = self._known[n * len(self._known) // (len(texts) + 1)]
                self._hostile[self._app_dir[p]] = {"str_mandataire": text}
                ids[kind] = self._app[p]["id"]
            return ids

    def reset(self) -> None:
        """Forget all mutations."""
        with self._lock:
            self._flags: dict[int, tuple[bool, bool]] = {}
            self._hostile: dict[int, dict] = {}
            self._mutations = 0

    def describe(self) -> dict[str, object]:
        with self._lock:
            kinds = Counter(KINDS[(r["exterieur"], r["gestionnaire"])] for r in map(self._record, range(len(self))))
        known = len(self._known)
        nulls = sum(u["email"] is None for u in self._app)
        return {
            "app_users": self.user_count,
            "known": known,
            "unknown": self.user_count - known - nulls,
            "null_email": nulls,
            "directory_users": len(self._base),
            "directory_only": len(self._base) - known,
            "structures": len(self._structures),
            "kinds": dict(kinds),
            "seed": self.seed,
            "mutated": len(self._flags),
        }


# ---------------------------------------------------------------------------------------------- auth


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Accounts:
    """The one account: its V1 DRF token (one per user, no expiry) and its V2 SimpleJWT tokens."""

    USER_ID = 1

    def __init__(self, username: str, password: str, access_ttl: float, refresh_ttl: float = REFRESH_TTL):
        self.username, self.password = username, password
        self.access_ttl, self.refresh_ttl = access_ttl, refresh_ttl
        self._secret = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._v1: str | None = None
        self._jwt: dict[str, dict[str, float]] = {"access": {}, "refresh": {}}  # type -> {jti: expires_at}

    def check(self, username: str, password: str) -> bool:
        return hmac.compare_digest(username.encode(), self.username.encode()) and hmac.compare_digest(
            password.encode(), self.password.encode()
        )

    def v1_token(self) -> str:
        """DRF's Token.objects.get_or_create: the same 40-hex token until expire_all() replaces it."""
        with self._lock:
            if self._v1 is None:
                self._v1 = secrets.token_hex(20)
            return self._v1

    def v1_user(self, token: str) -> str | None:
        with self._lock:
            return self.username if self._v1 is not None and hmac.compare_digest(token, self._v1) else None

    def _jwt_token(self, token_type: str, ttl: float) -> str:
        now = time.time()
        jti = uuid.uuid4().hex
        with self._lock:
            store = self._jwt[token_type]
            if len(store) > 50_000:  # clients that log in per call: drop the dead ones
                for old in [j for j, exp in store.items() if exp <= now]:
                    del store[old]
            store[jti] = now + ttl
        header = _b64(b'{"alg":"HS256","typ":"JWT"}')
        claims = {"token_type": token_type, "exp": math.ceil(now + ttl), "iat": int(now), "jti": jti}
        payload = _b64(json.dumps({**claims, "user_id": self.USER_ID}, separators=(",", ":")).encode())
        signature = hmac.new(self._secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64(signature)}"

    def issue_pair(self) -> dict[str, str]:
        return {"refresh": self._jwt_token("refresh", self.refresh_ttl), "access": self.access_token()}

    def access_token(self) -> str:
        return self._jwt_token("access", self.access_ttl)

    def jwt_user(self, token: str, token_type: str) -> str | None:
        """The account name if ``token`` is a valid, unexpired JWT of that type signed here, else None."""
        try:
            header, payload, signature = token.split(".")
            expected = hmac.new(self._secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(_b64(expected), signature):
                return None
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (ValueError, TypeError):
            return None
        if not isinstance(claims, dict) or claims.get("token_type") != token_type:
            return None
        with self._lock:
            expires_at = self._jwt[token_type].get(str(claims.get("jti")))
        return self.username if expires_at is not None and time.time() < expires_at else None

    def expire_all(self) -> int:
        """Expire every V2 access token and replace the V1 token; return how many tokens died."""
        now = time.time()
        with self._lock:
            alive = [j for j, exp in self._jwt["access"].items() if exp > now]
            for jti in alive:
                self._jwt["access"][jti] = now
            expired = len(alive) + (self._v1 is not None)
            self._v1 = None
            return expired

    def describe(self) -> dict[str, int]:
        now = time.time()
        with self._lock:
            return {
                "v1": int(self._v1 is not None),
                "v2_access_valid": sum(exp > now for exp in self._jwt["access"].values()),
                "v2_refresh_valid": sum(exp > now for exp in self._jwt["refresh"].values()),
            }


# ---------------------------------------------------------------------------------------------- rate limit


class PeakRateLimiter(RateLimiter):
    """A RateLimiter that also records, for each limit, the most requests of one key it accepted (and was
    asked about) within any sliding window of that limit's length, with the limiter's own timestamps:
    ``max_accepted_in_window <= limit`` is the proof that no over-limit request got through."""

    def __init__(self, limits: list[tuple[int, float]], clock: Callable[[], float] = time.monotonic):
        self._last = 0.0

        def reading() -> float:
            self._last = clock()
            return self._last

        super().__init__(limits, reading)
        self._peak_lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self.accepted = self.attempted = 0
        self._recent: dict[tuple[str, Hashable, float], deque[float]] = {}
        self._peaks = {kind: {w: 0 for _, w in self.limits} for kind in ("accepted", "attempted")}

    def _record(self, kind: str, key: Hashable, now: float) -> None:
        for _, window in self.limits:
            recent = self._recent.setdefault((kind, key, window), deque())
            recent.append(now)
            while recent[0] <= now - window:  # the limiter's window: (now - window, now]
                recent.popleft()
            self._peaks[kind][window] = max(self._peaks[kind][window], len(recent))

    def check(self, key: Hashable) -> tuple[bool, float, dict[float, int]]:
        with self._peak_lock:
            allowed, retry_after, remaining = super().check(key)
            now = self._last  # the instant the limiter used
            self.attempted += 1
            self._record("attempted", key, now)
            if allowed:
                self.accepted += 1
                self._record("accepted", key, now)
        return allowed, retry_after, remaining

    def reset(self) -> None:
        with self._peak_lock:
            super().reset()
            self._clear()

    def describe(self) -> dict[str, object]:
        with self._peak_lock:
            return {
                "accepted": self.accepted,
                "attempted": self.attempted,
                "windows": [
                    {
                        "limit": n,
                        "window": w,
                        "max_accepted_in_window": self._peaks["accepted"][w],
                        "max_attempted_in_window": self._peaks["attempted"][w],
                    }
                    for n, w in self.limits
                ],
            }


# ---------------------------------------------------------------------------------------------- app

# Django's own page for an unhandled exception (DEBUG = False, no 500.html template).
_DJANGO_500 = (
    '\n<!doctype html>\n<html lang="en">\n<head>\n  <title>Server Error (500)</title>\n</head>\n'
    "<body>\n  <h1>Server Error (500)</h1><p></p>\n</body>\n</html>\n"
)
_BEARER_CHALLENGE = 'Bearer realm="api"'  # SimpleJWT's JWTAuthentication.authenticate_header
_MISSING = object()


def drf_response(
    payload: object, status: int = 200, headers: dict[str, str] | None = None, allow: str = "GET, HEAD, OPTIONS"
) -> Response:
    """JSON the way DRF renders it (compact, UTF-8, ``Content-Type: application/json``) with Django's headers."""
    response = json_response(payload, status, headers)
    response.headers.update(
        {
            "Content-Type": "application/json",
            "Allow": allow,
            "Vary": "Accept",
            "X-Frame-Options": "DENY",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
        }
    )
    return response


def _throttled(wait: int) -> Response:
    unit = "second" if wait == 1 else "seconds"
    detail = f"Request was throttled. Expected available in {wait} {unit}."
    return drf_response({"detail": detail}, 429, {"Retry-After": str(wait)})


def _corrupted(record: dict, rnd: random.Random) -> dict:
    """The corrupt fault: a flag of the wrong type or missing, or an unparsable date."""
    field, value = rnd.choice(
        (
            ("exterieur", "oui"),
            ("gestionnaire", "non"),
            ("exterieur", None),
            ("gestionnaire", _MISSING),
            ("date_rattachement", "15/01/2024 10:30"),
        )
    )
    record = dict(record)
    if value is _MISSING:
        del record[field]
    else:
        record[field] = value
    return record


def query_params(request: Request) -> dict[str, str]:
    """The query string as Django's QueryDict reads it: ``+`` is a space, %-escapes are UTF-8, the last
    value of a repeated parameter wins."""
    raw = request.scope.get("query_string", b"")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("iso-8859-1")
    return dict(parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="replace"))


def replace_query_param(url: str, key: str, value: object) -> str:
    """DRF's rest_framework.utils.urls.replace_query_param (parameters re-encoded, sorted by name)."""
    scheme, netloc, path, query, fragment = urlsplit(url)
    params = parse_qs(query, keep_blank_values=True)
    params[key] = [str(value)]
    return urlunsplit((scheme, netloc, path, urlencode(sorted(params.items()), doseq=True), fragment))


def remove_query_param(url: str, key: str) -> str:
    scheme, netloc, path, query, fragment = urlsplit(url)
    params = parse_qs(query, keep_blank_values=True)
    params.pop(key, None)
    return urlunsplit((scheme, netloc, path, urlencode(sorted(params.items()), doseq=True), fragment))


def _page_size(params: dict[str, str]) -> int:
    """DRF's PageNumberPagination.get_page_size: a positive integer capped at the max, else the default."""
    try:
        size = int(params["page_size"])
        if size <= 0:
            raise ValueError(size)
        return min(size, MAX_PAGE_SIZE)
    except (KeyError, ValueError):
        return DEFAULT_PAGE_SIZE


def create_app(
    data: PortailDFData | None = None,
    *,
    username: str = DEFAULT_USERNAME,
    password: str = DEFAULT_PASSWORD,
    per_second: int = 10,
    limits: list[tuple[int, float]] | None = None,
    access_ttl: float = 300,
    refresh_ttl: float = REFRESH_TTL,
    faults: Faults | None = None,
    link_quirks: bool = True,
) -> FastAPI:
    """The Portail DF sandbox. ``app.state.data`` is the PortailDFData, ``app.state.sandbox`` the Sandbox,
    ``app.state.accounts`` the tokens.

    ``limits`` ([(count, window_seconds), ...], per account) overrides ``per_second``. With ``link_quirks``
    the ``next``/``previous`` links are ``http://`` whatever the request's scheme, and every ``next`` link has
    a stray ``/%23`` (to an even page) or ``#`` (to an odd page) before its query string.
    """
    data = data if data is not None else PortailDFData()
    limits = limits if limits is not None else [(per_second, 1.0)]
    sandbox = Sandbox("portaildf", limits, faults)
    limiter = PeakRateLimiter(limits)
    sandbox.limiter = limiter
    accounts = Accounts(username, password, access_ttl, refresh_ttl)
    app = FastAPI(
        title="Portail DF API sandbox", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False
    )
    app.state.data = data
    app.state.accounts = accounts
    install(
        app,
        sandbox,
        Controls(
            describe=data.describe,
            mutate=data.mutate,
            reset_data=data.reset,
            expire_tokens=accounts.expire_all,
            extra_state=lambda: {"tokens": accounts.describe(), "rate": limiter.describe()},
        ),
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return drf_response({"detail": "Not found."}, 404)
        if exc.status_code == 405:
            return drf_response({"detail": f'Method "{request.method}" not allowed.'}, 405)
        return drf_response({"detail": str(exc.detail)}, exc.status_code)

    # -------------------------------------------------------------- tokens

    async def read_fields(request: Request, names: tuple[str, ...]) -> tuple[dict[str, str], Response | None]:
        """A token request's fields from a JSON, url-encoded or multipart body, validated like DRF's CharField."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await request.body()
        values: object
        if content_type == "application/json" or (content_type.endswith("+json") and body):
            try:
                values = json.loads(body) if body else {}
            except ValueError as exc:
                return {}, drf_response({"detail": f"JSON parse error - {exc}"}, 400, allow="POST, OPTIONS")
        elif content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            values = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        elif not body:
            values = {}
        else:
            detail = f'Unsupported media type "{content_type}" in request.'
            return {}, drf_response({"detail": detail}, 415, allow="POST, OPTIONS")
        if not isinstance(values, dict):
            detail = f"Invalid data. Expected a dictionary, but got {type(values).__name__}."
            return {}, drf_response({"non_field_errors": [detail]}, 400, allow="POST, OPTIONS")
        fields, errors = {}, {}
        for name in names:
            value = values.get(name, _MISSING)
            if value is _MISSING:
                errors[name] = ["This field is required."]
            elif value is None:
                errors[name] = ["This field may not be null."]
            elif not str(value).strip():
                errors[name] = ["This field may not be blank."]
            else:
                fields[name] = str(value) if name == "password" else str(value).strip()
        if errors:
            return {}, drf_response(errors, 400, allow="POST, OPTIONS")
        return fields, None

    def unauthorized(payload: dict, challenge: str, allow: str = "GET, HEAD, OPTIONS") -> Response:
        sandbox.stats.add("unauthorized")
        return drf_response(payload, 401, {"WWW-Authenticate": challenge}, allow=allow)

    async def v1_login(request: Request) -> Response:
        """DRF's ObtainAuthToken."""
        fields, error = await read_fields(request, ("username", "password"))
        if error:
            return error
        if not accounts.check(fields["username"], fields["password"]):
            sandbox.stats.add("unauthorized")
            body = {"non_field_errors": ["Unable to log in with provided credentials."]}
            return drf_response(body, 400, allow="POST, OPTIONS")
        sandbox.stats.add("tokens_issued")
        return drf_response({"token": accounts.v1_token()}, allow="POST, OPTIONS")

    async def v2_login(request: Request) -> Response:
        """SimpleJWT's TokenObtainPairView."""
        fields, error = await read_fields(request, ("username", "password"))
        if error:
            return error
        if not accounts.check(fields["username"], fields["password"]):
            body = {"detail": "No active account found with the given credentials"}
            return unauthorized(body, _BEARER_CHALLENGE, allow="POST, OPTIONS")
        sandbox.stats.add("tokens_issued")
        return drf_response(accounts.issue_pair(), allow="POST, OPTIONS")

    async def v2_refresh(request: Request) -> Response:
        """SimpleJWT's TokenRefreshView (no rotation: the answer holds a new access token only)."""
        fields, error = await read_fields(request, ("refresh",))
        if error:
            return error
        if accounts.jwt_user(fields["refresh"], "refresh") is None:
            body = {"detail": "Token is invalid or expired", "code": "token_not_valid"}
            return unauthorized(body, _BEARER_CHALLENGE, allow="POST, OPTIONS")
        sandbox.stats.add("tokens_issued")
        return drf_response({"access": accounts.access_token()}, allow="POST, OPTIONS")

    @app.post("/_sandbox/hostile")
    def hostile() -> Response:
        return json_response({"ids": data.make_hostile()})

    app.add_api_route("/api/api-token-auth/", v1_login, methods=["POST"])
    app.add_api_route("/api/token/", v2_login, methods=["POST"])
    app.add_api_route("/api/token/refresh/", v2_refresh, methods=["POST"])

    def authenticate(request: Request) -> tuple[str | None, Response | None]:
        """DRF's authenticators in order: SimpleJWT (``Bearer``, case-sensitive), then TokenAuthentication
        (``Token``, any case). (account, None) or (None, the 401 response)."""
        parts = request.headers.get("authorization", "").split()
        if parts and parts[0] == "Bearer":
            if len(parts) != 2:
                body = {
                    "detail": "Authorization header must contain two space-delimited values",
                    "code": "bad_authorization_header",
                }
                return None, unauthorized(body, _BEARER_CHALLENGE)
            account = accounts.jwt_user(parts[1], "access")
            if account is None:
                message = {"token_class": "AccessToken", "token_type": "access"}
                body = {
                    "detail": "Given token not valid for any token type",
                    "code": "token_not_valid",
                    "messages": [{**message, "message": "Token is invalid or expired"}],
                }
                return None, unauthorized(body, _BEARER_CHALLENGE)
            return account, None
        if parts and parts[0].lower() == "token":
            if len(parts) == 1:
                return None, unauthorized({"detail": "Invalid token header. No credentials provided."}, "Token")
            if len(parts) > 2:
                detail = "Invalid token header. Token string should not contain spaces."
                return None, unauthorized({"detail": detail}, "Token")
            account = accounts.v1_user(parts[1])
            if account is None:
                return None, unauthorized({"detail": "Invalid token."}, "Token")
            return account, None
        return None, unauthorized({"detail": "Authentication credentials were not provided."}, _BEARER_CHALLENGE)

    # -------------------------------------------------------------- API endpoints

    async def api_call(request: Request, handler: Callable) -> Response:
        """Latency, authentication, burst/limit/5xx gate (DRF's order: authenticate, then throttle), handler,
        truncation."""
        roll = sandbox.roll()
        if roll.latency:
            await asyncio.sleep(roll.latency)
        account, response = authenticate(request)
        if response is not None:
            return response
        response, _ = sandbox.gate(account, roll)
        if response is not None:
            if response.status_code == 429:
                return _throttled(int(response.headers["retry-after"]))
            if response.status_code == 500:
                return Response(_DJANGO_500, 500, media_type="text/html")
            return response  # 502/503: the reverse proxy's page
        return sandbox.finish(handler(roll), roll)

    def links(request: Request, page: int, last_page: int) -> tuple[str | None, str | None]:
        """DRF's get_next_link/get_previous_link from request.build_absolute_uri(), plus the server's quirks."""
        host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
        scheme = "http" if link_quirks else request.url.scheme  # TLS ends at a proxy Django does not trust
        query = request.scope.get("query_string", b"").decode("iso-8859-1")
        url = f"{scheme}://{host}{request.url.path}" + (f"?{query}" if query else "")
        following = previous = None
        if page < last_page:
            following = replace_query_param(url, "page", page + 1)
            if link_quirks:
                base, _, rest = following.partition("?")
                stray = f"{base.rstrip('/')}/%23" if (page + 1) % 2 == 0 else f"{base}#"
                following = f"{stray}?{rest}"
        if page > 1:
            previous = remove_query_param(url, "page") if page == 2 else replace_query_param(url, "page", page - 1)
        return following, previous

    def paginate(
        request: Request, params: dict[str, str], count: int, fetch: Callable[[int, int], list[dict]], roll
    ) -> Response:
        """DRF's PageNumberPagination: ``page`` (or ``last``) and ``page_size``; an invalid page is a 404."""
        size = _page_size(params)
        last_page = max(1, math.ceil(count / size))
        raw = params.get("page", "1")
        try:
            page = last_page if raw == "last" else int(raw)
        except ValueError:
            page = 0
        if not 1 <= page <= last_page:
            return drf_response({"detail": "Invalid page."}, 404)
        start = (page - 1) * size
        results = fetch(start, start + size)
        if roll.duplicates and results:
            # Records of the previous page (on a first page: its own last ones) sent again; count unchanged.
            repeated = fetch(max(0, start - roll.duplicates), start) if start else results[-roll.duplicates :]
            results = repeated + results
            sandbox.stats.add("duplicated")
        following, previous = links(request, page, last_page)
        return drf_response({"count": count, "next": following, "previous": previous, "results": results})

    def corrupt(records: list[dict], roll) -> list[dict]:
        if not roll.corrupt:
            return records
        hits = [roll.corrupt.random() < roll.corrupt_rate for _ in records]
        sandbox.stats.add("corrupted", sum(hits))
        return [_corrupted(r, roll.corrupt) if hit else r for r, hit in zip(records, hits, strict=True)]

    def list_users(request: Request, roll) -> Response:
        params = query_params(request)
        email = params.get("email")
        if email is not None and "\x00" in email:
            return drf_response({"email": ["Null characters are not allowed."]}, 400)
        email = (email or "").strip()  # a blank filter value is no filter (django-filter)
        if email:
            matches = data.find_all(email)
            lookup = dataclasses.replace(roll, duplicates=0)  # not a list page: no duplicates
            return paginate(request, params, len(matches), lambda a, b: corrupt(matches[a:b], roll), lookup)
        return paginate(request, params, len(data), lambda a, b: corrupt(data.records(a, b), roll), roll)

    def list_structures(request: Request, roll) -> Response:
        return paginate(request, query_params(request), data.structure_count(), data.structures, roll)

    async def users_endpoint(request: Request) -> Response:
        return await api_call(request, lambda roll: list_users(request, roll))

    async def structures_endpoint(request: Request) -> Response:
        return await api_call(request, lambda roll: list_structures(request, roll))

    async def structure_endpoint(request: Request, structure_id: str) -> Response:
        def handler(_roll) -> Response:
            record = data.structure(int(structure_id)) if structure_id.isascii() and structure_id.isdigit() else None
            return drf_response({"detail": "Not found."}, 404) if record is None else drf_response(record)

        return await api_call(request, handler)

    for path in ("/api/utilisateurs", "/api/utilisateurs/"):
        app.add_api_route(path, users_endpoint, methods=["GET"])
    for path in ("/api/structures", "/api/structures/"):
        app.add_api_route(path, structures_endpoint, methods=["GET"])
    for path in ("/api/structures/{structure_id}", "/api/structures/{structure_id}/"):
        app.add_api_route(path, structure_endpoint, methods=["GET"])

    return app
