"""Which slice of the source a run fetches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk.api.datamodels._generated import DagRunType
from usersync.window import OVERLAP, RECONCILE_EVERY, choose_window

START, END = datetime(2026, 3, 1, 6, tzinfo=UTC), datetime(2026, 3, 1, 12, tzinfo=UTC)
NOW = datetime(2026, 3, 2, 9, 30, 15, tzinfo=UTC)


def window(**overrides):
    args = {
        "full_refresh": False,
        "interval_only": False,
        "run_type": DagRunType.SCHEDULED,
        "interval_start": START,
        "interval_end": END,
        "watermark": datetime(2026, 3, 2, 3, tzinfo=UTC),
        "last_full": NOW - timedelta(hours=7),
        "now": NOW,
    }
    return choose_window(**{**args, **overrides})


def test_scheduled_runs_fetch_since_the_watermark_with_an_overlap():
    chosen = window()
    assert chosen["mode"] == "incremental"
    assert chosen["updated_from"] == (datetime(2026, 3, 2, 3, tzinfo=UTC) - OVERLAP).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert chosen["updated_to"] == "2026-03-02T09:30:16Z"  # a second past now: nothing just written is cut


def test_backfill_runs_fetch_their_data_interval():
    for chosen in (window(run_type=DagRunType.BACKFILL), window(interval_only=True)):
        assert chosen == {
            "mode": "interval",
            "why": chosen["why"],
            "updated_from": "2026-03-01T06:00:00Z",
            "updated_to": "2026-03-01T12:00:00Z",
        }


def test_full_refresh_and_first_runs_fetch_everything():
    assert window(full_refresh=True, run_type=DagRunType.BACKFILL)["mode"] == "full"
    first = window(watermark=None)
    assert first["mode"] == "full" and "updated_from" not in first
    assert window(watermark=None, run_type=DagRunType.MANUAL, now=NOW + timedelta(days=1))["mode"] == "full"


def test_once_a_day_a_run_reads_everything_by_itself():
    assert window(last_full=NOW - RECONCILE_EVERY + timedelta(minutes=1))["mode"] == "incremental"
    due = window(last_full=NOW - RECONCILE_EVERY)
    assert due["mode"] == "full" and due["why"].startswith("reconcile")
    assert window(last_full=None)["mode"] == "full"
    assert window(last_full=None, reconcile_every=None)["mode"] == "incremental"
    # a backfill stays within its interval
    assert window(last_full=None, run_type=DagRunType.BACKFILL)["mode"] == "interval"


def test_the_overlap_is_a_setting():
    chosen = window(overlap=timedelta(minutes=30))
    assert chosen["updated_from"] == "2026-03-02T02:30:00Z"
