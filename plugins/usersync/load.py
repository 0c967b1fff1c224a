"""Stage (COPY into <entity>_delta) and upsert (one set-based statement per transaction).

An entity is given as its declaration (usersync.entity.Entity): its statements are generated from it, except
where the sync has its own file for a step (include/sql/<sync>/<step>_<entity>.sql, taking the same figures'
names), because it does something else there (Portail DF's kind mapping in upsert_users.sql):
  stage_<entity>.sql        <entity>_raw -> <entity>_delta; returns received/staged/quarantined/duplicates
  upsert_<entity>.sql       <entity>_delta -> <entity>; returns inserted/updated/unchanged
  mark_deleted_<entity>.sql (full reads) the deletion policy; returns marked and/or removed, active_before
  prune_<child>.sql         the children the upserted parents no longer list; returns marked or removed
  watermark_<entity>.sql    the newest source timestamp the table holds, at most %(upto)s
  summary_<entity>.sql      (optional, never generated) figures about the table after the write, for the report
                            (read in the same transaction, so a dry run shows what the table would hold)

Runs of a sync may overlap (backfills, a manual run during a scheduled one) and share <entity>_raw and
<entity>_delta. So stage and upsert each hold a per-entity lock for their transaction, stage records in the
logged staged_deltas table which run's records the delta holds and how many, and upsert, finding the delta
not its own or not complete (another run staged since; a Postgres crash empties unlogged tables), rebuilds it
from its own staging files in its own transaction before writing.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any

from airflow.sdk import ObjectStoragePath
from psycopg import sql

from usersync.db import TargetDb
from usersync.entity import Entity, delete_sql, stage_sql, upsert_sql, watermark_sql
from usersync.staging import staged_pages

log = logging.getLogger(__name__)

# Each staged line is one JSON record; this CSV dialect's quote and delimiter bytes never occur in JSON
# text, so COPY takes every line verbatim as one value.
COPY_RAW = "COPY {} (record) FROM STDIN WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')"
# The landing table of every entity: one API record per row, in staged order. Unlogged: rebuilt every run.
CREATE_RAW = "CREATE UNLOGGED TABLE IF NOT EXISTS {} (seq bigint GENERATED ALWAYS AS IDENTITY, record jsonb NOT NULL)"
# The lines a pre-filter found suspicious, as text, with their place in <entity>_raw (which holds a JSON null
# there meanwhile), until Postgres says whether they are storable as jsonb: COPY'd as "<seq>\x02<line>".
CREATE_SUSPECT = "CREATE UNLOGGED TABLE IF NOT EXISTS {} (seq bigint NOT NULL, line text NOT NULL)"
COPY_SUSPECT = "COPY {} (seq, line) FROM STDIN WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')"
PLACEHOLDER = b"null"  # JSON, for COPY into jsonb
# What can make a valid JSON line unstorable as jsonb (staged files are ASCII: every non-ASCII character is a
# \u escape): \u0000, a lone surrogate (a high one not followed by a low one, a low one not preceded by a high
# one; an emoji's pair is fine), NaN/Infinity. False alarms ("NaN" in a name) only cost a guarded cast. Searched
# as one regex with a literal prefix plus two substring tests: a regex alternation of the three scans a page
# three times slower.
SUSPECT = re.compile(
    rb"\\u(?:0000|[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])|(?<![dD][89abAB][0-9a-fA-F]{2}\\u)[dD][c-fC-F])"
)
NON_FINITE = (b"NaN", b"Infinity")
# Suspicious lines: the storable ones take their place in <entity>_raw, the others leave it for quarantine with
# Postgres' reason (the line kept as a JSON string, verbatim).
SORT_SUSPECTS = """
WITH judged AS MATERIALIZED (SELECT seq, line, json_refusal(line) AS reason FROM {suspect}),
refused AS (
    INSERT INTO {quarantine} (run_id, entity, reason, record)
    SELECT %(run_id)s, %(entity)s, reason, to_jsonb(line) FROM judged WHERE reason IS NOT NULL
    RETURNING 1
),
dropped AS (DELETE FROM {raw} r USING judged j WHERE r.seq = j.seq AND j.reason IS NOT NULL RETURNING 1),
parsed AS (
    UPDATE {raw} r SET record = j.line::jsonb FROM judged j WHERE r.seq = j.seq AND j.reason IS NULL RETURNING 1
)
SELECT (SELECT count(*) FROM refused) AS refused
"""
# One lock per schema and entity, held by a stage or upsert transaction.
LOCK = "SELECT pg_advisory_xact_lock(hashtext('usersync:' || current_schema() || '.' || %s))"
RETENTION = "3 days"  # staged_deltas rows of older runs are dropped (their staging files are gone by then)


class DeletionGuardError(Exception):
    """A full refresh would mark too many rows deleted: most likely a truncated API answer."""


class DeltaNotStagedError(Exception):
    """upsert without a stage of the same run and entity."""


def stage(
    db: TargetDb,
    entity: Entity,
    prefixes: str | ObjectStoragePath | Sequence[str],
    run_id: str,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """COPY the records staged under one or more prefixes into <entity>_raw, then project them into
    <entity>_delta (and the deltas of its children, records nested in the entity's), in one transaction. The
    tables, staged_deltas and the functions stage statements use are made beforehand (dag_parts.create_tables).
    `params` go to a sync's own stage_<entity>.sql, with run_id and entity."""
    if isinstance(prefixes, str | ObjectStoragePath):
        prefixes = [prefixes]
    prefixes = [str(p) for p in prefixes]
    name, children = entity.name, [c.name for c in entity.children]
    with db.transaction() as cur:
        cur.execute(LOCK, (name,))
        counts = _stage(db, cur, entity, prefixes, run_id, params or {})
        cur.execute(
            "DELETE FROM staged_deltas WHERE (entity = %(entity)s AND run_id = %(run_id)s) "
            f"OR staged_at < now() - interval '{RETENTION}'",
            {"entity": name, "run_id": run_id},
        )
        cur.execute(
            "INSERT INTO staged_deltas (entity, run_id, prefixes, children, params, row_counts) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (
                name,
                run_id,
                prefixes,
                list(children),
                json.dumps(params or {}),
                json.dumps(_delta_rows(cur, name, children)),
            ),
        )
    log.info("staged %s: %s", name, counts)
    return counts


def _step(
    db: TargetDb, cur: Any, step: str, entity: Entity, params: dict[str, Any] | None, generate: Any
) -> dict[str, Any]:
    """One step's statement: the sync's <step>_<entity>.sql when it has one, else the one `generate()` builds
    from the declaration. Its first row, as a dict."""
    name = f"{step}_{entity.name}"
    if db.has_sql(name):
        return db.run(cur, name, params)
    cur.execute(generate())
    return dict(zip([c.name for c in cur.description], cur.fetchone(), strict=True))


def _stage(
    db: TargetDb,
    cur: Any,
    entity: Entity,
    prefixes: Sequence[str],
    run_id: str,
    stage_params: dict[str, Any],
) -> dict[str, Any]:
    """Empty the entity's raw and delta tables and fill them with this run's staged records."""
    entity_name, children = entity.name, [c.name for c in entity.children]
    raw, suspect = sql.Identifier(f"{entity_name}_raw"), sql.Identifier(f"{entity_name}_suspect")
    deltas = [sql.Identifier(f"{name}_delta") for name in (entity_name, *children)]
    params = {"run_id": run_id, "entity": entity_name}
    quarantine = sql.Identifier(*_quarantine(db))
    retried = sql.SQL("DELETE FROM {} WHERE run_id = %(run_id)s AND entity = %(entity)s").format(quarantine)
    cur.execute(retried, params)  # a retry's earlier quarantine
    cur.execute(sql.SQL(CREATE_RAW).format(raw))
    cur.execute(sql.SQL(CREATE_SUSPECT).format(suspect))
    cur.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY").format(sql.SQL(", ").join([raw, suspect, *deltas])))
    suspects: list[bytes] = []
    with cur.copy(sql.SQL(COPY_RAW).format(raw)) as copy:
        for chunk in _staged_lines([ObjectStoragePath(p) for p in prefixes], suspects):
            copy.write(chunk)
    refused = 0
    if suspects:
        with cur.copy(sql.SQL(COPY_SUSPECT).format(suspect)) as copy:
            copy.write(b"".join(suspects))
        refused = _sort_suspects(cur, raw, suspect, quarantine, params)
    generate = lambda: stage_sql(entity, run_id, quarantine=_quarantine(db))  # noqa: E731
    counts = _step(db, cur, "stage", entity, {**stage_params, **params}, generate)
    for key in ("received", "quarantined"):  # the refused lines never reached the stage statement
        if key in counts:
            counts[key] += refused
    return counts


def _quarantine(db: TargetDb) -> tuple[str, str]:
    """The sync's quarantine table: in its books' schema (usersync.db.TargetDb.books)."""
    return db.books, "quarantine"


def _sort_suspects(
    cur: Any, raw: sql.Identifier, suspect: sql.Identifier, quarantine: sql.Identifier, params: dict[str, Any]
) -> int:
    cur.execute(sql.SQL(SORT_SUSPECTS).format(raw=raw, suspect=suspect, quarantine=quarantine), params)
    return cur.fetchone()[0]


def _staged_lines(prefixes: Sequence[ObjectStoragePath], suspects: list[bytes]) -> Iterator[bytes]:
    """Every staged line, prefix after prefix, page after page (one page in memory at a time), as COPY reads them;
    a suspicious line is replaced by a JSON null and set aside in `suspects` as "<its seq>\\x02<line>"."""
    seq = 0  # <entity>_raw numbers its rows from 1 in this order
    for prefix in prefixes:
        for page in staged_pages(prefix):
            data = page.read_bytes()
            if data and not data.endswith(b"\n"):
                data += b"\n"
            if not _suspicious(data):
                seq += data.count(b"\n")
                yield data
                continue
            lines = data.split(b"\n")[:-1]
            for i, line in enumerate(lines, seq + 1):
                if _suspicious(line):
                    suspects.append(b"%d\x02%b\n" % (i, line))
                    lines[i - seq - 1] = PLACEHOLDER
            seq += len(lines)
            yield b"\n".join(lines) + b"\n"


def _suspicious(data: bytes) -> bool:
    return SUSPECT.search(data) is not None or any(word in data for word in NON_FINITE)


def _delta_rows(cur: Any, entity: str, children: Sequence[str]) -> dict[str, int]:
    names = [f"{name}_delta" for name in (entity, *children)]
    cur.execute(
        sql.SQL("SELECT {}").format(
            sql.SQL(", ").join(sql.SQL("(SELECT count(*) FROM {})").format(sql.Identifier(n)) for n in names)
        )
    )
    return dict(zip(names, cur.fetchone(), strict=True))


def _own_delta(db: TargetDb, cur: Any, declared: Entity, run_id: str) -> dict[str, Any] | None:
    """Make sure <entity>_delta holds what this run's stage produced; rebuild it if not. Returns the rebuilt
    delta's stage counts (None when it was intact). Under the entity's lock."""
    entity = declared.name
    cur.execute(
        "SELECT run_id, prefixes, children, params, row_counts FROM staged_deltas WHERE entity = %s "
        "ORDER BY (run_id = %s) DESC, id DESC",
        (entity, run_id),
    )
    rows = cur.fetchall()
    if not rows or rows[0][0] != run_id:
        raise DeltaNotStagedError(f"{entity}: run {run_id} staged nothing to write (stage before upsert)")
    _, prefixes, children, stage_params, row_counts = rows[0]
    cur.execute("SELECT run_id FROM staged_deltas WHERE entity = %s ORDER BY id DESC LIMIT 1", (entity,))
    holder = cur.fetchone()[0]
    if holder == run_id and _delta_rows(cur, entity, children) == row_counts:
        return None
    why = f"run {holder} staged since" if holder != run_id else "its rows were lost (a database restart?)"
    log.warning("%s_delta no longer holds what this run staged (%s): staging it again", entity, why)
    counts = _stage(db, cur, declared, prefixes, run_id, stage_params)
    if _delta_rows(cur, entity, children) != row_counts:
        raise RuntimeError(
            f"{entity}: staging run {run_id} again gave other row counts than its stage "
            f"({row_counts}): its staging files changed?"
        )
    cur.execute(
        "UPDATE staged_deltas SET id = DEFAULT, staged_at = clock_timestamp() WHERE entity = %s AND run_id = %s",
        (entity, run_id),
    )
    return counts


def upsert(
    db: TargetDb,
    entity: Entity,
    *,
    run_id: str,
    full_refresh: bool = False,
    max_delete_share: float = 0.10,
    dry_run: bool = False,
    fetch_started: float | None = None,
    moves_watermark: bool = True,
    watermark_upto: Any = None,
) -> dict[str, Any]:
    """Apply <entity>_delta to <entity>, then each child's delta to its table (their figures prefixed with
    the child's name), in one transaction (rolled back on a dry run or any failure). The delta is first
    checked to be this run's own, complete (rebuilt from this run's staging files if not).

    `full_refresh`: the delta holds everything the source has (within the entity's own `window`, when it has
    one), so the rows it lacks get the entity's deletion policy: marked deleted (`marked_deleted`) or removed
    (`removed`);
    `fetch_started` (epoch seconds): rows written since, by another run, are left alone.
    `moves_watermark`: report the watermark (only runs that read everything since the last one may);
    `watermark_upto`: the run's upper bound, above which a source timestamp is not trusted as a watermark.
    """
    name = entity.name
    delete = functools.partial(delete_sql, quarantine=_quarantine(db))  # never a record this run quarantined
    with db.transaction() as cur:
        cur.execute(LOCK, (name,))
        restaged = _own_delta(db, cur, entity, run_id)
        counts = _upsert_one(db, cur, entity)
        for child in entity.children:
            written = _upsert_one(db, cur, child)
            # The parents' records list all their children: the others go, by the child's deletion policy.
            if child.deletion != "none":
                gone = _step(db, cur, "prune", child, None, lambda c=child: delete(c, run_id, parent=entity))
                counted = "removed" if child.deletion == "remove" else "marked"
                written[counted] = gone[counted]
            counts.update({f"{child.name}_{k}": v for k, v in written.items()})
        counts["marked_deleted"] = counts["removed"] = 0
        if full_refresh and entity.deletion != "none":
            params = {"run_id": run_id, "entity": name, "fetch_started": fetch_started}
            gone = _step(
                db,
                cur,
                "mark_deleted",
                entity,
                params,
                lambda: delete(entity, run_id, fetch_started=fetch_started),
            )
            gone_count = gone.get("marked", 0) + gone.get("removed", 0)
            share = gone_count / max(gone["active_before"], 1)
            if share > max_delete_share:
                raise DeletionGuardError(
                    f"refusing to mark {gone_count} of {gone['active_before']} {name} as deleted "
                    f"({share:.1%} > the {max_delete_share:.0%} limit): the source answered far fewer records "
                    f"than the table holds. Nothing was written. If this is real, re-run with a higher "
                    f"max_delete_share."
                )
            counts["marked_deleted"], counts["removed"] = gone.get("marked", 0), gone.get("removed", 0)
        if moves_watermark and (entity.cursor or db.has_sql(f"watermark_{name}")):
            counts.update(
                _step(
                    db,
                    cur,
                    "watermark",
                    entity,
                    {"upto": watermark_upto},
                    lambda: watermark_sql(entity, watermark_upto),
                )
            )
        if restaged is not None:
            counts["restaged"] = restaged.get("staged", True)
        if db.has_sql(f"summary_{name}"):
            counts.update(db.run(cur, f"summary_{name}"))
        if dry_run:
            cur.connection.rollback()
            log.info("dry run: rolled back %s", counts)
    log.info("upserted %s: %s", name, counts)
    return counts


def _upsert_one(db: TargetDb, cur: Any, entity: Entity) -> dict[str, Any]:
    return _step(db, cur, "upsert", entity, None, lambda: upsert_sql(entity))
