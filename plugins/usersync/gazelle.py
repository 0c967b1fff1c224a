"""Gazelle's private GraphQL API: what each synced entity reads, and how.

Auth: OAuth2 with rotating refresh tokens (connection login/password = client id/secret, extra
`refresh_token`), or an account API key in extra `x-gazelle-api-key` (HttpHook sends extras as headers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from usersync.api import ApiClient
from usersync.auth import OAuth2RotatingRefreshToken, TokenStateStore
from usersync.graphql_api import connection_paginator, load_query
from usersync.staging import Paginator

GRAPHQL_PATH = "/graphql/private/"
TOKEN_PATH = "/developer/oauth/token"
API_KEY_HEADER = "x-gazelle-api-key"
OVERLAP = timedelta(minutes=5)  # a delta run pages back this far past the watermark (clock skew, same-second edits)


def _start_dates(days: int) -> Callable[[datetime], dict[str, str]]:
    """The `days` whole days before the logical date's day, as inclusive dates."""
    return lambda day: {"startOn": (day - timedelta(days=days)).date().isoformat(),
                        "endOn": (day - timedelta(days=1)).date().isoformat()}


def _occurred(days: int) -> Callable[[datetime], dict[str, str]]:
    """[logical date - `days`, logical date]."""
    return lambda moment: {"from": _iso(moment - timedelta(days=days)), "to": _iso(moment)}


@dataclass(frozen=True)
class Stream:
    entity: str  # its table, staging stream and include/graphql/gazelle/<entity>.graphql
    root: str  # the query's root connection
    delta: bool = False  # newest first; a delta run stops at the table's watermark
    window: Callable[[datetime], dict[str, str]] | None = None  # the query's variables for a logical date
    children: tuple[str, ...] = ()  # entities nested in its records, loaded with it


STREAMS = {  # the `entities` param's choices, in load order (foreign keys: clients first)
    "users": Stream("users", "allUsers"),
    "clients": Stream("clients", "allClients", delta=True, children=("contacts",)),
    "pianos": Stream("pianos", "allPianos", delta=True),
    "appointments": Stream("events", "allEventsBatched", window=_start_dates(7)),
    "timeline": Stream("timeline_entries", "allTimelineEntries", window=_occurred(30)),
}


def client(conn_id: str, token_store: TokenStateStore | None = None, shared_by: int = 1) -> ApiClient:
    api = ApiClient(conn_id, shared_by=shared_by)
    if API_KEY_HEADER not in api.extras:
        api.auth = OAuth2RotatingRefreshToken(conn_id, default_token_path=TOKEN_PATH, store=token_store)
    return api


def paginator(api: ApiClient, stream: Stream, logical_date: datetime, watermark: datetime | None,
              page_size: int) -> Paginator:
    """The pages a run reads: a delta stream stops after the page that reaches `watermark` - OVERLAP."""
    stop_after = None
    if stream.delta and watermark is not None:
        since = watermark - OVERLAP
        stop_after = lambda nodes: not nodes or _older(nodes[-1], since)  # noqa: E731
    variables = stream.window(logical_date) if stream.window else {}
    return connection_paginator(api, GRAPHQL_PATH, load_query("gazelle", stream.entity), stream.root,
                                variables, page_size, stop_after)


def _older(node: Any, since: datetime) -> bool:
    try:
        return datetime.fromisoformat(node["updatedAt"].replace("Z", "+00:00")) < since
    except (TypeError, KeyError, ValueError, AttributeError):
        return False  # unreadable: keep paging (stage quarantines the record)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
