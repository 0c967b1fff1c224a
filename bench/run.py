"""Benchmarks of the intra42 users sync: load (stage + upsert) against a floor, memory, re-sync, fetch.

    .venv/bin/python bench/run.py            full run (~2 min): 40,335 and 1,000,000 students, 100 pages
    .venv/bin/python bench/run.py --quick    smoke run: 40,335 students only, 20 pages

Starts its own PostgreSQL 15 (tools.embedded_pg, durable settings: fsync, synchronous_commit and
full_page_writes on) and the 42 sandbox, in a temporary directory removed at the end. Prints one table
and writes it to bench/results/latest.md. What each line measures: bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
STEP = BENCH / "_step.py"
STUDENTS = 40_335
BIG = 1_000_000
PER_FILE = 100  # records per staged page file, as the DAG stages them (per_page=100)
REPEATS = 7  # the 40,335-student measurements: median of this many
CLIENT_ID, CLIENT_SECRET = "bench-client-id", "bench-client-secret"
STUDENTS_ONLY = {"filter[kind]": "student", "filter[alumni?]": "false"}

WORK = Path(tempfile.mkdtemp(prefix="usersync-bench-"))
AIRFLOW_HOME = WORK / "airflow"
STAGING = WORK / "staging"
PG_DIR = Path(tempfile.mkdtemp(prefix="usersync-bench-pg-"))  # apart: as root, `postgres` owns the cluster

sys.path[:0] = [str(ROOT), str(ROOT / "plugins"), str(BENCH)]
from tools.airflow_env import airflow_env  # noqa: E402  (imports no Airflow)

os.environ.update(airflow_env(AIRFLOW_HOME, STAGING, log_level="WARNING"))

import _machine  # noqa: E402  (bench/)
import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from sandbox.intra42 import Intra42Data, Query  # noqa: E402
from tools.embedded_pg import PG_BIN, EmbeddedPostgres, free_port  # noqa: E402

# ----------------------------------------------------------------------------------------- staging files

_GENERATING: tuple[Intra42Data, Query, Path] | None = None  # what the forked writers read


def _write_pages(pages: range) -> None:
    data, query, directory = _GENERATING
    for number in pages:
        records, _, _ = data.page(query, number, PER_FILE)
        lines = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)
        (directory / f"page-{number:06d}.ndjson").write_text(lines, encoding="utf-8")


def write_students(directory: Path, students: int) -> tuple[str, int, float]:
    """The sandbox's students as fetch_to_staging stages them (same JSON text, 100 per file).

    Returns (prefix URL, total bytes, seconds). Two forked writers share the generated columns.
    """
    global _GENERATING
    started = time.perf_counter()
    directory.mkdir(parents=True)
    data = Intra42Data(students=students)
    query = Query.build({"kind": "student", "alumni?": "false"}, None, "id")
    pages = math.ceil(len(data.positions(query)) / PER_FILE)  # positions are computed once, before the fork
    _GENERATING = (data, query, directory)
    workers = min(2, os.cpu_count() or 1)
    parts = 4 * workers
    chunks = [range(1 + i * pages // parts, 1 + (i + 1) * pages // parts) for i in range(parts)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(_write_pages, chunks)
    _GENERATING = None
    size = sum(f.stat().st_size for f in directory.glob("page-*.ndjson"))
    return f"file://{directory}", size, time.perf_counter() - started


# ----------------------------------------------------------------------------------------- database


def create_tables(url: str) -> None:
    """Schema intra42 and its tables, as the DAG's create_tables task makes them; plus the floor's table."""
    from usersync.entities import INTRA42_USERS
    from usersync.entity import create_sql

    files = [
        "create_schema",
        "create_sync_runs",
        "create_sync_runs_columns",
        "create_sync_runs_index",
        "create_sync_runs_dedup",
        "create_sync_runs_run_idx",
        "create_quarantine",
        "create_quarantine_index",
        "create_staged_deltas",
        "create_json_refusal",
        "create_timestamp_problem",
    ]
    with psycopg.connect(url, autocommit=True) as conn:
        for name in files:
            text = (ROOT / "include" / "sql" / "common" / f"{name}.sql").read_text().replace("{{ schema }}", "intra42")
            conn.execute(f"SET search_path TO intra42; {text}")
        for statement in create_sql(INTRA42_USERS):
            conn.execute(sql.SQL("SET search_path TO intra42; {}").format(statement))
        conn.execute("CREATE SCHEMA bench")
        conn.execute("CREATE UNLOGGED TABLE bench.floor_raw (record jsonb NOT NULL)")


def execute(url: str, statement: str, params: Any = None) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def empty_users(url: str) -> None:
    """Back to a first load: no users, no quarantine; then a checkpoint, so no earlier write is flushed
    during the next measurement."""
    execute(url, "TRUNCATE intra42.users, intra42.quarantine")
    execute(url, "VACUUM ANALYZE intra42.users")
    execute(url, "CHECKPOINT")


def floor_copy(url: str, directory: Path) -> float:
    """The floor: connect, list the page files, COPY their bytes into an unlogged one-column jsonb table
    with load.COPY_RAW's dialect (every line one value), commit. Nothing else."""
    from usersync.load import COPY_RAW

    execute(url, "TRUNCATE bench.floor_raw")
    execute(url, "CHECKPOINT")
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        conn.execute("TRUNCATE bench.floor_raw")
        statement = sql.SQL(COPY_RAW).format(sql.Identifier("bench", "floor_raw"))
        with conn.cursor() as cur, cur.copy(statement) as copy:
            for page in sorted(directory.glob("page-*.ndjson")):
                with page.open("rb") as f:
                    while chunk := f.read(1 << 20):
                        copy.write(chunk)
        conn.commit()
    return time.perf_counter() - started


def users_snapshot(url: str) -> dict[int, str]:
    return dict(execute(url, "SELECT id, xmin::text FROM intra42.users"))


def users_tuples_written(url: str) -> int:
    """Rows inserted + updated + deleted in intra42.users since the cluster started (pg_stat_user_tables).

    A backend flushes its counts when it exits: TargetDb closes its connection after each transaction.
    """
    time.sleep(1.0)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return conn.execute(
            "SELECT n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables WHERE relid = 'intra42.users'::regclass"
        ).fetchone()[0]


# ----------------------------------------------------------------------------------------- measurements


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median total time (odd number of runs)."""
    return sorted(runs, key=lambda r: r["stage_s"] + r["upsert_s"])[len(runs) // 2]


def bench_first_load(url: str, prefix: str, directory: Path) -> dict[str, Any]:
    from _step import timed_load

    runs, floors = [], []
    for i in range(REPEATS):
        empty_users(url)
        runs.append(timed_load(prefix, f"bench__first_{i}"))
        floors.append(floor_copy(url, directory))
    run = median_run(runs)
    assert run["written"]["inserted"] == run["staged"]["received"], run
    return {
        "run": run,
        "totals": [r["stage_s"] + r["upsert_s"] for r in runs],
        "floor_s": statistics.median(floors),
        "floors": floors,
    }


def bench_resync(url: str, prefix: str) -> dict[str, Any]:
    """Stage + upsert the very same records again (the table holds them from the first-load runs)."""
    from _step import timed_load

    runs, changed, tuples = [], 0, 0
    for i in range(REPEATS):
        execute(url, "CHECKPOINT")
        before, tuples_before = users_snapshot(url), users_tuples_written(url)
        runs.append(timed_load(prefix, f"bench__resync_{i}"))
        after, tuples_after = users_snapshot(url), users_tuples_written(url)
        changed += sum(1 for key in before.keys() | after.keys() if before.get(key) != after.get(key))
        tuples += tuples_after - tuples_before
    run = median_run(runs)
    return {
        "run": run,
        "totals": [r["stage_s"] + r["upsert_s"] for r in runs],
        "rows": len(after),
        "xmin_changed": changed,
        "stat_tuples": tuples,
        "inserted": sum(r["written"]["inserted"] for r in runs),
        "updated": sum(r["written"]["updated"] for r in runs),
    }


def step_subprocess(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(STEP), "rss", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_big_load(url: str, prefix: str, directory: Path) -> dict[str, Any]:
    """First load of the big set in a fresh process, for its peak RSS; the floor in this process."""
    empty_users(url)
    run = step_subprocess("load", prefix, "bench__big")
    baseline = step_subprocess("imports")
    floor = floor_copy(url, directory)
    return {"run": run, "baseline_kib": baseline["maxrss_kib"], "floor_s": floor}


def bench_fetch(pages: int, rate: int) -> dict[str, Any]:
    """fetch_to_staging of `pages` pages of 100 students from the sandbox at `rate` req/s, real client."""
    from airflow.sdk import ObjectStoragePath
    from usersync import intra42, staging

    from sandbox.common import serve
    from sandbox.intra42 import create_app

    data = Intra42Data(students=pages * PER_FILE)
    app = create_app(data=data, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, per_second=rate, per_hour=1_000_000)
    with serve(app) as url:
        os.environ["AIRFLOW_CONN_INTRA42_API"] = json.dumps(
            {
                "conn_type": "http",
                "host": url,
                "login": CLIENT_ID,
                "password": CLIENT_SECRET,
                "extra": {"rate_limit": f"{rate}/s"},
            }
        )
        prefix = ObjectStoragePath(f"file://{STAGING}/fetch")
        started = time.perf_counter()
        api = intra42.client("intra42_api")
        paginate = intra42.users_paginator(api, 21, STUDENTS_ONLY, per_page=PER_FILE)
        manifest = staging.fetch_to_staging(prefix, paginate, {"after_id": 0}, api)
        wall = time.perf_counter() - started
        server = app.state.sandbox.stats.snapshot()
    assert manifest["records"] == pages * PER_FILE, manifest
    return {
        "wall_s": wall,
        "ideal_s": pages / rate,
        "manifest": manifest,
        "server_429": server["throttled"],
        "server_requests": server["requests"],
    }


# ----------------------------------------------------------------------------------------- report


def machine() -> dict[str, str]:
    pg = subprocess.run([str(PG_BIN / "postgres"), "--version"], capture_output=True, text=True)
    return _machine.machine(postgres=pg.stdout.strip())


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def verdict(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def build_table(args: argparse.Namespace, results: dict[str, Any], info: dict[str, str]) -> str:
    rows = []
    first = results["first"]
    run, floor = first["run"], first["floor_s"]
    total = run["stage_s"] + run["upsert_s"]
    ratio = total / floor
    rows.append(
        (
            f"1. first load of {STUDENTS:,} students (stage + upsert), median of {REPEATS}",
            f"{fmt_s(total)} = stage {fmt_s(run['stage_s'])} + upsert {fmt_s(run['upsert_s'])}",
            f"bare COPY {fmt_s(floor)}",
            f"{ratio:.2f}×",
            "≤ 2 s and ≤ 3× floor",
            verdict(total <= 2 and ratio <= 3),
        )
    )
    big = results["big"]
    run, floor = big["run"], big["floor_s"]
    total = run["stage_s"] + run["upsert_s"]
    size = results["big_students"]
    rows.append(
        (
            f"2. first load of {size:,} students (stage + upsert), 1 run",
            f"{fmt_s(total)} = stage {fmt_s(run['stage_s'])} + upsert {fmt_s(run['upsert_s'])}",
            f"bare COPY {fmt_s(floor)}",
            f"{total / floor:.2f}×",
            "—",
            "—",
        )
    )
    peak, base = big["run"]["maxrss_kib"] * 1024 / 1e6, big["baseline_kib"] * 1024 / 1e6
    rows.append(
        (
            "2. peak RSS of the process doing 2.",
            f"{peak:.0f} MB (step adds {peak - base:.0f} MB)",
            f"imports only: {base:.0f} MB",
            "—",
            "< 300 MB",
            verdict(peak < 300),
        )
    )
    resync = results["resync"]
    run = resync["run"]
    written = resync["xmin_changed"]
    rows.append(
        (
            f"3. unchanged re-sync of {STUDENTS:,} students, median of {REPEATS}",
            f"{fmt_s(run['stage_s'] + run['upsert_s'])} = stage {fmt_s(run['stage_s'])} + upsert "
            f"{fmt_s(run['upsert_s'])}; rows written: {written} (xmin changed), "
            f"{resync['inserted']} inserted + {resync['updated']} updated (upsert), "
            f"{resync['stat_tuples']} (pg_stat n_tup_ins+upd+del), over {REPEATS} runs",
            "—",
            "—",
            "0 rows",
            verdict(written == 0 and resync["inserted"] + resync["updated"] == 0 and resync["stat_tuples"] == 0),
        )
    )
    fetch = results["fetch"]
    ratio = fetch["wall_s"] / fetch["ideal_s"]
    throttled = fetch["manifest"]["throttled"]
    rows.append(
        (
            f"4. fetch {args.pages} pages × 100 students from the sandbox at {args.rate} req/s",
            f"{fmt_s(fetch['wall_s'])}; {fetch['manifest']['api_calls']} client calls (token included), "
            f"429s: {throttled} seen by the client, {fetch['server_429']} sent by the sandbox",
            f"N/R = {fmt_s(fetch['ideal_s'])}",
            f"{ratio:.3f}×",
            "≤ 1.10× N/R, 0 × 429",
            verdict(ratio <= 1.10 and throttled == 0 and fetch["server_429"] == 0),
        )
    )
    header = ("measurement", "ours", "floor / ideal", "ratio", "target", "status")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    notes = [
        "",
        f"{info['date']} · {info['nproc']} CPUs ({info['cpu']}) · {info['memory']} RAM · "
        f"{info['postgres']} · Python {info['python']}{' · --quick' if args.quick else ''}",
        "PostgreSQL: embedded (tools.embedded_pg), durable settings (fsync, synchronous_commit, "
        "full_page_writes on; fast=False), other settings default (shared_buffers 128MB); "
        "CHECKPOINT before each measured step.",
        f"Staged data: {STUDENTS:,} students = {results['small_bytes'] / 1e6:.1f} MB of NDJSON, "
        f"{size:,} = {results['big_bytes'] / 1e6:.0f} MB, {PER_FILE} records per file. "
        f"All runs of 1. (stage+upsert / floor): "
        + ", ".join(f"{t:.2f}/{f:.2f}" for t, f in zip(first["totals"], first["floors"], strict=True))
        + f" s; of 3.: {', '.join(f'{t:.2f}' for t in resync['totals'])} s.",
    ]
    return "\n".join(lines + notes) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 40,335 students only, 20 pages")
    parser.add_argument("--pages", type=int, help="pages to fetch in 4. (default 100, --quick 20)")
    parser.add_argument("--rate", type=int, default=10, help="sandbox and client rate limit in 4. (req/s)")
    parser.add_argument("--students", type=int, help=f"size of 2. (default {BIG:,}, --quick {STUDENTS:,})")
    args = parser.parse_args()
    args.pages = args.pages or (20 if args.quick else 100)
    big_students = args.students or (STUDENTS if args.quick else BIG)

    info = machine()
    results: dict[str, Any] = {"big_students": big_students}
    pg = EmbeddedPostgres(PG_DIR / "data", free_port())
    try:
        step = time.perf_counter()
        small_prefix, results["small_bytes"], _ = write_students(STAGING / "small", STUDENTS)
        if big_students == STUDENTS:
            big_prefix, results["big_bytes"] = small_prefix, results["small_bytes"]
        else:
            big_prefix, results["big_bytes"], seconds = write_students(STAGING / "big", big_students)
            print(f"generated {big_students:,} students in {seconds:.1f} s", file=sys.stderr)
        os.sync()  # the generated files' dirty pages must not be written back during the measurements
        pg.start(fast=False)
        url = pg.url
        os.environ["AIRFLOW_CONN_INTRA42_DB"] = url.replace("postgresql://", "postgres://")
        create_tables(url)
        print(f"setup {time.perf_counter() - step:.1f} s", file=sys.stderr)

        for name, bench in (
            ("first", lambda: bench_first_load(url, small_prefix, STAGING / "small")),
            ("resync", lambda: bench_resync(url, small_prefix)),
            ("big", lambda: bench_big_load(url, big_prefix, Path(big_prefix.removeprefix("file://")))),
            ("fetch", lambda: bench_fetch(args.pages, args.rate)),
        ):
            step = time.perf_counter()
            results[name] = bench()
            print(f"{name}: {time.perf_counter() - step:.1f} s", file=sys.stderr)
    finally:
        pg.stop()
        shutil.rmtree(WORK, ignore_errors=True)
        shutil.rmtree(PG_DIR, ignore_errors=True)

    table = build_table(args, results, info)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.md").write_text(f"# usersync benchmarks\n\n{table}")
    raw = json.dumps({"info": info, "results": results}, indent=2, default=str)
    (RESULTS / "latest.json").write_text(raw)


if __name__ == "__main__":
    main()
