"""Benchmark of the portaildf_user_kind lookups: N users at R req/s against the sandbox with a 50 ms latency.

    .venv/bin/python bench/portaildf.py            10,000 users, R = 300 req/s, 32 workers, chunks of 1,000
    .venv/bin/python bench/portaildf.py --quick    2,000 users, sequential loop over 100 of them
    .venv/bin/python bench/portaildf.py --batch-size 10000   the same users in one chunk

Two ways to look the same users up, against the Portail DF sandbox (V1 token auth, rate limit R per second,
every API answer delayed by --latency):

  sync        what the DAG's look_up_chunk tasks run, one chunk after the other: the users split into chunks
              of --batch-size (staging.split_to_staging, as select_users does), then per chunk a fresh
              portaildf.client("portaildf_api", hand_over=lookups/_recent_calls.json) (rate_limit "R/s") whose
              limiter continues from the previous chunk's recent calls, staging.fan_out_to_staging(...,
              portaildf.lookup_user, num_workers=--workers), and the chunk's own recent calls handed over to
              the next one. Its wall time is compared with the ideal N/R.
  sequential  the old way: one requests.Session, one V1 token, then GET /api/utilisateurs?email=... one user
              after the other, over the first --sequential-sample users, extrapolated to N.

Prints one table and writes it to bench/results/portaildf-latest.md (raw numbers: portaildf-latest.json).
What it measures: bench/README.md, section "portaildf_user_kind lookups".
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DAG_ID, CONN_ID = "portaildf_user_kind", "portaildf_api"
SEED = 0
USERNAME, PASSWORD = "bench-user", "bench-password"
TIMEOUT = 10  # seconds per request, both ways

WORK = Path(tempfile.mkdtemp(prefix="usersync-bench-portaildf-"))
AIRFLOW_HOME = WORK / "airflow"
STAGING = WORK / "staging"

sys.path[:0] = [str(ROOT), str(ROOT / "plugins"), str(ROOT / "bench")]
from tools.airflow_env import airflow_env  # noqa: E402  (imports no Airflow)

os.environ.update(airflow_env(AIRFLOW_HOME, STAGING, log_level="WARNING"))

from _machine import machine  # noqa: E402  (bench/)
from usersync.ratelimit import RateLimiter  # noqa: E402  (after the environment: imports Airflow)

from sandbox.common import Faults, serve  # noqa: E402
from sandbox.portaildf import KINDS, PortailDFData, create_app  # noqa: E402

# ----------------------------------------------------------------------------------------- data and sandbox


def app_users(n: int) -> tuple[PortailDFData, list[dict[str, str]]]:
    """The smallest sandbox data set with at least n application users that have an email, and the first n of
    them as select_users.sql gives them: {"id", "email"} (trimmed), in id order."""
    rows = math.ceil(n / 0.97)  # ≈3 % of the generated users have no email
    while True:
        data = PortailDFData(rows, SEED)
        users = sorted(
            ({"id": u["id"], "email": u["email"].strip()} for u in data.app_users() if (u["email"] or "").strip()),
            key=lambda u: u["id"],
        )
        if len(users) >= n:
            return data, users[:n]
        rows += n - len(users)


@contextlib.contextmanager
def sandbox(data: PortailDFData, rate: int, latency: float, server: str) -> Iterator[str]:
    """The Portail DF sandbox serving `data` at `rate` req/s per account, `latency` s per API answer: uvicorn in
    a thread of this process, or `python -m sandbox portaildf` in a process of its own. Yields its URL."""
    if server == "thread":
        app = create_app(data, username=USERNAME, password=PASSWORD, per_second=rate, faults=Faults(latency=latency))
        with serve(app) as url:
            yield url
        return
    command = [
        sys.executable,
        "-m",
        "sandbox",
        "portaildf",
        "--port",
        "0",
        "--users",
        str(data.user_count),
        "--seed",
        str(data.seed),
        "--username",
        USERNAME,
        "--password",
        PASSWORD,
        "--per-second",
        str(rate),
        "--latency",
        str(latency),
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # "portaildf sandbox listening on http://127.0.0.1:PORT"
        if "listening on " not in line:
            raise RuntimeError(f"the sandbox did not start: {line!r}")
        yield line.rsplit(" ", 1)[1].strip()
    finally:
        process.terminate()
        process.wait(timeout=10)


def sandbox_state(url: str) -> dict[str, Any]:
    response = requests.get(f"{url}/_sandbox/state", timeout=TIMEOUT)
    response.raise_for_status()
    return response.json()


def server_counts(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the sandbox saw between two states: requests, 429s sent, the most requests it accepted in one window."""
    return {
        "requests": after["stats"]["requests"] - before["stats"]["requests"],
        "throttled": after["stats"]["throttled"] - before["stats"]["throttled"],
        "max_accepted_in_window": after["rate"]["windows"][0]["max_accepted_in_window"],
        "limit": after["rate"]["windows"][0]["limit"],
    }


# ----------------------------------------------------------------------------------------- checks


def kind_of(record: dict[str, Any]) -> str:
    return KINDS[(record["exterieur"], record["gestionnaire"])]


def check_answers(data: PortailDFData, users: list[dict[str, str]], answers: list[dict[str, Any]]) -> dict[str, int]:
    """Outcomes of the lookups, and how many disagree with the sandbox's ground truth (expected_kind). Answers
    carry the user's id, not the email (staged files hold no emails)."""
    emails = {user["id"]: user["email"] for user in users}
    counts = {"found": 0, "not_found": 0, "failed": 0, "wrong": 0}
    for answer in answers:
        counts[answer["outcome"]] += 1
        expected = data.expected_kind(emails[answer["user_id"]])
        if answer["outcome"] == "found":
            counts["wrong"] += kind_of(answer["record"]) != expected
        elif answer["outcome"] == "not_found":
            counts["wrong"] += expected is not None
    return counts


def percentiles(trips: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(trips, n=100) if len(trips) > 1 else trips * 99
    return {
        "mean_ms": statistics.fmean(trips) * 1000,
        "p50_ms": cuts[49] * 1000,
        "p95_ms": cuts[94] * 1000,
        "max_ms": max(trips) * 1000,
    }


# ----------------------------------------------------------------------------------------- measurements


class PoolFull(logging.Filter):
    """Counts (and keeps out of the output) urllib3's "Connection pool is full, discarding connection": a
    connection opened for a call and closed after it, because more threads than the pool's size shared it."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Connection pool is full"):
            self.count += 1
            return False
        return True


class RoundTrips:
    """The answered calls of one client: when each was sent and its round trip (requests' Response.elapsed:
    request sent -> answer's headers parsed). Wraps the client's request(); the calls themselves are unchanged."""

    def __init__(self, api: Any):
        self.calls: list[tuple[float, float]] = []  # (sent, round trip), perf_counter seconds
        original = api.request

        def request(method: str, path: str, **kwargs: Any) -> requests.Response:
            response = original(method, path, **kwargs)
            trip = response.elapsed.total_seconds()
            self.calls.append((time.perf_counter() - trip, trip))  # list.append: thread-safe
            return response

        api.request = request


def bench_sync(url: str, users: list[dict[str, str]], rate: int, workers: int, batch_size: int) -> dict[str, Any]:
    """The lookups as the DAG runs them: select_users' chunks, then look_up_chunk for each, one at a time."""
    from airflow.sdk import ObjectStoragePath
    from usersync import portaildf, staging

    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(
        {
            "conn_type": "http",
            "host": url,
            "login": USERNAME,
            "password": PASSWORD,
            "extra": {"api_version": "1", "rate_limit": f"{rate}/s", "timeout": TIMEOUT},
        }
    )
    run_id = f"bench__{datetime.now(UTC):%Y%m%dT%H%M%S}_{batch_size}"
    chunks = staging.split_to_staging(staging.run_prefix(DAG_ID, run_id, "to_check"), users, batch_size)

    manifests, trips, stalls = [], [], []
    started = time.perf_counter()
    for chunk in chunks:  # look_up_chunk, as in dags/portaildf_user_kind.py
        chunk_started = time.perf_counter()
        lookups = staging.run_prefix(DAG_ID, run_id, "lookups")
        with portaildf.client(CONN_ID, hand_over=lookups / "_recent_calls.json") as api:
            watched = RoundTrips(api)
            manifests.append(
                staging.fan_out_to_staging(
                    lookups / ObjectStoragePath(chunk).stem,
                    staging.read_ndjson(chunk),
                    functools.partial(portaildf.lookup_user, api),
                    api,
                    workers,
                    failed=lambda answer: answer["outcome"] == "failed",
                )
            )
        stalls.append(min(sent for sent, _ in watched.calls) - chunk_started)  # until its first call left
        trips += [trip for _, trip in watched.calls]
    wall = time.perf_counter() - started

    answers = [a for m in manifests for a in staging.read_ndjson(f"{m['prefix']}/page-000001.ndjson")]
    assert len(answers) == len(users), (len(answers), len(users))
    return {
        "wall_s": wall,
        "chunks": len(chunks),
        "stalls_s": stalls,
        "api_calls": sum(m["api_calls"] for m in manifests),
        "throttled": sum(m["throttled"] for m in manifests),
        "retries": sum(m["retries"] for m in manifests),
        "answers": answers,
        "round_trips": percentiles(trips),
    }


def bench_sequential(url: str, users: list[dict[str, str]]) -> dict[str, Any]:
    """The old way: one session, one V1 token, one GET per user, each after the previous one's answer."""
    answers, trips = [], []
    started = time.perf_counter()
    with requests.Session() as session:
        response = session.post(
            f"{url}/api/api-token-auth/", json={"username": USERNAME, "password": PASSWORD}, timeout=TIMEOUT
        )
        response.raise_for_status()
        session.headers["Authorization"] = f"Token {response.json()['token']}"
        for user in users:
            response = session.get(f"{url}/api/utilisateurs", params={"email": user["email"]}, timeout=TIMEOUT)
            response.raise_for_status()
            trips.append(response.elapsed.total_seconds())
            wanted = user["email"].casefold()
            match = next((r for r in response.json()["results"] if r["email"].casefold() == wanted), None)
            answers.append(
                {"user_id": user["id"], "outcome": "not_found" if match is None else "found", "record": match}
            )
    return {
        "wall_s": time.perf_counter() - started,
        "users": len(users),
        "answers": answers,
        "round_trips": percentiles(trips),
    }


# ----------------------------------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def trips_text(trips: dict[str, float]) -> str:
    return f"p50 {trips['p50_ms']:.1f} ms, p95 {trips['p95_ms']:.1f} ms, max {trips['max_ms']:.0f} ms"


def build_table(args: argparse.Namespace, results: dict[str, Any], info: dict[str, str]) -> str:
    n, rate = args.users, args.rate
    sync, seq, server = results["sync"], results["sequential"], results["sync_server"]
    ideal = n / rate
    ratio = sync["wall_s"] / ideal
    stalls = sync["stalls_s"][1:]
    checked = sync["checked"]
    no_429 = sync["throttled"] == 0 and server["throttled"] == 0
    under_limit = server["max_accepted_in_window"] <= server["limit"]
    estimate = seq["wall_s"] * n / seq["users"]
    speedup, best = estimate / sync["wall_s"], estimate / ideal
    if speedup >= 10:
        speedup_status = "met"
    elif best < 10:
        speedup_status = f"not reachable at R = {rate}/s (at most {best:.1f}×)"
    else:
        speedup_status = f"**NOT met** (needs ≤ {best / 10:.3f}× N/R)"
    rows = [
        (
            f"sync (DAG building blocks): {n:,} users, {sync['chunks']} chunk(s) of {args.batch_size:,}, "
            f"{args.workers} workers, at {rate} req/s",
            f"{sync['wall_s']:.2f} s; {sync['api_calls']:,} client calls ({sync['chunks']} for tokens), "
            f"429s: {sync['throttled']} seen by the client, {server['throttled']} sent by the sandbox; "
            f"most accepted in 1 s: {server['max_accepted_in_window']} (limit {server['limit']}); "
            f"chunks 2+ waited {sum(stalls):.2f} s in all from their start to their first call "
            f"({max(stalls, default=0):.2f} s at most); "
            f"urllib3 'Connection pool is full' warnings: {results['pool_full']:,}",
            f"N/R = {ideal:.2f} s",
            f"{ratio:.3f}×",
            "≤ 1.10× N/R, 0 × 429, ≤ R in any 1 s",
            verdict(ratio <= 1.10 and no_429 and under_limit),
        ),
        (
            "sync: answers vs the sandbox's expected_kind",
            f"{checked['found']:,} found, {checked['not_found']:,} not found, {checked['failed']} failed; "
            f"wrong: {checked['wrong']}",
            "—",
            "—",
            "0 wrong, 0 failed",
            verdict(checked["wrong"] == 0 and checked["failed"] == 0),
        ),
        (
            f"sequential loop (the old way): measured on {seq['users']:,} users, ×{n / seq['users']:,.2f}",
            f"{estimate:.1f} s for {n:,} ({seq['wall_s']:.2f} s for {seq['users']:,}: "
            f"{seq['wall_s'] / seq['users'] * 1000:.1f} ms per user); wrong: {seq['checked']['wrong']}",
            "—",
            "—",
            "—",
            "—",
        ),
        (
            "speed-up: sequential estimate / sync",
            f"{speedup:.1f}×",
            f"sequential / (N/R) = {best:.1f}×",
            f"{speedup / best:.3f} of it",
            "≥ 10× when R allows it",
            speedup_status,
        ),
        (
            "round trips (client-side Response.elapsed): the server keeps up",
            f"sync: {trips_text(sync['round_trips'])}; sequential: {trips_text(seq['round_trips'])}",
            f"latency {args.latency * 1000:.0f} ms",
            "—",
            "p50 ≈ latency",
            "—",
        ),
    ]
    header = ("measurement", "ours", "ideal", "ratio", "target", "status")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    chunk_walls = ", ".join(f"{s:.2f}" for s in sync["stalls_s"])
    held = 1 + RateLimiter.MARGIN + sync["round_trips"]["mean_ms"] / 1000  # seconds one call holds its place
    bound = sync["api_calls"] * held / rate
    notes = [
        "",
        f"{info['date']} · {info['nproc']} CPUs ({info['cpu']}) · {info['memory']} RAM · Python {info['python']}"
        f"{' · --quick' if args.quick else ''}",
        f"Sandbox: PortailDFData({results['rows']:,} rows, seed {SEED}), the first {n:,} users with an email in id "
        f"order; {rate} req/s per account, {args.latency * 1000:.0f} ms latency per API answer; server: "
        f"{'uvicorn in a thread of this process' if args.server == 'thread' else 'python -m sandbox portaildf'}.",
        f"Per chunk, seconds from its start to its first call: {chunk_walls}.",
        f"The client's limiter holds each call's place from its start until 1 s + {RateLimiter.MARGIN * 1000:.0f} ms "
        f"after its answer (0 × 429 whenever the server counts it): with the mean round trip of "
        f"{sync['round_trips']['mean_ms']:.1f} ms, {sync['api_calls']:,} calls need at least "
        f"{sync['api_calls']:,} × {held:.4f} s / {rate} = {bound:.2f} s ({bound / ideal:.3f}× N/R); the sync took "
        f"{sync['wall_s'] / bound:.3f}× that. Best speed-up with that limiter: {estimate / bound:.1f}×.",
    ]
    return "\n".join(lines + notes) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 users, sequential loop over 100")
    parser.add_argument("--users", type=int, help="users to look up (default 10,000; --quick 2,000)")
    parser.add_argument("--rate", type=int, default=300, help="sandbox and client rate limit, req/s")
    parser.add_argument("--workers", type=int, default=32, help="num_workers of each chunk")
    parser.add_argument("--batch-size", type=int, default=1000, help="users per chunk (the DAG's batch_size)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the sandbox adds to each API answer")
    parser.add_argument(
        "--sequential-sample", type=int, help="users the sequential loop looks up (default 300, --quick 100)"
    )
    parser.add_argument(
        "--server",
        choices=("thread", "process"),
        default="thread",
        help="sandbox in a thread of this process, or in a process of its own",
    )
    args = parser.parse_args()
    args.users = args.users or (2000 if args.quick else 10_000)
    args.sequential_sample = args.sequential_sample or (100 if args.quick else 300)

    info = machine()
    data, users = app_users(args.users)
    results: dict[str, Any] = {"rows": data.user_count}
    pool_full = PoolFull()
    logging.getLogger("urllib3.connectionpool").addFilter(pool_full)
    try:
        with sandbox(data, args.rate, args.latency, args.server) as url:
            state = sandbox_state(url)
            step = time.perf_counter()
            sync = bench_sync(url, users, args.rate, args.workers, args.batch_size)
            after_sync = sandbox_state(url)
            results["pool_full"] = pool_full.count
            print(f"sync: {time.perf_counter() - step:.1f} s", file=sys.stderr)
            time.sleep(1.1)  # the sync's last second of calls out of the sandbox's window

            step = time.perf_counter()
            sequential = bench_sequential(url, users[: args.sequential_sample])
            after_sequential = sandbox_state(url)
            print(f"sequential: {time.perf_counter() - step:.1f} s", file=sys.stderr)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)

    sync["checked"] = check_answers(data, users, sync.pop("answers"))
    sequential["checked"] = check_answers(data, users, sequential.pop("answers"))
    results.update(
        sync=sync,
        sync_server=server_counts(state, after_sync),
        sequential=sequential,
        sequential_server=server_counts(after_sync, after_sequential),
    )

    table = build_table(args, results, info)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "portaildf-latest.md").write_text(f"# portaildf_user_kind lookups benchmark\n\n{table}")
    raw = json.dumps({"info": info, "args": vars(args), "results": results}, indent=2)
    (RESULTS / "portaildf-latest.json").write_text(raw)


if __name__ == "__main__":
    main()
