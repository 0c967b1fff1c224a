"""pipeline: the tasks a sync's declarations become, their order, and the write's watermark rules."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from usersync import pipeline
from usersync.db import TargetDb
from usersync.entity import Column, Entity

db = TargetDb("test_db", "test", sync="test")
CLIENTS = Entity("clients", key="id", columns=[Column("id", required=True)])
PIANOS = Entity(
    "pianos", key="id", columns=[Column("id", required=True), Column("client_id")], references={"client_id": "clients"}
)


def fetch_nothing(entity, window, prefix, params):
    raise AssertionError("not run here")


@pytest.fixture
def dag(airflow_db):
    from airflow.sdk import DAG, task

    with DAG(
        "pipeline_test",
        schedule=None,
        **{
            k: v
            for k, v in pipeline.dag_args(
                "pipeline_test", db=db, description="test", schedule=None, doc="test", full_refresh="all"
            ).items()
            if k not in ("dag_id", "schedule")
        },
    ) as built:

        @task
        def window() -> dict:
            return {"mode": "full"}

        chosen = window()
        pipeline.preflight(db, task(task_id="sensor")(lambda: None)(), entities=[PIANOS, CLIENTS]) >> chosen
        built.results = pipeline.load_entities(db, [PIANOS, CLIENTS], fetch_nothing, chosen)
    return built


def test_each_entity_becomes_fetch_stage_upsert_and_a_referenced_one_is_written_before_the_other_stages(dag):
    tasks = {t.task_id: t for t in dag.tasks}
    for name in ("clients", "pianos"):
        assert tasks[f"stage_{name}"].upstream_task_ids >= {f"fetch_{name}"}
        assert tasks[f"upsert_{name}"].upstream_task_ids >= {f"stage_{name}", "window"}
        assert [a.uri for a in tasks[f"upsert_{name}"].outlets] == [f"usersync://test_db/test/{name}"]
    assert "upsert_clients" in tasks["stage_pianos"].upstream_task_ids
    assert "upsert_pianos" not in tasks["stage_clients"].upstream_task_ids
    assert list(dag.results) == ["clients", "pianos"]  # load order, whatever the given order
    assert {t.task_id for t in dag.roots} == {"check_params"}


def test_the_header_declares_the_common_params_and_the_sync_tags(dag):
    assert set(dag.params) == {"full_refresh", "dry_run"}
    assert dag.tags >= {"usersync", "test"} and dag.max_active_runs == 1 and dag.doc_md == "test"
    statements = dag.get_task("create_tables").sql
    assert any('CREATE TABLE IF NOT EXISTS "pianos"' in s for s in statements)
    assert "common/create_staged_deltas.sql" in statements


FETCHED = {"fetch_epoch": datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp()}


@pytest.mark.parametrize(
    ("mode", "dry_run", "full", "moves"),
    [
        ("full", False, True, True),
        ("incremental", False, False, True),
        ("interval", False, False, False),
        ("full", True, True, False),
    ],
)
def test_only_a_run_that_read_everything_since_the_last_watermark_moves_it(mode, dry_run, full, moves):
    run = pipeline.run_of({"mode": mode}, FETCHED, {"dry_run": dry_run}, "r")
    assert (run.full_refresh, run.moves_watermark, run.dry_run) == (full, moves, dry_run)
    assert run.watermark_upto == datetime(2026, 3, 1, 12, tzinfo=UTC)  # what it read up to
    window = {"mode": "incremental", "updated_to": "2026-03-01T11:00:00Z"}
    assert pipeline.run_of(window, FETCHED, {"dry_run": False}, "r").watermark_upto == "2026-03-01T11:00:00Z"
