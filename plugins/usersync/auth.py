"""Auth flows: how an ApiClient authenticates its calls (headers) and renews them when the API answers 401.

Each flow asks for its token through the client (``client.obtain_token``), so the token call gets the same
retries, limits and refusal handling as any other; ``client.login``/``client.password`` are its credentials.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from airflow.sdk.log import mask_secret

from usersync.api import AuthError

if TYPE_CHECKING:
    from usersync.api import ApiClient

log = logging.getLogger(__name__)


def renewal_margin(lifetime: float) -> float:
    """How long before a token expires to renew it: a minute, or a tenth of a short-lived token's lifetime
    (a 20 s token renewed a minute early would be renewed before every call)."""
    return min(60.0, lifetime / 10)


class Auth(Protocol):
    """How an API authenticates: headers for each call, and a renewal when the API answers 401."""

    def headers(self, client: ApiClient) -> dict[str, str]: ...

    def renew(self, client: ApiClient) -> None: ...


class RenewableToken:
    """A flow whose token is fetched on the first call (``_fetch`` sets ``token``, and ``renew_at`` when it knows
    the token's lifetime), kept until ``renew_at`` (monotonic seconds) and fetched again when the API answers 401.
    One fetch at a time: the client's threads wait for it and share the token."""

    header, scheme = "Authorization", "Bearer"  # scheme "": the token alone

    def __init__(self) -> None:
        self.token: str | None = None
        self.renew_at = math.inf
        self.lock = threading.Lock()

    def headers(self, client: ApiClient) -> dict[str, str]:
        with self.lock:
            if self.token is None or time.monotonic() >= self.renew_at:
                self._fetch(client)
            return {self.header: f"{self.scheme} {self.token}" if self.scheme else self.token}

    def renew(self, client: ApiClient) -> None:
        with self.lock:
            self._fetch(client)

    def _fetch(self, client: ApiClient) -> None:
        raise NotImplementedError


class OAuth2ClientCredentials(RenewableToken):
    """OAuth2 client-credentials (the connection's login/password are client id/secret).

    The token is cached for the client's lifetime (every page) and renewed shortly before it expires
    (renewal_margin) or when the API answers 401.
    """

    default_token_path = "/oauth/token"

    def _fetch(self, client: ApiClient) -> None:
        body = client.obtain_token(
            self.default_token_path,
            data={"grant_type": "client_credentials", "client_id": client.login, "client_secret": client.password},
        )
        self.token = body["access_token"]
        mask_secret(self.token)
        lifetime = float(body.get("expires_in", 3600))
        self.renew_at = time.monotonic() + lifetime - renewal_margin(lifetime)
        client.stats.add(token_renewals=1)
        log.info("obtained an access token valid %ss", body.get("expires_in", "?"))


class TokenStateStore(Protocol):
    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...


class VariableStore:
    """Token state in an Airflow Variable (from a running task)."""

    def __init__(self, key: str):
        self.key = key

    def load(self) -> dict[str, Any] | None:
        from airflow.sdk import Variable

        return json.loads(Variable.get(self.key, default="null") or "null")

    def save(self, state: dict[str, Any]) -> None:
        from airflow.sdk import Variable

        Variable.set(self.key, json.dumps(state), description="usersync: rotating OAuth token state")


class OAuth2RotatingRefreshToken:
    """OAuth2 refresh-token grant, for APIs whose refresh tokens rotate (each refresh revokes the one used).

    The connection holds the client id/secret (login/password) and, in extra `refresh_token`, the token a
    user's authorization gave. Every rotation is saved at once in an Airflow Variable (`<conn_id>_oauth_token`:
    masked in logs and the UI, encrypted in the metadata DB), which the next task and the next run start
    from. Putting a new refresh token in the connection (after a re-authorization) takes over from the saved
    one. Tasks running at the same time share the saved access token; if two refresh at once, the loser's
    old token is refused (invalid_grant) and it adopts the winner's.
    """

    ADOPT_WAITS = (0.5, 1, 2, 4)  # seconds to wait for a concurrent refresh to be saved

    def __init__(self, conn_id: str, default_token_path: str = "/oauth/token", store: TokenStateStore | None = None):
        self.store = store or VariableStore(f"{conn_id}_oauth_token")
        self.default_token_path = default_token_path
        self.state: dict[str, Any] | None = None
        self.lock = threading.Lock()

    def headers(self, client: ApiClient) -> dict[str, str]:
        with self.lock:
            if self.state is None or time.time() > _renew_at(self.state):
                self._refresh(client, stale=None)
            return {"Authorization": f"Bearer {self.state['access_token']}"}

    def renew(self, client: ApiClient) -> None:
        with self.lock:
            self._refresh(client, stale=self.state and self.state["access_token"])

    def _saved(self, client: ApiClient) -> dict[str, Any]:
        """The saved token state, unless the connection's refresh token is newer (a re-authorization)."""
        granted = client.extras.get("refresh_token")
        if not granted:
            raise AuthError(f"connection {client.conn_id}: extra refresh_token is missing")
        origin = hashlib.sha256(granted.encode()).hexdigest()[:16]
        saved = self.store.load()
        if saved and saved.get("origin") == origin:
            for token in (saved["refresh_token"], saved.get("access_token")):
                if token:
                    mask_secret(token)
            return saved
        mask_secret(granted)
        return {"origin": origin, "refresh_token": granted, "access_token": None, "expires_at": 0}

    def _refresh(self, client: ApiClient, stale: str | None) -> None:
        waits = iter(self.ADOPT_WAITS)
        while True:
            saved = self._saved(client)
            fresh = saved["access_token"] and saved["access_token"] != stale
            if fresh and time.time() < _renew_at(saved):
                self.state = saved  # another task (or an earlier one) already has a valid token
                return
            try:
                body = client.obtain_token(
                    self.default_token_path,
                    data={
                        "grant_type": "refresh_token",
                        "refresh_token": saved["refresh_token"],
                        "client_id": client.login,
                        "client_secret": client.password,
                    },
                )
            except AuthError as exc:
                wait = next(waits, None)
                if "invalid_grant" not in str(exc) or wait is None:
                    raise AuthError(
                        f"{exc}. If the refresh token was revoked, authorize the application again "
                        f"and put the new refresh token in connection {client.conn_id}"
                    ) from exc
                client.refused = None  # not a refusal yet: maybe a concurrent task rotated the token
                time.sleep(wait)  # look at what it saved
                continue
            mask_secret(body["access_token"])
            mask_secret(body["refresh_token"])
            lifetime = float(body.get("expires_in", 3600))
            self.state = {
                "origin": saved["origin"],
                "refresh_token": body["refresh_token"],
                "access_token": body["access_token"],
                "expires_at": time.time() + lifetime,
                "renew_at": time.time() + lifetime - renewal_margin(lifetime),
            }
            self.store.save(self.state)
            client.stats.add(token_renewals=1)
            log.info(
                "refreshed the access token (valid %ss); saved the rotated refresh token", body.get("expires_in", "?")
            )
            return


def _renew_at(state: dict[str, Any]) -> float:
    return state.get("renew_at", state["expires_at"] - 60)  # states saved before renew_at: a minute early
