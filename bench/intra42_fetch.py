"""The 42 fetch as the DAG runs it, next to a bare `requests` loop over the same sandbox, pages and rate limit.

    .venv/bin/python bench/intra42_fetch.py                  10,000 students (100 pages), at 10 and 1,000 req/s
    .venv/bin/python bench/intra42_fetch.py --students 40335 --rates 20 --repeats 1

Ours: `staging.fetch_to_staging` through `intra42.users_paginator` and the real client (connection lookup, token,
limiter, retries, one NDJSON file per page, progress and manifest). Bare: one `requests.Session`, a token, then
the same id walk (`range[id]` after the last id, `sort=id`, `page=1`, 100 per page) under a plain sliding window
of R calls per second, each page written to a file. The sandbox (`python -m sandbox intra42`) runs in its own
process, restarted for each rate with that rate as its limit. What is measured: bench/README.md.
"""

from __future__ import annotations

import argparse
import collections
import json
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
RESULTS = ROOT / "bench" / "results"
CLIENT_ID, CLIENT_SECRET = "bench-client-id", "bench-client-secret"
STUDENTS_ONLY = {"filter[kind]": "student", "filter[alumni?]": "false"}
PER_PAGE = 100
WORK = Path(tempfile.mkdtemp(prefix="usersync-bench-fetch-"))

sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]
from tools.airflow_env import airflow_env  # noqa: E402  (imports no Airflow)

os.environ.update(airflow_env(WORK / "airflow", WORK / "staging", log_level="WARNING"))

import requests  # noqa: E402
from airflow.sdk import ObjectStoragePath  # noqa: E402  (imported before any timing, as a task has)
from usersync import intra42, staging  # noqa: E402


class Sandbox:
    """`python -m sandbox intra42` in its own process, on a free port."""

    def __init__(self, students: int, rate: int):
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sandbox",
                "intra42",
                "--port",
                "0",
                "--students",
                str(students),
                "--per-second",
                str(rate),
                "--per-hour",
                "100000000",
                "--client-id",
                CLIENT_ID,
                "--client-secret",
                CLIENT_SECRET,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = self.process.stdout.readline()
        self.url = line.strip().rsplit(" ", 1)[-1]
        assert self.url.startswith("http://"), line

    def stats(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/_sandbox/state", timeout=10).json()["stats"]

    def reset(self) -> None:
        requests.post(f"{self.url}/_sandbox/reset", timeout=10).raise_for_status()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def ours(url: str, rate: int, run: str) -> dict[str, Any]:
    os.environ["AIRFLOW_CONN_INTRA42_API"] = json.dumps(
        {
            "conn_type": "http",
            "host": url,
            "login": CLIENT_ID,
            "password": CLIENT_SECRET,
            "extra": {"rate_limit": f"{rate}/s"},
        }
    )
    started = time.perf_counter()
    api = intra42.client("intra42_api")
    pages = intra42.users_paginator(api, 21, STUDENTS_ONLY, per_page=PER_PAGE)
    manifest = staging.fetch_to_staging(ObjectStoragePath(f"file://{WORK}/ours/{run}"), pages, {"after_id": 0}, api)
    return {
        "wall_s": time.perf_counter() - started,
        "records": manifest["records"],
        "pages": manifest["pages"],
        "calls": manifest["api_calls"],
        "client_429": manifest["throttled"],
    }


def bare(url: str, rate: int, run: str) -> dict[str, Any]:
    """The least a script can do: same requests, a sliding window of `rate` calls per second, 429 → wait."""
    out = WORK / "bare" / run
    out.mkdir(parents=True)
    sent: collections.deque[float] = collections.deque()
    calls = throttled = records = pages = 0

    def call(method: str, path: str, **kwargs) -> requests.Response:
        nonlocal calls, throttled
        while True:
            if len(sent) == rate and (wait := sent[0] + 1.0 - time.monotonic()) > 0:
                time.sleep(wait)
            if len(sent) == rate:
                sent.popleft()
            sent.append(time.monotonic())
            calls += 1
            response = session.request(method, f"{url}{path}", timeout=30, **kwargs)
            if response.status_code != 429:
                response.raise_for_status()
                return response
            throttled += 1
            time.sleep(float(response.headers.get("Retry-After", 1)))

    started = time.perf_counter()
    with requests.Session() as session:
        token = call(
            "POST", "/oauth/token", data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, CLIENT_SECRET)
        ).json()["access_token"]
        session.headers["Authorization"] = f"Bearer {token}"
        after = 0
        while True:
            response = call(
                "GET",
                "/v2/cursus/21/users",
                params={
                    **STUDENTS_ONLY,
                    "sort": "id",
                    "range[id]": f"{after + 1},{2**31 - 1}",
                    "page": 1,
                    "per_page": PER_PAGE,
                },
            )
            body = response.json()
            pages, records = pages + 1, records + len(body)
            (out / f"page-{pages:06d}.ndjson").write_text(
                "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in body)
            )
            if not (body and "next" in response.links):
                break
            after = max(r["id"] for r in body)
    return {
        "wall_s": time.perf_counter() - started,
        "records": records,
        "pages": pages,
        "calls": calls,
        "client_429": throttled,
    }


def measure(students: int, rate: int, repeats: int) -> dict[str, Any]:
    sandbox = Sandbox(students, rate)
    try:
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "bare": []}
        for n in range(repeats):
            for name, fetch in (("bare", bare), ("ours", ours)):  # alternate, so drift hits both alike
                sandbox.reset()
                time.sleep(1.1)  # the previous run's calls leave the sandbox's window
                result = fetch(sandbox.url, rate, f"{rate}-{n}")
                result["server_429"] = sandbox.stats()["throttled"]
                assert result["records"] == students, result
                runs[name].append(result)
        return {
            name: {"median_s": statistics.median(r["wall_s"] for r in results), "runs": results}
            for name, results in runs.items()
        }
    finally:
        sandbox.stop()


def table(students: int, repeats: int, results: dict[int, dict[str, Any]]) -> str:
    pages = -(-students // PER_PAGE)
    lines = [
        f"{students:,} students = {pages} pages of {PER_PAGE}; median of {repeats} run(s) each",
        "",
        "| rate limit (client and sandbox) | ideal N/R | bare requests loop | ours (fetch_to_staging) "
        "| ours / bare "
        "| 429s (bare / ours, sent by the sandbox) |",
        "|---|---|---|---|---|---|",
    ]
    for rate, result in results.items():
        b, o = result["bare"], result["ours"]
        server_429 = (sum(r["server_429"] for r in b["runs"]), sum(r["server_429"] for r in o["runs"]))
        lines.append(
            f"| {rate:,} req/s | {pages / rate:.2f} s | {b['median_s']:.2f} s | {o['median_s']:.2f} s | "
            f"{o['median_s'] / b['median_s']:.3f}× | {server_429[0]} / {server_429[1]} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=10_000)
    parser.add_argument("--rates", default="10,1000", help="comma-separated rate limits (req/s)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    try:
        results = {rate: measure(args.students, rate, args.repeats) for rate in map(int, args.rates.split(","))}
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    text = table(args.students, args.repeats, results)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "intra42-fetch-latest.md").write_text(f"# 42 fetch: ours vs a bare requests loop\n\n{text}")
    (RESULTS / "intra42-fetch-latest.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
