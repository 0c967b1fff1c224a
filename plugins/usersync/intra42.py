"""The 42 intra API: OAuth2 client credentials; lists paginated with page/per_page and Link headers."""

from __future__ import annotations

from typing import Any

from usersync.api import ApiClient, ApiError
from usersync.auth import OAuth2ClientCredentials
from usersync.staging import Page, Paginator

CURSUS_USERS = "/v2/cursus/{cursus_id}/users"
MAX_ID = 2**31 - 1  # the API's ids are 32-bit


def client(conn_id: str) -> ApiClient:
    return ApiClient(conn_id, auth=OAuth2ClientCredentials())


def users_paginator(api: ApiClient, cursus_id: int, query: dict[str, Any], per_page: int) -> Paginator:
    """Pages of a cursus's users in id order, walked by id rather than by page number.

    Each request asks for the first page of the users after the last id seen (range[id]), so a user who
    changes, joins or leaves the filtered set during the walk cannot shift the later pages and make us
    skip someone. A page's state is that last id; the walk ends when the API offers no rel="next".
    """
    path = CURSUS_USERS.format(cursus_id=cursus_id)

    def fetch(state: dict[str, Any]) -> Page:
        params = {
            **query,
            "sort": "id",
            "range[id]": f"{state['after_id'] + 1},{MAX_ID}",
            "page": 1,
            "per_page": per_page,
        }
        body, response = api.fetch_json("GET", path, params=params)
        if not isinstance(body, list):
            raise ApiError(f"GET {path} after id {state['after_id']}: expected a JSON array, got {type(body).__name__}")
        if not (body and "next" in response.links):
            return Page(records=body, next=None)
        last_id = max(_id(r) for r in body)
        if last_id <= state["after_id"]:  # a page of unreadable ids: going on would loop back to the start
            raise ApiError(
                f"GET {path} after id {state['after_id']}: no readable id on the page, cannot continue the walk"
            )
        return Page(records=body, next={"after_id": last_id})

    return fetch


def _id(record: Any) -> int:
    try:
        return int(record["id"])
    except (TypeError, KeyError, ValueError):
        return -1  # a malformed record does not move the walk; stage quarantines it
