"""Gazelle's private GraphQL API: what each synced entity reads, and how.

Auth: OAuth2 with rotating refresh tokens (connection login/password = client id/secret, extra
`refresh_token`), or an account API key in extra `x-gazelle-api-key` (HttpHook sends extras as headers).

Nothing in Gazelle's schema filters or sorts by update time: users come in one plain list, clients and pianos
are read in full every run (the upsert writes only what changed), appointments and timeline entries by window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from usersync.api import ApiClient
from usersync.auth import OAuth2RotatingRefreshToken, TokenStateStore
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


@dataclass(frozen=True)
class Stream:
    entity: str  # its table, staging stream and include/graphql/gazelle/<entity>.graphql
    root: str  # the query's root field
    plain_list: bool = False  # the root field is a plain list (one request), not a Relay connection
    variables: Callable[[dict[str, str]], dict[str, str]] = lambda window: {}  # the query's, for a window
    children: tuple[str, ...] = ()  # entities nested in its records, loaded with it


STREAMS = {  # the `entities` param's choices
    "users": Stream("users", "allUsers", plain_list=True),
    "clients": Stream("clients", "allClients", children=("contacts",)),
    "pianos": Stream("pianos", "allPianos"),
    "appointments": Stream("events", "allEventsBatched", variables=_one_more_day),
    "timeline": Stream("timeline_entries", "allTimelineEntries", variables=lambda window: {"from": window["from"]}),
}


def client(conn_id: str, token_store: TokenStateStore | None = None, shared_by: int = 1) -> ApiClient:
    api = ApiClient(conn_id, shared_by=shared_by)
    if API_KEY_HEADER not in api.extras:
        api.auth = OAuth2RotatingRefreshToken(conn_id, default_token_path=TOKEN_PATH, store=token_store)
    return api


def paginator(api: ApiClient, stream: Stream, window: dict[str, str] | None, page_size: int) -> Paginator:
    query = load_query("gazelle", stream.entity)
    if stream.plain_list:
        return list_paginator(api, GRAPHQL_PATH, query, stream.root)
    return connection_paginator(api, GRAPHQL_PATH, query, stream.root, stream.variables(window or {}), page_size)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
