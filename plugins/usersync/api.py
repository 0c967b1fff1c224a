"""HTTP client: one API account's base URL and credentials, its auth flow (usersync.auth), its rate limit
(usersync.ratelimit), retries and timeouts.

``ApiClient(conn_id)`` takes them from an Airflow connection: base URL, login/password and these extras:
  rate_limit   "2/s,1200/h": the API's declared limits; the client stays under all of them
  timeout      seconds per request (default 30)
  max_retries  retries on 5xx, timeouts, connection errors, answers cut short, unreadable bodies (default 5)
  backoff      first retry delay in seconds, doubled each retry (default 1)
  token_path   where an auth flow gets its token (default per flow)
  api_version, refresh_token: read by the API modules that need them
Everything else in extras is left to HttpHook, which turns it into request headers.
``ApiClient.from_url(base_url, ...)`` takes the same settings as arguments, for credentials kept elsewhere
(InfraZen's per-user provider accounts).

Clients of one account share its rate limit: the threads of one client always; clients running at the same
time (parallel fetches, concurrent mapped tasks) with ``shared_by=n``; clients taking turns (sequential mapped
chunks, retries) with ``hand_over=<state file>``, used as ``with client: ...``.
"""

from __future__ import annotations

import copy
import email.utils
import http.client
import logging
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import requests
import urllib3
from airflow.providers.http.hooks.http import HttpHook
from airflow.sdk.exceptions import AirflowFailException
from airflow.sdk.log import mask_secret

from usersync.ratelimit import RateLimiter, parse_rate_limit

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from usersync.auth import Auth

log = logging.getLogger(__name__)

CLIENT_EXTRAS = ("rate_limit", "timeout", "max_retries", "backoff", "token_path", "api_version", "refresh_token")
# HttpSensor sends every connection extra as a header; these request headers (None = drop) keep ours out.
SENSOR_HEADERS: dict[str, str | None] = dict.fromkeys(CLIENT_EXTRAS)
RETRYABLE_STATUS = {500, 502, 503, 504}
# No answer, or an answer cut short (the connection dropped mid-body, a bad chunk or gzip stream): try again.
TRANSIENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    urllib3.exceptions.ProtocolError,
    http.client.IncompleteRead,
)
MAX_THROTTLED_WAITS = 50
EPOCH_NOT_DELAY = 1e9  # a RateLimit-Reset above this is an instant (2001 on), not seconds to wait
DEFAULT_TIMEOUT, DEFAULT_MAX_RETRIES, DEFAULT_BACKOFF = 30.0, 5, 1.0


class ApiError(Exception):
    """The API answered in a way retries cannot fix (4xx, or 5xx after every retry)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status of a 4xx answer; None when retries gave up


class AuthError(ApiError, AirflowFailException):
    """The credentials were refused: every further call would fail the same way, so the task fails at once,
    without Airflow retries (a server that locks accounts after failed logins must not see them)."""


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
        return {
            "api_calls": self.calls,
            "throttled": self.throttled,
            "retries": self.retries,
            "token_renewals": self.token_renewals,
        }


class ApiClient:
    """One API account: base URL and credentials, plus auth, limits and retries.

    Safe to share between threads (one requests.Session per thread).
    """

    def __init__(self, conn_id: str, auth: Auth | None = None, *, shared_by: int = 1,
                 hand_over: ObjectStoragePath | None = None):  # fmt: skip
        """From the Airflow connection `conn_id`. `shared_by`: clients on this account at the same time (each
        keeps to its share of the limit); `hand_over`: a state file for clients that take turns (see __exit__)."""
        connection = HttpHook.get_connection(conn_id)
        extras = connection.extra_dejson
        self._configure(
            conn_id, auth, login=connection.login, password=connection.password, extras=extras,
            rate_limit=extras.get("rate_limit"), timeout=extras.get("timeout", DEFAULT_TIMEOUT),
            max_retries=extras.get("max_retries", DEFAULT_MAX_RETRIES), backoff=extras.get("backoff", DEFAULT_BACKOFF),
            shared_by=shared_by, hand_over=hand_over,
        )  # fmt: skip
        self.from_connection, self.base_url = True, ""  # the connection's, once a session is made (HttpHook's)

    @classmethod
    def from_url(cls, base_url: str | None = None, auth: Auth | None = None, *, name: str = "api",
                 login: str | None = None, password: str | None = None, extras: dict[str, Any] | None = None,
                 rate_limit: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 max_retries: int = DEFAULT_MAX_RETRIES, backoff: float = DEFAULT_BACKOFF, shared_by: int = 1,
                 hand_over: ObjectStoragePath | None = None) -> ApiClient:  # fmt: skip
        """A client whose credentials do not come from an Airflow connection. `base_url` None: every call
        gives an absolute URL (an account spread over several hosts). `name` stands for the connection id in
        messages; `extras` are what an auth flow reads (token_path, refresh_token...)."""
        client = cls.__new__(cls)
        client._configure(name, auth, login=login, password=password, extras=extras or {}, rate_limit=rate_limit,
                          timeout=timeout, max_retries=max_retries, backoff=backoff, shared_by=shared_by,
                          hand_over=hand_over)  # fmt: skip
        client.from_connection, client.base_url = False, base_url.rstrip("/") if base_url else None
        return client

    def _configure(self, conn_id: str, auth: Auth | None, *, login: str | None, password: str | None,
                   extras: dict[str, Any], rate_limit: str | None, timeout: float, max_retries: int,
                   backoff: float, shared_by: int, hand_over: ObjectStoragePath | None) -> None:  # fmt: skip
        self.conn_id, self.auth = conn_id, auth
        self.login, self.password, self.extras = login, password, extras
        if password:
            mask_secret(password)
        self.timeout, self.max_retries, self.backoff = float(timeout), int(max_retries), float(backoff)
        self.limiter = RateLimiter(parse_rate_limit(rate_limit))
        self.limiter.divide(shared_by)
        self.hand_over = hand_over
        if hand_over is not None:
            from usersync import staging  # staging imports this module

            self.limiter.continue_from(staging.read_json(hand_over) or [])
        self.stats = CallStats()
        self._local = threading.local()
        self.refused: AuthError | None = None  # the login this client was refused: never asked again

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Leave the calls still counting in the API's windows to the next client taking its turn (the next
        chunk, or this one's retry), even after a failure: they were made."""
        if self.hand_over is not None:
            from usersync import staging

            staging.write_json(self.hand_over, self.limiter.history())

    def with_auth(self, auth: Auth | None) -> ApiClient:
        """A client on the same account under another auth scheme (Selectel: X-Token and Keystone): the same
        URL and settings, the same limiter and counters."""
        twin = copy.copy(self)
        twin.auth, twin.refused, twin._local = auth, None, threading.local()
        return twin

    @property
    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._new_session()
        return session

    def _new_session(self) -> requests.Session:
        if not self.from_connection:
            return requests.Session()
        hook = HttpHook(method="GET", http_conn_id=self.conn_id)  # per thread: a hook's adapter is one pool
        session = hook.get_conn()
        self.base_url = hook.base_url.rstrip("/")
        session.auth = None  # HttpHook would send login/password as basic auth on every call
        for key in CLIENT_EXTRAS:
            session.headers.pop(key, None)
        return session

    def url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        if self.from_connection:
            self.session  # noqa: B018 -- resolves base_url
        elif self.base_url is None:
            raise ValueError(f"{self.conn_id}: a client without a base URL needs absolute URLs, not {path_or_url!r}")
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
                answer = _snippet(response) if problem else ""  # the API's own error: said when giving up
            except TRANSIENT_ERRORS as exc:
                response, problem, answer = None, f"{type(exc).__name__}: {_without_query(str(exc))}", ""
            finally:
                self.limiter.release(slot)

            if response is not None and response.status_code == 429:
                throttled_waits += 1
                if throttled_waits > MAX_THROTTLED_WAITS:
                    raise ApiError(f"{method} {_path(url)}: still rate limited after {MAX_THROTTLED_WAITS} waits")
                wait = _retry_after(response)
                self.stats.add(throttled=1)
                self.limiter.pause(wait)
                log.warning("429 on %s %s: waiting %.1fs as the API says", method, _path(url), wait)
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
                    raise ApiError(
                        f"{method} {_path(url)} answered {response.status_code}: {_snippet(response)}",
                        status=response.status_code,
                    )
                return response
            failures = self._back_off(failures, f"{method} {_path(url)}: {problem}", answer)

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

    def get_json(self, path: str, **kwargs: Any) -> Any:
        """GET and decode the JSON body."""
        return self.fetch_json("GET", path, **kwargs)[0]

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

    def _back_off(self, failures: int, problem: str, answer: str = "") -> int:
        """Sleep before the next try, or raise when every retry is used up (with the last `answer`'s body)."""
        if failures >= self.max_retries:
            last = f"; last answer: {answer}" if answer else ""
            raise ApiError(f"{problem} (gave up after {failures} retries){last}")
        delay = self.backoff * 2**failures * random.uniform(0.8, 1.2)
        self.stats.add(retries=1)
        log.warning("%s; retry %d/%d in %.1fs", problem, failures + 1, self.max_retries, delay)
        time.sleep(delay)
        return failures + 1


def _retry_after(response: requests.Response) -> float:
    """Seconds to wait after a 429: Retry-After (seconds, or an HTTP date), else RateLimit-Reset (seconds from
    now, or epoch seconds as Démarches Simplifiées sends it), else 1."""
    retry_after, reset = response.headers.get("Retry-After"), response.headers.get("RateLimit-Reset")
    try:
        if retry_after is not None:
            if re.fullmatch(r"\s*[\d.]+\s*", retry_after):
                return float(retry_after)
            return max(email.utils.parsedate_to_datetime(retry_after).timestamp() - time.time(), 0.0)
        if reset is not None:
            seconds = float(reset)
            return max(seconds - time.time() if seconds > EPOCH_NOT_DELAY else seconds, 0.0)
    except (TypeError, ValueError):  # unreadable: a second
        pass
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
