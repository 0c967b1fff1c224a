"""The Cerema Portail DF API: username/password -> token; users looked up one email at a time.

Connection extras: `api_version` "1" (portaildf.cerema.fr, DRF token: `Authorization: Token ...`) or "2"
(datafoncier.cerema.fr, SimpleJWT: `Authorization: Bearer ...`), plus ApiClient's (rate_limit, timeout...).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from airflow.sdk.log import mask_secret

from usersync.api import ApiClient, ApiError, AuthError
from usersync.auth import RenewableToken

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

USERS_PATH = "/api/utilisateurs"
TOKEN_FLOWS = {  # api_version -> (token path, field of the answer holding the token, header scheme)
    "1": ("/api/api-token-auth/", "token", "Token"),
    "2": ("/api/token/", "access", "Bearer"),
}


class PasswordToken(RenewableToken):
    """Portail DF's token auth (both versions): the connection's login/password buy a token, renewed on 401."""

    def __init__(self, api_version: str):
        if api_version not in TOKEN_FLOWS:
            raise ValueError(f"api_version must be one of {sorted(TOKEN_FLOWS)}, not {api_version!r}")
        super().__init__()
        self.path, self.field, self.scheme = TOKEN_FLOWS[api_version]

    def _fetch(self, client: ApiClient) -> None:
        body = client.obtain_token(self.path, json={"username": client.login, "password": client.password})
        token = body.get(self.field) if isinstance(body, dict) else None
        if not token:
            raise AuthError(f"the token answer has no {self.field!r}")
        mask_secret(token)
        self.token = token
        client.stats.add(token_renewals=1)
        log.info("obtained a Portail DF token (%s scheme)", self.scheme)


def client(conn_id: str, hand_over: ObjectStoragePath | None = None) -> ApiClient:
    """`hand_over`: the state file of the clients that take turns on this account (see ApiClient)."""
    api = ApiClient(conn_id, hand_over=hand_over)
    api.auth = PasswordToken(str(api.extras.get("api_version", "1")))
    return api


def lookup_user(api: ApiClient, user: dict[str, Any]) -> dict[str, Any]:
    """Ask the directory about one application user; never raises for that user's own failure.

    Returns {"user_id", "outcome": found|not_found|failed, "record" (found), "reason" (failed), "ambiguous"
    (when it applies)}: no email, so that no log or report built from answers holds one.

    The API's email matching is undocumented (a case-insensitive directory answers every letter-case variant
    of an address, which can be different people): the record whose email is exactly the one asked wins;
    without one, a record equal ignoring case. When the answer holds several such records with different
    flags, the answer is `ambiguous` (their count); if none of them is the exact address, the user cannot
    be classified and the lookup fails with that reason (the user keeps its kind).
    """
    email = user["email"].strip()
    answer = {"user_id": user["id"]}
    try:
        body, _ = api.fetch_json("GET", USERS_PATH, params={"email": email})
        results = body["results"]
        if not isinstance(results, list):
            raise TypeError("results is not a list")
    except AuthError:
        raise  # the credentials, not this user: the whole chunk fails, at once
    except ApiError as exc:
        return {**answer, "outcome": "failed", "reason": str(exc)}
    except (TypeError, KeyError) as exc:
        return {**answer, "outcome": "failed", "reason": f"unexpected answer shape: {exc!r}"}
    wanted = email.casefold()
    same = [r for r in results if isinstance(r, dict) and str(r.get("email", "")).casefold() == wanted]
    if not same:
        return {**answer, "outcome": "not_found"}
    if len({_flags(r) for r in same}) > 1:
        answer["ambiguous"] = len(same)
    exact = [r for r in same if r.get("email") == email]
    if len({_flags(r) for r in exact or same}) > 1:
        reason = f"ambiguous: {len(same)} directory records match ignoring case, with different flags"
        return {**answer, "outcome": "failed", "reason": reason + ("" if exact else ", none exactly")}
    return {**answer, "outcome": "found", "record": (exact or same)[0]}


def _flags(record: dict[str, Any]) -> tuple[str, str]:
    return repr(record.get("exterieur")), repr(record.get("gestionnaire"))


def lookup_failed(answer: dict[str, Any]) -> bool:
    """The call failed (not an ambiguous answer): a chunk where every call failed is retried."""
    return answer["outcome"] == "failed" and "ambiguous" not in answer
