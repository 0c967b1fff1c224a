"""Stage (COPY into <entity>_delta) and upsert (one set-based statement per transaction).

Per entity a sync provides, in include/sql/<sync>/:
  stage_<entity>.sql        <entity>_raw -> <entity>_delta: typed, last record per key wins, bad records
                            to quarantine with their reason; returns received/staged/quarantined/duplicates
  upsert_<entity>.sql       <entity>_delta -> <entity>: inserts new rows, updates rows whose values differ;
                            returns inserted/updated/unchanged
  mark_deleted_<entity>.sql (full refresh only) marks rows the source no longer returns;
                            returns marked/active_before
  watermark_<entity>.sql    (incremental syncs) the newest source timestamp the table now holds
  prune_<child>.sql         (optional, nested entities) removes the children the upserted parents no longer list
  summary_<entity>.sql      (optional) figures about the table after the write, for the report (read in the
                            same transaction, so a dry run shows what the table would hold)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from airflow.sdk import ObjectStoragePath
from psycopg import sql

from usersync.db import TargetDb
from usersync.staging import iter_staged_bytes

log = logging.getLogger(__name__)

# Each staged line is one JSON record; this CSV dialect's quote and delimiter bytes never occur in JSON
# text, so COPY takes every line verbatim as one value.
COPY_RAW = "COPY {} (record) FROM STDIN WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')"
# The landing table of every entity: one API record per row, in staged order. Unlogged: rebuilt every run.
CREATE_RAW = "CREATE UNLOGGED TABLE IF NOT EXISTS {} (seq bigint GENERATED ALWAYS AS IDENTITY, record jsonb NOT NULL)"


class DeletionGuardError(Exception):
    """A full refresh would mark too many rows deleted: most likely a truncated API answer."""


def stage(
    db: TargetDb, entity: str, prefixes: str | ObjectStoragePath | Sequence[str], run_id: str,
    children: Sequence[str] = (), params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """COPY the records staged under one or more prefixes into <entity>_raw, then project them into
    <entity>_delta (and the deltas of `children`, records nested in the entity's), in one transaction.
    `params` go to stage_<entity>.sql with run_id and entity (e.g. a window, a time zone)."""
    if isinstance(prefixes, str | ObjectStoragePath):
        prefixes = [prefixes]
    raw = sql.Identifier(f"{entity}_raw")
    deltas = [sql.Identifier(f"{name}_delta") for name in (entity, *children)]
    with db.transaction() as cur:
        cur.execute(sql.SQL(CREATE_RAW).format(raw))
        cur.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY").format(sql.SQL(", ").join([raw, *deltas])))
        with cur.copy(sql.SQL(COPY_RAW).format(raw)) as copy:
            for chunk in iter_staged_bytes([ObjectStoragePath(str(p)) for p in prefixes]):
                copy.write(chunk)
        counts = db.run(cur, f"stage_{entity}", {**(params or {}), "run_id": run_id, "entity": entity})
    log.info("staged %s: %s", entity, counts)
    return counts


def upsert(
    db: TargetDb,
    entity: str,
    *,
    run_id: str,
    full_refresh: bool = False,
    max_delete_share: float = 0.10,
    dry_run: bool = False,
    children: Sequence[str] = (),
    scope: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Apply <entity>_delta to <entity>, then each child's delta to its table (their figures prefixed with
    the child's name), in one transaction (rolled back on a dry run or any failure).

    `full_refresh`: the delta holds everything the source has (within `scope`, e.g. a date window, passed to
    mark_deleted_<entity>.sql), so the rows it lacks are marked deleted, or removed, per that statement.
    """
    with db.transaction() as cur:
        counts = _upsert_one(db, cur, entity)
        for child in children:
            written = _upsert_one(db, cur, child)
            if db.has_sql(f"prune_{child}"):  # the parents' records list all their children: drop the others
                written.update(db.run(cur, f"prune_{child}"))
            counts.update({f"{child}_{k}": v for k, v in written.items()})
        counts["marked_deleted"] = 0
        if full_refresh:
            marked = db.run(cur, f"mark_deleted_{entity}", {"run_id": run_id, "entity": entity, **(scope or {})})
            share = marked["marked"] / max(marked["active_before"], 1)
            if share > max_delete_share:
                raise DeletionGuardError(
                    f"refusing to mark {marked['marked']} of {marked['active_before']} {entity} as deleted "
                    f"({share:.1%} > the {max_delete_share:.0%} limit): the source answered far fewer records "
                    f"than the table holds. Nothing was written. If this is real, re-run with a higher "
                    f"max_delete_share."
                )
            counts["marked_deleted"] = marked["marked"]
        if db.has_sql(f"watermark_{entity}"):
            counts["watermark"] = db.run(cur, f"watermark_{entity}")["watermark"]
        if db.has_sql(f"summary_{entity}"):
            counts.update(db.run(cur, f"summary_{entity}"))
        if dry_run:
            cur.connection.rollback()
            log.info("dry run: rolled back %s", counts)
    log.info("upserted %s: %s", entity, counts)
    return counts


def _upsert_one(db: TargetDb, cur: Any, entity: str) -> dict[str, Any]:
    """upsert_<entity>.sql when the sync has one, else the generic upsert by id of every <entity>_delta column."""
    if db.has_sql(f"upsert_{entity}"):
        return db.run(cur, f"upsert_{entity}")
    cur.execute("SELECT array_agg(column_name::text ORDER BY ordinal_position) FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = %s AND column_name <> 'ingested_at'",
                (f"{entity}_delta",))
    columns = cur.fetchone()[0]
    if not columns or "id" not in columns:
        raise ValueError(f"{entity}_delta: no such table with an id column in schema {db.schema}")
    cur.execute(generic_upsert(entity, columns))
    return dict(zip([c.name for c in cur.description], cur.fetchone(), strict=True))


def generic_upsert(entity: str, columns: list[str]) -> sql.Composed:
    """Insert new rows and update the rows whose values differ; ingested_at says when a row was last written."""
    table, delta = sql.Identifier(entity), sql.Identifier(f"{entity}_delta")
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    old = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in columns)
    new = sql.SQL(", ").join(sql.SQL("d.{}").format(sql.Identifier(c)) for c in columns)
    assign = sql.SQL(", ").join(sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c)) for c in columns if c != "id")
    return sql.SQL(GENERIC_UPSERT).format(table=table, delta=delta, cols=cols, old=old, new=new, assign=assign)


GENERIC_UPSERT = """
WITH changed AS (
    SELECT d.* FROM {delta} d LEFT JOIN {table} t ON t.id = d.id
    WHERE t.id IS NULL OR ({old}) IS DISTINCT FROM ({new})
),
written AS (
    INSERT INTO {table} AS t ({cols}, ingested_at)
    SELECT {cols}, now() FROM changed
    ON CONFLICT (id) DO UPDATE SET {assign}, ingested_at = excluded.ingested_at
    RETURNING xmax = 0 AS inserted
)
SELECT count(*) FILTER (WHERE inserted) AS inserted,
       count(*) FILTER (WHERE NOT inserted) AS updated,
       (SELECT count(*) FROM {delta}) - count(*) AS unchanged
FROM written
"""
