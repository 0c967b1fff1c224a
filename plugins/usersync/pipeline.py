"""The shape every sync DAG shares, so that a DAG file tells its story and leaves the wiring here.

- `dag_args`: the DAG header (schedule and doc from the sync; default args, tags, the common Params, template
  search path from here), for `@dag(**pipeline.dag_args(...))`.
- `preflight`: check_params first, then the API sensor and create_tables side by side; the first task of the
  sync's own story goes after them.
- `load_entities`: for each declared entity, in load order (an entity after those it references), a TaskGroup
  fetch_<entity> -> stage_<entity> -> upsert_<entity>, results passed as return values; an entity is staged
  only once those it references are written (its stage checks the references against their tables). A
  failing entity does not stop the others; its error is left for the report (`error_of`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Param, TaskGroup, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

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


def preflight(db: TargetDb, sensor: Any, **tables: Any) -> list:
    """check_params >> [the API sensor, create_tables (the common tables, then `tables`: the sync's
    `migrations` of tables an earlier version made, its `entities`' and its own `statements`, as
    dag_parts.table_statements says)]; returns the two, for `preflight(...) >> first_task`."""
    create_tables = dag_parts.create_tables(db.conn_id, db.schema, db.sync, books=db.books, **tables)
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
# for_run(entity, fetched): the entity as this run syncs it (e.g. a window's bounds inlined), from the manifest.
ForRun = Callable[[Entity, dict[str, Any]], Entity]
STEPS = ("fetch", "stage", "upsert")


def load_entities(
    db: TargetDb,
    entities: Iterable[Entity] | Mapping[str, Entity],
    fetch: Fetch,
    window: Any,
    sink: Sink | None = None,
    *,
    for_run: ForRun | None = None,
    max_delete_share: float | None = None,
) -> dict[str, dict[str, Any]]:
    """The fetch -> stage -> upsert tasks of every entity; returns {name: {"fetched", "staged", "written"}}
    (the tasks' results, for the report). Tasks are named after the entity, or after its key when `entities`
    is a mapping. `window`: the run's choice (usersync.window.choose_window), which says what to fetch, whether
    the write applies the deletion policy and may move the watermark. Records are staged in `db`; `sink`
    writes them (default: into db's own tables). `max_delete_share`: the deletion guard, when the DAG has no
    such param.

    Entities are independent: one failing does not stop the others, and a task that fails leaves its error
    for the report (error_of). A fetch that skips (nothing to sync this run) skips its stage and write."""
    named = dict(entities) if isinstance(entities, Mapping) else {e.name: e for e in entities}
    name_of = {e.name: name for name, e in named.items()}
    sink = sink or PostgresSink(db)
    results: dict[str, dict[str, Any]] = {}
    for entity in load_order(named.values()):
        name = name_of[entity.name]
        with TaskGroup(group_id=name, prefix_group_id=False):
            fetched = _fetch_task(name, entity, fetch)(window)
            staged = _stage_task(db, name, entity, for_run)(fetched)
            written = _write_task(db, name, entity, sink, for_run, max_delete_share)(window, fetched, staged)
        for needed in _referenced(entity, results, name_of):
            results[needed]["written"] >> staged
        results[name] = {"fetched": fetched, "staged": staged, "written": written}
    return results


def _referenced(entity: Entity, loaded: dict[str, Any], name_of: dict[str, str]) -> set[str]:
    targets = {r.partition(".")[0] for e in (entity, *entity.children) for r in e.references.values()}
    return {name_of[t] for t in targets if name_of.get(t) in loaded and t != entity.name}


def noting_failure(fn):
    """A task that, when it fails, leaves its error in XCom (key `error`) for the report."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AirflowSkipException:
            raise
        except Exception as exc:
            get_current_context()["ti"].xcom_push(key="error", value=f"{type(exc).__name__}: {exc}"[:2000])
            raise

    return run


def error_of(ti: Any, name: str) -> str | None:
    """Why the entity's tasks failed in this run (its first failed task's error), if one did."""
    errors = (ti.xcom_pull(task_ids=f"{step}_{name}", key="error") for step in STEPS)
    return next((e for e in errors if e), None)


def _ran(result: Any, step: str) -> Any:
    if result is None:  # an upstream task skipped: so does this one
        raise AirflowSkipException(f"nothing to {step}: the entity is not synced in this run")
    return result


def _fetch_task(name: str, entity: Entity, fetch: Fetch):
    @task(task_id=f"fetch_{name}")
    @noting_failure
    def fetch_entity(window: dict, params=None, dag_run=None) -> dict:
        return fetch(entity, window, staging.run_prefix(dag_run.dag_id, dag_run.run_id, entity.name), params)

    return fetch_entity


def _stage_task(db: TargetDb, name: str, entity: Entity, for_run: ForRun | None):
    # none_failed: staged once its fetch ran, whatever the entities it references did (skipped or written)
    @task(task_id=f"stage_{name}", trigger_rule="none_failed")
    @noting_failure
    def stage_entity(fetched: dict | None, dag_run=None) -> dict:
        fetched = _ran(fetched, "stage")
        return load.stage(db, for_run(entity, fetched) if for_run else entity, fetched["prefix"], dag_run.run_id)

    return stage_entity


def _write_task(
    db: TargetDb, name: str, entity: Entity, sink: Sink, for_run: ForRun | None, max_delete_share: float | None
):
    @task(
        task_id=f"upsert_{name}",
        trigger_rule="none_failed",
        outlets=[dag_parts.table_asset(db, t) for t in entity.tables],
    )
    @noting_failure
    def upsert_entity(window: dict, fetched: dict | None, staged: dict | None, params=None, dag_run=None) -> dict:
        fetched, _ = _ran(fetched, "write"), _ran(staged, "write")
        run = run_of(window, fetched, params, dag_run.run_id, max_delete_share)
        return sink.write(for_run(entity, fetched) if for_run else entity, run)

    return upsert_entity


def run_of(window: dict, fetched: dict, params: dict, run_id: str, max_delete_share: float | None = None) -> Run:
    """The watermark rules in one place: only a run that read everything since the last watermark (not an
    interval run, not a dry run) may move it, and only up to what it read up to; a full read applies the
    entity's deletion policy to what the source no longer returns."""
    return Run(
        run_id=run_id,
        full_refresh=window["mode"] == "full",
        dry_run=params["dry_run"],
        max_delete_share=params.get("max_delete_share", 0.10 if max_delete_share is None else max_delete_share),
        fetch_started=fetched["fetch_epoch"],
        watermark_upto=window.get("updated_to") or datetime.fromtimestamp(fetched["fetch_epoch"], UTC),
        moves_watermark=window["mode"] != "interval" and not params["dry_run"],
    )
