"""The run report: logged as a table, returned to XCom, recorded in the sync's sync_runs table (one row per
run, failed runs too), and the failure notification."""

from __future__ import annotations

import html
import importlib
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from usersync import staging
from usersync.db import TargetDb
from usersync.sink import Bookkeeping

log = logging.getLogger(__name__)

# The figures every report shows first, in this order; anything else a sync adds follows.
HEADLINE = (
    "window",
    "since",
    "processed",
    "chunks",
    "fetched",
    "pages",
    "staged",
    "inserted",
    "updated",
    "unchanged",
    "marked_deleted",
    "not_found",
    "failed",
    "quarantined",
    "duplicates",
    "api_calls",
    "requests_per_s",
    "throttled",
    "retries",
    "duration_s",
)
LISTED = 10  # a list in the logged table shows its first items; XCom and sync_runs keep all of them


def build_report(
    *, dag_id: str, run_id: str, mode: str, dry_run: bool, started_at: datetime | None, **figures: Any
) -> dict[str, Any]:
    finished = datetime.now(UTC)
    report = {
        "dag_id": dag_id,
        "run_id": run_id,
        "mode": mode,
        "dry_run": dry_run,
        "started_at": started_at.isoformat() if started_at else None,
        "finished_at": finished.isoformat(),
    }
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
    Bookkeeping.of(db).query(
        "record_run",
        {
            "dag_id": report["dag_id"],
            "run_id": report["run_id"],
            "mode": report["mode"],
            "dry_run": report["dry_run"],
            "started_at": report["started_at"],
            "watermark": report.get("watermark"),
            "report": json.dumps(report, default=str),
        },
    )


def close_run(db: TargetDb, dag_run: Any, *, mode: str, dry_run: bool, **figures: Any) -> dict[str, Any]:
    """How every run ends: its report built (build_report), its staging files removed, the report published."""
    report = build_report(
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        mode=mode,
        dry_run=dry_run,
        started_at=dag_run.start_date,
        **figures,
    )
    staging.clean_up(dag_run.dag_id, dag_run.run_id)
    return publish(db, report)


def publish(db: TargetDb, report: dict[str, Any]) -> dict[str, Any]:
    """Log the report as a table and record it in sync_runs (the run's row becomes 'success'); returns it."""
    log.info("run report\n%s", format_report(report))
    record_run(db, report)
    return report


NOTIFY_CONN = "usersync_notify"
EMAIL = re.compile(r"[^\s@<>()\[\]\"',;:]+@[^\s@<>()\[\]\"',;:]+\.[A-Za-z]{2,}")
ERROR_CHARS = 2000


def error_text(error: BaseException | str | None) -> str:
    """What a failure record and notification say about an error: its type and message, with every secret Airflow
    masks and every email address taken out, cut to a readable length."""
    from airflow.sdk._shared.secrets_masker import redact

    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error or "unknown")
    text = EMAIL.sub("<email>", str(redact(text)))
    return text if len(text) <= ERROR_CHARS else text[:ERROR_CHARS] + " ..."


class RunFailed:
    """A task's on_failure_callback (called in the task's process once its last try failed): records the
    failure in the run's sync_runs row, then sends the notification of the `usersync_notify` connection, if
    there is one. Neither step may hide the task's own error: their failures are only logged."""

    def __init__(self, db: TargetDb):
        self.db = db

    def __call__(self, context: dict[str, Any]) -> None:
        ti, dag_run = context["ti"], context["dag_run"]
        error = {
            "task": ti.task_id,
            "map_index": ti.map_index,
            "try": ti.try_number,
            "error": error_text(context.get("exception")),
            "at": datetime.now(UTC).isoformat(),
        }
        try:
            Bookkeeping.of(self.db).query(
                "record_failure",
                {
                    "dag_id": dag_run.dag_id,
                    "run_id": dag_run.run_id,
                    "error": json.dumps(error),
                    "dry_run": bool((context.get("params") or {}).get("dry_run", False)),
                    "started_at": dag_run.start_date,
                },
            )
        except Exception:
            log.exception("could not record the failure of %s in sync_runs", ti.task_id)
        try:
            notify_failure(context, error)
        except Exception:
            log.exception("could not send the failure notification of %s", ti.task_id)


def notifier(conn_id: str = NOTIFY_CONN, **message: str):
    """The notifier the `conn_id` connection configures, or None when there is no such connection.

    smtp connection: Airflow's SmtpNotifier, to the extra's `to` (the connection holds server, login, from_email).
    Any other type: the notifier class named by the extra's `notifier` (e.g.
    `airflow.providers.slack.notifications.slack.SlackNotifier`), built with the extra's `notifier_args`.
    """
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None
    extra = conn.extra_dejson
    if conn.conn_type == "smtp" and "notifier" not in extra:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        return SmtpNotifier(
            to=extra["to"], smtp_conn_id=conn_id, subject=message["subject"], html_content=message["html_content"]
        )
    module, _, name = extra["notifier"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**extra.get("notifier_args", {}))


def notify_failure(context: dict[str, Any], error: dict[str, Any]) -> None:
    """Send the configured notification about a failed run. The message is the error as recorded; templated
    notifier_args can also use `{{ usersync_failure }}` (task and error on one line)."""
    dag_run = context["dag_run"]
    summary = f"{dag_run.dag_id} run {dag_run.run_id} failed in task {error['task']}: {error['error']}"
    send = notifier(
        subject=_verbatim(f"usersync: {dag_run.dag_id} failed in {error['task']}"),
        html_content=_verbatim(f"<pre>{html.escape(summary)}</pre>"),
    )
    if send is None:
        return
    context["usersync_failure"] = summary
    send(context)
    log.info("failure notification sent through %s", NOTIFY_CONN)


def _verbatim(text: str) -> str:
    """A notifier renders its fields as Jinja templates: the error is text, never a template."""
    return "{% raw %}" + text + "{% endraw %}"
