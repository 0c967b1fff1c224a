"""Staging files: state files survive a killed write; cleanup spares the runs still going."""

from __future__ import annotations

import json
import os
import time

import pytest
from airflow.sdk import ObjectStoragePath
from usersync import staging


class Killed(Exception):
    """The task's process killed mid-write."""


class Stats:
    def as_dict(self):
        return {"api_calls": 1}


class Client:
    stats = Stats()


def killed_while_writing(monkeypatch, name: str):
    """Make the next write of a file called `name` die once the file is emptied, as a kill would."""
    real_write = ObjectStoragePath.write_text

    def write_text(self, data, *args, **kwargs):
        if self.name.startswith((name, f".{name}")):
            monkeypatch.setattr(ObjectStoragePath, "write_text", real_write)
            real_write(self, "", *args, **kwargs)
            raise Killed
        return real_write(self, data, *args, **kwargs)

    monkeypatch.setattr(ObjectStoragePath, "write_text", write_text)


def test_a_kill_while_writing_the_progress_leaves_a_readable_state(tmp_path, monkeypatch):
    prefix = ObjectStoragePath(f"file://{tmp_path}/run/users")
    pages, killed = {0: [{"id": 1}], 1: [{"id": 2}], 2: [{"id": 3}]}, []

    def paginate(state):
        n = state["n"]
        if n == 1 and not killed:
            killed.append(n)
            killed_while_writing(monkeypatch, "_progress.json")  # while recording page 2
        return staging.Page(records=pages[n], next={"n": n + 1} if n < 2 else None)

    with pytest.raises(Killed):
        staging.fetch_to_staging(prefix, paginate, {"n": 0}, Client())

    progress = staging.read_json(prefix / "_progress.json")  # readable: the state after page 1
    assert progress["pages"] == 1
    manifest = staging.fetch_to_staging(prefix, paginate, {"n": 0}, Client())  # the retry resumes
    assert (manifest["pages"], manifest["records"]) == (3, 3)
    records = [r for page in staging.staged_pages(prefix) for r in staging.read_ndjson(page)]
    assert records == [{"id": 1}, {"id": 2}, {"id": 3}]
    assert sorted(p.name for p in prefix.iterdir() if p.name.startswith(".")) == []  # no temporary left


def test_write_json_replaces_the_file_whole(tmp_path):
    path = ObjectStoragePath(f"file://{tmp_path}/_manifest.json")
    staging.write_json(path, {"pages": 1})
    staging.write_json(path, {"pages": 2})
    assert json.loads((tmp_path / "_manifest.json").read_text()) == {"pages": 2}
    assert os.listdir(tmp_path) == ["_manifest.json"]


def test_staged_lines_are_ascii_whatever_the_api_sent(tmp_path):
    path = ObjectStoragePath(f"file://{tmp_path}/page-000001.ndjson")
    staging.write_ndjson(path, [{"name": "Half \ud83d", "nul": "a\x00b", "ok": "Zoé"}])
    data = (tmp_path / "page-000001.ndjson").read_bytes()
    assert data.isascii()
    assert data == b'{"name":"Half \\ud83d","nul":"a\\u0000b","ok":"Zo\\u00e9"}\n'


def test_clean_up_removes_the_finished_run_and_abandoned_ones_only(tmp_path, monkeypatch):
    monkeypatch.setenv("USERSYNC_STAGING_URL", f"file://{tmp_path}")
    for run in ("finished", "running", "abandoned", "just_started"):
        folder = staging.run_prefix("dag", run, "users")
        folder.mkdir(parents=True)
        if run != "just_started":  # a live run's folder before its first page
            (folder / "page-000001.ndjson").write_text("{}\n")
    old = time.time() - 4 * 86400
    for path in (tmp_path / "dag" / "abandoned").rglob("*"):
        os.utime(path, (old, old))
    os.utime(tmp_path / "dag" / "abandoned", (old, old))

    staging.clean_up("dag", "finished")

    assert sorted(os.listdir(tmp_path / "dag")) == ["just_started", "running"]
