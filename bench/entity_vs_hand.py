"""Scratch comparison: the stage + upsert generated from INTRA42_USERS vs the hand-written intra42 SQL.

Same 40,335 sandbox students, same durable embedded Postgres (fast=False), one schema each. Per run:
TRUNCATE _raw/_delta, COPY the records (not measured: identical for both), then the stage statement and the
upsert, each timed, into an empty `users` (first load) and again into the full one (unchanged re-sync).
Median of REPEATS runs, the two variants alternating.  `.venv/bin/python bench/entity_vs_hand.py [students]`
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402
from usersync.entities import INTRA42_USERS  # noqa: E402
from usersync.entity import create_sql, stage_sql, upsert_sql  # noqa: E402

from sandbox.intra42 import Intra42Data, Query  # noqa: E402
from tools.embedded_pg import running  # noqa: E402

REPEATS = 7
SQL = ROOT / "include" / "sql"
HAND = ROOT / "tests" / "reference_sql"  # the hand-written SQL the declaration replaced
RUN = "bench"


def students(count: int) -> list[str]:
    data = Intra42Data(students=count)
    query = Query.build({"kind": "student", "alumni?": "false"}, None, "id")
    lines, page = [], 1
    while True:
        records, _, _ = data.page(query, page, 100)
        if not records:
            return lines
        lines += [json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in records]
        page += 1


def setup(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True, options=f"-c search_path={schema}") as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute((SQL / "common" / "create_quarantine.sql").read_text())
        conn.execute((SQL / "common" / "create_timestamp_problem.sql").read_text())
        if schema == "hand":
            for path in sorted((HAND / "intra42").glob("create_*.sql")):
                conn.execute(path.read_text())
            conn.execute(
                "CREATE UNLOGGED TABLE users_raw (seq bigint GENERATED ALWAYS AS IDENTITY, record jsonb NOT NULL)"
            )
        else:
            for statement in create_sql(INTRA42_USERS):
                conn.execute(statement)


def load(url: str, schema: str, lines: list[str]) -> dict[str, float]:
    """One stage + upsert; the seconds of each statement, and the figures they returned."""
    if schema == "hand":
        stage, upsert = (
            (HAND / "intra42" / "stage_users.sql").read_text(),
            (HAND / "intra42" / "upsert_users.sql").read_text(),
        )
    else:
        stage, upsert = stage_sql(INTRA42_USERS, RUN), upsert_sql(INTRA42_USERS)
    params = {"run_id": RUN, "entity": "users"} if schema == "hand" else None
    options = f"-c search_path={schema} -c jit=off -c work_mem=64MB"  # as usersync.db.hook_params
    with psycopg.connect(url, options=options) as conn, conn.cursor() as cur:
        cur.execute("TRUNCATE users_raw, users_delta RESTART IDENTITY")
        with cur.copy(
            "COPY users_raw (record) FROM STDIN WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')"
        ) as copy:
            for line in lines:
                copy.write(line + "\n")
        conn.commit()
        started = time.perf_counter()
        cur.execute(stage, params)
        staged = cur.fetchone()
        conn.commit()
        middle = time.perf_counter()
        cur.execute(upsert)
        written = cur.fetchone()
        conn.commit()
        done = time.perf_counter()
    return {"stage": middle - started, "upsert": done - middle, "figures": (*staged, *written)}


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 40_335
    lines = students(count)
    results: dict[tuple[str, str], list[dict]] = {}
    with running(Path(tempfile.mkdtemp(prefix="entity-bench-")) / "data", fast=False) as pg:
        for schema in ("hand", "generated"):
            setup(pg.url, schema)
        for _ in range(REPEATS):
            for schema in ("hand", "generated"):
                with psycopg.connect(pg.url, autocommit=True) as conn:
                    conn.execute(sql.SQL("TRUNCATE {}.users, {}.quarantine").format(*[sql.Identifier(schema)] * 2))
                    conn.execute(sql.SQL("VACUUM ANALYZE {}.users").format(sql.Identifier(schema)))
                    conn.execute("CHECKPOINT")
                results.setdefault((schema, "first load"), []).append(load(pg.url, schema, lines))
                results.setdefault((schema, "unchanged re-sync"), []).append(load(pg.url, schema, lines))
    print(f"{len(lines):,} students, {REPEATS} runs: median (fastest) seconds")
    print(f"{'variant':<10} {'load':<18} {'stage':>15} {'upsert':>15} {'total':>15}  figures")
    for (schema, kind), runs in results.items():
        cells = [[r["stage"] for r in runs], [r["upsert"] for r in runs], [r["stage"] + r["upsert"] for r in runs]]
        shown = " ".join(f"{statistics.median(c):7.3f} ({min(c):5.3f})" for c in cells)
        print(f"{schema:<10} {kind:<18} {shown}  {runs[-1]['figures']}")


if __name__ == "__main__":
    main()
