"""Gazelle's private GraphQL API: what each synced entity reads, and how.

Auth: OAuth2 with rotating refresh tokens (connection login/password = client id/secret, extra
`refresh_token`), or an account API key in extra `x-gazelle-api-key` (HttpHook sends extras as headers).

Nothing in Gazelle's schema filters or sorts by update time: users come in one plain list, clients and pianos
are read in full every run (the upsert writes only what changed), appointments and timeline entries by window.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from psycopg import sql

from usersync.api import ApiClient
from usersync.auth import OAuth2RotatingRefreshToken, TokenStateStore
from usersync.entity import Column, Entity
from usersync.graphql_api import connection_paginator, list_paginator, load_query
from usersync.staging import Paginator

GRAPHQL_PATH = "/graphql/private/"
TOKEN_PATH = "/developer/oauth/token"
API_KEY_HEADER = "x-gazelle-api-key"
TIMELINE_DAYS = 30


def appointment_days(moment: datetime, zone: ZoneInfo, days_back: int, days_ahead: int) -> dict[str, str]:
    """The account-local days [today - days_back, today + days_ahead] of `moment`, and the zone they are in."""
    today = moment.astimezone(zone).date()
    return {
        "startOn": (today - timedelta(days=days_back)).isoformat(),
        "endOn": (today + timedelta(days=days_ahead)).isoformat(),
        "timezone": zone.key,
    }


def _one_more_day(window: dict[str, str]) -> dict[str, str]:
    """The schema does not say in which zone startOn/endOn are read: ask a day more on each side (the stage
    keeps the window's local days)."""
    return {
        "startOn": (date.fromisoformat(window["startOn"]) - timedelta(days=1)).isoformat(),
        "endOn": (date.fromisoformat(window["endOn"]) + timedelta(days=1)).isoformat(),
    }


def timeline_window(moment: datetime, days: int = TIMELINE_DAYS) -> dict[str, str]:
    """[moment - days, moment]; the API takes only the lower bound (occurredAtGet), the stage applies the upper."""
    return {"from": _iso(moment - timedelta(days=days)), "to": _iso(moment)}


# --- what each entity is: its table, staging and write (usersync.entity) ---------------------------------------


def _api(path: str, type: str = "text", name: str | None = None, **kwargs) -> Column:
    """The API's field at `path` ("client.id") as column `name` (default: the path in snake_case, client_id);
    reasons name the field as the API spells it (its first part)."""
    name = name or "_".join(re.sub(r"(?<!^)([A-Z])", r"_\1", part).lower() for part in path.split("."))
    return Column(name, type, path=path, label=path.split(".")[0], **kwargs)


ID = Column("id", required=True)
STAMPS = (_api("createdAt", "timestamptz", explain=True), _api("updatedAt", "timestamptz", explain=True))

USERS = Entity(  # technicians
    "users",
    key="id",
    columns=(ID, _api("firstName"), _api("lastName"), _api("email"), _api("status"), *STAMPS),
)

CONTACTS = Entity(  # nested in their client's record, which lists them all: the others are removed
    "contacts",
    key="id",
    path="allContacts.nodes",
    label="allContacts",
    parent_key="client_id",
    deletion="remove",
    columns=(
        Column("id", required=True, refusal="a contact without a string id"),
        Column(
            "is_default",
            "boolean",
            required=True,
            expression="record->>'id' IS NOT DISTINCT FROM parent_record->'defaultContact'->>'id'",
        ),
        _api("firstName"),
        _api("lastName"),
        _api("title"),
        _api("wantsEmail", "boolean"),
        _api("wantsText", "boolean"),
        _api("defaultEmail.email", name="email"),
        _api("defaultPhone.phoneNumber", name="phone"),
        _api("defaultLocation.street1", name="street1"),
        _api("defaultLocation.street2", name="street2"),
        _api("defaultLocation.municipality", name="municipality"),
        _api("defaultLocation.postalCode", name="postal_code"),
        _api("defaultLocation.region", name="region"),
        *STAMPS,
    ),
)
_ALL_CONTACTS = "record->'allContacts'->'pageInfo'->'hasNextPage' IS DISTINCT FROM 'true'"
CLIENTS = Entity(
    "clients",
    key="id",
    columns=(
        ID,
        _api("companyName"),
        _api("status"),
        _api("clientType"),
        Column(  # a missing list is an empty one; an empty list never replaces tags read before
            "tags",
            "text[]",
            expression="ARRAY(SELECT jsonb_array_elements_text(coalesce(record->'tags', '[]')))",
            condition="coalesce(jsonb_typeof(record->'tags'), 'null') IN ('array', 'null')",
            refusal="tags: not a list",
            keep_non_empty=True,
        ),
        _api("preferredTechnicianId"),
        _api("defaultContact.id"),
        _api("personalNotes"),
        _api("preferenceNotes"),
        _api("localization.locale", name="locale"),  # null: the account's default
        *STAMPS,
    ),
    children=(CONTACTS,),
    rules=(
        (
            _ALL_CONTACTS,
            "allContacts: more contacts than the query asks for; raise allContacts(first:) in clients.graphql",
        ),
    ),
)

PIANOS = Entity(  # a piano whose client is not in clients is quarantined (its client may be newer: next run)
    "pianos",
    key="id",
    references={"client_id": "clients"},
    columns=(
        ID,
        _api("client.id", required=True),
        _api("make"),
        _api("model"),
        _api("serialNumber"),
        _api("type"),
        _api("year", "integer", check="^[0-9]{1,4}$"),
        _api("status"),
        _api("location"),
        _api("notes"),
        _api("damppChaserInstalled", "boolean"),  # the humidity-control system installed in it
        _api("damppChaserHumidistatModel"),
        _api("damppChaserMfgDate", "date", explain=True, refusal="damppChaserMfgDate: not a YYYY-MM-DD date"),
        *STAMPS,
    ),
)


def _events(zone: str) -> Entity:
    """Calendar events, their start's local date and time in the account's `zone`. No references: appointments
    load whatever happened to the clients sync. An event gone from its window is kept, status 'CANCELLED' (as
    the original system; Gazelle's own value is 'CANCELED')."""
    local = sql.SQL("((record->>'start')::timestamptz AT TIME ZONE {})").format(sql.Literal(zone))
    return Entity(
        "events",
        key="id",
        deletion="mark",
        deleted_status=("status", "CANCELLED"),
        indexes=("client_id", "start", "local_date"),
        columns=(
            ID,
            _api("client.id"),
            _api("user.id"),
            _api("title"),
            _api("start", "timestamptz", required=True, explain=True),
            Column("local_date", "date", required=True, expression=local + sql.SQL("::date")),
            Column("local_time", "time", required=True, expression=local + sql.SQL("::time")),
            _api("duration", "integer", check="^[0-9]{1,6}$"),
            _api("isAllDay", "boolean"),
            _api("type"),
            _api("status"),
            _api("notes"),
            _api("confirmedByClient", "boolean"),
            Column(
                "piano_ids",
                "text[]",
                required=True,
                expression="ARRAY(SELECT p->'piano'->>'id' FROM jsonb_array_elements("
                "coalesce(record->'allEventPianos'->'nodes', '[]')) AS p ORDER BY 1)",
                condition="coalesce(jsonb_typeof(record->'allEventPianos'->'nodes'), 'null') IN ('array', 'null')",
                refusal="allEventPianos: not a connection",
            ),
            *STAMPS,
        ),
    )


EVENTS = _events("UTC")  # the declaration; a run's is for_window()'s, in the account's zone

TIMELINE = Entity(  # a client's history; no references: entries load whatever happened to clients and pianos
    "timeline_entries",
    key="id",
    deletion="remove",
    indexes=("client_id", "piano_id", "occurred_at"),
    columns=(
        ID,
        _api("client.id", required=True, refusal="client: missing"),
        _api("piano.id"),
        _api("user.id"),
        _api("invoice.id"),
        _api("estimate.id"),
        _api("occurredAt", "timestamptz", required=True, explain=True),
        _api("type"),
        _api("summary", keep_non_empty=True),  # a text once read is not lost to an answer without it
        _api("comment", keep_non_empty=True),
    ),
)


def for_window(entity: Entity, window: dict[str, str] | None) -> Entity:
    """The entity as a run with this window syncs it: only the window's records are staged, and the rows the
    window holds and the API no longer lists are cancelled (events) or removed (timeline)."""
    if entity.name == "events":
        days = [sql.Literal(date.fromisoformat(window[bound])) for bound in ("startOn", "endOn")]
        return dataclasses.replace(
            _events(window["timezone"]), window=sql.SQL("local_date BETWEEN {} AND {}").format(*days)
        )
    if entity.name == "timeline_entries":  # the API takes the lower bound only: the window applies the upper
        moments = [sql.Literal(datetime.fromisoformat(window[bound])) for bound in ("from", "to")]
        return dataclasses.replace(entity, window=sql.SQL("occurred_at BETWEEN {} AND {}").format(*moments))
    return entity


# --- how each is read --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    name: str  # the `entities` param's choice, and its tasks' names
    entity: Entity  # its table; include/graphql/gazelle/<table>.graphql
    root: str  # the query's root field
    plain_list: bool = False  # the root field is a plain list (one request), not a Relay connection
    variables: Callable[[dict[str, str]], dict[str, str]] = lambda window: {}  # the query's, for a window


STREAMS = {
    stream.name: stream
    for stream in (
        Stream("users", USERS, "allUsers", plain_list=True),
        Stream("clients", CLIENTS, "allClients"),
        Stream("pianos", PIANOS, "allPianos"),
        Stream("appointments", EVENTS, "allEventsBatched", variables=_one_more_day),
        Stream("timeline", TIMELINE, "allTimelineEntries", variables=lambda window: {"from": window["from"]}),
    )
}


def client(conn_id: str, token_store: TokenStateStore | None = None, shared_by: int = 1) -> ApiClient:
    api = ApiClient(conn_id, shared_by=shared_by)
    if API_KEY_HEADER not in api.extras:
        api.auth = OAuth2RotatingRefreshToken(conn_id, default_token_path=TOKEN_PATH, store=token_store)
    return api


def paginator(api: ApiClient, stream: Stream, window: dict[str, str] | None, page_size: int) -> Paginator:
    query = load_query("gazelle", stream.entity.name)
    if stream.plain_list:
        return list_paginator(api, GRAPHQL_PATH, query, stream.root)
    return connection_paginator(api, GRAPHQL_PATH, query, stream.root, stream.variables(window or {}), page_size)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
