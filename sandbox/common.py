"""Pieces every sandbox API reuses: rate limiting, tokens, fault injection, stats, control endpoints, serving.

An API module builds its FastAPI app, creates one ``Sandbox`` (faults + stats + rate limiter) and calls
``install()`` to mount the ``/_sandbox`` control router. Its API handlers then use, per request:

    roll = sandbox.roll()                 # which faults hit this request (deterministic per seed)
    await asyncio.sleep(roll.latency)
    ... authenticate ...
    early, remaining = sandbox.gate(key, roll)   # burst 429, rate limit, injected 5xx
    response = early or handler()
    response = sandbox.finish(response, roll)    # maybe truncate a 200 body
"""

from __future__ import annotations

import argparse
import base64
import bisect
import contextlib
import dataclasses
import json
import math
import random
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

CONTROL_PREFIX = "/_sandbox"
JSON_TYPE = "application/json; charset=utf-8"


def json_response(payload: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Compact UTF-8 JSON, like the Rails/Node servers the sandboxes imitate."""
    try:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # a lone surrogate (hostile records): sent as its JSON escape, like Rails does
        body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(body, status_code=status, headers=headers, media_type=JSON_TYPE)


# --------------------------------------------------------------------------- rate limiting


class RateLimiter:
    """Sliding-window log per key, e.g. ``RateLimiter([(2, 1.0), (1200, 3600.0)])`` = 2/s and 1200/h.

    ``check(key)`` records the request only when it is allowed, so a client hammering a closed
    window does not push its own reopening further away.
    """

    def __init__(self, limits: list[tuple[int, float]], clock: Callable[[], float] = time.monotonic):
        self.limits = [(int(n), float(w)) for n, w in limits]
        if any(n < 1 or w <= 0 for n, w in self.limits):
            raise ValueError(f"limits must be positive (count, seconds) pairs: {limits!r}")
        self._clock = clock
        self._lock = threading.Lock()
        self._logs: dict[Hashable, list[float]] = {}
        self._longest = max((w for _, w in self.limits), default=0.0)

    def check(self, key: Hashable) -> tuple[bool, float, dict[float, int]]:
        """Return (allowed, retry_after_seconds, {window_seconds: remaining}) and record if allowed."""
        with self._lock:
            now = self._clock()
            log = self._trimmed(key, now)
            retry_after = 0.0
            remaining = {}
            for limit, window in self.limits:
                inside = len(log) - bisect.bisect_right(log, now - window)
                if inside >= limit:
                    # A slot frees when the oldest request that keeps us at the limit leaves the window.
                    retry_after = max(retry_after, log[len(log) - limit] + window - now)
                remaining[window] = max(0, limit - inside)
            if retry_after > 0:
                return False, retry_after, remaining
            log.append(now)
            return True, 0.0, {w: r - 1 for w, r in remaining.items()}

    def peek(self, key: Hashable) -> dict[float, int]:
        """Remaining requests per window, without recording anything."""
        with self._lock:
            now = self._clock()
            log = self._trimmed(key, now)
            return {w: max(0, n - (len(log) - bisect.bisect_right(log, now - w))) for n, w in self.limits}

    def reset(self) -> None:
        with self._lock:
            self._logs.clear()

    def _trimmed(self, key: Hashable, now: float) -> list[float]:
        log = self._logs.setdefault(key, [])
        del log[: bisect.bisect_right(log, now - self._longest)]
        return log


# --------------------------------------------------------------------------- OAuth tokens


@dataclass
class Token:
    value: str
    client_id: str
    scope: str
    created_at: float
    expires_at: float


class TokenStore:
    """Opaque bearer tokens with a lifetime, for the APIs that use OAuth2 client credentials."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.time):
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, Token] = {}

    def issue(self, client_id: str, scope: str = "public") -> Token:
        now = self._clock()
        token = Token(secrets.token_hex(32), client_id, scope, now, now + self.ttl)
        with self._lock:
            self._tokens[token.value] = token
        return token

    def lookup(self, value: str | None) -> tuple[Token | None, str]:
        """Return (token, state) with state "valid", "expired" or "invalid" (unknown or missing)."""
        with self._lock:
            token = self._tokens.get(value or "")
        if token is None:
            return None, "invalid"
        if self._clock() >= token.expires_at:
            return token, "expired"
        return token, "valid"

    def expire_all(self) -> int:
        now = self._clock()
        with self._lock:
            for token in self._tokens.values():
                token.expires_at = min(token.expires_at, now)
            return len(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)


# --------------------------------------------------------------------------- faults and stats


@dataclass
class Faults:
    """Fault switches, changeable at runtime (``POST /_sandbox/faults`` or attribute assignment).

    They apply to API endpoints only, never to token or control endpoints.
    """

    error_rate: float = 0.0  # fraction of API requests answered 500/502/503
    burst_429: int = 0  # the next N API requests get 429 whatever the rate limit says
    burst_retry_after: float = 1.0  # Retry-After sent with those burst 429s
    latency: float = 0.0  # seconds added to every API response
    slow_rate: float = 0.0  # fraction of API requests that also hang `slow_seconds` (client timeouts)
    slow_seconds: float = 5.0
    truncate_rate: float = 0.0  # fraction of 200 responses whose body is cut in the middle
    duplicate_rate: float = 0.0  # fraction of list pages that repeat 1-3 records of the previous page
    corrupt_rate: float = 0.0  # fraction of listed records sent with a field of the wrong type or missing
    seed: int = 0  # seed of the fault RNG

    _RATES = ("error_rate", "truncate_rate", "duplicate_rate", "corrupt_rate", "slow_rate")

    def update(self, values: dict[str, object]) -> None:
        """Set fields from a JSON-like dict, validating names, types and ranges (ValueError)."""
        kinds = {f.name: f.type for f in dataclasses.fields(self)}
        unknown = sorted(set(values) - set(kinds))
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(unknown)}")
        parsed = {}
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ValueError(f"{name} must be a number")
            number = float(value)
            if kinds[name] == "int":
                if number != int(number):
                    raise ValueError(f"{name} must be an integer")
                number = int(number)
            if number < 0 or (name in self._RATES and number > 1):
                raise ValueError(f"{name} out of range: {value!r}")
            parsed[name] = number
        for name, value in parsed.items():
            setattr(self, name, value)

    def clear(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, f.default)

    def as_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FaultRoll:
    """What the fault dice decided for one API request."""

    latency: float = 0.0
    error_status: int | None = None
    truncate_at: float | None = None  # fraction of the body to keep
    duplicates: int = 0  # records of the previous page to repeat (list endpoints only)
    corrupt: random.Random | None = None  # draws which listed records to corrupt (None: none)
    corrupt_rate: float = 0.0


class Stats:
    """Thread-safe counters shown by ``GET /_sandbox/state``."""

    COUNTERS = (
        "requests",  # every request except the control endpoints
        "throttled",  # 429 sent, = throttled_limit + throttled_burst
        "throttled_limit",
        "throttled_burst",
        "errors_injected",
        "truncated",
        "duplicated",
        "corrupted",
        "tokens_issued",
        "unauthorized",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            for name in self.COUNTERS:
                setattr(self, name, 0)
            self.paths: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        if name not in self.COUNTERS:
            raise KeyError(name)
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def hit(self, path: str) -> None:
        with self._lock:
            self.requests += 1
            self.paths[path] += 1

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            counts: dict[str, object] = {name: getattr(self, name) for name in self.COUNTERS}
            counts["paths"] = dict(self.paths)
            return counts


# --------------------------------------------------------------------------- per-app state


class Sandbox:
    """Runtime state shared by the handlers of one sandbox API: faults, stats, rate limiter."""

    def __init__(self, name: str, limits: list[tuple[int, float]], faults: Faults | None = None):
        self.name = name
        self.faults = faults if faults is not None else Faults()
        self.stats = Stats()
        self.limiter = RateLimiter(limits)
        self._lock = threading.Lock()
        self._rolls = 0  # API requests seen since the faults were last set: the fault RNG's position

    def set_faults(self, values: dict[str, object]) -> None:
        with self._lock:
            self.faults.update(values)
            self._rolls = 0

    def reset(self) -> None:
        with self._lock:
            self.faults.clear()
            self._rolls = 0
        self.stats.reset()
        self.limiter.reset()

    def roll(self) -> FaultRoll:
        """Draw the faults for the next API request.

        One RNG per (seed, request number), always drawing the same values, so a given request
        sequence sees the same faults whatever the rates are and whatever happened before.
        """
        with self._lock:
            n = self._rolls
            self._rolls += 1
            f = self.faults
            rnd = random.Random(f"{f.seed}:{n}")
            error, status, cut, where, dup, count, slow = (rnd.random() for _ in range(7))
            return FaultRoll(
                latency=f.latency + (f.slow_seconds if slow < f.slow_rate else 0.0),
                error_status=(500, 502, 503)[int(status * 3)] if error < f.error_rate else None,
                truncate_at=0.2 + 0.6 * where if cut < f.truncate_rate else None,
                duplicates=1 + int(count * 3) if dup < f.duplicate_rate else 0,
                corrupt=random.Random(f"{f.seed}:{n}:corrupt") if f.corrupt_rate else None,
                corrupt_rate=f.corrupt_rate,
            )

    def gate(self, key: Hashable, roll: FaultRoll) -> tuple[Response | None, dict[float, int]]:
        """Burst 429, then the rate limit, then injected 5xx errors.

        Returns (response to send instead of the real one or None, remaining requests per window).
        Injected errors come after the limiter, so they still use up a slot, like a real backend failure.
        """
        with self._lock:
            burst = self.faults.burst_429 > 0
            if burst:
                self.faults.burst_429 -= 1
                retry_after = self.faults.burst_retry_after
        if burst:
            self.stats.add("throttled")
            self.stats.add("throttled_burst")
            return too_many_requests(retry_after), self.limiter.peek(key)
        allowed, retry_after, remaining = self.limiter.check(key)
        if not allowed:
            self.stats.add("throttled")
            self.stats.add("throttled_limit")
            return too_many_requests(retry_after), remaining
        if roll.error_status is not None:
            self.stats.add("errors_injected")
            return injected_error(roll.error_status), remaining
        return None, remaining

    def finish(self, response: Response, roll: FaultRoll) -> Response:
        """Cut the body of a 200 response if the dice said so (Content-Length matches the cut body)."""
        if response.status_code != 200 or roll.truncate_at is None:
            return response
        body = bytes(response.body)
        cut = body[: min(len(body) - 1, max(1, int(len(body) * roll.truncate_at)))]
        self.stats.add("truncated")
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        return Response(cut, status_code=200, headers=headers)


def too_many_requests(retry_after: float) -> Response:
    seconds = max(1, math.ceil(retry_after))
    payload = {"error": "Too Many Requests", "message": f"Rate limit exceeded, retry in {seconds} s"}
    return json_response(payload, 429, {"Retry-After": str(seconds)})


def injected_error(status: int) -> Response:
    """A 500 from the application, or a 502/503 HTML page as a reverse proxy would send it."""
    if status == 500:
        return json_response({"status": 500, "error": "Internal Server Error"}, 500)
    reason = {502: "Bad Gateway", 503: "Service Temporarily Unavailable"}[status]
    html = f"<html><head><title>{status} {reason}</title></head><body><h1>{reason}</h1></body></html>\n"
    return Response(html, status_code=status, media_type="text/html")


# --------------------------------------------------------------------------- OAuth requests


async def oauth_params(request: Request) -> dict[str, str]:
    """Token request parameters: query string, then a form or JSON body, then HTTP Basic client auth."""
    params = dict(request.query_params)
    body = await request.body()
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            parsed = json.loads(body or b"{}")
            if isinstance(parsed, dict):
                params.update({k: str(v) for k, v in parsed.items() if v is not None})
        except ValueError:
            pass  # grant_type stays unset: answered invalid_request
    else:
        params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("basic "):
        try:
            uid, _, secret = base64.b64decode(auth[6:].strip()).decode().partition(":")
            params.setdefault("client_id", unquote(uid))
            params.setdefault("client_secret", unquote(secret))
        except ValueError:
            pass
    return params


# --------------------------------------------------------------------------- control endpoints


@dataclass
class Controls:
    """API-specific actions behind the control endpoints."""

    describe: Callable[[], dict[str, object]]  # data size etc., shown in /_sandbox/state
    mutate: Callable[[int], list]  # change k records, return their ids
    reset_data: Callable[[], None] = lambda: None
    expire_tokens: Callable[[], int] = lambda: 0
    extra_state: Callable[[], dict[str, object]] = lambda: {}


def control_router(sandbox: Sandbox, controls: Controls) -> APIRouter:
    router = APIRouter(prefix=CONTROL_PREFIX)

    @router.get("/state")
    def state() -> Response:
        return json_response(
            {
                "api": sandbox.name,
                "stats": sandbox.stats.snapshot(),
                "faults": sandbox.faults.as_dict(),
                "limits": [{"limit": n, "window": w} for n, w in sandbox.limiter.limits],
                "data": controls.describe(),
                **controls.extra_state(),
            }
        )

    @router.post("/faults")
    async def set_faults(request: Request) -> Response:
        try:
            values = json.loads(await request.body() or b"{}")
            if not isinstance(values, dict):
                raise ValueError("body must be a JSON object")
            sandbox.set_faults(values)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            return json_response({"error": str(exc)}, 400)
        return json_response(sandbox.faults.as_dict())

    @router.post("/reset")
    def reset() -> Response:
        sandbox.reset()
        controls.reset_data()
        return json_response({"ok": True})

    @router.post("/mutate")
    async def mutate(request: Request) -> Response:
        try:
            k = json.loads(await request.body() or b"{}").get("k", 1)
            if isinstance(k, bool) or not isinstance(k, int) or k < 0:
                raise ValueError("k must be a non-negative integer")
        except (ValueError, AttributeError) as exc:
            return json_response({"error": str(exc)}, 400)
        return json_response({"ids": controls.mutate(k)})

    @router.post("/expire_tokens")
    def expire_tokens() -> Response:
        return json_response({"expired": controls.expire_tokens()})

    return router


class _CountRequests:
    """ASGI middleware feeding Stats.hit for every request outside the control endpoints."""

    def __init__(self, app, stats: Stats):
        self.app = app
        self.stats = stats

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not scope["path"].startswith(CONTROL_PREFIX):
            self.stats.hit(scope["path"])
        await self.app(scope, receive, send)


def install(app: FastAPI, sandbox: Sandbox, controls: Controls) -> None:
    """Mount the control router and the request counter, and expose the sandbox as app.state.sandbox."""
    app.include_router(control_router(sandbox, controls))
    app.add_middleware(_CountRequests, stats=sandbox.stats)
    app.state.sandbox = sandbox


# --------------------------------------------------------------------------- serving


@contextlib.contextmanager
def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread; yield its base URL, e.g. http://127.0.0.1:8042."""
    # Binding here (not in uvicorn) lets port 0 pick a free port and tells us which one.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"sandbox:{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"sandbox server on {host}:{port} did not start")
            time.sleep(0.01)
        with socket.create_connection((host, port), timeout=5):
            pass  # it accepts connections
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


# --------------------------------------------------------------------------- CLI helpers


def add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("faults (also settable at runtime: POST /_sandbox/faults)")
    group.add_argument("--latency", type=float, default=0.0, help="seconds added to each API response")
    group.add_argument("--slow-rate", type=float, default=0.0, help="fraction of API requests that hang")
    group.add_argument("--slow-seconds", type=float, default=5.0, help="how long those hang")
    group.add_argument("--error-rate", type=float, default=0.0, help="fraction of API requests answered 5xx")
    group.add_argument("--burst-429", type=int, default=0, help="the next N API requests get 429")
    group.add_argument("--burst-retry-after", type=float, default=1.0, help="Retry-After of burst 429s")
    group.add_argument("--truncate-rate", type=float, default=0.0, help="fraction of 200 bodies cut short")
    group.add_argument("--duplicate-rate", type=float, default=0.0, help="fraction of pages repeating records")
    group.add_argument("--corrupt-rate", type=float, default=0.0, help="fraction of listed records malformed")
    group.add_argument("--fault-seed", type=int, default=0, help="seed of the fault RNG")


def faults_from_args(args: argparse.Namespace) -> Faults:
    faults = Faults()
    faults.update(
        {
            "latency": args.latency,
            "slow_rate": args.slow_rate,
            "slow_seconds": args.slow_seconds,
            "error_rate": args.error_rate,
            "burst_429": args.burst_429,
            "burst_retry_after": args.burst_retry_after,
            "truncate_rate": args.truncate_rate,
            "duplicate_rate": args.duplicate_rate,
            "corrupt_rate": args.corrupt_rate,
            "seed": args.fault_seed,
        }
    )
    return faults
