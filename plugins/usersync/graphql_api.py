"""GraphQL APIs: Relay-connection pagination into staging pages; GraphQL `errors` become task failures.

A query for `connection_paginator` takes `$first` and `$after` (plus its own variables) and selects, at
`connection`, `nodes { ... }` and `pageInfo { hasNextPage endCursor }`. Queries live in
include/graphql/<sync>/<name>.graphql.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from usersync.api import ApiClient, ApiError
from usersync.db import SQL_DIR
from usersync.staging import Page, Paginator

GRAPHQL_DIR = SQL_DIR.parent / "graphql"


class GraphQLError(ApiError):
    """The API answered (HTTP 200) with GraphQL errors: the query or its variables are wrong, or the server
    failed. The message carries the API's own messages."""


def load_query(sync: str, name: str) -> str:
    return (GRAPHQL_DIR / sync / f"{name}.graphql").read_text()


def execute(api: ApiClient, path: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    """POST one query; return its `data`, or raise GraphQLError with every error the API listed."""
    body, _ = api.fetch_json("POST", path, json={"query": query, "variables": variables})
    if not isinstance(body, dict):
        raise ApiError(f"POST {path}: expected a JSON object, got {type(body).__name__}")
    if body.get("errors"):
        raise GraphQLError(f"POST {path}: the API refused the query: " + "; ".join(map(_describe, body["errors"])))
    if not isinstance(body.get("data"), dict):
        raise GraphQLError(f"POST {path}: no data and no errors in the answer")
    return body["data"]


def _describe(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    where = ".".join(map(str, error.get("path") or []))
    code = (error.get("extensions") or {}).get("code")
    return " ".join(
        part
        for part in (error.get("message", "?"), f"at {where}" if where else "", f"[{code}]" if code else "")
        if part
    )


def connection_paginator(
    api: ApiClient,
    path: str,
    query: str,
    connection: str,
    variables: dict[str, Any] | None = None,
    page_size: int = 100,
    stop_after: Callable[[list[dict[str, Any]]], bool] | None = None,
) -> Paginator:
    """Pages of the Relay connection `connection` (a root field); state = the cursor to continue after.

    `stop_after(nodes)` ends the walk after a page, e.g. once a newest-first walk reaches records already
    loaded.
    """

    def fetch(state: dict[str, Any]) -> Page:
        data = execute(api, path, query, {**(variables or {}), "first": page_size, "after": state["after"]})
        try:
            page = data[connection]
            nodes, info = page["nodes"], page["pageInfo"]
            more, cursor = bool(info["hasNextPage"]), info["endCursor"]
        except (KeyError, TypeError) as exc:
            raise GraphQLError(
                f"POST {path}: {connection} is not a connection with nodes and pageInfo ({exc!r})"
            ) from exc
        if more and not cursor:
            raise GraphQLError(f"POST {path}: {connection} says there is a next page but gives no endCursor")
        done = not more or (stop_after is not None and stop_after(nodes))
        return Page(records=nodes, next=None if done else {"after": cursor})

    return fetch


def list_paginator(
    api: ApiClient, path: str, query: str, field: str, variables: dict[str, Any] | None = None
) -> Paginator:
    """The one page of a root field that is a plain list (no connection: one request answers everything)."""

    def fetch(_state: dict[str, Any]) -> Page:
        records = execute(api, path, query, variables or {}).get(field)
        if not isinstance(records, list):
            raise GraphQLError(f"POST {path}: {field} is not a list")
        return Page(records=records, next=None)

    return fetch


def first_page() -> dict[str, Any]:
    return {"after": None}
