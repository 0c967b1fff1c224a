"""HTTP client layer on the http provider's HttpHook.

The Airflow connection gives the base URL, the credentials (login/password) and these extras:
  rate_limit   "2/s,1200/h": the API's declared limits; the client stays under all of them
  timeout      seconds per request (default 30)
  max_retries  retries on 5xx, timeouts, connection errors, answers cut short, unreadable bodies (default 5)
  backoff      first retry delay in seconds, doubled each retry (default 1)
  token_path   where an auth flow gets its token (default per flow)
  api_version, refresh_token: read by the API modules that need them
Everything else in extras is left to HttpHook, which turns it into request headers.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import math
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests
import urllib3
from airflow.providers.http.hooks.http import HttpHook
from airflow.sdk.exceptions import AirflowFailException
from airflow.sdk.log import mask_secret

log = logging.getLogger(__name__)

CLIENT_EXTRAS = ("rate_limit", "timeout", "max_retries", "backoff", "token_path", "api_version", "refresh_token")
# HttpSensor sends every connection extra as a header; these request headers (None = drop) keep ours out.
SENSOR_HEADERS: dict[str, str | None] = dict.fromkeys(CLIENT_EXTRAS)
RETRYABLE_STATUS = {500, 502, 503, 504}
# No answer, or an answer cut short (the connection dropped mid-body, a bad chunk or gzip stream): try again.
TRANSIENT_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    requests.exceptions.ContentDecodingError, urllib3.exceptions.ProtocolError,
                    http.client.IncompleteRead)
MAX_THROTTLED_WAITS = 50
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ApiError(Exception):
    """The API answered in a way retries cannot fix (4xx, or 5xx after every retry)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status of a 4xx answer; None when retries gave up


class AuthError(ApiError, AirflowFailException):
    """The credentials were refused: every further call would fail the same way, so the task fails at once,
    without Airflow retries (a server that locks accounts after failed logins must not see them)."""


def renewal_margin(lifetime: float) -> float:
    """How long before a token expires to renew it: a minute, or a tenth of a short-lived token's lifetime
    (a 20 s token renewed a minute early would be renewed before every call)."""
    return min(60.0, lifetime / 10)


def parse_rate_limit(spec: str | None) -> list[tuple[int, float]]:
    """'2/s,1200/h' -> [(2, 1.0), (1200, 3600.0)]."""
    limits = []
    for part in (spec or "").replace(" ", "").split(","):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)/(\d*)([smhd])", part)
        if not match:
            raise ValueError(f"bad rate_limit {part!r}: expected e.g. '2/s,1200/h'")
        count, per, unit = match.groups()
        limits.append((int(count), float(per or 1) * UNITS[unit]))
    return limits


class RateLimiter:
    """Sliding-window limiter shared by every thread of one client.

    A call holds a place in each window from when it starts until `period` after its answer arrived:
    the server counted it somewhere in between, so however long calls take, the next one cannot land in
    a window the server considers full. `pause()` holds everyone back after a 429 + Retry-After.
    """

    MARGIN = 0.005  # seconds, for timer granularity
    POLL = 0.01  # seconds between looks while every place is taken by a call still in flight

    def __init__(self, limits: list[tuple[int, float]]):
        self.limits = limits
        self.windows: list[list[list[float]]] = [[] for _ in limits]  # per window: [answered_at] of each call
        self.paused_until = 0.0
        self.lock = threading.Lock()

    def acquire(self) -> list[float]:
        """Wait for a place in every window; returns the call's slot, to hand to release()."""
        while True:
            with self.lock:
                now = time.monotonic()
                wait = self.paused_until - now
                for (count, period), slots in zip(self.limits, self.windows, strict=True):
                    slots[:] = [slot for slot in slots if slot[0] + period + self.MARGIN > now]
                    if len(slots) >= count:  # in-flight calls (answered_at = inf) free nothing yet
                        wait = max(wait, min(slot[0] for slot in slots) + period + self.MARGIN - now)
                if wait <= 0:
                    slot = [math.inf]
                    for slots in self.windows:
                        slots.append(slot)
                    return slot
            time.sleep(self.POLL if wait == math.inf else wait)

    def release(self, slot: list[float]) -> None:
        """The call's answer arrived (or it failed): its places free `period` from now."""
        with self.lock:
            slot[0] = time.monotonic()

    def divide(self, clients: int) -> None:
        """Keep to 1/`clients` of every limit: for clients that run at the same time on one account."""
        with self.lock:
            self.limits = [(max(1, count // clients), period) for count, period in self.limits]

    def history(self) -> list[float]:
        """When the calls that still hold places were answered (epoch seconds), for a client taking over."""
        with self.lock:
            offset = time.time() - time.monotonic()
            longest = max(self.windows, key=len, default=[])  # every place held anywhere is in the longest
            return [slot[0] + offset for slot in longest if slot[0] != math.inf]

    def continue_from(self, history: list[float]) -> None:
        """Take over the places another client's calls (same credentials, just before) still hold."""
        with self.lock:
            offset = time.time() - time.monotonic()
            for slots in self.windows:
                slots.extend([answered - offset] for answered in history)

    def pause(self, seconds: float) -> None:
        with self.lock:
            self.paused_until = max(self.paused_until, time.monotonic() + seconds)


@dataclass
class CallStats:
    calls: int = 0
    throttled: int = 0
    retries: int = 0
    token_renewals: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, int]:
        return {"api_calls": self.calls, "throttled": self.throttled, "retries": self.retries,
                "token_renewals": self.token_renewals}


class Auth(Protocol):
    """How an API authenticates: headers for each call, and a renewal when the API answers 401."""

    def headers(self, client: ApiClient) -> dict[str, str]: ...

    def renew(self, client: ApiClient) -> None: ...


class OAuth2ClientCredentials:
    """OAuth2 client-credentials (the connection's login/password are client id/secret).

    The token is cached for the client's lifetime (every page) and renewed shortly before it expires
    (renewal_margin) or when the API answers 401.
    """

    default_token_path = "/oauth/token"

    def __init__(self) -> None:
        self.token: str | None = None
        self.renew_at = 0.0
        self.lock = threading.Lock()

    def headers(self, client: ApiClient) -> dict[str, str]:
        with self.lock:
            if self.token is None or time.monotonic() > self.renew_at:
                self._fetch(client)
            return {"Authorization": f"Bearer {self.token}"}

    def renew(self, client: ApiClient) -> None:
        with self.lock:
            self._fetch(client)

    def _fetch(self, client: ApiClient) -> None:
        body = client.obtain_token(
            self.default_token_path, data={"grant_type": "client_credentials", "client_id": client.login,
                                           "client_secret": client.password},
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
                body = client.obtain_token(self.default_token_path, data={
                    "grant_type": "refresh_token", "refresh_token": saved["refresh_token"],
                    "client_id": client.login, "client_secret": client.password})
            except AuthError as exc:
                wait = next(waits, None)
                if "invalid_grant" not in str(exc) or wait is None:
                    raise AuthError(f"{exc}. If the refresh token was revoked, authorize the application again "
                                    f"and put the new refresh token in connection {client.conn_id}") from exc
                client.refused = None  # not a refusal yet: maybe a concurrent task rotated the token
                time.sleep(wait)  # look at what it saved
                continue
            mask_secret(body["access_token"])
            mask_secret(body["refresh_token"])
            lifetime = float(body.get("expires_in", 3600))
            self.state = {"origin": saved["origin"], "refresh_token": body["refresh_token"],
                          "access_token": body["access_token"], "expires_at": time.time() + lifetime,
                          "renew_at": time.time() + lifetime - renewal_margin(lifetime)}
            self.store.save(self.state)
            client.stats.add(token_renewals=1)
            log.info("refreshed the access token (valid %ss); saved the rotated refresh token",
                     body.get("expires_in", "?"))
            return


def _renew_at(state: dict[str, Any]) -> float:
    return state.get("renew_at", state["expires_at"] - 60)  # states saved before renew_at: a minute early


class ApiClient:
    """One API connection: base URL and credentials from Airflow, plus auth, limits and retries.

    Safe to share between threads (one requests.Session per thread).
    """

    def __init__(self, conn_id: str, auth: Auth | None = None):
        self.conn_id = conn_id
        self.auth = auth
        self.stats = CallStats()
        connection = HttpHook.get_connection(conn_id)
        self.login, self.password = connection.login, connection.password
        if self.password:
            mask_secret(self.password)
        self.extras = connection.extra_dejson
        self.timeout = float(self.extras.get("timeout", 30))
        self.max_retries = int(self.extras.get("max_retries", 5))
        self.backoff = float(self.extras.get("backoff", 1))
        self.limiter = RateLimiter(parse_rate_limit(self.extras.get("rate_limit")))
        self._local = threading.local()
        self.base_url = ""
        self.refused: AuthError | None = None  # the login this client was refused: never asked again

    @property
    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            hook = HttpHook(method="GET", http_conn_id=self.conn_id)  # per thread: a hook's adapter is one pool
            session = hook.get_conn()
            self.base_url = hook.base_url.rstrip("/")
            session.auth = None  # HttpHook would send login/password as basic auth on every call
            for key in CLIENT_EXTRAS:
                session.headers.pop(key, None)
            self._local.session = session
        return session

    def url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        self.session  # noqa: B018 -- resolves base_url
        return f"{self.base_url}/{path_or_url.lstrip('/')}"

    def request(self, method: str, path: str, *, authenticated: bool = True, **kwargs: Any) -> requests.Response:
        """Send one call, waiting for the rate limiter; retry what can be retried; raise ApiError otherwise."""
        url = self.url(path)
        extra_headers = kwargs.pop("headers", None) or {}
        failures, throttled_waits, renewed = 0, 0, False
        while True:
            headers = dict(extra_headers)
            if authenticated and self.auth:
                headers.update(self.auth.headers(self))
            slot = self.limiter.acquire()
            self.stats.add(calls=1)
            try:
                response = self.session.request(method, url, headers=headers, timeout=self.timeout, **kwargs)
                problem = None if response.status_code not in RETRYABLE_STATUS else f"HTTP {response.status_code}"
            except TRANSIENT_ERRORS as exc:
                response, problem = None, f"{type(exc).__name__}: {_without_query(str(exc))}"
            finally:
                self.limiter.release(slot)

            if response is not None and response.status_code == 429:
                throttled_waits += 1
                if throttled_waits > MAX_THROTTLED_WAITS:
                    raise ApiError(f"{method} {_path(url)}: still rate limited after {MAX_THROTTLED_WAITS} waits")
                wait = _retry_after(response)
                self.stats.add(throttled=1)
                self.limiter.pause(wait)
                log.warning("429 on %s %s: waiting %.1fs as Retry-After says", method, _path(url), wait)
                continue
            if response is not None and response.status_code == 401 and authenticated and self.auth:
                if renewed:
                    raise AuthError(f"{method} {_path(url)}: 401 even with a fresh token: {_snippet(response)}")
                log.info("401 on %s %s: renewing the token", method, _path(url))
                self.auth.renew(self)
                renewed = True
                continue
            if problem is None:
                if response.status_code >= 400:
                    raise ApiError(f"{method} {_path(url)} answered {response.status_code}: {_snippet(response)}",
                                   status=response.status_code)
                return response
            failures = self._back_off(failures, f"{method} {_path(url)}: {problem}")

    def fetch_json(self, method: str, path: str, **kwargs: Any) -> tuple[Any, requests.Response]:
        """request() and decode the JSON body; a truncated or garbled body is retried like a 5xx.

        Returns (decoded body, response) so callers can also read headers.
        """
        failures = 0
        while True:
            response = self.request(method, path, **kwargs)
            try:
                return response.json(), response
            except ValueError as exc:
                failures = self._back_off(failures, f"{method} {_path(response.url)}: unreadable JSON ({exc})")

    def obtain_token(self, default_path: str, **kwargs: Any) -> Any:
        """An auth flow's unauthenticated token call (to extra `token_path`, else the flow's `default_path`);
        returns the decoded answer.

        A refusal (a 4xx answer) becomes AuthError and is remembered: the client never asks again, so its
        threads waiting for the token fail with it instead of each trying to log in. A server that is down
        (5xx or no answer after every retry) is an ApiError, which Airflow retries.
        """
        if self.refused:
            raise AuthError(f"{self.refused} (not asking again)")
        path = self.extras.get("token_path") or default_path
        try:
            return self.fetch_json("POST", path, authenticated=False, **kwargs)[0]
        except AuthError:
            raise
        except ApiError as exc:
            if exc.status is None:
                raise
            self.refused = AuthError(f"authentication failed: {exc}", status=exc.status)
            raise self.refused from exc

    def _back_off(self, failures: int, problem: str) -> int:
        if failures >= self.max_retries:
            raise ApiError(f"{problem} (gave up after {failures} retries)")
        delay = self.backoff * 2**failures * random.uniform(0.8, 1.2)
        self.stats.add(retries=1)
        log.warning("%s; retry %d/%d in %.1fs", problem, failures + 1, self.max_retries, delay)
        time.sleep(delay)
        return failures + 1


def _retry_after(response: requests.Response) -> float:
    """Seconds to wait after a 429: Retry-After, else RateLimit-Reset (epoch seconds, as Démarches Simplifiées
    sends it, or seconds from now), else 1."""
    try:
        if "Retry-After" in response.headers:
            return max(float(response.headers["Retry-After"]), 0.0)
        reset = float(response.headers.get("RateLimit-Reset", 1))
        return max(reset - time.time() if reset > 1e9 else reset, 0.0)
    except ValueError:
        return 1.0


QUERY = re.compile(r"(/[^\s?'\"]*)\?[^\s'\")]+")  # a path, then its query string


def _without_query(text: str) -> str:
    """Text with every URL's query string cut out: queries can hold personal data (Portail DF's emails)."""
    return QUERY.sub(r"\1?…", text)


class _NoQueryStrings(logging.Filter):
    """urllib3 logs each request line (at DEBUG) and its retries (WARNING) with the query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = _without_query(record.getMessage()), ()
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_NoQueryStrings())


def _path(url: str) -> str:
    """The URL without scheme, host or query: safe to log."""
    return re.sub(r"^https?://[^/]+", "", url).split("?")[0]


def _snippet(response: requests.Response) -> str:
    return response.text[:300].replace("\n", " ")
