"""The measured step of bench/run.py, importable there and runnable on its own in a fresh process.

    python bench/_step.py load PREFIX RUN_ID   load.stage + load.upsert of PREFIX; prints the timings as JSON
    python bench/_step.py imports              imports what `load` imports, then exits: the RSS baseline
    python bench/_step.py rss ARGS...          runs `python bench/_step.py ARGS...` as its only child, then
                                               prints that child's JSON output plus its peak RSS, read from
                                               resource.getrusage(RUSAGE_CHILDREN).ru_maxrss

The environment (AIRFLOW_HOME, AIRFLOW_CONN_INTRA42_DB, ...) is the one bench/run.py set and passed down.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def import_modules() -> tuple[Any, Any, Any]:
    """What a stage/upsert task imports: usersync.load (Airflow's ObjectStoragePath, psycopg) and TargetDb."""
    for path in (str(ROOT / "plugins"), str(ROOT)):
        if path not in sys.path:
            sys.path.insert(0, path)
    from usersync import load
    from usersync.db import TargetDb
    from usersync.entities import INTRA42_USERS

    return load, TargetDb, INTRA42_USERS


def timed_load(prefix: str, run_id: str) -> dict[str, Any]:
    """One stage + upsert exactly as the DAG's two tasks do it; wall time of each."""
    load, TargetDb, users = import_modules()
    db = TargetDb("intra42_db", "intra42", sync="intra42")
    started = time.perf_counter()
    staged = load.stage(db, users, prefix, run_id)
    staged_at = time.perf_counter()
    written = load.upsert(db, users, run_id=run_id)
    done = time.perf_counter()
    written["watermark"] = str(written.get("watermark"))
    return {"stage_s": staged_at - started, "upsert_s": done - staged_at, "staged": staged, "written": written}


def main(argv: list[str]) -> None:
    command = argv[0]
    if command == "load":
        print(json.dumps(timed_load(argv[1], argv[2])))
    elif command == "imports":
        import_modules()
        print(json.dumps({}))
    elif command == "rss":
        import resource
        import subprocess

        child = subprocess.run([sys.executable, __file__, *argv[1:]], capture_output=True, text=True)
        if child.returncode:
            sys.exit(f"{' '.join(argv[1:])} failed:\n{child.stderr}")
        result = json.loads(child.stdout.strip().splitlines()[-1])
        result["maxrss_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
        print(json.dumps(result))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
