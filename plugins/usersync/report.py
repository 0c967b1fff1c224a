"""The run report: logged as a table, returned to XCom, appended to the sync's sync_runs table."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from usersync.db import TargetDb

log = logging.getLogger(__name__)

# The figures every report shows first, in this order; anything else a sync adds follows.
HEADLINE = ("window", "since", "processed", "chunks", "fetched", "pages", "staged", "inserted", "updated", "unchanged",
            "marked_deleted", "not_found", "failed", "quarantined", "duplicates", "api_calls", "requests_per_s",
            "throttled", "retries", "duration_s")
LISTED = 10  # a list in the logged table shows its first items; XCom and sync_runs keep all of them


def build_report(*, dag_id: str, run_id: str, mode: str, dry_run: bool, started_at: datetime | None,
                 **figures: Any) -> dict[str, Any]:
    finished = datetime.now(UTC)
    report = {"dag_id": dag_id, "run_id": run_id, "mode": mode, "dry_run": dry_run,
              "started_at": started_at.isoformat() if started_at else None, "finished_at": finished.isoformat()}
    if started_at and "duration_s" not in figures:
        figures["duration_s"] = round((finished - started_at).total_seconds(), 1)
    report.update(figures)
    return report


def format_report(report: dict[str, Any]) -> str:
    title = f"{report['dag_id']}  {report['run_id']}  mode={report['mode']}"
    if report.get("dry_run"):
        title += "  DRY RUN: nothing written"
    keys = [k for k in HEADLINE if k in report]
    keys += [k for k in report if k not in keys and k not in ("dag_id", "run_id", "mode", "dry_run")]
    keys.sort(key=lambda k: isinstance(report[k], dict | list))  # nested figures after the flat ones
    width = max(len(k) for k in keys)
    lines = [title, "-" * len(title)]
    for key in keys:
        value = report[key]
        if isinstance(value, dict):
            lines.append(f"{key.ljust(width)}  ({len(value)})")
            inner = max((len(str(k)) for k in value), default=0)
            lines += [f"{'':{width}}    {str(k).ljust(inner)}  {_shown(value[k])}" for k in _ordered(value)]
        elif isinstance(value, list):
            lines.append(f"{key.ljust(width)}  ({len(value)})")
            lines += [f"{'':{width}}    {_shown(item)}" for item in value[:LISTED]]
            if len(value) > LISTED:
                lines.append(f"{'':{width}}    ... and {len(value) - LISTED:,} more (all of them in sync_runs)")
        else:
            lines.append(f"{key.ljust(width)}  {_shown(value)}")
    return "\n".join(lines)


def _ordered(figures: dict[str, Any]) -> list[str]:
    """Headline figures first, then the rest; counts of categories (kinds, transitions) largest first."""
    if figures and not any(k in HEADLINE for k in figures) and all(isinstance(v, int) for v in figures.values()):
        return sorted(figures, key=lambda k: (-figures[k], k))
    return [k for k in HEADLINE if k in figures] + sorted(k for k in figures if k not in HEADLINE)


def _shown(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, dict):
        return "  ".join(f"{k}: {v}" for k, v in value.items())
    return str(value)


def record_run(db: TargetDb, report: dict[str, Any]) -> None:
    db.query("record_run", {
        "dag_id": report["dag_id"], "run_id": report["run_id"], "mode": report["mode"],
        "dry_run": report["dry_run"], "started_at": report["started_at"], "watermark": report.get("watermark"),
        "report": json.dumps(report, default=str),
    })


def publish(db: TargetDb, report: dict[str, Any]) -> dict[str, Any]:
    """Log the report as a table and append it to sync_runs; returns it for XCom."""
    log.info("run report\n%s", format_report(report))
    record_run(db, report)
    return report
