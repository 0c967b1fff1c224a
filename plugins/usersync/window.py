"""Which slice of the source a run fetches.

- full:        everything (the full_refresh param; no watermark yet; or the daily reconcile: the last full
               read started more than `reconcile_every` ago); rows the source no longer returns are then
               marked deleted, behind the deletion guard. It catches what incremental runs cannot see:
               deletions, records that left the filter, changes dated more than the overlap behind the watermark
- interval:    the run's own data interval (backfill runs, or the interval_only param): backfilling a
               range reproduces what a full refresh would load for it. It stores no watermark: it did not read
               everything since the previous one
- incremental: what changed since the last watermark, minus an overlap, up to now; a missed or failed run
               moves no watermark, so the next run picks its changes up. The watermark is the newest source
               timestamp loaded (the source's clock is what counts), capped at the run's upper bound
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

OVERLAP = timedelta(minutes=5)
RECONCILE_EVERY = timedelta(hours=24)


def choose_window(
    *,
    full_refresh: bool,
    interval_only: bool,
    run_type: str,
    interval_start: datetime | None,
    interval_end: datetime | None,
    watermark: datetime | None,
    last_full: datetime | None = None,
    reconcile_every: timedelta | None = RECONCILE_EVERY,
    overlap: timedelta = OVERLAP,
    now: datetime | None = None,
) -> dict[str, Any]:
    """`last_full`: when the last full read started (None: unknown, then the reconcile waits for one to be
    recorded); `reconcile_every` None: never reconcile by itself."""
    now = now or datetime.now(UTC)
    run_type = getattr(run_type, "value", run_type)  # the task SDK gives an enum
    if full_refresh:
        return {"mode": "full", "why": "full_refresh param"}
    if run_type == "backfill" or interval_only:
        if interval_start is None or interval_end is None:
            raise ValueError("this run has no data interval to fetch")
        return {
            "mode": "interval",
            "why": f"{run_type} run, its data interval",
            "updated_from": _iso(interval_start),
            "updated_to": _iso(interval_end),
        }
    if watermark is None:
        return {"mode": "full", "why": "no watermark yet (no full or incremental run has finished)"}
    if reconcile_every is not None and (last_full is None or now - last_full >= reconcile_every):
        since = f"started {_iso(last_full)}" if last_full else "not recorded"
        return {"mode": "full", "why": f"reconcile: the last full read ({since}) is older than {reconcile_every}"}
    return {
        "mode": "incremental",
        "why": f"changes since the last watermark {_iso(watermark)}",
        "updated_from": _iso(watermark - overlap),
        "updated_to": _iso(now + timedelta(seconds=1)),
    }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
