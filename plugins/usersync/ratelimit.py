"""The client's rate limiter: an API's declared limits ("2/s,1200/h") kept by every thread of one client, by
clients that run at the same time on one account (each keeps to its share) and by clients that take turns
(each starts from the calls its predecessor made within the windows)."""

from __future__ import annotations

import math
import re
import threading
import time

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


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
    a window the server considers full. `pause()` holds everyone back for the wait a 429 announced.
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
