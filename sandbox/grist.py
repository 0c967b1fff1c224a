"""Sandbox of the Grist REST API (spec: /work/shared/specs/grist.md, OpenAPI grist/grist.yml).

Behaves like a self-hosted grist-core server (1.7.x) for the document endpoints a sync uses: tables, columns and
records (list, add, update, add-or-update, delete), with the server's quirks: identifier normalisation
(``dossiers`` -> ``Dossiers``, POSTing an existing id creates ``People2``), a 1 MB JSON body limit (413), at most
10 requests in flight per document (429), request bodies ignored unless ``Content-Type: application/json``, cell
values stored per column type (``["L", ...]`` lists, dates as epoch seconds, strings parsed unless ``noparse``).

``GristData`` holds the documents (the ground truth: ``data.records(doc, table)``); ``create_app`` serves them.
What is guessed rather than specified is listed in sandbox/README.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import math
import re
import threading
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from keyword import iskeyword
from string import ascii_uppercase
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Request
from starlette.responses import Response

from sandbox.common import Controls, Faults, Sandbox, injected_error, install, json_response

DEFAULT_API_KEY = "usersync-grist-sandbox-api-key-0123456789abcdef"
DEFAULT_DOC_ID = "usersyncSandboxDoc1"
MAX_BODY_BYTES = 1024 * 1024  # express.json({limit: "1mb"})
MAX_IN_FLIGHT = 10  # GRIST_MAX_PARALLEL_REQUESTS_PER_DOC
HIDDEN_COLUMNS = ("manualSort",)
COLUMN_FIELDS = {  # writable fields of a column (_grist_Tables_column), with their defaults
    "label": "",
    "type": "Any",
    "formula": "",
    "isFormula": False,
    "widgetOptions": "",
    "untieColIdFromLabel": False,
    "recalcWhen": 0,
    "recalcDeps": None,
    "visibleCol": 0,
    "description": "",
}


class GristError(Exception):
    def __init__(self, status: int, message: str, details: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.details = status, message, details

    def response(self) -> Response:
        body: dict[str, Any] = {"error": self.message}
        if self.details:
            body["details"] = self.details
        return json_response(body, self.status)


def invalid_payload(why: str) -> GristError:
    return GristError(400, "Invalid payload", {"userError": f"Error: {why}"})


# ------------------------------------------------------------------------------------------ identifiers
# As sandbox/grist/identifiers.py: accents dropped, other characters -> "_", leading "_" stripped, a prefix
# before a leading digit, table ids capitalised, keywords prefixed, clashes (case-insensitive) suffixed 2, 3...


def sanitize_ident(ident: object, prefix: str, capitalize: bool = False) -> str:
    text = unicodedata.normalize("NFKD", "" if ident is None else str(ident))
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = re.sub(r"[^a-zA-Z0-9_]+", "_", text).lstrip("_")
    text = re.sub(r"^(?=[0-9_])", prefix, text)
    if not text:
        return text
    if capitalize:
        text = text[0].upper() + text[1:]
    while iskeyword(text) or text in ("None", "True", "False"):
        text = prefix + text
    return text


def _add_suffix(base: str, avoid: set[str], start: int) -> str:
    if base[-1:].isdigit():
        base += "_"
    for n in itertools.count(start):
        if f"{base}{n}".upper() not in avoid:
            return f"{base}{n}"
    raise AssertionError


def pick_table_ident(ident: object, avoid: set[str]) -> str:
    avoid = {a.upper() for a in avoid}
    ident = sanitize_ident(ident, "T", capitalize=True)
    if not ident:
        return _add_suffix("Table", avoid, 1)
    return ident if ident.upper() not in avoid else _add_suffix(ident, avoid, 2)


def pick_col_ident(ident: object, avoid: set[str]) -> str:
    avoid = {a.upper() for a in avoid}
    ident = sanitize_ident(ident, "c")
    if not ident:
        for n in itertools.count(1):
            for letters in itertools.product(ascii_uppercase, repeat=n):
                if "".join(letters) not in avoid:
                    return "".join(letters)
    return ident if ident.upper() not in avoid else _add_suffix(ident, avoid, 2)


# ------------------------------------------------------------------------------------------ cell values


def base_type(col_type: str) -> str:
    return col_type.split(":", 1)[0]


DEFAULTS = {"Text": "", "Choice": "", "Int": 0, "Numeric": 0, "Bool": False, "Ref": 0, "ManualSortPos": 0}


def _number(text: str) -> float | None:
    cleaned = text.strip().replace(",", "").replace(" ", "")
    if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", cleaned):
        return float(cleaned)
    if re.fullmatch(r"\(\d+\.?\d*\)", cleaned):  # accounting negative: (12.5)
        return -float(cleaned[1:-1])
    return None


def _parse_date(text: str) -> float | None:
    for fmt in ("%Y-%m-%d", "%m/%d/%Y", "%d.%m.%Y"):
        try:
            day = datetime.strptime(text.strip()[:10], fmt).date()
        except ValueError:
            continue
        return float((day - date(1970, 1, 1)).days * 86400)
    return None


def _parse_datetime(text: str, tz: str) -> float | None:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(tz) if tz else UTC)
    return moment.timestamp()


def _list_items(value: object, parse: bool) -> list | None:
    """The items of a list cell value, or None if `value` is not a list."""
    if isinstance(value, list) and value[:1] in (["L"], []):
        return value[1:]
    if parse and isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except ValueError:
                items = None
            if isinstance(items, list):
                return items
        return [part.strip() for part in text.split(",") if part.strip()]
    return None


def convert(col_type: str, value: object, parse: bool = True) -> object:
    """The value Grist stores for `value` written to a column of `col_type`.

    A value that does not fit the type is kept as it came (Grist's "alt text", shown as invalid in the UI).
    Strings are parsed per type unless `parse` is False (``noparse=true``).
    """
    kind = base_type(col_type)
    if value is None:
        return 0 if kind == "Ref" else None
    if isinstance(value, list) and value[:1] == ["E"]:
        return value  # an error value, kept
    if kind in ("Text", "Choice"):
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, int | float):
            return str(int(value)) if float(value).is_integer() else repr(value)
        return value
    if kind in ("Numeric", "Int"):
        number: object = value
        if isinstance(value, str):
            if not parse:
                return value
            parsed = _number(value)
            if parsed is None:
                return value
            number = parsed
        if isinstance(number, bool):
            number = int(number)
        if not isinstance(number, int | float):
            return value
        return math.trunc(number) if kind == "Int" else float(number)
    if kind == "Bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and parse:
            lowered = value.strip().lower()
            if lowered in ("true", "yes", "y", "1", "on"):
                return True
            if lowered in ("false", "no", "n", "0", "off", ""):
                return False
        return value
    if kind in ("Date", "DateTime"):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and parse:
            if not value.strip():
                return None
            parsed = _parse_date(value) if kind == "Date" else _parse_datetime(value, col_type.partition(":")[2])
            return value if parsed is None else parsed
        return value
    if kind in ("ChoiceList", "RefList", "Attachments"):
        items = _list_items(value, parse)
        if items is None:
            return value
        if kind != "ChoiceList":
            items = [convert("Ref", item, parse) for item in items]
        return ["L", *items] if items else None
    if kind == "Ref":
        if isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and parse and value.strip().isdigit():
            return int(value.strip())
        return value
    return value  # Any and unknown types keep what they get


def encode(value: object) -> object:
    """A stored value as the Node server prints it: integral floats are plain integers."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, list):
        return [encode(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------ documents


@dataclass
class Column:
    id: str
    ref: int
    fields: dict[str, Any]

    @property
    def type(self) -> str:
        return self.fields["type"]

    @property
    def is_formula(self) -> bool:
        return bool(self.fields["isFormula"] and self.fields["formula"])


@dataclass
class Table:
    id: str
    ref: int
    columns: dict[str, Column] = field(default_factory=dict)
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)  # row id -> {colId: stored value}
    next_row: int = 1

    def default(self, column: Column) -> object:
        return DEFAULTS.get(base_type(column.type))

    def visible(self, hidden: bool = False) -> list[Column]:
        return [c for c in self.columns.values() if hidden or c.id not in HIDDEN_COLUMNS]


class Document:
    def __init__(self, doc_id: str):
        self.id = doc_id
        self.tables: dict[str, Table] = {}
        self._table_refs = itertools.count(1)  # row ids of _grist_Tables
        self._column_refs = itertools.count(1)  # row ids of _grist_Tables_column
        self.actions = 0

    def table(self, table_id: str) -> Table:
        if table_id.isdigit():  # the tableRef (row id in _grist_Tables) works too
            for table in self.tables.values():
                if table.ref == int(table_id):
                    return table
        table = self.tables.get(table_id)
        if table is None:
            raise GristError(404, f'Table not found "{table_id}"')
        return table

    # -------------------------------------------------------------- schema actions

    def add_table(self, table_id: object, columns: list[dict]) -> Table:
        table = Table(pick_table_ident(table_id, set(self.tables)), next(self._table_refs))
        self.tables[table.id] = table
        self._add_column(table, "manualSort", {"type": "ManualSortPos"})
        for col in columns:
            self.add_column(table, col.get("id"), col.get("fields") or {})
        return table

    def add_column(self, table: Table, col_id: object, fields: dict) -> Column:
        _check_column_fields(fields)
        suggested = col_id if col_id else fields.get("label")
        new_id = pick_col_ident(suggested, {"id", *table.columns})
        return self._add_column(table, new_id, fields)

    def _add_column(self, table: Table, col_id: str, fields: dict) -> Column:
        values = {**COLUMN_FIELDS, "label": col_id, **{k: v for k, v in fields.items() if k != "colId"}}
        column = Column(col_id, next(self._column_refs), values)
        table.columns[col_id] = column
        for row_id, row in table.rows.items():
            row[col_id] = row_id if col_id == "manualSort" else table.default(column)
        return column

    def update_column(self, table: Table, column: Column, fields: dict) -> None:
        _check_column_fields(fields)
        new_id = fields.get("colId")
        tied = not fields.get("untieColIdFromLabel", column.fields["untieColIdFromLabel"])
        relabelled = "label" in fields and sanitize_ident(fields["label"], "c") != column.id
        if new_id is None and relabelled and tied:  # a tied column's id follows its label
            new_id = fields["label"]
        old_type = column.type
        column.fields.update({k: v for k, v in fields.items() if k != "colId"})
        if new_id is not None and new_id != column.id:
            renamed = pick_col_ident(new_id, {"id", *table.columns} - {column.id})
            table.columns = {(renamed if k == column.id else k): c for k, c in table.columns.items()}
            for row in table.rows.values():
                row[renamed] = row.pop(column.id)
            column.id = renamed
        if column.type != old_type:  # a type change converts the values
            for row in table.rows.values():
                row[column.id] = convert(column.type, row[column.id])

    def remove_column(self, table: Table, col_id: str) -> None:
        if col_id not in table.columns:
            raise GristError(400, f'Invalid column "{col_id}"')
        del table.columns[col_id]
        for row in table.rows.values():
            row.pop(col_id, None)

    # -------------------------------------------------------------- data actions

    def check_columns(self, table: Table, col_ids: set[str], writing: bool = True) -> None:
        for col_id in sorted(col_ids):
            column = table.columns.get(col_id)
            if column is None and col_id != "id":
                raise GristError(400, f'Invalid column "{col_id}"')
            if writing and column is not None and column.is_formula:
                raise GristError(400, f"[Sandbox] ValueError Can't save value to formula column {col_id}")

    def add_rows(self, table: Table, rows: list[dict], parse: bool) -> list[int]:
        ids = []
        for values in rows:
            row_id = values.get("id") or table.next_row
            if row_id in table.rows:
                raise GristError(400, f"[Sandbox] ValueError Row id {row_id} already exists in {table.id}")
            table.next_row = max(table.next_row, row_id) + 1
            row = {c.id: table.default(c) for c in table.columns.values()}
            row["manualSort"] = row_id
            for col_id, value in values.items():
                if col_id != "id":
                    row[col_id] = convert(table.columns[col_id].type, value, parse)
            table.rows[row_id] = row
            ids.append(row_id)
        return ids

    def update_rows(self, table: Table, updates: list[tuple[int, dict]], parse: bool) -> None:
        for row_id, _ in updates:
            if row_id not in table.rows:
                raise GristError(400, f"Invalid row id {row_id}")
        for row_id, values in updates:
            for col_id, value in values.items():
                if col_id != "id":
                    table.rows[row_id][col_id] = convert(table.columns[col_id].type, value, parse)

    def remove_rows(self, table: Table, row_ids: list[int]) -> None:
        for row_id in row_ids:
            if row_id not in table.rows:
                raise GristError(400, f"Invalid row id {row_id}")
        for row_id in row_ids:
            del table.rows[row_id]

    def index(self, table: Table, keys: tuple[str, ...]) -> dict[str, list[int]]:
        """Row ids by their values in `keys` (see `key_of`), in row id order: lookups in O(1)."""
        found: dict[str, list[int]] = {}
        for row_id in sorted(table.rows):
            row = table.rows[row_id]
            found.setdefault(key_of([row_id if k == "id" else row[k] for k in keys]), []).append(row_id)
        return found


def key_of(values: list) -> str:
    return json.dumps([encode(v) for v in values], sort_keys=True)


def _check_column_fields(fields: dict) -> None:
    for key, value in fields.items():
        if key not in COLUMN_FIELDS and key != "colId":
            raise GristError(400, f'Invalid column "{key}"')
        if key == "widgetOptions" and not isinstance(value, str):
            raise invalid_payload("body.columns[].fields.widgetOptions is not a string")


class GristData:
    """The documents of a Grist server, all reachable with one API key (an editor of every document)."""

    def __init__(self, docs: tuple[str, ...] = (DEFAULT_DOC_ID,)):
        self.lock = threading.RLock()
        self.initial_docs = tuple(docs)
        self.docs: dict[str, Document] = {}
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.docs = {doc_id: Document(doc_id) for doc_id in self.initial_docs}

    def add_doc(self, doc_id: str) -> Document:
        with self.lock:
            return self.docs.setdefault(doc_id, Document(doc_id))

    def doc(self, doc_id: str) -> Document:
        document = self.docs.get(doc_id)
        if document is None:
            raise GristError(404, "document not found")
        return document

    # -------------------------------------------------------------- ground truth

    def tables(self, doc_id: str = DEFAULT_DOC_ID) -> list[str]:
        with self.lock:
            return list(self.doc(doc_id).tables)

    def columns(self, doc_id: str, table_id: str) -> dict[str, dict]:
        """{colId: fields} of the visible columns, in order."""
        with self.lock:
            return {c.id: dict(c.fields) for c in self.doc(doc_id).table(table_id).visible()}

    def records(self, doc_id: str, table_id: str) -> list[dict]:
        """[{"id", "fields"}] in row id order, values as the API returns them."""
        with self.lock:
            table = self.doc(doc_id).table(table_id)
            names = [c.id for c in table.visible()]
            return [
                {"id": row_id, "fields": {n: encode(table.rows[row_id][n]) for n in names}}
                for row_id in sorted(table.rows)
            ]

    def add_column_by_hand(self, doc_id: str, table_id: str, col_id: str, fields: dict | None = None) -> str:
        """What a person adding a column in the Grist UI does; returns the column's id."""
        with self.lock:
            document = self.doc(doc_id)
            return document.add_column(document.table(table_id), col_id, fields or {}).id

    def describe(self) -> dict[str, object]:
        with self.lock:
            return {doc.id: {t.id: len(t.rows) for t in doc.tables.values()} for doc in self.docs.values()}


# ------------------------------------------------------------------------------------------ request parsing


def _affirmative(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "on", "true", "yes", "y")


def _records(body: object, needs: str) -> list[dict]:
    if not isinstance(body, dict) or not isinstance(body.get("records"), list) or not body["records"]:
        raise invalid_payload("body.records is missing or empty")
    for i, record in enumerate(body["records"]):
        if not isinstance(record, dict):
            raise invalid_payload(f"body.records[{i}] is not an object")
        if needs == "id" and (not isinstance(record.get("id"), int) or isinstance(record.get("id"), bool)):
            raise invalid_payload(f"body.records[{i}].id is missing or not an integer")
        if needs == "require" and not isinstance(record.get("require"), dict):
            raise invalid_payload(f"body.records[{i}].require is missing")
        for part in ("fields", "require"):
            if part in record and not isinstance(record[part], dict):
                raise invalid_payload(f"body.records[{i}].{part} is not an object")
    return body["records"]


def _items(body: object, key: str, need_id: bool) -> list[dict]:
    if not isinstance(body, dict) or not isinstance(body.get(key), list) or not body[key]:
        raise invalid_payload(f"body.{key} is missing or empty")
    for i, item in enumerate(body[key]):
        if not isinstance(item, dict):
            raise invalid_payload(f"body.{key}[{i}] is not an object")
        if need_id and not isinstance(item.get("id"), str):
            raise invalid_payload(f"body.{key}[{i}].id is missing")
        if "fields" in item and not isinstance(item["fields"], dict):
            raise invalid_payload(f"body.{key}[{i}].fields is not an object")
    return body[key]


def _sort_key(value: object) -> tuple:
    if value is None:
        return (0, 0)
    if isinstance(value, bool | int | float):
        return (1, float(value))
    if isinstance(value, str):
        return (2, value)
    return (3, json.dumps(value))


# ------------------------------------------------------------------------------------------ the app


@dataclass
class GristFaults(Faults):
    """Common faults plus one of Grist's own."""

    lost_answers: int = 0  # the next N write calls are applied, then answered 502 (a proxy that gave up waiting)


class GristStats:
    """Grist-specific counters of /_sandbox/state."""

    WRITE_METHODS = ("POST", "PATCH", "PUT", "DELETE")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.endpoints: Counter[str] = Counter()  # "PUT records" -> calls that reached the document
            self.writes = 0  # write calls that changed or could change a document
            self.too_large = 0  # 413s
            self.backlogged = 0  # 429s (in-flight limit and burst faults)
            self.unauthorized = 0  # 401s and 403s
            self.in_flight: Counter[str] = Counter()
            self.max_in_flight = 0
            self.rows_written = 0

    def snapshot(self) -> dict[str, object]:
        with self.lock:
            return {
                "endpoints": dict(self.endpoints),
                "writes": self.writes,
                "status_413": self.too_large,
                "status_429": self.backlogged,
                "unauthorized": self.unauthorized,
                "max_in_flight": self.max_in_flight,
                "in_flight": sum(self.in_flight.values()),
                "rows_written": self.rows_written,
            }


def create_app(
    data: GristData | None = None,
    *,
    api_key: str = DEFAULT_API_KEY,
    max_in_flight: int = MAX_IN_FLIGHT,
    max_body_bytes: int = MAX_BODY_BYTES,
    upsert_returns_ids: bool = True,
    faults: Faults | None = None,
) -> FastAPI:
    """The Grist sandbox. ``app.state.data`` is the GristData, ``app.state.sandbox`` the Sandbox (faults),
    ``app.state.grist_stats`` the GristStats.

    ``upsert_returns_ids=False`` answers ``PUT /records`` with ``null``, as grist-core before 1.7.13.
    ``faults`` may be a GristFaults (``lost_answers``). Fault ``latency`` is spent inside the document (the
    request counts as in flight meanwhile), like the data engine's work; ``burst_429`` answers the next N document
    requests 429 as the in-flight limit does.
    """
    data = data if data is not None else GristData()
    if not isinstance(faults, GristFaults):
        faults = GristFaults(**(dataclasses.asdict(faults) if faults else {}))
    sandbox = Sandbox("grist", [], faults)
    stats = GristStats()

    def reset_data() -> None:
        data.reset()
        stats.reset()

    app = FastAPI(title="Grist API sandbox", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.data = data
    app.state.grist_stats = stats
    install(
        app,
        sandbox,
        Controls(
            describe=data.describe,
            mutate=lambda k: [],
            reset_data=reset_data,
            extra_state=lambda: {"grist": stats.snapshot()},
        ),
    )

    # -------------------------------------------------------------- controls: what a person does in the UI

    @app.post("/_sandbox/docs")
    async def add_doc(request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        doc_id = body.get("id") or f"sandboxDoc{len(data.docs) + 1}"
        data.add_doc(doc_id)
        return json_response({"id": doc_id})

    @app.post("/_sandbox/docs/{doc_id}/tables/{table_id}/columns")
    async def add_column_by_hand(doc_id: str, table_id: str, request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        try:
            col_id = data.add_column_by_hand(doc_id, table_id, body.get("id"), body.get("fields") or {})
        except GristError as exc:
            return exc.response()
        return json_response({"id": col_id})

    @app.post("/_sandbox/docs/{doc_id}/tables/{table_id}/records/{row_id}")
    async def edit_by_hand(doc_id: str, table_id: str, row_id: int, request: Request) -> Response:
        fields = json.loads(await request.body() or b"{}")
        try:
            with data.lock:
                document = data.doc(doc_id)
                table = document.table(table_id)
                document.check_columns(table, set(fields))
                document.update_rows(table, [(row_id, fields)], parse=True)
        except GristError as exc:
            return exc.response()
        return json_response({"id": row_id})

    # -------------------------------------------------------------- the request pipeline

    async def read_body(request: Request) -> object:
        """express.json: only application/json bodies are read (others are ignored: {}), at most 1 MB."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if request.method in ("GET", "HEAD", "DELETE") or content_type != "application/json":
            return {}
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            raise GristError(413, "request entity too large")
        raw = await request.body()
        if len(raw) > max_body_bytes:
            raise GristError(413, "request entity too large")
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise GristError(400, f"Unexpected token in JSON: {exc}") from exc
        if not isinstance(body, dict | list):  # strict mode: objects and arrays only
            raise GristError(400, f"Unexpected token in JSON at position 0: {raw[:20]!r}")
        return body

    def authenticate(request: Request, doc_id: str) -> None:
        auth = request.headers.get("authorization")
        if auth is not None:
            scheme, _, key = auth.partition(" ")
            if scheme != "Bearer":
                raise GristError(401, "Bad request: unsupported Authorization scheme, expected 'Bearer'")
            if key != api_key:
                raise GristError(401, "Bad request: invalid API key")
            data.doc(doc_id)
            return
        # Anonymous: mutating requests need a CSRF-proof header; then documents are not public.
        json_header = request.headers.get("content-type") == "application/json"
        if request.method not in ("GET", "HEAD", "OPTIONS") and not json_header:
            raise GristError(
                401,
                "Unauthenticated requests require one of the headers'Content-Type: "
                "application/json' or 'X-Requested-With: XMLHttpRequest'",
            )
        data.doc(doc_id)
        raise GristError(403, "No view access", {"accessMode": "default"})

    async def call(request: Request, endpoint: str, handler) -> Response:
        doc_id, params = request.path_params["doc_id"], dict(request.path_params)
        query = dict(request.query_params)
        for header, name in (("x-sort", "sort"), ("x-limit", "limit")):  # the headers stand for the parameters
            if header in request.headers:
                query.setdefault(name, request.headers[header])
        roll = sandbox.roll()
        try:
            body = await read_body(request)
            authenticate(request, doc_id)
        except GristError as exc:
            with stats.lock:
                stats.too_large += exc.status == 413
                stats.unauthorized += exc.status in (401, 403)
            return exc.response()
        with stats.lock:  # the per-document backlog (DocApi._apiThrottle)
            stats.in_flight[doc_id] += 1
            count = stats.in_flight[doc_id]
            stats.max_in_flight = max(stats.max_in_flight, count)
            with sandbox._lock:
                burst = sandbox.faults.burst_429 > 0
                if burst:
                    sandbox.faults.burst_429 -= 1
            refused = burst or count > max_in_flight
            stats.backlogged += refused
            if not refused:
                stats.endpoints[endpoint] += 1
        try:
            if refused:
                message = f"Too many backlogged requests for document {doc_id} - try again later?"
                return json_response({"error": message}, 429)
            if roll.error_status is not None:
                sandbox.stats.add("errors_injected")
                return injected_error(roll.error_status)
            if roll.latency:
                await asyncio.sleep(roll.latency)
            try:
                with data.lock:
                    document = data.doc(doc_id)
                    result = handler(document, body, query, params)
                    if request.method in GristStats.WRITE_METHODS:
                        document.actions += 1
                        with stats.lock:
                            stats.writes += 1
                        with sandbox._lock:
                            lost = faults.lost_answers > 0
                            faults.lost_answers -= lost
                        if lost:
                            sandbox.stats.add("errors_injected")
                            return injected_error(502)
            except GristError as exc:
                return exc.response()
            return sandbox.finish(json_response(result), roll)
        finally:
            with stats.lock:
                stats.in_flight[doc_id] -= 1

    def route(path: str, method: str, endpoint: str):
        def register(handler):
            async def endpoint_fn(request: Request) -> Response:
                return await call(request, endpoint, handler)

            app.add_api_route(path, endpoint_fn, methods=[method])
            return handler

        return register

    docs = "/api/docs/{doc_id}"
    table_path = docs + "/tables/{table_id}"

    # -------------------------------------------------------------- tables

    @route(docs + "/tables", "GET", "GET tables")
    def list_tables(document: Document, body, query, params) -> dict:
        return {
            "tables": [
                {
                    "id": t.id,
                    "fields": {
                        "primaryViewId": t.ref,
                        "summarySourceTable": 0,
                        "onDemand": False,
                        "rawViewSectionRef": t.ref,
                        "tableRef": t.ref,
                    },
                }
                for t in document.tables.values()
            ]
        }

    @route(docs + "/tables", "POST", "POST tables")
    def add_tables(document: Document, body, query, params) -> dict:
        tables = _items(body, "tables", need_id=False)
        for i, table in enumerate(tables):
            if not isinstance(table.get("columns"), list):
                raise invalid_payload(f"body.tables[{i}].columns is missing")
        created = [document.add_table(t.get("id"), t["columns"]) for t in tables]
        return {"tables": [{"id": t.id} for t in created]}

    @route(docs + "/tables", "PATCH", "PATCH tables")
    def modify_tables(document: Document, body, query, params) -> None:
        tables = _items(body, "tables", need_id=True)
        for table in tables:
            document.table(table["id"])
        for table in tables:
            new_id = (table.get("fields") or {}).get("tableId")
            if new_id and new_id != table["id"]:
                moved = document.tables.pop(table["id"])
                moved.id = pick_table_ident(new_id, set(document.tables))
                document.tables[moved.id] = moved
        return None

    @route(docs + "/apply", "POST", "POST apply")
    def apply(document: Document, body, query, params) -> dict:
        if not isinstance(body, list) or not all(isinstance(a, list) and a for a in body):
            raise invalid_payload("body is not a list of user actions")
        for action in body:
            if action[0] != "RemoveTable" or len(action) != 2:
                raise GristError(400, f"[Sandbox] the sandbox only applies RemoveTable, not {action[0]}")
            document.table(action[1])
        for action in body:
            del document.tables[action[1]]
        return {"actionNum": document.actions + 1, "retValues": [None] * len(body), "isModification": True}

    # -------------------------------------------------------------- columns

    def column_view(column: Column, table: Table) -> dict:
        return {
            "id": column.id,
            "fields": {
                **column.fields,
                "colRef": column.ref,
                "parentId": table.ref,
                "recalcDeps": column.fields["recalcDeps"],
            },
        }

    @route(table_path + "/columns", "GET", "GET columns")
    def list_columns(document: Document, body, query, params) -> dict:
        table = document.table(params["table_id"])
        return {"columns": [column_view(c, table) for c in table.visible(_affirmative(query.get("hidden")))]}

    @route(table_path + "/columns", "POST", "POST columns")
    def add_columns(document: Document, body, query, params) -> dict:
        table = document.table(params["table_id"])
        columns = _items(body, "columns", need_id=False)
        added = [document.add_column(table, c.get("id"), c.get("fields") or {}) for c in columns]
        return {"columns": [{"id": c.id} for c in added]}

    @route(table_path + "/columns", "PATCH", "PATCH columns")
    def modify_columns(document: Document, body, query, params) -> None:
        table = document.table(params["table_id"])
        columns = _items(body, "columns", need_id=True)
        for col in columns:
            if col["id"] not in table.columns:
                raise GristError(404, f'Column not found "{col["id"]}"')
        for col in columns:
            document.update_column(table, table.columns[col["id"]], col.get("fields") or {})
        return None

    @route(table_path + "/columns", "PUT", "PUT columns")
    def replace_columns(document: Document, body, query, params) -> None:
        table = document.table(params["table_id"])
        columns = _items(body, "columns", need_id=True)
        existing = [c for c in columns if c["id"] in table.columns]
        kept = {table.columns[c["id"]].ref for c in existing}
        unlisted = [c.ref for c in table.visible() if c.ref not in kept]  # as the table was before the call
        if not _affirmative(query.get("noupdate")):
            for col in existing:
                document.update_column(table, table.columns[col["id"]], col.get("fields") or {})
        if not _affirmative(query.get("noadd")):
            for col in columns:
                if col not in existing:
                    document.add_column(table, col["id"], col.get("fields") or {})
        if _affirmative(query.get("replaceall")):
            for column in [c for c in table.visible() if c.ref in unlisted]:
                document.remove_column(table, column.id)
        return None

    @route(table_path + "/columns/{col_id}", "DELETE", "DELETE column")
    def delete_column(document: Document, body, query, params) -> None:
        table = document.table(params["table_id"])
        document.remove_column(table, params["col_id"])
        return None

    # -------------------------------------------------------------- records

    @route(table_path + "/records", "GET", "GET records")
    def list_records(document: Document, body, query, params) -> dict:
        table = document.table(params["table_id"])
        try:
            filters = json.loads(query.get("filter") or "{}")
        except ValueError as exc:
            raise GristError(500, f"Unexpected token in JSON: {exc}") from exc
        if not isinstance(filters, dict) or not all(isinstance(v, list) for v in filters.values()):
            raise GristError(400, "Invalid query: filter values must be arrays")
        document.check_columns(table, set(filters), writing=False)
        wanted = {col: [encode(v) for v in allowed] for col, allowed in filters.items()}  # once, not per row
        rows = [
            (row_id, row)
            for row_id, row in sorted(table.rows.items())
            if all((row_id if col == "id" else encode(row[col])) in allowed for col, allowed in wanted.items())
        ]
        sort = query.get("sort") or ""
        for spec in reversed([s for s in sort.split(",") if s.strip()]):
            name = spec.split(":")[0].strip()
            descending = name.startswith("-")
            name = name.lstrip("-")
            document.check_columns(table, {name}, writing=False)
            rows.sort(key=lambda r, n=name: _sort_key(r[0] if n == "id" else r[1][n]), reverse=descending)
        limit = query.get("limit")
        if limit:
            try:
                count = int(float(limit))
            except ValueError as exc:
                raise GristError(400, f"limit parameter should be a number: {limit}") from exc
            if count > 0:
                rows = rows[:count]
        names = [c.id for c in table.visible(_affirmative(query.get("hidden")))]
        return {"records": [{"id": row_id, "fields": {n: encode(row[n]) for n in names}} for row_id, row in rows]}

    @route(table_path + "/records", "POST", "POST records")
    def add_records(document: Document, body, query, params) -> dict:
        table = document.table(params["table_id"])
        records = _records(body, needs="fields")
        names = {n for r in records for n in (r.get("fields") or {})}
        document.check_columns(table, names)
        # One bulk action: a column named in any record is null in the records that omit it.
        rows = [{n: (r.get("fields") or {}).get(n) for n in names} for r in records]
        ids = document.add_rows(table, rows, parse=not _affirmative(query.get("noparse")))
        with stats.lock:
            stats.rows_written += len(ids)
        return {"records": [{"id": row_id} for row_id in ids]}

    @route(table_path + "/records", "PATCH", "PATCH records")
    def update_records(document: Document, body, query, params) -> None:
        table = document.table(params["table_id"])
        records = _records(body, needs="id")
        names = [set(r.get("fields") or {}) for r in records]
        if any(n != names[0] for n in names):
            raise GristError(400, "PATCH requires all records to have same fields")
        document.check_columns(table, names[0])
        document.update_rows(
            table, [(r["id"], r.get("fields") or {}) for r in records], parse=not _affirmative(query.get("noparse"))
        )
        with stats.lock:
            stats.rows_written += len(records)
        return None

    @route(table_path + "/records", "PUT", "PUT records")
    def upsert_records(document: Document, body, query, params) -> dict | None:
        table = document.table(params["table_id"])
        records = _records(body, needs="require")
        on_many = query.get("onmany") or "first"
        if on_many not in ("first", "none", "all"):
            raise GristError(400, f"onmany parameter {on_many} should be one of first,none,all")
        add, update = not _affirmative(query.get("noadd")), not _affirmative(query.get("noupdate"))
        allow_empty = _affirmative(query.get("allow_empty_require"))
        parse = not _affirmative(query.get("noparse"))
        document.check_columns(table, {n for r in records for n in r["require"]}, writing=False)
        document.check_columns(table, {n for r in records for n in (r.get("fields") or {})})
        # Grist sends one BulkAddOrUpdateRecord per (require keys, fields keys) signature, in first-seen order.
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(records):
            groups.setdefault((tuple(sorted(r["require"])), tuple(sorted(r.get("fields") or {}))), []).append(i)
        record_ids: list[list[int]] = [[] for _ in records]
        added: list[int] = []
        updated: list[list[int]] = []
        plans = []  # checked before anything is written: Grist applies the actions of a call together
        for (require_keys, field_keys), members in groups.items():
            if not require_keys and not allow_empty:
                raise GristError(400, "[Sandbox] ValueError require is empty but allow_empty_require isn't set")
            wanted = [
                key_of(
                    [
                        v if k == "id" else convert(table.columns[k].type, v, parse)
                        for k, v in sorted(records[i]["require"].items())
                    ]
                )
                for i in members
            ]
            if require_keys and len(set(wanted)) < len(wanted):
                raise GristError(400, "[Sandbox] ValueError require values must be unique")
            if require_keys or field_keys:
                plans.append((require_keys, members, wanted))
        for require_keys, members, wanted_keys in plans:
            adds, updates = [], []
            index = document.index(table, require_keys)
            for i, wanted_key in zip(members, wanted_keys, strict=True):
                matches = index.get(wanted_key, [])
                fields = records[i].get("fields") or {}
                if not matches and add:
                    values = {
                        k: v for k, v in records[i]["require"].items() if k == "id" or not table.columns[k].is_formula
                    }
                    adds.append((i, {**values, **fields}))
                if matches and update:
                    if len(matches) > 1 and on_many == "none":
                        continue
                    touched = matches[:1] if on_many == "first" else matches
                    updates.append((i, touched, fields))
            if adds:
                new_ids = document.add_rows(table, [values for _, values in adds], parse)
                for (i, _), row_id in zip(adds, new_ids, strict=True):
                    record_ids[i] = [row_id]
                    added.append(row_id)
            if updates:
                document.update_rows(
                    table, [(row_id, fields) for _, touched, fields in updates for row_id in touched], parse
                )
                for i, touched, _ in updates:
                    record_ids[i] = list(touched)
                    updated.append(list(touched))
        with stats.lock:
            stats.rows_written += len(added) + sum(map(len, updated))
        if not upsert_returns_ids:
            return None
        return {"recordIds": record_ids, "addRecordIds": added, "updateRecordIds": updated}

    def delete_rows(document: Document, body, query, params) -> None:
        table = document.table(params["table_id"])
        if not isinstance(body, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in body):
            raise invalid_payload("body is not an array of row ids")
        document.remove_rows(table, body)
        return None

    route(table_path + "/records/delete", "POST", "POST records/delete")(delete_rows)
    route(table_path + "/data/delete", "POST", "POST data/delete")(delete_rows)

    # -------------------------------------------------------------- anything else

    @app.api_route("/api/{rest:path}", methods=["GET", "POST", "PATCH", "PUT", "DELETE"])
    def not_found(request: Request) -> Response:
        return json_response({"error": f"not found: {request.url.path}"}, 404)

    return app
