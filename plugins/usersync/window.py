"""Which slice of the source a run fetches.

- full:        everything (the full_refresh param, or no earlier run to start from); rows the source no
               longer returns are then marked deleted, behind the deletion guard
- interval:    the run's own data interval (backfill runs, or the interval_only param): backfilling a
               range reproduces what a full refresh would load for it
- incremental: what changed since the last successful run's watermark, minus an overlap, up to now; a
               missed or failed run moves no watermark, so the next run picks its changes up. The
               watermark is the newest source timestamp loaded, so the source's clock is what counts
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

OVERLAP = timedelta(minutes=5)


def choose_window(
    *,
    full_refresh: bool,
    interval_only: bool,
    run_type: str,
    interval_start: datetime | None,
    interval_end: datetime | None,
    watermark: datetime | None,
    now: datetime | None = None,
) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    run_type = getattr(run_type, "value", run_type)  # the task SDK gives an enum
    if full_refresh:
        return {"mode": "full", "why": "full_refresh param"}
    if run_type == "backfill" or interval_only:
        if interval_start is None or interval_end is None:
            raise ValueError("this run has no data interval to fetch")
        return {"mode": "interval", "why": f"{run_type} run, its data interval",
                "updated_from": _iso(interval_start), "updated_to": _iso(interval_end)}
    if watermark is None:
        return {"mode": "full", "why": "no earlier successful run"}
    return {"mode": "incremental", "why": f"changes since the last watermark {_iso(watermark)}",
            "updated_from": _iso(watermark - OVERLAP), "updated_to": _iso(now + timedelta(seconds=1))}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
