"""Sandbox of the 42 intra API v2 (spec: /work/shared/specs/intra42.md).

``Intra42Data`` is the deterministic user population; ``create_app`` serves it the way
api.intra.42.fr does: OAuth2 client-credentials tokens, ``GET /v2/cursus/21/users`` with
page/filter/range/sort parameters, Link + X-Page/X-Per-Page/X-Total headers, 2 req/s + 1200 req/h.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import functools
import hashlib
import json
import math
import random
import threading
import time
import unicodedata
import uuid
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from starlette.responses import Response

from sandbox.common import (
    CONTROL_PREFIX,
    JSON_TYPE,
    Controls,
    Faults,
    Sandbox,
    TokenStore,
    install,
    json_response,
    oauth_params,
)

DEFAULT_CLIENT_ID = "usersync-sandbox-uid"
DEFAULT_CLIENT_SECRET = "usersync-sandbox-secret"
PUBLIC_ROOT = "https://api.intra.42.fr"  # used in the records' url fields, like the real API
CURSUS_42 = ("21", "42cursus")
CAMPUS_ID = 1  # every generated user belongs to one campus (Paris)
DEFAULT_PER_PAGE, MAX_PER_PAGE = 30, 100

# ---------------------------------------------------------------------------------------------- data

_EPOCH = datetime(1970, 1, 1)
_DAY_MS = 86_400_000
_MONTHS = (
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
)  # fmt: skip
_FIRST_NAMES = (
    "Léa", "Lucas", "Chloé", "Hugo", "Inès", "Louis", "Zoé", "Nathan", "Manon", "Théo", "Camille",
    "Raphaël", "Maëlle", "Gabriel", "Éloïse", "Adam", "Anaïs", "Jérôme", "Hélène", "François", "Cécile",
    "Sofía", "Iñaki", "Begoña", "Jürgen", "Müge", "Łukasz", "Małgorzata", "Søren", "Åsa", "Ömer",
    "Yasmine", "Mehdi", "Karim", "Fatou", "Moussa", "Aïcha", "Ngọc", "Thảo", "João", "Sebastián",
    "Zsófia", "Dragoș", "Ştefan", "Björn", "Noé", "Amélie", "Kévin", "Océane", "Jean-Baptiste",
)  # fmt: skip
_LAST_NAMES = (
    "Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy", "Moreau",
    "Lefèvre", "Müller", "Weiß", "Groß", "Núñez", "Peña", "Muñoz", "Wałęsa", "Kowalczyk", "Wiśniewski",
    "Nguyễn", "Trần", "Benaïssa", "El Amrani", "Ben Salah", "Diallo", "N'Diaye", "O'Connor",
    "de La Fontaine", "Da Silva", "Gonçalves", "Ødegaard", "Jørgensen", "Çelik", "Yılmaz", "Schröder",
    "Brontë", "Le Gall", "Saint-Exupéry", "Van der Berg", "Håkansson", "Dvořák", "Łęcki", "Fernández",
)  # fmt: skip
# (first name, last name, login stem) for scripts the ASCII folding cannot romanise
_OTHER_SCRIPTS = (
    ("芳", "王", "fwang"), ("伟", "李", "wli"), ("秀英", "张", "xzhang"), ("さくら", "佐藤", "ssato"),
    ("محمد", "العلوي", "malaoui"), ("فاطمة", "بنعلي", "fbenali"), ("Юлия", "Иванова", "yivano"),
    ("Δημήτρης", "Παπαδόπουλος", "dpapad"),
)  # fmt: skip
_NICKNAMES = (
    "Max", "Lulu", "Jo", "Sasha", "Alex", "Nico", "Mimi 🌸", "Tom 🚀", "Sam", "Kiki", "Dédé", "Zaza ✨",
)  # fmt: skip
_FOLD = str.maketrans({"ß": "ss", "ł": "l", "ø": "o", "æ": "ae", "œ": "oe", "đ": "d", "ı": "i"})

# Field types of the user object, for filter/range/sort parsing. primary_campus_id is not in the
# object but public clients filter on it.
FIELD_TYPES = {
    "id": "int", "email": "str", "login": "str", "first_name": "str", "last_name": "str",
    "usual_full_name": "str", "usual_first_name": "str", "url": "str", "phone": "str",
    "displayname": "str", "kind": "str", "staff?": "bool", "correction_point": "int",
    "pool_month": "str", "pool_year": "str", "location": "str", "wallet": "int",
    "anonymize_date": "time", "data_erasure_date": "time", "created_at": "time", "updated_at": "time",
    "alumnized_at": "time", "alumni?": "bool", "active?": "bool", "primary_campus_id": "int",
}  # fmt: skip


def _mix(x: int) -> int:
    """splitmix64 finaliser: a cheap, well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


@functools.lru_cache(maxsize=512)
def _fold(name: str) -> str:
    """Lower-case ASCII letters only: 'Wałęsa' -> 'walesa', 'N'Diaye' -> 'ndiaye'."""
    decomposed = unicodedata.normalize("NFKD", name.lower().translate(_FOLD))
    return "".join(c for c in decomposed if "a" <= c <= "z")


def to_ms(value: str | datetime) -> int:
    """ISO 8601 (``Z``, offset or naive = UTC) or datetime -> epoch milliseconds."""
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(value.strip())
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def iso(ms: int) -> str:
    """Epoch milliseconds -> '2024-03-05T10:11:12.345Z', the API's timestamp format."""
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds") + "Z"


class QueryError(ValueError):
    """A bad filter/range/sort parameter (answered 400)."""


def _typed(field: str, value: str) -> object:
    kind = FIELD_TYPES[field]
    try:
        if kind == "int":
            return int(value)
        if kind == "time":
            return to_ms(value)
    except ValueError:
        raise QueryError(f"invalid value for {field}: {value!r}") from None
    if kind == "bool":
        if value.lower() not in ("true", "false"):
            raise QueryError(f"invalid value for {field}: {value!r} (expected true or false)")
        return value.lower() == "true"
    return value


def _check_field(field: str, what: str) -> None:
    if field not in FIELD_TYPES:
        raise QueryError(f"unknown {what} field: {field}")


@dataclass(frozen=True)
class Query:
    """Normalised filter/range/sort, hashable so the sorted result can be cached."""

    filters: tuple[tuple[str, frozenset], ...] = ()
    ranges: tuple[tuple[str, int | None, int | None], ...] = ()
    sort: tuple[tuple[str, bool], ...] = (("id", True),)  # (field, descending); API default is -id

    @classmethod
    def build(
        cls,
        filters: Mapping[str, str | Iterable[str]] | None = None,
        ranges: Mapping[str, str | Sequence[str | None]] | None = None,
        sort: str | Iterable[str] | None = None,
    ) -> Query:
        """From API-style values: {"kind": "student,external"}, {"id": "1,100"}, "login,-id"."""
        norm_filters = []
        for field, values in sorted((filters or {}).items()):
            _check_field(field, "filter")
            items = values.split(",") if isinstance(values, str) else list(values)
            norm_filters.append((field, frozenset(_typed(field, str(v).strip()) for v in items)))
        norm_ranges = []
        for field, bounds in sorted((ranges or {}).items()):
            _check_field(field, "range")
            if FIELD_TYPES[field] not in ("int", "time"):
                raise QueryError(f"range is not supported on {field}")
            parts = bounds.split(",") if isinstance(bounds, str) else list(bounds)
            if len(parts) != 2:
                raise QueryError(f"range[{field}] must be 'min,max'")
            lo, hi = (_typed(field, p.strip()) if p and p.strip() else None for p in parts)
            norm_ranges.append((field, lo, hi))
        keys = sort.split(",") if isinstance(sort, str) else list(sort or [])
        norm_sort = []
        for key in (k.strip() for k in keys):
            if key:
                _check_field(key.lstrip("-"), "sort")
                norm_sort.append((key.lstrip("-"), key.startswith("-")))
        return cls(tuple(norm_filters), tuple(norm_ranges), tuple(norm_sort) or cls.sort)


class _Constant:
    """A column with the same value for every record."""

    def __init__(self, value: object):
        self.value = value

    def __getitem__(self, _index: int) -> object:
        return self.value


class Intra42Data:
    """Deterministic 42 users, a function of (seed, index).

    Only the columns needed to filter and sort fast are generated up front (id, kind, flags,
    created/updated timestamps); full records are built on demand, so 1,000,000 users stay cheap.
    Exactly ``students`` records are non-alumni students; one index in 25 is an extra record
    (external, admin or alumni student) that ``filter[kind]=student&filter[alumni?]=false`` drops.
    """

    FIRST_ID = 53_000

    def __init__(
        self,
        students: int = 40335,
        seed: int = 42,
        updated_from: str | datetime = "2024-01-01T00:00:00Z",
        updated_to: str | datetime = "2026-01-01T00:00:00Z",
    ):
        self.student_count = students
        self.seed = seed
        self.updated_from, self.updated_to = to_ms(updated_from), to_ms(updated_to)
        if self.updated_to <= self.updated_from:
            raise ValueError("updated_to must be after updated_from")
        # Index p is an extra when p % 25 == 24; this size leaves exactly `students` non-extras.
        self.size = students + students // 24
        self._key = _mix(seed * 0x1000193 + 0x42)
        self._code_width = 2
        while 26**self._code_width < self.size:
            self._code_width += 1
        self._lock = threading.RLock()
        self._cache: OrderedDict[Query, array] = OrderedDict()
        self._generate_columns()
        self.reset()

    def _generate_columns(self) -> None:
        n, span = self.size, self.updated_to - self.updated_from
        # Accounts were created over the 10 years before updated_from, in id order.
        created_span = 3652 * _DAY_MS
        created_lo = self.updated_from - _DAY_MS - created_span
        slot = max(1, created_span // max(n, 1))
        kinds = ("student", "external", "admin", "student")
        self._ids, self._created, self._updated_orig = array("q"), array("q"), array("q")
        self._kinds, self._staff, self._alumni, self._active = [], [], [], []
        student_positions = array("q")
        for p in range(n):
            h = _mix(self._key ^ p)
            kind = 0 if p % 25 != 24 else 1 + (h >> 2) % 3  # 1 external, 2 admin, 3 alumni student
            if kind == 0:
                student_positions.append(p)
            self._ids.append(self.FIRST_ID + 3 * p + h % 3)  # increasing, with gaps
            self._kinds.append(kinds[kind])
            self._staff.append(kind == 2)
            self._alumni.append(kind == 3)
            self._active.append(kind != 3 and (h >> 5) % 30 != 0)
            self._updated_orig.append(self.updated_from + (h >> 8) % span)
            self._created.append(created_lo + p * created_span // n + _mix(h) % slot)
        self._student_positions = student_positions
        # Step through the students in a scattered but repeatable order for mutate().
        m = len(student_positions)
        self._mutate_step = next(s for s in range(int(m * 0.618) + 1, 2 * m + 2) if math.gcd(s, m) == 1)

    # ------------------------------------------------------------------ records

    def __len__(self) -> int:
        return self.size

    def _code(self, p: int) -> str:
        """Fixed-width letter code, a bijection of p: makes logins unique whatever the name stem."""
        n = (p * 7919 + self.seed) % 26**self._code_width
        letters = []
        for _ in range(self._code_width):
            n, r = divmod(n, 26)
            letters.append(chr(97 + r))
        return "".join(reversed(letters))

    def _position_of_login(self, login: str) -> int | None:
        code = login[-self._code_width :]
        if len(login) <= self._code_width or not all("a" <= c <= "z" for c in code):
            return None
        n = 0
        for c in code:
            n = n * 26 + ord(c) - 97
        modulus = 26**self._code_width
        p = (n - self.seed) * pow(7919, -1, modulus) % modulus
        return p if p < self.size and self._record(p)["login"] == login else None

    def _record(self, p: int) -> dict:
        """The user object at index p, exactly as the API serialises it (a fresh dict)."""
        rnd = random.Random(_mix(self._key ^ p))
        if rnd.random() < 0.01:
            first, last, stem = rnd.choice(_OTHER_SCRIPTS)
        else:
            first, last = rnd.choice(_FIRST_NAMES), rnd.choice(_LAST_NAMES)
            stem = (_fold(first)[:1] + _fold(last))[:6]
        nickname = rnd.choice(_NICKNAMES) if rnd.random() < 0.15 else None
        login = stem + self._code(p)
        picture = f"https://cdn.intra.42.fr/users/{rnd.getrandbits(128):032x}" if rnd.random() >= 0.05 else None
        location = f"c{rnd.randint(1, 4)}r{rnd.randint(1, 13)}s{rnd.randint(1, 8)}" if rnd.random() < 0.12 else None
        wallet, correction_point = rnd.randint(0, 1500), rnd.randint(0, 15)
        changed = self._changes.get(p)
        if changed:
            last = changed.get("last_name", last)
            location = changed.get("location", location)
            wallet = changed.get("wallet", wallet)
            correction_point = changed.get("correction_point", correction_point)
        kind, created, updated = self._kinds[p], self._created[p], self._updated[p]
        is_student = kind == "student"
        full_name = f"{nickname or first} {last}"
        anonymize = (self._updated_orig[p] // _DAY_MS + 3 * 365) * _DAY_MS
        pool = _EPOCH + timedelta(milliseconds=created)
        return {
            "id": self._ids[p],
            "email": f"{login}@student.42.fr",
            "login": login,
            "first_name": first,
            "last_name": last,
            "usual_full_name": full_name,
            "usual_first_name": nickname,
            "url": f"{PUBLIC_ROOT}/v2/users/{login}",
            "phone": "hidden",
            "displayname": full_name,
            "kind": kind,
            "image": {
                "link": picture and f"{picture}/{login}.jpg",
                "versions": {
                    v: picture and f"{picture}/{v}_{login}.jpg" for v in ("large", "medium", "small", "micro")
                },
            },
            "staff?": self._staff[p],
            "correction_point": correction_point,
            "pool_month": _MONTHS[pool.month - 1] if is_student else None,
            "pool_year": str(pool.year) if is_student else None,
            "location": location,
            "wallet": wallet,
            "anonymize_date": iso(anonymize),
            "data_erasure_date": iso(anonymize + 30 * _DAY_MS),
            "created_at": iso(created),
            "updated_at": iso(updated),
            "alumnized_at": iso(created + (updated - created) * 3 // 4) if self._alumni[p] else None,
            "alumni?": self._alumni[p],
            "active?": self._active[p],
            **self._hostile.get(p, {}),
        }

    def user(self, key: int | str) -> dict | None:
        """``GET /v2/users/:id`` body (id or login), with the nested lists of the full user object."""
        with self._lock:
            key = str(key)
            if key.isdigit():
                p = bisect.bisect_left(self._ids, int(key))
                p = p if p < self.size and self._ids[p] == int(key) else None
            else:
                p = self._position_of_login(key)
            if p is None:
                return None
            record = self._record(p)
        cursus_users = []
        if record["kind"] == "student":
            cursus_users.append(
                {
                    "id": 200_000 + p,
                    "begin_at": record["created_at"],
                    "end_at": record["alumnized_at"],
                    "grade": "Member" if record["alumni?"] else "Learner",
                    "level": round(random.Random(p).uniform(0, 21), 2),
                    "skills": [],
                    "cursus_id": 21,
                    "has_coalition": True,
                    "blackholed_at": None,
                    "created_at": record["created_at"],
                    "updated_at": record["updated_at"],
                    "user": {"id": record["id"], "login": record["login"], "url": record["url"]},
                    "cursus": {
                        "id": 21,
                        "created_at": "2019-07-29T08:45:17.896Z",
                        "name": "42cursus",
                        "slug": "42cursus",
                        "kind": "main",
                    },
                }
            )
        campus = {
            "id": CAMPUS_ID,
            "name": "Paris",
            "time_zone": "Europe/Paris",
            "country": "France",
            "city": "Paris",
        }
        empty = ("groups", "projects_users", "languages_users", "achievements", "titles", "titles_users",
                 "partnerships", "patroned", "patroning", "expertises_users", "roles")  # fmt: skip
        record.update({name: [] for name in empty})
        record["cursus_users"] = cursus_users
        record["campus"] = [campus]
        record["campus_users"] = [{"id": 300_000 + p, "user_id": record["id"], "campus_id": CAMPUS_ID,
                                   "is_primary": True}]  # fmt: skip
        return record

    # ------------------------------------------------------------------ queries

    def _column(self, field: str) -> Sequence | None:
        """Pre-computed column for fast filtering/sorting, or None (values come from full records)."""
        return {
            "id": self._ids,
            "kind": self._kinds,
            "staff?": self._staff,
            "alumni?": self._alumni,
            "active?": self._active,
            "created_at": self._created,
            "updated_at": self._updated,
            "primary_campus_id": _Constant(CAMPUS_ID),
        }.get(field)

    def _values(self, field: str, positions: Sequence[int]) -> list:
        column = self._column(field)
        if column is not None:
            return [column[p] for p in positions]
        values = [self._record(p)[field] for p in positions]
        if FIELD_TYPES[field] == "time":
            values = [None if v is None else to_ms(v) for v in values]
        return values

    def positions(self, query: Query) -> array:
        """Record indexes matching ``query``, in its sort order (cached until the data changes).

        A ``range[id]`` is answered from the index (ids increase with the position): the matches of the rest
        of the query (cached) narrowed by bisection when sorted by id, so an id walk costs no full scan.
        """
        id_ranges = [r for r in query.ranges if r[0] == "id"]
        if id_ranges:
            rest = self.positions(dataclasses.replace(query, ranges=tuple(r for r in query.ranges if r[0] != "id")))
            lo = max((r[1] for r in id_ranges if r[1] is not None), default=None)
            hi = min((r[2] for r in id_ranges if r[2] is not None), default=None)
            return self._id_slice(rest, query.sort, lo, hi)
        with self._lock:
            if query in self._cache:
                self._cache.move_to_end(query)
                return self._cache[query]
            positions = list(range(self.size))
            # Cheap pre-computed columns first, so full records are built only for the survivors.
            for field, allowed in sorted(query.filters, key=lambda f: self._column(f[0]) is None):
                values = self._values(field, positions)
                positions = [p for p, v in zip(positions, values, strict=True) if v in allowed]
            for field, lo, hi in query.ranges:
                values = self._values(field, positions)
                positions = [
                    p
                    for p, v in zip(positions, values, strict=True)
                    if v is not None and (lo is None or v >= lo) and (hi is None or v <= hi)
                ]
            # Stable sorts from the last key to the first; ties keep id order. Nulls sort last
            # ascending and first descending, like PostgreSQL.
            for field, descending in reversed(query.sort):
                column = self._column(field)
                if column is not None:  # never null
                    positions.sort(key=column.__getitem__, reverse=descending)
                else:
                    keys = dict(zip(positions, self._values(field, positions), strict=True))
                    positions.sort(key=lambda p: (keys[p] is None, keys[p]), reverse=descending)
            result = array("q", positions)
            self._cache[query] = result
            if len(self._cache) > 16:
                self._cache.popitem(last=False)
            return result

    def _id_slice(self, positions: array, sort: tuple, lo: int | None, hi: int | None) -> array:
        """The positions whose id is within [lo, hi], in their order."""
        lo = -math.inf if lo is None else lo
        hi = math.inf if hi is None else hi
        if sort[:1] in ((("id", False),), (("id", True),)):
            descending = sort[0][1]
            # ids increase with the position: sorted by id, the matches are one slice, found by bisection
            key = (lambda p: -self._ids[p]) if descending else self._ids.__getitem__
            bounds = (-hi, -lo) if descending else (lo, hi)
            start = bisect.bisect_left(positions, bounds[0], key=key)
            end = bisect.bisect_right(positions, bounds[1], key=key)
            return positions[start:end]
        return array("q", (p for p in positions if lo <= self._ids[p] <= hi))

    def page(self, query: Query, page: int, per_page: int, repeat: int = 0) -> tuple[list[dict], int, int]:
        """(records of page ``page`` (1-based), total matching, records repeated from the previous page).

        ``repeat`` > 0 prepends that many records of the previous page, or of this one when it is the first
        (the duplicate fault).
        """
        with self._lock:
            positions = self.positions(query)
            start = (page - 1) * per_page
            chunk = list(positions[start : start + per_page])
            repeated = []
            if repeat and chunk:
                # Records of the previous page; on a first page (as keyset walks always ask for), its own last
                # records: either way the client receives some records twice.
                repeated = list(positions[max(0, start - repeat) : start]) if start else chunk[-repeat:]
            return [self._record(p) for p in repeated + chunk], len(positions), len(repeated)

    def matching(
        self,
        filters: Mapping[str, str | Iterable[str]] | None = None,
        ranges: Mapping[str, str | Sequence[str | None]] | None = None,
        sort: str | Iterable[str] | None = "id",
    ) -> list[dict]:
        """All matching records as the API serialises them; same parameter syntax as the API."""
        query = Query.build(filters, ranges, sort)
        with self._lock:
            return [self._record(p) for p in self.positions(query)]

    def students(self) -> list[dict]:
        """Ground truth of the sync: ``filter[kind]=student&filter[alumni?]=false``, in id order."""
        return self.matching({"kind": "student", "alumni?": "false"})

    # ------------------------------------------------------------------ changes

    def mutate(self, k: int, at: datetime | None = None) -> list[int]:
        """Change k non-alumni students (new ones on each call until all were picked) and return their ids.

        Location, wallet and correction_point change, sometimes last_name; updated_at becomes now, or `at` (a
        change the API records late, dated before it shows up).
        """
        with self._lock:
            students = self._student_positions
            now = to_ms(at or datetime.now(UTC))
            ids = []
            for _ in range(min(k, len(students))):
                j = self._mutations
                self._mutations += 1
                p = students[(j * self._mutate_step) % len(students)]
                rnd = random.Random(f"{self.seed}:mutate:{j}")
                current = self._record(p)
                change = self._changes.setdefault(p, {})
                change["location"] = (
                    None
                    if current["location"] and rnd.random() < 0.5
                    else f"c{rnd.randint(1, 4)}r{rnd.randint(1, 13)}s{rnd.randint(10, 20)}"
                )
                change["wallet"] = current["wallet"] + rnd.randint(1, 50)
                change["correction_point"] = max(0, current["correction_point"] + rnd.choice((-2, -1, 1, 2)))
                if rnd.random() < 0.2:
                    change["last_name"] = rnd.choice([n for n in _LAST_NAMES if n != current["last_name"]])
                self._updated[p] = now
                ids.append(self._ids[p])
            self._cache.clear()
            return ids

    def make_hostile(self) -> dict[str, int]:
        """Serve one student per kind of record a real API can send and a loader must survive; returns their ids.

        nul, lone_surrogate: a name JSON can carry but Postgres cannot store (NUL, a lone UTF-16 surrogate);
        impossible_date, offset_99: an ``updated_at`` shaped like ISO 8601 that is no moment; future: a valid
        record dated 2099 (a clock running ahead), which is loaded but must not stall incremental runs.
        """
        overrides = {
            "nul": {"last_name": "Nul\x00l"},
            "lone_surrogate": {"first_name": "Half \ud83d"},
            "impossible_date": {"updated_at": "2026-02-30T10:00:00.000Z"},
            "offset_99": {"updated_at": "2025-06-01T10:00:00.000+99:00"},
            "future": {},
        }
        with self._lock:
            students, ids = self._student_positions, {}
            for n, (kind, fields) in enumerate(overrides.items(), start=1):
                p = students[n * len(students) // (len(overrides) + 1)]
                self._hostile[p] = fields
                if kind == "future":
                    self._updated[p] = to_ms("2099-01-01T00:00:00Z")
                ids[kind] = self._ids[p]
            self._cache.clear()
            return ids

    def reset(self) -> None:
        """Forget all mutations."""
        with self._lock:
            self._hostile: dict[int, dict] = {}
            self._changes: dict[int, dict] = {}
            self._updated = array("q", self._updated_orig)
            self._mutations = 0
            self._cache.clear()

    def describe(self) -> dict[str, object]:
        return {
            "records": self.size,
            "students": self.student_count,
            "seed": self.seed,
            "mutated": len(self._changes),
            "updated_from": iso(self.updated_from),
            "updated_to": iso(self.updated_to),
        }


# ---------------------------------------------------------------------------------------------- app


# The ways the corrupt fault breaks a record: a wrong type or a missing required field.
_CORRUPTIONS = (("wallet", "n/a"), ("updated_at", "yesterday"), ("login", None), ("correction_point", 1.5))


def _corrupted(record: dict, rnd: random.Random) -> dict:
    field, value = rnd.choice(_CORRUPTIONS)
    return {**record, field: value}


def _page_params(params: Mapping[str, str]) -> tuple[int, int]:
    """page/per_page or page[number]/page[size] (the bracket form wins); bad values fall back to defaults."""

    def number(*names: str) -> int | None:
        for name in names:
            value = params.get(name)
            if value is not None and value.strip().isdigit():
                return int(value)
        return None

    page = number("page[number]", "page") or 1
    per_page = number("page[size]", "per_page") or DEFAULT_PER_PAGE
    return page, min(per_page, MAX_PER_PAGE)


def _list_query(params: Iterable[tuple[str, str]]) -> Query:
    filters, ranges, sort = {}, {}, None
    for key, value in params:
        if key.startswith("filter[") and key.endswith("]"):
            filters[key[7:-1]] = value
        elif key.startswith("range[") and key.endswith("]"):
            ranges[key[6:-1]] = value
        elif key == "sort":
            sort = value
    return Query.build(filters, ranges, sort)


def _link_header(request: Request, page: int, last_page: int) -> str | None:
    """RFC 8288 links in the ``page=N`` form, keeping the request's other query parameters."""
    base = str(request.url).split("?", 1)[0]
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in ("page", "page[number]")]
    rels = []
    if page < last_page:
        rels.append((page + 1, "next"))
    if page > 1:
        rels += [(page - 1, "prev"), (1, "first")]
    if last_page >= 1 and page != last_page:
        rels.append((last_page, "last"))
    links = [f'<{base}?{urlencode([*kept, ("page", str(n))])}>; rel="{rel}"' for n, rel in rels]
    return ", ".join(links) or None


_WINDOW_NAMES = {1.0: "Secondly", 60.0: "Minutely", 3600.0: "Hourly", 86400.0: "Daily"}


def _rate_limit_headers(limits: list[tuple[int, float]], remaining: dict[float, int]) -> dict[str, str]:
    """X-Secondly-RateLimit-Limit/-Remaining etc., one pair per window (1 s, 1 min, 1 h, 1 day)."""
    headers = {}
    for limit, window in limits:
        name = _WINDOW_NAMES.get(float(window))
        if name:
            headers[f"X-{name}-RateLimit-Limit"] = str(limit)
            headers[f"X-{name}-RateLimit-Remaining"] = str(remaining[float(window)])
    return headers


def create_app(
    data: Intra42Data | None = None,
    *,
    client_id: str = DEFAULT_CLIENT_ID,
    client_secret: str = DEFAULT_CLIENT_SECRET,
    per_second: int = 2,
    per_hour: int = 1200,
    limits: list[tuple[int, float]] | None = None,
    token_ttl: float = 7200,
    faults: Faults | None = None,
    application_id: int = 4242,
) -> FastAPI:
    """The 42 API sandbox. ``app.state.data`` is the Intra42Data, ``app.state.sandbox`` the Sandbox.

    ``limits`` ([(count, window_seconds), ...]) overrides ``per_second``/``per_hour``.
    """
    data = data if data is not None else Intra42Data()
    limits = limits if limits is not None else [(per_second, 1.0), (per_hour, 3600.0)]
    sandbox = Sandbox("intra42", limits, faults)
    tokens = TokenStore(token_ttl)
    app = FastAPI(title="42 intra API sandbox", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.data = data
    app.state.tokens = tokens
    install(
        app,
        sandbox,
        Controls(
            describe=data.describe,
            mutate=data.mutate,
            reset_data=data.reset,
            expire_tokens=tokens.expire_all,
            extra_state=lambda: {"tokens": len(tokens)},
        ),
    )

    # -------------------------------------------------------------- OAuth

    async def issue_token(request: Request) -> Response:
        params = await oauth_params(request)
        no_cache = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        if params.get("grant_type") != "client_credentials":
            error = "invalid_request" if not params.get("grant_type") else "unsupported_grant_type"
            body = {"error": error, "error_description": "Only the client_credentials grant is supported."}
            return json_response(body, 400, no_cache)
        if (params.get("client_id"), params.get("client_secret")) != (client_id, client_secret):
            sandbox.stats.add("unauthorized")
            body = {
                "error": "invalid_client",
                "error_description": "Client authentication failed due to unknown client, "
                "no client authentication included, or unsupported authentication method.",
            }
            return json_response(body, 401, {**no_cache, "WWW-Authenticate": 'Basic realm="42 API"'})
        token = tokens.issue(client_id, params.get("scope") or "public")
        sandbox.stats.add("tokens_issued")
        body = {
            "access_token": token.value,
            "token_type": "bearer",
            "expires_in": int(token_ttl),
            "scope": token.scope,
            "created_at": int(token.created_at),
        }
        return json_response(body, 200, no_cache)

    app.add_api_route("/oauth/token", issue_token, methods=["POST"])

    async def hostile(_request: Request) -> Response:
        return json_response({"ids": data.make_hostile()})

    app.add_api_route(f"{CONTROL_PREFIX}/hostile", hostile, methods=["POST"])
    app.add_api_route("/v2/oauth/token", issue_token, methods=["POST"])

    def bearer(request: Request) -> tuple[object, str | None]:
        """(token, None) or (None, the WWW-Authenticate error description)."""
        auth = request.headers.get("authorization", "")
        value = auth[7:].strip() if auth.lower().startswith("bearer ") else request.query_params.get("access_token")
        token, state = tokens.lookup(value)
        if state == "valid":
            return token, None
        return None, "The access token expired" if state == "expired" else "The access token is invalid"

    def unauthorized(description: str) -> Response:
        sandbox.stats.add("unauthorized")
        challenge = f'Bearer realm="42 API", error="invalid_token", error_description="{description}"'
        return json_response({"error": "Not authorized", "message": description}, 401, {"WWW-Authenticate": challenge})

    @app.get("/oauth/token/info")
    def token_info(request: Request) -> Response:
        token, problem = bearer(request)
        if problem:
            return unauthorized(problem)
        return json_response(
            {
                "resource_owner_id": None,
                "scopes": token.scope.split(),
                "expires_in_seconds": max(0, int(token.expires_at - time.time())),
                "application": {"uid": token.client_id},
                "created_at": int(token.created_at),
            }
        )

    # -------------------------------------------------------------- API endpoints

    async def api_call(request: Request, handler) -> Response:
        """Latency, auth, burst/limit/5xx gate, handler, truncation; then the common API headers."""
        started = time.perf_counter()
        roll = sandbox.roll()
        if roll.latency:
            await asyncio.sleep(roll.latency)
        token, problem = bearer(request)
        if problem:
            response, remaining = unauthorized(problem), sandbox.limiter.peek(client_id)
        else:
            response, remaining = sandbox.gate(token.client_id, roll)
            if response is None:
                try:
                    response = handler(roll)
                except QueryError as exc:
                    response = json_response({"error": "Bad Request", "message": str(exc)}, 400)
                if response.status_code == 200:
                    response.headers["ETag"] = f'W/"{hashlib.md5(response.body).hexdigest()}"'
                response = sandbox.finish(response, roll)
        response.headers.update(
            {
                "Cache-Control": "max-age=0, private, must-revalidate",
                **_rate_limit_headers(limits, remaining),
                "X-Application-Id": str(application_id),
                "X-Application-Name": "usersync-sandbox",
                "X-Application-Roles": "",
                "X-Request-Id": str(uuid.uuid4()),
                "X-Runtime": f"{time.perf_counter() - started:.6f}",
            }
        )
        return response

    def list_users(request: Request, roll, in_cursus: bool) -> Response:
        query = _list_query(request.query_params.multi_items())
        page, per_page = _page_params(request.query_params)
        records, total, repeated = data.page(query, page, per_page, roll.duplicates) if in_cursus else ([], 0, 0)
        if repeated:
            sandbox.stats.add("duplicated")
        if roll.corrupt:
            hits = [roll.corrupt.random() < roll.corrupt_rate for _ in records]
            records = [_corrupted(r, roll.corrupt) if hit else r for r, hit in zip(records, hits, strict=True)]
            sandbox.stats.add("corrupted", sum(hits))
        headers = {"X-Page": str(page), "X-Per-Page": str(per_page), "X-Total": str(total)}
        link = _link_header(request, page, math.ceil(total / per_page))
        if link:
            headers["Link"] = link
        try:
            return json_response(records, 200, headers)
        except UnicodeEncodeError:  # a lone surrogate (hostile records): sent as its JSON escape, like Rails does
            body = json.dumps(records, separators=(",", ":")).encode()
            return Response(body, status_code=200, headers=headers, media_type=JSON_TYPE)

    @app.get("/v2/cursus/{cursus_id}/users")
    async def cursus_users(request: Request, cursus_id: str) -> Response:
        return await api_call(request, lambda roll: list_users(request, roll, cursus_id in CURSUS_42))

    @app.get("/v2/users")
    async def users(request: Request) -> Response:
        return await api_call(request, lambda roll: list_users(request, roll, True))

    @app.get("/v2/users/{user_id}")
    async def one_user(request: Request, user_id: str) -> Response:
        def handler(_roll) -> Response:
            record = data.user(user_id)
            return json_response({}, 404) if record is None else json_response(record)

        return await api_call(request, handler)

    return app
