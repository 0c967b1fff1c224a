"""Grist documents (spec: /work/shared/specs/grist.md): tables kept in step with declared columns, batched
add-or-update, deletes by key, reads.

Connection: host = the Grist server (e.g. https://grist.example.org or https://docs.getgrist.com; the client adds
`/api`), password = an API key of a user who can edit the documents. Extras as for every API (timeout,
max_retries, backoff) plus `max_in_flight`: requests in flight per document (default and maximum 10, Grist's
GRIST_MAX_PARALLEL_REQUESTS_PER_DOC), shared by every client and thread of the process.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from keyword import iskeyword
from typing import Any

from usersync.api import ApiClient, ApiError, AuthError

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 10  # Grist answers 429 past 10 requests in flight on one document
MAX_BODY_BYTES = 1_000_000  # Grist refuses JSON bodies over 1 MiB (413); a margin for nothing but safety
MAX_URL_FILTER_CHARS = 4000  # a filter's JSON per GET, well under Node's 16 KB header limit
LIST_TYPES = ("ChoiceList", "RefList", "Attachments")  # cells encoded ["L", item, ...]

_slots_lock = threading.Lock()
_slots: dict[tuple[str, str], threading.BoundedSemaphore] = {}


def grist_id(name: str, table: bool = False) -> str:
    """The id Grist gives a table or column named `name` (before any clash suffix): accents dropped, other
    characters `_`, a `T`/`c` prefix before a digit, table ids capitalised. `dossiers` -> `Dossiers`."""
    text = unicodedata.normalize("NFKD", name)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = re.sub(r"[^a-zA-Z0-9_]+", "_", text).lstrip("_")
    prefix = "T" if table else "c"
    text = re.sub(r"^(?=[0-9_])", prefix, text)
    if table and text:
        text = text[0].upper() + text[1:]
    while iskeyword(text) or text in ("None", "True", "False"):
        text = prefix + text
    return text


@dataclass(frozen=True)
class Column:
    """A declared column: Grist id, type (`Text`, `Numeric`, `Int`, `Bool`, `Date`, `DateTime:Europe/Paris`,
    `Choice`, `ChoiceList`, `Ref:Table`, `Attachments`...), label, and choices for Choice/ChoiceList."""

    id: str
    type: str = "Text"
    label: str | None = None
    choices: tuple[str, ...] = ()

    def fields(self) -> dict[str, Any]:
        # untieColIdFromLabel: a person relabelling the column in Grist must not rename the id we write to.
        fields: dict[str, Any] = {"type": self.type, "label": self.label or self.id, "untieColIdFromLabel": True}
        if self.choices:
            fields["widgetOptions"] = json.dumps({"choices": list(self.choices)}, ensure_ascii=False)
        return fields


@dataclass
class SchemaChanges:
    """What ensure_schema changed, and what it found and left alone."""

    tables_created: list[str] = field(default_factory=list)
    columns_added: dict[str, list[str]] = field(default_factory=dict)  # table -> column ids
    choices_added: dict[str, list[str]] = field(default_factory=dict)  # "Table.column" -> new choices
    undeclared: dict[str, list[str]] = field(default_factory=dict)  # table -> columns a person added: kept
    type_conflicts: dict[str, tuple[str, str]] = field(default_factory=dict)  # "Table.col" -> (declared, actual)

    @property
    def changed(self) -> bool:
        return bool(self.tables_created or self.columns_added or self.choices_added)


@dataclass
class WriteResult:
    calls: int = 0
    rows: int = 0  # rows sent
    added: int | None = 0  # None: the server does not say (grist-core < 1.7.13 answers PUT with null)
    updated: int | None = 0
    max_body_bytes: int = 0  # the largest body sent
    too_large: list[dict[str, Any]] = field(default_factory=list)  # records alone over the limit: not sent

    def add(self, other: WriteResult) -> None:
        self.calls += other.calls
        self.rows += other.rows
        self.added = None if self.added is None or other.added is None else self.added + other.added
        self.updated = None if self.updated is None or other.updated is None else self.updated + other.updated
        self.max_body_bytes = max(self.max_body_bytes, other.max_body_bytes)
        self.too_large += other.too_large


class ApiKey:
    """`Authorization: Bearer <key>`; a refused key cannot be renewed."""

    def headers(self, client: ApiClient) -> dict[str, str]:
        return {"Authorization": f"Bearer {client.password}"}

    def renew(self, client: ApiClient) -> None:
        raise AuthError(
            f"Grist refused the API key of connection {client.conn_id} (HTTP 401): put a valid key "
            f"(Grist: Profile settings > API key) in the connection's password"
        )


def _encode(payload: object) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def batches(records: Sequence[dict], max_bytes: int = MAX_BODY_BYTES) -> Iterator[tuple[bytes, list[dict]]]:
    """`{"records": [...]}` bodies of at most `max_bytes` (encoded), in order, with the records of each.

    A record that alone exceeds the limit is yielded with body b"" (the caller reports it, sends nothing).
    """
    envelope = len(_encode({"records": []}))
    parts: list[bytes] = []
    chunk: list[dict] = []
    size = envelope
    for record in records:
        part = _encode(record)
        if envelope + len(part) > max_bytes:
            yield b"", [record]
            continue
        if chunk and size + 1 + len(part) > max_bytes:
            yield b'{"records":[' + b",".join(parts) + b"]}", chunk
            parts, chunk, size = [], [], envelope
        size += len(part) + (1 if parts else 0)
        parts.append(part)
        chunk.append(record)
    if chunk:
        yield b'{"records":[' + b",".join(parts) + b"]}", chunk


class GristClient:
    """One Grist document through one Airflow connection. Safe to share between threads."""

    def __init__(
        self, conn_id: str, doc_id: str, max_in_flight: int | None = None, max_body_bytes: int = MAX_BODY_BYTES
    ):
        self.api = ApiClient(conn_id, auth=ApiKey())
        if not self.api.password:
            raise AuthError(f"connection {conn_id} has no password: put the Grist API key there")
        self.doc_id = doc_id
        self.max_body_bytes = max_body_bytes
        self.max_in_flight = int(max_in_flight or self.api.extras.get("max_in_flight", MAX_IN_FLIGHT))
        if not 1 <= self.max_in_flight <= MAX_IN_FLIGHT:
            raise ValueError(f"max_in_flight must be 1..{MAX_IN_FLIGHT}, not {self.max_in_flight}")
        self.slots = _document_slots(self.api.url("/"), doc_id, self.max_in_flight)

    # -------------------------------------------------------------- calls

    def call(self, method: str, path: str, body: bytes | None = None, params: dict | None = None) -> Any:
        """One call on the document (`path` after /api/docs/<doc>/), within its in-flight limit."""
        headers = {"Content-Type": "application/json"} if body is not None else None
        with self.slots:
            try:
                answer, _ = self.api.fetch_json(
                    method, f"/api/docs/{self.doc_id}/{path}", data=body, params=params, headers=headers
                )
            except AuthError:
                raise
            except ApiError as exc:
                if " answered 403" in str(exc):
                    raise AuthError(
                        f"the API key of connection {self.api.conn_id} gives no access to Grist "
                        f"document {self.doc_id}: {exc}"
                    ) from exc
                if " answered 404" in str(exc) and "document not found" in str(exc):
                    raise ApiError(f"Grist has no document {self.doc_id} (connection {self.api.conn_id})") from exc
                raise
        return answer

    def _json(self, method: str, path: str, payload: object, params: dict | None = None) -> Any:
        return self.call(method, path, _encode(payload), params)

    # -------------------------------------------------------------- schema

    def tables(self) -> list[str]:
        return [t["id"] for t in self.call("GET", "tables")["tables"]]

    def columns(self, table: str) -> dict[str, dict[str, Any]]:
        """{column id: fields} of the table's visible columns."""
        return {c["id"]: c["fields"] for c in self.call("GET", f"tables/{table}/columns")["columns"]}

    def ensure_schema(self, tables: Mapping[str, Sequence[Column]]) -> SchemaChanges:
        """Make the document hold every declared table and column: missing tables and columns are added (with
        their type, label and choices), choices missing from a Choice/ChoiceList column are appended. Columns
        nobody declared (a person's) are kept; a column whose type differs is reported, never retyped."""
        for table, columns in tables.items():
            names = [(table, grist_id(table, table=True))] + [(c.id, grist_id(c.id)) for c in columns]
            for name, wanted in names:
                if name != wanted or name in ("id", "manualSort"):
                    raise ValueError(
                        f"{name!r} is not a Grist id (Grist would call it {wanted!r}; id and manualSort are taken)"
                    )
        changes = SchemaChanges()
        existing = set(self.tables())
        missing = [t for t in tables if t not in existing]
        if missing:
            body = {
                "tables": [
                    {"id": t, "columns": [{"id": c.id, "fields": c.fields()} for c in tables[t]]} for t in missing
                ]
            }
            created = [t["id"] for t in self._json("POST", "tables", body)["tables"]]
            if created != missing:
                self._remove_duplicates(created, missing)
            changes.tables_created = missing
            for t in missing:
                if tables[t]:
                    changes.columns_added[t] = [c.id for c in tables[t]]
        for table in tables:
            if table not in missing:
                self._ensure_columns(table, tables[table], changes)
        if changes.changed:
            log.info(
                "Grist schema: tables created %s, columns added %s, choices added %s",
                changes.tables_created,
                changes.columns_added,
                changes.choices_added,
            )
        return changes

    def _remove_duplicates(self, created: list[str], wanted: list[str]) -> None:
        """A retried POST whose first try was applied unseen (its answer lost) made `Dossiers2`-like copies:
        they are this call's own and empty, and go. Declared tables still missing are an error."""
        present = set(self.tables())
        if not all(t in present for t in wanted):
            raise ApiError(f"Grist created tables {created} instead of {wanted}")
        strays = [t for t in created if t not in wanted]
        log.warning("removing tables %s: duplicates made by a retried call", strays)
        self._json("POST", "apply", [["RemoveTable", t] for t in strays])

    def _ensure_columns(self, table: str, declared: Sequence[Column], changes: SchemaChanges) -> None:
        actual = self.columns(table)
        new = [c for c in declared if c.id not in actual]
        if new:  # PUT with noupdate only adds: a retried call cannot create Name2 duplicates
            self._json(
                "PUT",
                f"tables/{table}/columns",
                {"columns": [{"id": c.id, "fields": c.fields()} for c in new]},
                {"noupdate": "true"},
            )
            changes.columns_added[table] = [c.id for c in new]
        names = {c.id for c in declared}
        undeclared = [c for c in actual if c not in names]
        if undeclared:
            changes.undeclared[table] = undeclared
        updates = []
        for column in declared:
            fields = actual.get(column.id)
            if fields is None:
                continue
            if fields.get("type") != column.type:
                changes.type_conflicts[f"{table}.{column.id}"] = (column.type, fields.get("type"))
                log.warning(
                    "Grist column %s.%s is %s, declared %s: left as it is",
                    table,
                    column.id,
                    fields.get("type"),
                    column.type,
                )
                continue
            if column.choices:
                options = json.loads(fields.get("widgetOptions") or "{}")
                known = list(options.get("choices") or [])
                extra = [c for c in column.choices if c not in known]
                if extra:  # appended, so a person's choices, order and colours stay
                    options["choices"] = known + extra
                    updates.append(
                        {"id": column.id, "fields": {"widgetOptions": json.dumps(options, ensure_ascii=False)}}
                    )
                    changes.choices_added[f"{table}.{column.id}"] = extra
        if updates:
            self._json("PATCH", f"tables/{table}/columns", {"columns": updates})

    # -------------------------------------------------------------- records

    def records(
        self, table: str, filter: Mapping[str, Iterable] | None = None, sort: str | None = None, hidden: bool = False
    ) -> list[dict[str, Any]]:
        """Every record [{"id", "fields"}] (matching `filter` {column: [values]}, values OR'ed)."""
        params = {"filter": json.dumps({k: list(v) for k, v in filter.items()})} if filter else {}
        if sort:
            params["sort"] = sort
        if hidden:
            params["hidden"] = "true"
        return self.call("GET", f"tables/{table}/records", params=params)["records"]

    def add_or_update(self, table: str, rows: Sequence[Mapping[str, Any]], key: Sequence[str]) -> WriteResult:
        """Write `rows` (column -> cell value, key columns included) with Grist's add-or-update: a row whose
        `key` values match a record updates it, others are added. Bodies stay under the 1 MB limit (measured
        encoded); up to max_in_flight bodies go at once. Rows sharing a key in one call: the last one wins."""
        records = [
            {"require": {k: row[k] for k in key}, "fields": {c: v for c, v in row.items() if c not in key}}
            for row in _last_per_key(rows, key)
        ]
        result = WriteResult()
        work = []
        for body, chunk in batches(records, self.max_body_bytes):
            if not body:
                result.too_large += chunk
                log.warning(
                    "a %s row is over Grist's body limit alone: not written (key %s)",
                    table,
                    {k: chunk[0]["require"][k] for k in key},
                )
            else:
                work.append((body, chunk))

        def send(item: tuple[bytes, list[dict]]) -> WriteResult:
            body, chunk = item
            # noparse: the cells are already in Grist's encoding; a string must stay the string it is
            answer = self.call("PUT", f"tables/{table}/records", body, {"noparse": "true"})
            done = WriteResult(calls=1, rows=len(chunk), max_body_bytes=len(body))
            if isinstance(answer, dict) and "addRecordIds" in answer:
                done.added, done.updated = len(answer["addRecordIds"]), sum(map(len, answer["updateRecordIds"]))
            else:
                done.added = done.updated = None
            return done

        with ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="grist") as pool:
            for done in pool.map(send, work):
                result.add(done)
        return result

    def delete(self, table: str, keys: Sequence[Mapping[str, Any]]) -> int:
        """Remove the records matching one of `keys` ({column: value}, the same columns in each); returns how many
        were removed. Found by filtered reads (each filter short enough for a URL), removed by row id with
        `POST data/delete` (the OpenAPI's; grist-core's `records/delete` is the same call, newer servers only)."""
        if not keys:
            return 0
        columns = list(keys[0])
        wanted = {_encode([k[c] for c in columns]) for k in keys}
        row_ids: dict[int, None] = {}
        for chunk in _chunks_by_size(list(keys), MAX_URL_FILTER_CHARS):
            found = self.records(table, filter={c: list(dict.fromkeys(k[c] for k in chunk)) for c in columns})
            row_ids.update((r["id"], None) for r in found if _encode([r["fields"].get(c) for c in columns]) in wanted)
        for chunk in _chunks_by_size(list(row_ids), self.max_body_bytes):
            self._json("POST", f"tables/{table}/data/delete", chunk)
        return len(row_ids)


def _last_per_key(rows: Sequence[Mapping[str, Any]], key: Sequence[str]) -> list[Mapping[str, Any]]:
    # Grist refuses a bulk add-or-update whose `require` values repeat ("require values must be unique").
    latest = {json.dumps([row[k] for k in key], sort_keys=True, default=str): row for row in rows}
    return list(latest.values())


def _chunks_by_size(values: list, max_chars: int) -> Iterator[list]:
    chunk: list = []
    size = 2
    for value in values:
        length = len(_encode(value)) + 1
        if chunk and size + length > max_chars:
            yield chunk
            chunk, size = [], 2
        chunk.append(value)
        size += length
    if chunk:
        yield chunk


def _document_slots(server: str, doc_id: str, count: int) -> threading.BoundedSemaphore:
    """The in-flight limit of one document, shared by every client of this process."""
    with _slots_lock:
        return _slots.setdefault((server, doc_id), threading.BoundedSemaphore(count))
