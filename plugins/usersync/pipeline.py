"""The shape every sync DAG shares, so that a DAG file tells its story and leaves the wiring here.

- `dag_args`: the DAG header (schedule and doc from the sync; default args, tags, the common Params, template
  search path from here), for `@dag(**pipeline.dag_args(...))`.
- `preflight`: check_params first, then the API sensor and create_tables side by side; the first task of the
  sync's own story goes after them.
- `load_entities`: for each declared entity, in load order (an entity after those it references), a TaskGroup
  fetch_<entity> -> stage_<entity> -> upsert_<entity>, results passed as return values; an entity is staged
  only once those it references are written (its stage checks the references against their tables).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Param, TaskGroup, task

from usersync import dag_parts, load, staging
from usersync.db import SQL_DIR, TargetDb
from usersync.entity import Entity, load_order
from usersync.sink import Bookkeeping, PostgresSink, Run, Sink
from usersync.window import OVERLAP, RECONCILE_EVERY, choose_window

START = datetime(2026, 1, 1, tzinfo=UTC)
DRY_RUN = "Fetch and stage, report what would change, write nothing."


def dag_args(
    dag_id: str,
    *,
    db: TargetDb,
    description: str,
    schedule: Any,
    doc: str,
    tags: Sequence[str] = (),
    params: dict[str, Param] | None = None,
    dry_run: str = DRY_RUN,
    full_refresh: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The keyword arguments of @dag: one run at a time, no catchup, `dry_run` (and `full_refresh` when the sync
    reads incrementally: pass its description) besides the sync's own `params`."""
    common = {"dry_run": Param(False, type="boolean", description=dry_run)}
    if full_refresh is not None:
        common = {"full_refresh": Param(False, type="boolean", description=full_refresh), **common}
    return {
        "dag_id": dag_id,
        "description": description,
        "schedule": schedule,
        "start_date": START,
        "catchup": False,
        "max_active_runs": 1,
        "default_args": dag_parts.default_args(db),
        "tags": ["usersync", db.sync, *tags],
        "params": {**common, **(params or {})},
        "template_searchpath": [str(SQL_DIR)],
        "user_defined_macros": {"schema": db.schema},
        "doc_md": doc,
        **overrides,
    }


def preflight(db: TargetDb, sensor: Any, *, entities: Sequence[Entity] = (), statements: Sequence[str] = ()) -> list:
    """check_params >> [the API sensor, create_tables (the common tables, the entities', then the sync's own
    include/sql/<sync>/<statement>.sql)]; returns the two, for `preflight(...) >> first_task`."""
    create_tables = dag_parts.create_tables(db.conn_id, db.schema, db.sync, statements, entities, db.books)
    dag_parts.check_params() >> [sensor, create_tables]
    return [sensor, create_tables]


def choose_what_to_fetch(books: Bookkeeping | TargetDb):
    """A task choosing the run's window (usersync.window) from the DAG's last watermark in its sync_runs
    (`books`: a usersync.sink.Bookkeeping, or the sync's db, for its `books` schema) and the Params
    full_refresh, interval_only, overlap_minutes, reconcile_every_hours (those the DAG declares)."""

    @task(task_id="choose_what_to_fetch")
    def choose(params=None, dag_run=None, data_interval_start=None, data_interval_end=None) -> dict:
        last = Bookkeeping.of(books).last_watermark(dag_run.dag_id)
        overlap = params.get("overlap_minutes", OVERLAP.total_seconds() / 60)
        reconcile = params.get("reconcile_every_hours", RECONCILE_EVERY.total_seconds() / 3600)
        return choose_window(
            full_refresh=params.get("full_refresh", False),
            interval_only=params.get("interval_only", False),
            run_type=dag_run.run_type,
            interval_start=data_interval_start,
            interval_end=data_interval_end,
            watermark=last["watermark"],
            last_full=last["last_full"],
            reconcile_every=timedelta(hours=reconcile) or None,
            overlap=timedelta(minutes=overlap),
        )

    return choose()


# fetch(entity, window, prefix, params) stages the entity's records under prefix; returns the manifest
# (staging.fetch_to_staging's: prefix, records, pages, fetch_epoch, api_calls...).
Fetch = Callable[[Entity, dict[str, Any], Any, dict[str, Any]], dict[str, Any]]


def load_entities(
    db: TargetDb, entities: Iterable[Entity], fetch: Fetch, window: Any, sink: Sink | None = None
) -> dict[str, dict[str, Any]]:
    """The fetch -> stage -> upsert tasks of every entity; returns {entity: {"fetched", "staged", "written"}}
    (the tasks' results, for the report). `window`: the run's choice (usersync.window.choose_window), which
    says what to fetch, whether the write applies the deletion policy and may move the watermark. Records are
    staged in `db`; `sink` writes them (default: into db's own tables)."""
    sink = sink or PostgresSink(db)
    results: dict[str, dict[str, Any]] = {}
    for entity in load_order(entities):
        with TaskGroup(group_id=entity.name, prefix_group_id=False):
            fetched = _fetch_task(entity, fetch)(window)
            staged = _stage_task(db, entity)(fetched)
            written = _write_task(db, entity, sink)(window, fetched, staged)
        for needed in _referenced(entity, results):
            results[needed]["written"] >> staged
        results[entity.name] = {"fetched": fetched, "staged": staged, "written": written}
    return results


def _referenced(entity: Entity, loaded: dict[str, Any]) -> set[str]:
    targets = {r.partition(".")[0] for e in (entity, *entity.children) for r in e.references.values()}
    return {name for name in targets if name in loaded and name != entity.name}


def _fetch_task(entity: Entity, fetch: Fetch):
    @task(task_id=f"fetch_{entity.name}")
    def fetch_entity(window: dict, params=None, dag_run=None) -> dict:
        return fetch(entity, window, staging.run_prefix(dag_run.dag_id, dag_run.run_id, entity.name), params)

    return fetch_entity


def _stage_task(db: TargetDb, entity: Entity):
    @task(task_id=f"stage_{entity.name}")
    def stage_entity(fetched: dict, dag_run=None) -> dict:
        return load.stage(db, entity, fetched["prefix"], dag_run.run_id)

    return stage_entity


def _write_task(db: TargetDb, entity: Entity, sink: Sink):
    @task(task_id=f"upsert_{entity.name}", outlets=[dag_parts.table_asset(db, t) for t in entity.tables])
    def upsert_entity(window: dict, fetched: dict, staged: dict, params=None, dag_run=None) -> dict:
        return sink.write(entity, run_of(window, fetched, params, dag_run.run_id))

    return upsert_entity


def run_of(window: dict, fetched: dict, params: dict, run_id: str) -> Run:
    """The watermark rules in one place: only a run that read everything since the last watermark (not an
    interval run, not a dry run) may move it, and only up to what it read up to; a full read applies the
    entity's deletion policy to what the source no longer returns."""
    return Run(
        run_id=run_id,
        full_refresh=window["mode"] == "full",
        dry_run=params["dry_run"],
        max_delete_share=params.get("max_delete_share", 0.10),
        fetch_started=fetched["fetch_epoch"],
        watermark_upto=window.get("updated_to") or datetime.fromtimestamp(fetched["fetch_epoch"], UTC),
        moves_watermark=window["mode"] != "interval" and not params["dry_run"],
    )
