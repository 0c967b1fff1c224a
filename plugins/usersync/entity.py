"""Entities as data: one declaration drives a table, its staging, its load order and its write.

An `Entity` says where each typed column sits in a source record, its key, the entities it references, the
records nested in it (children), its cursor and what becomes of rows the source no longer returns. Every
statement is generated here with psycopg.sql: names and values are quoted, so a declaration may come from
data (the DS -> Grist sync builds its columns from a démarche's schema). Run-time values (run id, window
bounds) are inlined as literals: the statements take no parameters.

Staging contract (that of include/sql/intra42/stage_users.sql): `<table>_raw(seq, record jsonb)` ->
`<table>_delta`; each record gets the reason of the first rule it breaks (not an object, a required value
missing, a wrong JSON type, a value that cannot be cast, a reference to nothing), refused records go to
`quarantine(run_id, entity, reason, record)`, the others are typed, and the last one per key wins. The
checks guarantee that no cast fails afterwards, in plain SQL (no exception handler per row).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg import sql

# Dates and times: the regex bounds every field; which days a month has is checked apart (_DAY_EXISTS), as a
# regex spelling it out (or a lookahead for year 0000) costs twice as much.
_DATE = r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
_TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,9})?)?"
_ZONE = r"(?:Z|[+-](?:0[0-9]|1[0-5])(?::?[0-5][0-9])?)"  # Postgres takes offsets up to ±15:59

_DAY_EXISTS = (  # for a text the regex matched: year 0000, or a day its month lacks (Feb 29 in leap years only)
    "left({t}, 4) = '0000' OR substr({t}, 9, 2) > '28' AND ("
    "substr({t}, 6, 5) IN ('02-30', '02-31', '04-31', '06-31', '09-31', '11-31') "
    "OR substr({t}, 6, 5) = '02-29' AND NOT ({y} % 4 = 0 AND ({y} % 100 <> 0 OR {y} % 400 = 0)))"
)
# A JSON number's text is jsonb's numeric output: [-]digits[.digits], never an exponent; so digits and no '.'
# (as many as always fit) make a castable integer, without a regex.
_DIGITS = {"bigint": 18, "integer": 9}

# type -> (JSON type a value must have, what the reason says it is not, regex its text must match)
TYPES: dict[str, tuple[str | None, str, str | None]] = {
    "bigint": ("number", "an integer", None),
    "integer": ("number", "an integer", None),
    "numeric": ("number", "a number", None),
    "double precision": ("number", "a number", None),
    "boolean": ("boolean", "a boolean", None),
    "text": ("string", "a string", None),
    "date": ("string", "an ISO 8601 date", f"^{_DATE}$"),
    "timestamptz": ("string", "an ISO 8601 timestamp", f"^{_DATE}[T ]{_TIME}{_ZONE}$"),
    "time": ("string", "an ISO 8601 time of day", f"^{_TIME}$"),
    "jsonb": (None, "a JSON value", None),
    "text[]": ("array", "a list of strings", None),
}
DELETIONS = ("none", "mark", "remove")
# Names the generated statements use for themselves (and the table's own bookkeeping columns).
RESERVED = {"ingested_at", "deleted_at", "_seq", "_reason", "_record", "_parent_seq", "_parent_key", "_n"}


@dataclass(frozen=True)
class Column:
    """A typed column read from a record: `path` is "a.b" or ("a", "b") (default: the name)."""

    name: str
    type: str = "text"
    path: str | Sequence[str] | None = None
    required: bool = False  # missing or null is refused; NOT NULL in the table
    check: str | Sequence[str] | None = None  # a regex the value's text must match, or the allowed values
    max_length: int | None = None  # text only
    keep_non_empty: bool = False  # an empty incoming value never overwrites a non-empty stored one
    condition: str | None = None  # trusted SQL over `record` that must be true (NULL fails), after the type checks
    # Trusted SQL over `record` (in a child: also `parent_record`) instead of a path: a computed column.
    expression: str | sql.Composable | None = None
    refusal: str | None = None  # the reason a record is refused for this column (default: from type/check)
    # timestamptz or date only: the reason names what is wrong (no such date, no such time of day, UTC offset
    # out of range), by the schema's timestamp_problem() function (include/sql/common, made by create_tables).
    explain: bool = False
    label: str | None = None  # how reasons name the column (default: its name), e.g. the field as the API spells it

    def __post_init__(self):
        if self.type not in TYPES:
            raise ValueError(f"column {self.name!r}: unknown type {self.type!r} (one of {', '.join(TYPES)})")
        path = self.path if self.path is not None else self.name
        object.__setattr__(self, "path", tuple(path.split(".")) if isinstance(path, str) else tuple(path))
        if self.check is not None and not isinstance(self.check, str):
            object.__setattr__(self, "check", tuple(self.check))
        if self.explain and (self.type not in ("timestamptz", "date") or self.check or self.expression is not None):
            raise ValueError(f"column {self.name!r}: explain is for a plain timestamptz or date column")

    @property
    def reason(self) -> str:
        """Why a record is refused for this column: one reason per column, whatever rule failed."""
        if self.refusal:
            return self.refusal
        what = f"one of {', '.join(self.check)}" if isinstance(self.check, tuple) else TYPES[self.type][1]
        if self.max_length is not None:
            what += f" of at most {self.max_length} characters"
        return f"{self.label or self.name}: {'missing or ' if self.required else ''}not {what}"


@dataclass(frozen=True)
class Entity:
    """One table fed from one kind of record. A child sits in its parent's records at `path` (a JSON
    array, complete: a parent lists all its children) and gets its parent's key in `parent_key`."""

    name: str  # the table (and its _delta, _raw), and the quarantine's `entity`
    key: str | Sequence[str]
    columns: Sequence[Column]
    references: Mapping[str, str] = field(default_factory=dict)  # column -> "entity" or "entity.key_column"
    children: Sequence[Entity] = ()
    path: str | Sequence[str] | None = None  # child only
    parent_key: str | None = None  # child only
    cursor: str | None = None  # replication key: a stored row is never replaced by an older one
    deletion: str = "none"  # rows the source no longer returns: none | mark (deleted_at) | remove
    deleted_status: tuple[str, Any] | None = None  # with "mark": set this column to this value, not deleted_at
    indexes: Sequence[str | Sequence[str]] = ()  # besides references, cursor and parent key
    # False: the table is someone else's (an application's): only its _delta (of the declared columns) and _raw
    # are made here, and the sync writes the table with its own upsert_<name>.sql.
    owned: bool = True
    join: str | None = None  # trusted SQL joined to the records in the stage (one row each), for computed columns
    # (trusted SQL over `record` that must be true, reason): a rule of the whole record, after the columns'
    rules: Sequence[tuple[str, str]] = ()
    # Trusted SQL over the entity's columns: the run's window. Checked records outside it are not staged (counted
    # as outside_window), and the deletion policy applies only to the rows inside it.
    window: str | sql.Composable | None = None
    label: str | None = None  # child only: how its parent's reasons name it (default: its name)

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen)
        set_("key", (self.key,) if isinstance(self.key, str) else tuple(self.key))
        set_("columns", tuple(c if isinstance(c, Column) else Column(**c) for c in self.columns))
        set_("references", dict(self.references))
        set_("indexes", tuple((i,) if isinstance(i, str) else tuple(i) for i in self.indexes))
        set_("rules", tuple(tuple(r) for r in self.rules))
        if isinstance(self.path, str):
            set_("path", tuple(self.path.split(".")))
        elif self.path is not None:
            set_("path", tuple(self.path))
        if self.deleted_status is not None:
            set_("deleted_status", tuple(self.deleted_status))
        set_("children", tuple(c if isinstance(c, Entity) else Entity.from_dict(c) for c in self.children))
        self._validate()
        set_("children", tuple(map(self._adopt, self.children)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Entity:
        """From plain data (JSON): columns and children as dicts, paths as lists or dotted strings."""
        return cls(**data)

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"entity {self.name!r} has no column {name!r}")

    def _adopt(self, child: Entity) -> Entity:
        """A child with its parent-key column (typed like the parent's key) added."""
        if child.path is None or child.parent_key is None or len(self.key) != 1:
            raise ValueError(f"child {child.name!r}: needs a path and a parent_key, and {self.name!r} one key column")
        if child.parent_key in {c.name for c in child.columns}:
            return child
        parent_key = Column(
            child.parent_key, self.column(self.key[0]).type, required=True, expression=sql.Identifier("_parent_key")
        )
        return dataclasses.replace(child, columns=(parent_key, *child.columns))

    def _validate(self) -> None:
        names = [c.name for c in self.columns]
        problems = [f"column {n!r} is declared twice" for n in set(names) if names.count(n) > 1]
        problems += [f"column {n!r} is a reserved name" for n in names if n in RESERVED]
        wanted = [*self.key, *self.references, *(c for i in self.indexes for c in i)]
        wanted += [c for c in (self.cursor, self.deleted_status and self.deleted_status[0]) if c]
        problems += [f"no column {n!r}" for n in wanted if n not in names]
        if self.deletion not in DELETIONS:
            problems.append(f"deletion {self.deletion!r} is not one of {', '.join(DELETIONS)}")
        if self.deleted_status and self.deletion != "mark":
            problems.append('deleted_status needs deletion="mark"')
        if not self.owned and (self.deletion != "none" or self.children):
            problems.append("a table not ours has no deletion policy or children")
        if any(c.children for c in self.children):
            problems.append("children cannot have children")
        if problems:
            raise ValueError(f"entity {self.name!r}: {'; '.join(problems)}")

    @property
    def has_deleted_at(self) -> bool:
        return self.deletion == "mark" and not self.deleted_status

    @property
    def tables(self) -> list[str]:
        """The tables this declaration owns (children included)."""
        return [self.name, *(c.name for c in self.children)]


# --- load order -------------------------------------------------------------------------------------------


def load_order(entities: Iterable[Entity]) -> list[Entity]:
    """The entities, each after those it (or one of its children) references; otherwise in the given order.
    References to entities not in the list are left out (another sync loads them)."""
    entities = list(entities)
    owner = {name: e.name for e in entities for name in e.tables}
    needs = {}
    for e in entities:
        targets = {_target(r)[0] for x in (e, *e.children) for r in x.references.values()}
        needs[e.name] = {owner[t] for t in targets if t in owner} - {e.name}
    order: list[Entity] = []
    while len(order) < len(entities):
        placed = {e.name for e in order}
        ready = next((e for e in entities if e.name not in placed and needs[e.name] <= placed), None)
        if ready is None:
            raise ValueError(f"reference cycle among {', '.join(sorted(set(needs) - placed))}")
        order.append(ready)
    return order


def _target(reference: str) -> tuple[str, str]:
    """'clients' -> ('clients', 'id'); 'clients.code' -> ('clients', 'code')."""
    table, _, column = reference.partition(".")
    return table, column or "id"


# --- DDL --------------------------------------------------------------------------------------------------


def create_sql(entity: Entity) -> list[sql.Composed]:
    """CREATE the table, its _delta and _raw, and its indexes (children's too); idempotent. A table not ours
    (`owned=False`): its _delta and _raw only."""
    statements = []
    for e in (entity, *entity.children):
        table = sql.Identifier(e.name)
        columns = [
            sql.SQL("{} {}{}").format(
                sql.Identifier(c.name), sql.SQL(c.type), sql.SQL(" NOT NULL" if c.required else "")
            )
            for c in e.columns
        ]
        key = sql.SQL("PRIMARY KEY ({})").format(_names(e.key))
        delta = sql.Identifier(f"{e.name}_delta")
        raw = sql.SQL(
            "CREATE UNLOGGED TABLE IF NOT EXISTS {} (seq bigint GENERATED ALWAYS AS IDENTITY, record jsonb NOT NULL)"
        ).format(sql.Identifier(f"{e.name}_raw"))
        if not e.owned:  # someone else's table: only its delta, of the declared columns, and _raw
            delta_columns = sql.SQL(", ").join([*columns, key])
            statements += [sql.SQL("CREATE UNLOGGED TABLE IF NOT EXISTS {} ({})").format(delta, delta_columns), raw]
            continue
        columns.append(sql.SQL("ingested_at timestamptz NOT NULL DEFAULT now()"))
        if e.has_deleted_at:
            columns.append(sql.SQL("deleted_at timestamptz"))
        statements += [
            sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(table, sql.SQL(", ").join([*columns, key])),
            sql.SQL("CREATE UNLOGGED TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS)").format(delta, table),
            raw,
        ]
        indexed = [*e.indexes, *((c,) for c in e.references), *((c,) for c in (e.cursor, e.parent_key) if c)]
        for columns in dict.fromkeys(indexed):  # once each, in declared order
            statements.append(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                    sql.Identifier(f"{e.name}_{'_'.join(columns)}_idx"), table, _names(columns)
                )
            )
    return statements


# --- stage: <table>_raw -> <table>_delta ---------------------------------------------------------------------


def stage_sql(entity: Entity, run_id: str, quarantine: str | Sequence[str] = "quarantine") -> sql.Composed:
    """Validate, quarantine, type and de-duplicate <table>_raw into <table>_delta (children included, all or
    nothing per parent record). Returns received, staged, quarantined, duplicates (and <child>_staged).
    `quarantine`: that table's name, or (schema, name) when the bookkeeping lives apart from the target."""
    typed = sql.SQL(", ").join(
        sql.SQL("{} AS {}").format(_typed(c, sql.SQL("record"), guard=True), sql.Identifier(c.name))
        for c in entity.columns
    )
    key, cols = _names(entity.key), _names(c.name for c in entity.columns)
    keep_record = sql.SQL("record" if entity.children else "CASE WHEN _reason IS NOT NULL THEN record END")
    parts = [
        sql.SQL(
            "WITH checked AS (SELECT _seq, _reason, {keep} AS _record, {typed} FROM ("
            "SELECT seq AS _seq, record, {reason} AS _reason FROM {raw} OFFSET 0) AS validated{join}), "  # reason once
            "quarantined AS (INSERT INTO {quarantine} (run_id, entity, reason, record) "
            "SELECT {run_id}, {entity}, _reason, _record FROM checked WHERE _reason IS NOT NULL RETURNING 1), "
        ).format(
            keep=keep_record,
            typed=typed,
            reason=_reason(entity, sql.SQL("record")),
            raw=sql.Identifier(f"{entity.name}_raw"),
            join=sql.SQL(f" {entity.join}" if entity.join else ""),
            run_id=sql.Literal(run_id),
            entity=sql.Literal(entity.name),
            quarantine=_table(quarantine),
        )
    ]
    kept = sql.SQL("_reason IS NULL")
    if entity.window is not None:
        kept = sql.SQL("_reason IS NULL AND coalesce(({}), false)").format(_sql(entity.window))
    latest = sql.SQL(
        "SELECT DISTINCT ON ({key}) {cols}{rec} FROM checked WHERE {kept} ORDER BY {key}, _seq DESC"
    ).format(key=key, cols=cols, rec=sql.SQL(", _seq, _record" if entity.children else ""), kept=kept)
    if entity.children:
        parts.append(sql.SQL("latest AS ({}), ").format(latest))
        latest = sql.SQL("SELECT {} FROM latest").format(cols)
    parts.append(
        sql.SQL("staged AS (INSERT INTO {} ({}) {} RETURNING 1)").format(
            sql.Identifier(f"{entity.name}_delta"), cols, latest
        )
    )
    counts = [
        sql.SQL(
            "(SELECT count(*) FROM checked) AS received, (SELECT count(*) FROM staged) AS staged, "
            "(SELECT count(*) FROM quarantined) AS quarantined, (SELECT count(*) FROM checked "
            "WHERE {}) - (SELECT count(*) FROM staged) AS duplicates"
        ).format(kept)
    ]
    if entity.window is not None:
        counts.append(
            sql.SQL(
                "(SELECT count(*) FROM checked WHERE _reason IS NULL) - (SELECT count(*) FROM checked WHERE {}) "
                "AS outside_window"
            ).format(kept)
        )
    for i, child in enumerate(entity.children):
        name = sql.Identifier(f"child{i}")
        parts.append(sql.SQL(", {} AS ({})").format(name, _stage_child(child, entity.key[0])))
        counts.append(sql.SQL("(SELECT count(*) FROM {}) AS {}").format(name, sql.Identifier(f"{child.name}_staged")))
    return sql.Composed([*parts, sql.SQL(" SELECT "), sql.SQL(", ").join(counts)])


def _stage_child(child: Entity, parent_key: str) -> sql.Composed:
    """The children of the winning parent records (already checked with them), the last one per key winning."""
    return sql.SQL(
        "INSERT INTO {delta} ({cols}) SELECT DISTINCT ON ({key}) {typed} FROM ("
        "SELECT parent._seq AS _parent_seq, parent.{parent_key} AS _parent_key, parent._record AS parent_record, "
        "c.record, c._n FROM latest AS parent, jsonb_array_elements(parent._record{path}) WITH ORDINALITY "
        "AS c(record, _n)) AS nested ORDER BY {key}, _parent_seq DESC, _n DESC RETURNING 1"
    ).format(
        delta=sql.Identifier(f"{child.name}_delta"),
        cols=_names(c.name for c in child.columns),
        key=_names(child.key),
        parent_key=sql.Identifier(parent_key),
        path=_arrows(child.path, last=False),
        typed=sql.SQL(", ").join(
            sql.SQL("{} AS {}").format(_typed(c, sql.SQL("record"), guard=False), sql.Identifier(c.name))
            for c in child.columns
        ),
    )


def _reason(entity: Entity, record: sql.Composable) -> sql.Composed:
    """CASE giving the first rule a record breaks (NULL: none). Each WHEN may assume the ones before held,
    which is what makes the casts of later WHENs (and of the projection) safe."""
    whens = [(sql.SQL("jsonb_typeof({}) <> 'object'").format(record), "not a JSON object")]
    for c in entity.columns:
        whens += _explained(c, record) if c.explain else [(bad, c.reason) for bad in _breaks(c, record)]
    for column, reference in entity.references.items():
        table, key = _target(reference)
        c = entity.column(column)
        value = _typed(c, record, guard=False)
        whens.append(
            (
                sql.SQL("{v} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {t} WHERE {k} = {v})").format(
                    v=value, t=sql.Identifier(table), k=sql.Identifier(key)
                ),
                f"{c.label or c.name}: no such {table}",
            )
        )
    whens += [(sql.SQL("NOT coalesce(({}), false)").format(sql.SQL(rule)), why) for rule, why in entity.rules]
    nested = []
    for child in entity.children:
        array = sql.SQL("{}{}").format(record, _arrows(child.path, last=False))
        label = child.label or child.name
        whens.append(
            (sql.SQL("jsonb_typeof({}) IS DISTINCT FROM 'array'").format(array), f"{label}: missing or not a list")
        )
        nested.append(
            sql.SQL(
                "(SELECT {prefix} || r FROM (SELECT {reason} AS r FROM jsonb_array_elements({array}) AS c(record)) "
                "AS x WHERE r IS NOT NULL LIMIT 1)"
            ).format(prefix=sql.Literal(f"{label}: "), reason=_reason(child, sql.SQL("c.record")), array=array)
        )
    cases = sql.SQL(" ").join(
        sql.SQL("WHEN {} THEN {}").format(bad, sql.Literal(why) if isinstance(why, str) else why) for bad, why in whens
    )
    otherwise = sql.SQL(" ELSE coalesce({})").format(sql.SQL(", ").join(nested)) if nested else sql.SQL("")
    return sql.SQL("CASE {}{} END").format(cases, otherwise)


def _explained(c: Column, record: sql.Composable) -> list[tuple[sql.Composable, str | sql.Composable]]:
    """A timestamptz or date column's rules with a reason each: its JSON type (and a date's shape), then what
    timestamp_problem() finds (which also guarantees the cast; a date is read as that day's midnight UTC)."""
    text = sql.SQL("{}{}").format(record, _arrows(c.path, last=True))
    breaks = _breaks(dataclasses.replace(c, explain=False, type="text"), record)  # string, required or not
    problem = sql.SQL("timestamp_problem({})").format(text)
    if c.type == "date":
        breaks.append(sql.SQL("{} !~ '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}$'").format(text))
        problem = sql.SQL("timestamp_problem({} || 'T00:00:00Z')").format(text)
    if not c.required:  # an optional value left out has no problem
        problem = sql.SQL("CASE WHEN {} IS NOT NULL THEN {} END").format(text, problem)
    label = sql.Literal(f"{c.label or c.name}: ")
    return [
        *((bad, c.reason) for bad in breaks),
        (sql.SQL("{} IS NOT NULL").format(problem), sql.SQL("{} || {}").format(label, problem)),
    ]


def _breaks(c: Column, record: sql.Composable) -> list[sql.Composable]:
    """The conditions under which a record breaks this column's rules, in the order they are checked."""
    condition = [sql.SQL("NOT coalesce(({}), false)").format(sql.SQL(c.condition))] if c.condition else []
    if c.expression is not None:
        return condition
    json_type, _, pattern = TYPES[c.type]
    value, text = (sql.SQL("{}{}").format(record, _arrows(c.path, last=last)) for last in (False, True))
    kind = sql.SQL("coalesce(jsonb_typeof({}), 'null')").format(value)
    if json_type is None:
        breaks = [sql.SQL("{} = 'null'").format(kind)] if c.required else []
    elif c.required:
        breaks = [sql.SQL("{} <> {}").format(kind, sql.Literal(json_type))]
    else:
        breaks = [sql.SQL("{} NOT IN ({}, 'null')").format(kind, sql.Literal(json_type))]
    if pattern:  # NULL text (an optional value left out) matches no condition below
        breaks.append(sql.SQL("{} !~ {}").format(text, sql.Literal(pattern)))
    if c.type in _DIGITS:
        breaks.append(
            sql.SQL("strpos({t}, '.') > 0 OR length(ltrim({t}, '-')) > {n}").format(
                t=text, n=sql.Literal(_DIGITS[c.type])
            )
        )
    if c.type in ("date", "timestamptz"):  # the regex before makes the year's cast safe
        year = sql.SQL("substr({}, 1, 4)::integer").format(text)
        breaks.append(sql.SQL(_DAY_EXISTS).format(t=text, y=year))
    if c.type == "text[]":
        breaks.append(
            sql.SQL("jsonb_typeof({v}) = 'array' AND jsonb_path_exists({v}, '$[*] ? (@.type() != \"string\")')").format(
                v=value
            )
        )
    if c.max_length is not None:
        breaks.append(sql.SQL("length({}) > {}").format(text, sql.Literal(c.max_length)))
    if isinstance(c.check, str):
        breaks.append(sql.SQL("{} !~ {}").format(text, sql.Literal(c.check)))
    elif c.check is not None:
        breaks.append(sql.SQL("{} NOT IN ({})").format(text, sql.SQL(", ").join(map(sql.Literal, c.check))))
    return breaks + condition


def _typed(c: Column, record: sql.Composable, guard: bool) -> sql.Composable:
    """The column's typed value; with `guard`, cast only for records that passed (_reason IS NULL)."""
    if c.expression is not None:
        value = _sql(c.expression)
        return sql.SQL("CASE WHEN _reason IS NULL THEN ({}) END").format(value) if guard else value
    value, text = (sql.SQL("{}{}").format(record, _arrows(c.path, last=last)) for last in (False, True))
    if c.type == "text":
        return text  # no cast: nothing to guard
    if c.type == "jsonb":
        typed = sql.SQL("nullif({}, 'null'::jsonb)").format(value)
    elif c.type == "text[]":
        typed = sql.SQL(
            "CASE WHEN jsonb_typeof({v}) = 'array' THEN ARRAY(SELECT jsonb_array_elements_text({v})) END"
        ).format(v=value)
    else:
        typed = sql.SQL("({})::{}").format(text, sql.SQL(c.type))
    return sql.SQL("CASE WHEN _reason IS NULL THEN {} END").format(typed) if guard else typed


def _arrows(path: Sequence[str], last: bool) -> sql.Composed:
    """->'a'->'b' (jsonb), or ->'a'->>'b' (text) when `last`."""
    ops = ["->"] * (len(path) - 1) + ["->>" if last else "->"]
    return sql.Composed([sql.SQL("{}{}").format(sql.SQL(op), sql.Literal(k)) for op, k in zip(ops, path, strict=True)])


def _sql(text: str | sql.Composable) -> sql.Composable:
    return sql.SQL(text) if isinstance(text, str) else text


def _table(name: str | Sequence[str]) -> sql.Identifier:
    return sql.Identifier(name) if isinstance(name, str) else sql.Identifier(*name)


def _names(names: Iterable[str], prefix: str = "") -> sql.Composed:
    return sql.SQL(", ").join(sql.SQL(prefix) + sql.Identifier(n) for n in names)


# --- write: <table>_delta -> <table> -------------------------------------------------------------------------

_EMPTY = {  # when a keep_non_empty value counts as empty
    "text": "coalesce({}, '') = ''",
    "text[]": "coalesce(cardinality({}), 0) = 0",
    "jsonb": "coalesce({}, 'null') IN ('null', '\"\"', '[]', '{{}}')",
}


def upsert_sql(entity: Entity) -> sql.Composed:
    """Insert new rows, update those whose values differ (IS DISTINCT FROM), touch nothing else; a row that
    re-appears loses its deleted_at; a row is never replaced by one with an older cursor.
    Returns inserted, updated, unchanged (and stale: older than the stored row, with a cursor)."""
    if not entity.owned:
        raise ValueError(f"entity {entity.name!r}: not our table; the sync writes it (upsert_{entity.name}.sql)")
    table, delta = sql.Identifier(entity.name), sql.Identifier(f"{entity.name}_delta")
    names = [c.name for c in entity.columns]
    values = [_kept(c) if c.keep_non_empty else sql.SQL("d.{}").format(sql.Identifier(c.name)) for c in entity.columns]
    if entity.has_deleted_at:  # a row that comes back is no longer deleted (a status comes with the row)
        names, values = [*names, "deleted_at"], [*values, sql.SQL("NULL::timestamptz")]
    compared = [
        (sql.SQL("t.{}").format(sql.Identifier(n)), v)
        for n, v in zip(names, values, strict=True)
        if n not in entity.key
    ]
    differs = sql.SQL("({}) IS DISTINCT FROM ({})").format(
        sql.SQL(", ").join(o for o, _ in compared), sql.SQL(", ").join(v for _, v in compared)
    )
    if not compared:
        differs = sql.SQL("false")
    if entity.cursor:
        differs = sql.SQL("{} AND (t.{c} IS NULL OR d.{c} IS NULL OR d.{c} >= t.{c})").format(
            differs, c=sql.Identifier(entity.cursor)
        )
    assign = [sql.SQL("{0} = excluded.{0}").format(sql.Identifier(n)) for n in names if n not in entity.key]
    join = sql.SQL(" AND ").join(sql.SQL("t.{0} = d.{0}").format(sql.Identifier(k)) for k in entity.key)
    unchanged, stale = sql.SQL(""), sql.SQL("")
    if entity.cursor:  # the rows an older record left as they were: not unchanged, stale
        older = sql.SQL("(SELECT count(*) FROM {} d JOIN {} t ON {} WHERE d.{c} < t.{c})").format(
            delta, table, join, c=sql.Identifier(entity.cursor)
        )
        unchanged, stale = sql.SQL(" - {}").format(older), sql.SQL(", {} AS stale").format(older)
    return sql.SQL(
        "WITH changed AS (SELECT {values} FROM {delta} d LEFT JOIN {table} t ON {join} "
        "WHERE t.{key0} IS NULL OR ({differs})), "
        "written AS (INSERT INTO {table} AS t ({names}, ingested_at) SELECT {names}, now() FROM changed "
        "ON CONFLICT ({key}) DO UPDATE SET {assign} RETURNING xmax = 0 AS inserted) "
        "SELECT count(*) FILTER (WHERE inserted) AS inserted, count(*) FILTER (WHERE NOT inserted) AS updated, "
        "(SELECT count(*) FROM {delta}) - count(*){unchanged} AS unchanged{stale} FROM written"
    ).format(
        unchanged=unchanged,
        stale=stale,
        values=sql.SQL(", ").join(
            sql.SQL("{} AS {}").format(v, sql.Identifier(n)) for v, n in zip(values, names, strict=True)
        ),
        delta=delta,
        table=table,
        key0=sql.Identifier(entity.key[0]),
        key=_names(entity.key),
        differs=differs,
        join=join,
        names=_names(names),
        assign=sql.SQL(", ").join([*assign, sql.SQL("ingested_at = excluded.ingested_at")]),
    )


def _quarantined_key(c: Column) -> sql.Composed:
    """A quarantined record's value of this key column equals the row's. A line Postgres could not store as
    jsonb is quarantined as a JSON string: its key is read from the text (the first "<name>": value in it)."""
    in_text = sql.SQL("substring(q.record #>> '{{}}' FROM {})").format(
        sql.Literal(f'"{re.escape(c.path[-1])}":\\s*"?([^",}}\\s]*)')
    )
    return sql.SQL("coalesce(q.record{}, {}) = t.{}::text").format(
        _arrows(c.path, last=True), in_text, sql.Identifier(c.name)
    )


def _kept(c: Column) -> sql.Composed:
    """The incoming value, or the stored one when the incoming is empty and the stored one is not."""
    empty = _EMPTY.get(c.type, "{} IS NULL")
    new, old = (sql.SQL(f"{side}.{{}}").format(sql.Identifier(c.name)) for side in ("d", "t"))
    return sql.SQL("CASE WHEN {} AND NOT {} THEN {} ELSE {} END").format(
        sql.SQL(empty).format(new), sql.SQL(empty).format(old), old, new
    )


def delete_sql(
    entity: Entity,
    run_id: str,
    fetch_started: datetime | float | None = None,
    parent: Entity | None = None,
    quarantine: str | Sequence[str] = "quarantine",
) -> sql.Composed:
    """Apply the deletion policy to the rows the delta lacks: mark them (deleted_at, or deleted_status) or
    remove them. Only within the entity's window, only rows last written before
    `fetch_started` (a datetime or epoch seconds), never a record quarantined in this run; for a child, only
    the children of the parents in the parent's delta. Returns marked, removed, and active_before (the rows
    in scope before: the guard).
    """
    if entity.deletion == "none":
        raise ValueError(f"entity {entity.name!r} has no deletion policy")
    table, delta = sql.Identifier(entity.name), sql.Identifier(f"{entity.name}_delta")
    scope, sets = [], [sql.SQL("deleted_at = now()")]
    if entity.deleted_status:
        status, value = sql.Identifier(entity.deleted_status[0]), sql.Literal(entity.deleted_status[1])
        scope, sets = (
            [sql.SQL("{} IS DISTINCT FROM {}").format(status, value)],
            [sql.SQL("{} = {}").format(status, value)],
        )
    elif entity.has_deleted_at:
        scope = [sql.SQL("deleted_at IS NULL")]
    if entity.window is not None:
        scope.append(sql.SQL("coalesce(({}), false)").format(_sql(entity.window)))
    if parent is not None:
        scope.append(
            sql.SQL("{} IN (SELECT {} FROM {})").format(
                sql.Identifier(entity.parent_key), sql.Identifier(parent.key[0]), sql.Identifier(f"{parent.name}_delta")
            )
        )
    gone = [
        sql.SQL("NOT EXISTS (SELECT 1 FROM {} d WHERE {})").format(
            delta, sql.SQL(" AND ").join(sql.SQL("d.{0} = t.{0}").format(sql.Identifier(k)) for k in entity.key)
        )
    ]
    gone.append(
        sql.SQL("NOT EXISTS (SELECT 1 FROM {} q WHERE q.run_id = {} AND q.entity = {} AND {})").format(
            _table(quarantine),
            sql.Literal(run_id),
            sql.Literal(entity.name),
            sql.SQL(" AND ").join(_quarantined_key(entity.column(k)) for k in entity.key),
        )
    )
    if fetch_started is not None:
        if isinstance(fetch_started, int | float):  # epoch seconds
            fetch_started = datetime.fromtimestamp(fetch_started, UTC)
        gone.append(sql.SQL("t.ingested_at < {}").format(sql.Literal(fetch_started)))
    if entity.deletion == "mark":
        change = sql.SQL("UPDATE {} t SET {}, ingested_at = now()").format(table, sql.SQL(", ").join(sets))
    else:
        change = sql.SQL("DELETE FROM {} t").format(table)
    in_scope = sql.SQL(" AND ").join(scope) if scope else sql.SQL("true")
    return sql.SQL(
        "WITH active AS (SELECT {key} FROM {table} WHERE {scope}), "
        "gone AS ({change} WHERE ({tkey}) IN (SELECT {key} FROM active) AND {gone} RETURNING 1) "
        "SELECT (SELECT count(*) FROM gone) AS {counted}, 0::bigint AS {other}, "
        "(SELECT count(*) FROM active) AS active_before"
    ).format(
        key=_names(entity.key),
        tkey=_names(entity.key, "t."),
        table=table,
        scope=in_scope,
        change=change,
        gone=sql.SQL(" AND ").join(gone),
        counted=sql.Identifier("marked" if entity.deletion == "mark" else "removed"),
        other=sql.Identifier("removed" if entity.deletion == "mark" else "marked"),
    )


def watermark_sql(entity: Entity, upto: Any = None) -> sql.Composed:
    """Where the next incremental run starts: the newest cursor the table holds, by the source's own clock, but
    never past `upto` (the run's upper bound: a record dated in the future must not make later runs skip the
    present); the rows dated after it are counted (future_dated) for the report."""
    if not entity.cursor:
        raise ValueError(f"entity {entity.name!r} has no cursor")
    cursor = sql.Identifier(entity.cursor)
    if upto is None:
        within, beyond = sql.SQL("true"), sql.SQL("false")
    else:
        bound = sql.SQL("{}::{}").format(sql.Literal(upto), sql.SQL(entity.column(entity.cursor).type))
        within, beyond = (sql.SQL("{} {} {}").format(cursor, sql.SQL(op), bound) for op in ("<=", ">"))
    if entity.has_deleted_at:
        beyond = sql.SQL("{} AND deleted_at IS NULL").format(beyond)
    return sql.SQL(
        "SELECT max({c}) FILTER (WHERE {within}) AS watermark, count(*) FILTER (WHERE {beyond}) AS future_dated "
        "FROM {table}"
    ).format(c=cursor, within=within, beyond=beyond, table=sql.Identifier(entity.name))
