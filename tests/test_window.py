"""Which slice of the source a run fetches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk.api.datamodels._generated import DagRunType
from usersync.window import OVERLAP, choose_window

START, END = datetime(2026, 3, 1, 6, tzinfo=UTC), datetime(2026, 3, 1, 12, tzinfo=UTC)
NOW = datetime(2026, 3, 2, 9, 30, 15, tzinfo=UTC)


def window(**overrides):
    args = {"full_refresh": False, "interval_only": False, "run_type": DagRunType.SCHEDULED,
            "interval_start": START, "interval_end": END, "watermark": datetime(2026, 3, 2, 3, tzinfo=UTC),
            "now": NOW}
    return choose_window(**{**args, **overrides})


def test_scheduled_runs_fetch_since_the_watermark_with_an_overlap():
    chosen = window()
    assert chosen["mode"] == "incremental"
    assert chosen["updated_from"] == (datetime(2026, 3, 2, 3, tzinfo=UTC) - OVERLAP).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert chosen["updated_to"] == "2026-03-02T09:30:16Z"  # a second past now: nothing just written is cut


def test_backfill_runs_fetch_their_data_interval():
    for chosen in (window(run_type=DagRunType.BACKFILL), window(interval_only=True)):
        assert chosen == {"mode": "interval", "why": chosen["why"],
                          "updated_from": "2026-03-01T06:00:00Z", "updated_to": "2026-03-01T12:00:00Z"}


def test_full_refresh_and_first_runs_fetch_everything():
    assert window(full_refresh=True, run_type=DagRunType.BACKFILL)["mode"] == "full"
    first = window(watermark=None)
    assert first["mode"] == "full" and "updated_from" not in first
    assert window(watermark=None, run_type=DagRunType.MANUAL, now=NOW + timedelta(days=1))["mode"] == "full"
