"""Démarches Simplifiées -> Grist: configurations, the Postgres mirror, and what goes to Grist.

Configurations live in dags/ds_to_grist.yaml (one DAG each). Per run, dossiers are flattened (usersync.ds) into
the four tables' rows and loaded into a mirror in Postgres, schema `ds_<name>`, whose tables are generated from
the démarche's descriptors (usersync.entity). The mirror's set-based upsert finds what changed; each changed or
removed row gets an entry in `grist_pending` in the same transaction. The Grist write then sends the pending
rows and clears their entries only once Grist accepted them: a write that fails midway leaves them pending, and
the next run sends them again (add-or-update is idempotent). The mirror never claims a row Grist lacks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml
from psycopg import sql

from usersync import ds, entity, grist

log = logging.getLogger(__name__)

CONFIG_FILE = Path(__file__).resolve().parents[2] / "dags" / "ds_to_grist.yaml"
DB_CONN = "ds_to_grist_db"
OFFSET_MINUTES = 15  # between configurations writing to the same document
# mirror table -> (Grist table, key columns)
TABLES = {
    "dossiers": ("Dossiers", ("number",)),
    "champs": ("Champs", ("number",)),
    "annotations": ("Annotations", ("number",)),
    "repetable_rows": ("Repetable_rows", ("row_id",)),
    "instructeurs": ("Instructeurs", ("groupe_number", "instructeur_id")),
}
DOSSIER_TABLES = ("dossiers", "champs", "annotations", "repetable_rows")
PG_TYPES = {"Int": "bigint", "Numeric": "numeric", "Bool": "boolean", "Date": "bigint", "ChoiceList": "jsonb"}


# ---------------------------------------------------------------------------------------------- configurations


@dataclass(frozen=True)
class Config:
    name: str
    demarche: int
    document: str  # Grist document id
    ds_conn: str = "ds_api"
    grist_conn: str = "grist_api"
    time: str = "00:00"  # Europe/Paris, before the offset
    enabled: bool = True
    deposited_from: date | None = None  # filters: deposit date range [from, to]
    deposited_to: date | None = None
    states: tuple[str, ...] = ()
    groupes: tuple[int, ...] = ()  # instructor group numbers
    offset_minutes: int = 0  # computed

    @property
    def dag_id(self) -> str:
        return f"ds_to_grist__{self.name}"

    @property
    def schema(self) -> str:
        return f"ds_{self.name}"

    @property
    def cron(self) -> str:
        hours, minutes = map(int, self.time.split(":"))
        total = (hours * 60 + minutes + self.offset_minutes) % (24 * 60)
        return f"{total % 60} {total // 60} * * *"

    def selects(self, dossier: dict[str, Any]) -> bool:
        """Whether a dossier (as DS lists it) passes the filters: deposit date range, states, groups."""
        day = date.fromisoformat(dossier["dateDepot"][:10])
        group = (dossier.get("groupeInstructeur") or {}).get("number")
        return (
            (self.deposited_from is None or day >= self.deposited_from)
            and (self.deposited_to is None or day <= self.deposited_to)
            and (not self.states or dossier["state"] in self.states)
            and (not self.groupes or group in self.groupes)
        )


def configurations(text: str) -> list[Config]:
    """The enabled configurations of the file's text, each with its offset: +15 min per earlier enabled
    configuration on the same document (so two syncs never write one document at once)."""
    entries = (yaml.safe_load(text) or {}).get("configurations") or []
    configs, seen, problems = [], {}, []
    for entry in entries:
        entry = dict(entry)
        filters = entry.pop("filters", None) or {}
        for key in ("states", "groupes"):
            if key in filters:
                filters[key] = tuple(filters[key])
        try:
            config = Config(**entry, **filters)
        except TypeError as exc:
            problems.append(f"{entry.get('name')!r}: {exc}")
            continue
        bad = [s for s in config.states if s not in ds.STATES]
        if bad or not config.name.isidentifier() or not config.name.islower():
            problems.append(f"{config.name!r}: name must be a lower-case identifier, states among {ds.STATES}")
        if any(c.name == config.name for c in configs):
            problems.append(f"{config.name!r} is listed twice")
        if config.enabled:
            configs.append(config)
    if problems:
        raise ValueError(f"ds_to_grist configurations: {'; '.join(problems)}")
    result = []
    for config in configs:
        earlier = seen.get(config.document, 0)
        seen[config.document] = earlier + 1
        result.append(Config(**{**config.__dict__, "offset_minutes": earlier * OFFSET_MINUTES}))
    return result


# ---------------------------------------------------------------------------------------------- columns


def grist_tables(schema: ds.Schema) -> dict[str, list[grist.Column]]:
    """The Grist tables' declared columns."""
    tables = {**schema.tables, "instructeurs": list(ds.INSTRUCTEUR_COLUMNS)}
    return {
        TABLES[name][0]: [grist.Column(c.id, c.type, c.label, c.choices) for c in columns]
        for name, columns in tables.items()
    }


def entities(schema: ds.Schema) -> dict[str, entity.Entity]:
    """The mirror's tables, one per Grist table, typed from the Grist column types."""
    tables = {**schema.tables, "instructeurs": list(ds.INSTRUCTEUR_COLUMNS)}
    result = {}
    for name, columns in tables.items():
        key = TABLES[name][1]
        declared = [
            entity.Column(
                c.id,
                "bigint" if c.type.startswith("DateTime") else PG_TYPES.get(c.type, "text"),
                required=c.id in key,
            )
            for c in dict((c.id, c) for c in columns).values()
        ]
        result[name] = entity.Entity(name, key, declared)
    return result


# ---------------------------------------------------------------------------------------------- mirror

BOOKKEEPING = (
    "CREATE TABLE IF NOT EXISTS grist_pending (tbl text NOT NULL, key jsonb NOT NULL, op text NOT NULL, "
    "queued_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (tbl, key))"
)
LOCK = "SELECT pg_advisory_xact_lock(hashtext('usersync:ds_to_grist:' || current_schema()))"


def _key_json(columns: Sequence[str], prefix: str = "") -> sql.Composed:
    return sql.SQL("jsonb_build_object({})").format(
        sql.SQL(", ").join(
            sql.SQL("{}, {}{}").format(sql.Literal(c), sql.SQL(prefix), sql.Identifier(c)) for c in columns
        )
    )


def _queue(cur: Any, name: str, where: sql.Composable, op: str) -> None:
    cur.execute(
        sql.SQL(
            "INSERT INTO grist_pending (tbl, key, op) SELECT {tbl}, {key}, {op} FROM {table} WHERE {where} "
            "ON CONFLICT (tbl, key) DO UPDATE SET op = excluded.op, queued_at = now()"
        ).format(
            tbl=sql.Literal(name),
            key=_key_json(TABLES[name][1]),
            op=sql.Literal(op),
            table=sql.Identifier(name),
            where=where,
        )
    )


def prepare(cur: Any, schema: str, mirror: dict[str, entity.Entity]) -> list[str]:
    """Create or extend the mirror's tables (a new field adds a column) and empty its scratch tables."""
    cur.execute(BOOKKEEPING)
    added = []
    for name, e in mirror.items():
        for statement in entity.create_sql(e)[:1]:
            cur.execute(statement)
        cur.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (f"{schema}.{name}",),
        )
        present = {row[0] for row in cur.fetchall()}
        for column in e.columns:
            if column.name not in present:
                cur.execute(
                    sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                        sql.Identifier(name), sql.Identifier(column.name), sql.SQL(column.type)
                    )
                )
                added.append(f"{name}.{column.name}")
        cur.execute(
            sql.SQL("DROP TABLE IF EXISTS {}, {}").format(*(sql.Identifier(f"{name}{s}") for s in ("_delta", "_raw")))
        )
        for statement in entity.create_sql(e)[1:3]:
            cur.execute(statement)
    return added


def copy_rows(cur: Any, table: str, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with cur.copy(sql.SQL("COPY {} (record) FROM STDIN").format(sql.Identifier(f"{table}_raw"))) as copy:
        for row in rows:
            copy.write_row((json.dumps(row, ensure_ascii=False, default=str),))
            n += 1
    return n


def load(
    cur: Any,
    mirror: dict[str, entity.Entity],
    run_id: str,
    *,
    deleted: Sequence[int],
    rewrite: set[str],
    refused: Sequence[tuple[dict, str]] = (),
    deselected: Sequence[int] = (),
    listed: Sequence[int] | None = None,
) -> dict[str, Any]:
    """<table>_raw (filled) -> the mirror and grist_pending: stage, quarantine (a dossier refused in one table
    is held back from all), upsert, rows of changed dossiers' repeatable blocks that went away, dossiers that
    left (`deleted` in DS; `deselected`: listed, but no longer passing the filters; after a full read, every
    dossier not `listed`), instructeurs that went away. Every row of the `rewrite` tables is queued, changed or
    not. Returns the counts per table."""
    cur.execute(LOCK)
    cur.execute("DELETE FROM quarantine WHERE run_id = %s AND entity = ANY(%s)", (run_id, list(mirror)))
    if refused:  # dossiers flatten could not read
        cur.executemany(
            "INSERT INTO quarantine (run_id, entity, reason, record) VALUES (%s, 'dossiers', %s, %s)",
            [(run_id, reason, json.dumps(dossier, default=str)) for dossier, reason in refused],
        )
    counts: dict[str, Any] = {}
    for name, e in mirror.items():
        cur.execute(entity.stage_sql(e, run_id))
        counts[name] = dict(zip([c.name for c in cur.description], cur.fetchone(), strict=True))
    cur.execute(
        "SELECT DISTINCT (record->>'number')::bigint FROM quarantine WHERE run_id = %s AND entity = ANY(%s) "
        "AND record->>'number' ~ '^[0-9]{1,18}$'",
        (run_id, list(DOSSIER_TABLES)),
    )
    refused = [row[0] for row in cur.fetchall()]
    if refused:
        for name in DOSSIER_TABLES:
            cur.execute(
                sql.SQL("DELETE FROM {} WHERE number = ANY(%s)").format(sql.Identifier(f"{name}_delta")), (refused,)
            )
    for name, e in mirror.items():
        cur.execute(entity.upsert_sql(e))
        counts[name].update(zip([c.name for c in cur.description], cur.fetchone(), strict=True))
        _queue(cur, name, sql.SQL("true" if name in rewrite else "ingested_at = now()"), "write")
    # A changed dossier lists all its repeatable rows: the others went away.
    cur.execute(
        "WITH gone AS (DELETE FROM repetable_rows t WHERE number IN (SELECT number FROM dossiers_delta) "
        "AND NOT EXISTS (SELECT 1 FROM repetable_rows_delta d WHERE d.row_id = t.row_id) RETURNING row_id) "
        "INSERT INTO grist_pending (tbl, key, op) SELECT 'repetable_rows', jsonb_build_object('row_id', row_id), "
        "'remove' FROM gone ON CONFLICT (tbl, key) DO UPDATE SET op = 'remove'"
    )
    counts["repetable_rows"]["removed"] = cur.rowcount
    # Instructeurs are read whole every run.
    cur.execute(
        "WITH gone AS (DELETE FROM instructeurs t WHERE NOT EXISTS (SELECT 1 FROM instructeurs_delta d "
        "WHERE d.groupe_number = t.groupe_number AND d.instructeur_id = t.instructeur_id) "
        "RETURNING groupe_number, instructeur_id) INSERT INTO grist_pending (tbl, key, op) SELECT 'instructeurs', "
        "jsonb_build_object('groupe_number', groupe_number, 'instructeur_id', instructeur_id), 'remove' FROM gone "
        "ON CONFLICT (tbl, key) DO UPDATE SET op = 'remove'"
    )
    counts["instructeurs"]["removed"] = cur.rowcount
    counts["dossiers_deleted"] = _remove_dossiers(
        cur, counts, "number = ANY(%(deleted)s::bigint[])", {"deleted": list(deleted)}
    )
    where = "number = ANY(%(deselected)s::bigint[])"
    if listed is not None:  # a hashed NOT IN: the mirror against the whole listing
        where += " OR number NOT IN (SELECT unnest(%(listed)s::bigint[]))"
    counts["dossiers_deselected"] = _remove_dossiers(
        cur, counts, where, {"deselected": list(deselected), "listed": list(listed or ())}
    )
    counts["quarantined_dossiers"] = len(refused)
    cur.execute("SELECT tbl, op, count(*) FROM grist_pending GROUP BY 1, 2 ORDER BY 1, 2")
    counts["pending"] = {f"{tbl}.{op}": n for tbl, op, n in cur.fetchall()}
    return counts


def _remove_dossiers(cur: Any, counts: dict[str, Any], where: str, params: dict[str, Any]) -> int:
    """Remove the dossiers matching `where` from the four mirror tables, queueing their Grist removal; returns
    how many dossiers."""
    removed = 0
    for name in DOSSIER_TABLES:
        cur.execute(
            sql.SQL(
                "WITH gone AS (DELETE FROM {} WHERE {} RETURNING {}) INSERT INTO grist_pending (tbl, key, op) "
                "SELECT {}, {}, 'remove' FROM gone ON CONFLICT (tbl, key) DO UPDATE SET op = 'remove'"
            ).format(
                sql.Identifier(name),
                sql.SQL(where),
                sql.SQL(", ").join(map(sql.Identifier, TABLES[name][1])),
                sql.Literal(name),
                _key_json(TABLES[name][1]),
            ),
            params,
        )
        counts[name]["removed"] = counts[name].get("removed", 0) + cur.rowcount
        removed += cur.rowcount if name == "dossiers" else 0
    return removed


# ---------------------------------------------------------------------------------------------- to Grist


@dataclass
class Written:
    tables: dict[str, dict[str, int]] = field(default_factory=dict)  # Grist table -> rows_written/added/...
    too_large: int = 0


def write_pending(cur: Any, client: grist.GristClient, run_id: str, settings: str) -> Written:
    """Send every pending row to Grist, table by table, clearing each table's entries once Grist accepted them
    (commit after each table: what Grist holds is never pending again). Removals: the rows' Grist ids by key."""
    written = Written()
    for name, (table, key) in TABLES.items():
        figures = written.tables.setdefault(table, {"written": 0, "added": 0, "updated": 0, "removed": 0})
        cur.execute(
            sql.SQL(
                "SELECT to_jsonb(t) - 'ingested_at' FROM {} t JOIN grist_pending p ON p.tbl = {} AND p.op = 'write' "
                "AND p.key = {} ORDER BY {}"
            ).format(
                sql.Identifier(name),
                sql.Literal(name),
                _key_json(key, "t."),
                sql.SQL(", ").join(map(sql.Identifier, key)),
            )
        )
        rows = [row[0] for row in cur.fetchall()]
        if rows:
            result = client.add_or_update(table, rows, key)
            figures["written"] += result.rows
            figures["added"] += result.added or 0
            figures["updated"] += result.updated or 0
            for record in result.too_large:  # held back: quarantined, and out of the mirror so a later run retries
                row = {**record["require"], **record["fields"]}
                cur.execute(
                    "INSERT INTO quarantine (run_id, entity, reason, record) VALUES (%s, %s, %s, %s)",
                    (run_id, name, "row over Grist's 1 MB request limit", json.dumps(row, default=str)),
                )
                cur.execute(
                    sql.SQL("DELETE FROM {} WHERE {} = %s").format(sql.Identifier(name), sql.Identifier(key[0])),
                    (row[key[0]],),
                )
                written.too_large += 1
            cur.execute("DELETE FROM grist_pending WHERE tbl = %s AND op = 'write'", (name,))
            cur.connection.commit()
            cur.execute(settings)  # the settings are local to a transaction
        cur.execute("SELECT key FROM grist_pending WHERE tbl = %s AND op = 'remove'", (name,))
        keys = [row[0] for row in cur.fetchall()]
        if keys:
            figures["removed"] += client.delete(table, keys)
            cur.execute("DELETE FROM grist_pending WHERE tbl = %s AND op = 'remove'", (name,))
            cur.connection.commit()
            cur.execute(settings)  # the settings are local to a transaction
    return written


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
