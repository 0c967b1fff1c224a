"""Paginated fetch to staging files.

Each run stages under its own prefix: <root>/<dag_id>/<run_id>/<stream>/
  page-000001.ndjson ...  one file per API page, one JSON record per line
  _progress.json          pages written so far and where to resume (replaced after every page)
  _manifest.json          written once the last page is staged: the fetch's metadata
The JSON files are replaced whole (write then rename), so a killed task leaves a readable state.
A run removes its own folder when it finishes, and folders untouched for RETENTION_DAYS (runs that failed).
The root is USERSYNC_STAGING_URL (an ObjectStoragePath URL: file:///..., s3://conn_id@bucket/...),
by default a local folder under AIRFLOW_HOME. A retried task resumes after the last staged page.
Files hold only what the API returned for records: never tokens or credentials.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from airflow.sdk import ObjectStoragePath

from usersync.api import ApiClient, ApiError

log = logging.getLogger(__name__)

PAGE_GLOB = "page-*.ndjson"
RETENTION_DAYS = 3  # staging a run left behind (it failed for good) is removed after that


@dataclass
class Page:
    records: list[Any]
    next: dict[str, Any] | None  # the state that fetches the following page; None on the last page


# A paginator fetches the page described by a state (JSON-serialisable, so a retry can resume).
Paginator = Callable[[dict[str, Any]], Page]


def staging_root() -> ObjectStoragePath:
    default = "file://" + os.path.join(os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "staging")
    return ObjectStoragePath(os.environ.get("USERSYNC_STAGING_URL", default))


def run_dir(dag_id: str, run_id: str) -> ObjectStoragePath:
    return staging_root() / dag_id / re.sub(r"[^A-Za-z0-9._-]", "_", run_id)


def run_prefix(dag_id: str, run_id: str, stream: str) -> ObjectStoragePath:
    return run_dir(dag_id, run_id) / stream


def read_json(path: ObjectStoragePath) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def write_json(path: ObjectStoragePath, data: Any) -> None:
    """Replace the file whole: a task killed while writing leaves the previous version, never a torn one.

    Locally: write a temporary file, then rename it (atomic on one file system). Object stores write an object
    whole anyway (a PUT replaces it at once, and their rename is a copy), so there it is one write.
    """
    text = json.dumps(data, indent=2, default=str)
    if path.protocol not in ("file", "local"):
        path.write_text(text)
        return
    temporary = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        temporary.write_text(text)
        temporary.replace(path)
    finally:
        if temporary.exists():
            temporary.unlink()


def fetch_to_staging(
    prefix: ObjectStoragePath, paginate: Paginator, first: dict[str, Any], client: ApiClient
) -> dict[str, Any]:
    """Stage every page from `first` on; resume where a previous try stopped. Returns the manifest."""
    if manifest := _staged_earlier(prefix):
        return manifest
    prefix.mkdir(parents=True, exist_ok=True)
    progress = read_json(prefix / "_progress.json") or {
        "pages": 0,
        "records": 0,
        "next": first,
        "started_epoch": time.time(),
        "api": {},
    }
    if progress["pages"]:
        log.info("resuming after %s staged pages", progress["pages"])
    earlier_api = progress["api"]
    state = progress["next"]
    while state is not None:
        page = paginate(state)
        number = progress["pages"] + 1
        write_ndjson(prefix / f"page-{number:06d}.ndjson", page.records)
        progress.update(
            pages=number,
            records=progress["records"] + len(page.records),
            next=page.next,
            api=_sum(earlier_api, client.stats.as_dict()),
        )
        write_json(prefix / "_progress.json", progress)
        log.info("staged page %d (%d records, %d so far)", number, len(page.records), progress["records"])
        state = page.next

    # the API counts as of the last page, this try's calls included
    return _finish(prefix, progress["started_epoch"], progress["pages"], progress["records"], progress["api"])


def fan_out_to_staging(
    prefix: ObjectStoragePath,
    items: Sequence[Any],
    work: Callable[[Any], Any],
    client: ApiClient,
    num_workers: int,
    failed: Callable[[Any], bool] = lambda answer: False,
) -> dict[str, Any]:
    """Stage `work(item)` for every item, as one page, `num_workers` calls at a time; returns the manifest.

    For per-record APIs (one call per user). The client's rate limiter keeps all workers together under the
    API's limits. `work` reports an item's own failure in its answer (`failed` recognises it), and those
    answers are staged with the rest; but when every item failed, the API is failing, not the items, so
    nothing is staged and the task fails (to be retried). A retried task redoes the batch unless an earlier
    try finished it.
    """
    if manifest := _staged_earlier(prefix):
        return manifest
    prefix.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="fan-out") as pool:
        answers = list(pool.map(work, items))
    if answers and all(map(failed, answers)):
        raise ApiError(f"all {len(answers)} calls failed, e.g.: {answers[0]}")
    write_ndjson(prefix / "page-000001.ndjson", answers)
    log.info("staged %d answers from %d workers in %.1fs", len(answers), num_workers, time.time() - started)
    return _finish(prefix, started, 1, len(answers), client.stats.as_dict())


def _staged_earlier(prefix: ObjectStoragePath) -> dict[str, Any] | None:
    """The manifest an earlier try of the task wrote when it staged everything (a retry has nothing to do)."""
    manifest = read_json(prefix / "_manifest.json")
    if manifest:
        log.info("already staged by an earlier try: %s pages, %s records", manifest["pages"], manifest["records"])
    return manifest


def _finish(
    prefix: ObjectStoragePath, started_epoch: float, pages: int, records: int, api: dict[str, int]
) -> dict[str, Any]:
    """Write the fetch's manifest, the mark that everything is staged."""
    manifest = {
        "prefix": str(prefix),
        "fetch_epoch": int(started_epoch),
        "pages": pages,
        "records": records,
        "api_calls": api.get("api_calls", 0),
        "throttled": api.get("throttled", 0),
        "retries": api.get("retries", 0),
        "duration_s": round(time.time() - started_epoch, 3),
    }
    write_json(prefix / "_manifest.json", manifest)
    return manifest


def write_ndjson(path: ObjectStoragePath, records: Iterable[Any]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for record in records:
            # ASCII: any character a record holds, lone UTF-16 surrogates included, is written as a JSON escape,
            # so the file is valid UTF-8 whatever the API sent and Postgres judges each record on its own.
            out.write(json.dumps(record, separators=(",", ":")))
            out.write("\n")


def read_ndjson(path: ObjectStoragePath | str) -> list[Any]:
    with ObjectStoragePath(str(path)).open("r", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def split_to_staging(prefix: ObjectStoragePath, records: Iterable[Any], batch_size: int) -> list[str]:
    """Stage records as pages of `batch_size`; returns the pages' paths (one per batch, for task mapping)."""
    prefix.mkdir(parents=True, exist_ok=True)
    paths = []
    records = iter(records)
    for number, batch in enumerate(iter(lambda: list(itertools.islice(records, batch_size)), []), start=1):
        path = prefix / f"page-{number:06d}.ndjson"
        write_ndjson(path, batch)
        paths.append(str(path))
    return paths


def _sum(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {key: a.get(key, 0) + b.get(key, 0) for key in a.keys() | b.keys()}


def staged_pages(prefix: ObjectStoragePath) -> list[ObjectStoragePath]:
    return sorted(prefix.glob(PAGE_GLOB), key=lambda p: p.name)


def iter_staged_bytes(prefixes: Sequence[ObjectStoragePath], chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Every staged record line, prefix after prefix, page after page, in chunks: what COPY reads."""
    for prefix in prefixes:
        for page in staged_pages(prefix):
            with page.open("rb") as f:
                while chunk := f.read(chunk_size):
                    yield chunk


def clean_up(dag_id: str, run_id: str, keep_days: float = RETENTION_DAYS) -> None:
    """Remove this (finished) run's staging, and any run's untouched for `keep_days` (abandoned): never the files of
    a run still going, which may run alongside (backfills, a manual run during a scheduled one)."""
    mine = run_dir(dag_id, run_id)
    if not mine.parent.exists():
        return
    cutoff = time.time() - keep_days * 86400
    for folder in mine.parent.iterdir():
        if folder.name == mine.name or not _touched_since(folder, cutoff):
            folder.rmdir(recursive=True)


def _touched_since(folder: ObjectStoragePath, cutoff: float) -> bool:
    """Whether the folder or anything in it was written after `cutoff` (epoch seconds)."""
    for path in (folder, *folder.rglob("*")):
        try:
            if path.stat().st_mtime > cutoff:
                return True
        except (OSError, KeyError, AttributeError):  # removed meanwhile; an object store's folder has no time
            continue
    return False
