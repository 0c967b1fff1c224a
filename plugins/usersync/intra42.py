"""The 42 intra API: OAuth2 client credentials, page-number pagination with Link headers."""

from __future__ import annotations

from typing import Any

from usersync.api import ApiClient, ApiError, OAuth2ClientCredentials
from usersync.staging import Page, Paginator

CURSUS_USERS = "/v2/cursus/{cursus_id}/users"


def client(conn_id: str) -> ApiClient:
    return ApiClient(conn_id, auth=OAuth2ClientCredentials())


def users_paginator(api: ApiClient, cursus_id: int, query: dict[str, Any], per_page: int) -> Paginator:
    """Pages of a cursus's users; a page's state is its number. The last page has no Link rel="next"."""
    path = CURSUS_USERS.format(cursus_id=cursus_id)

    def fetch(state: dict[str, Any]) -> Page:
        body, response = api.fetch_json("GET", path, params={**query, "page": state["page"], "per_page": per_page})
        if not isinstance(body, list):
            raise ApiError(f"GET {path} page {state['page']}: expected a JSON array, got {type(body).__name__}")
        more = bool(body) and "next" in response.links
        return Page(records=body, next={"page": state["page"] + 1} if more else None)

    return fetch
