"""ds_to_grist: a first sync of N dossiers x 40 champs into the Grist sandbox and an unchanged re-sync, through the
DAG (dag.test()), next to the old approach (every dossier re-read and compared one by one through the Grist API).

    .venv/bin/python bench/ds_to_grist.py                    2,000 dossiers x 40 champs
    .venv/bin/python bench/ds_to_grist.py --dossiers 10000

Both sandboxes run in this process's threads (as in the tests), with no rate limit, so what is measured is this
code's own cost; the bound the real APIs impose is computed next to it: DS serves 100 dossiers a request and
400 requests a minute per token; Grist takes 1 MB per body and 10 requests in flight per document (the figure
printed is the bodies the DAG sent, over 10 at a time at the latency measured per body here). Results:
bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(tempfile.mkdtemp(prefix="usersync-bench-ds-grist-"))
sys.path[:0] = [str(ROOT), str(ROOT / "plugins"), str(ROOT / "tests")]
from tools.airflow_env import airflow_env  # noqa: E402  (imports no Airflow)

os.environ.update(airflow_env(WORK / "airflow", WORK / "staging", log_level="WARNING"))

import requests  # noqa: E402

from sandbox.common import serve  # noqa: E402
from sandbox.ds import DEFAULT_TOKEN, DSData, TokenRights  # noqa: E402
from sandbox.ds import create_app as ds_app  # noqa: E402
from sandbox.grist import DEFAULT_API_KEY, DEFAULT_DOC_ID  # noqa: E402
from sandbox.grist import create_app as grist_app  # noqa: E402
from tools.embedded_pg import running  # noqa: E402

DEMARCHE = 201


def conn(url: str, secret: str) -> str:
    return json.dumps({"conn_type": "http", "host": url, "password": secret, "extra": {"timeout": 60}})


def run(dag_id: str) -> tuple[float, dict]:
    from airflow.dag_processing.dagbag import DagBag
    from dagrun import xcom

    dag = DagBag(dag_folder=str(ROOT / "dags" / "ds_to_grist.py")).get_dag(dag_id)
    started = time.perf_counter()
    dag_run = dag.test()
    seconds = time.perf_counter() - started
    tis = dag_run.get_task_instances()
    states = {ti.task_id: str(ti.state) for ti in tis}
    assert set(states.values()) == {"success"}, states
    report = xcom(dag_run, "report_run")
    report["task_s"] = {ti.task_id: round((ti.end_date - ti.start_date).total_seconds(), 1) for ti in tis}
    return seconds, report


def old_approach(sample: int) -> dict:
    """The old app's re-sync: read every dossier from DS, then per dossier and table, GET its Grist record and
    compare (writing it when it differs). Run on the first `sample` dossiers: its cost is per dossier."""
    from usersync import ds, ds_grist
    from usersync.grist import GristClient

    api = ds.client("ds_api")
    schema = ds.schema(ds.fetch_descriptors(api, DEMARCHE))
    client = GristClient("grist_api", DEFAULT_DOC_ID)
    started = time.perf_counter()
    writes = 0
    dossiers, state = [], ds.first_page()
    paginate = ds.dossiers_paginator(api, DEMARCHE)
    while state is not None and len(dossiers) < sample:
        page = paginate(state)
        dossiers += page.records
        state = page.next
    for dossier in dossiers[:sample]:
        for table, rows in ds.flatten(dossier, schema).items():
            grist_table, key = ds_grist.TABLES[table]
            stored = {
                r["fields"][key[0]]: r["fields"]
                for r in client.records(grist_table, filter={"number": [dossier["number"]]})
            }
            differ = [
                row for row in rows if any(stored.get(row[key[0]], {}).get(c, "missing") != v for c, v in row.items())
            ]
            if differ:
                client.add_or_update(grist_table, differ, key)
                writes += 1
    return {
        "dossiers": len(dossiers[:sample]),
        "seconds": round(time.perf_counter() - started, 1),
        "ds_calls": api.stats.calls,
        "grist_calls": client.api.stats.calls,
        "grist_writes": writes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dossiers", type=int, default=2000)
    parser.add_argument("--champs", type=int, default=40)
    parser.add_argument("--old-sample", type=int, default=1000, help="dossiers the old approach re-syncs (then scaled)")
    args = parser.parse_args()
    config = WORK / "ds_to_grist.yaml"
    config.write_text(f"configurations:\n  - {{name: bench, demarche: {DEMARCHE}, document: {DEFAULT_DOC_ID}}}\n")
    os.environ["USERSYNC_DS_TO_GRIST_CONFIG"] = str(config)
    data = DSData(((DEMARCHE, args.dossiers, args.champs),), seed=11)
    try:
        unlimited = ds_app(data, tokens={DEFAULT_TOKEN: TokenRights()}, rate_limit=10_000_000)
        with running(WORK / "pg") as pg, serve(unlimited) as ds_url, serve(grist_app()) as grist_url:
            from airflow.utils.db import upgradedb

            upgradedb()
            os.environ["AIRFLOW_CONN_DS_TO_GRIST_DB"] = pg.url.replace("postgresql://", "postgres://")
            os.environ["AIRFLOW_CONN_DS_API"] = conn(ds_url, DEFAULT_TOKEN)
            os.environ["AIRFLOW_CONN_GRIST_API"] = conn(grist_url, DEFAULT_API_KEY)

            def grist_state():
                return requests.get(f"{grist_url}/_sandbox/state", timeout=10).json()["grist"]

            load = [os.getloadavg()[0]]
            first_s, first = run("ds_to_grist__bench")
            load.append(os.getloadavg()[0])
            after_first = grist_state()
            again_s, again = run("ds_to_grist__bench")
            after_again = grist_state()
            load.append(os.getloadavg()[0])
            old = old_approach(min(args.old_sample, args.dossiers))
            scale = args.dossiers / old["dossiers"]
            old["scaled_to_all"] = {k: round(old[k] * scale) for k in ("seconds", "ds_calls", "grist_calls")}
            puts = after_first["endpoints"].get("PUT records", 0)
            ds_calls = first["ds_api"]["api_calls"]
            result = {
                "dossiers": args.dossiers,
                "champs": args.champs,
                "first_sync_s": round(first_s, 1),
                "first_ds_calls": ds_calls,
                "first_grist_put_bodies": puts,
                "first_rows_written": after_first["rows_written"],
                "first_grist_413_429_max_in_flight": [
                    after_first[k] for k in ("status_413", "status_429", "max_in_flight")
                ],
                "ds_bound_s": round(ds_calls * 60 / 400, 1),  # 400 requests a minute per token
                "resync_s": round(again_s, 1),
                "resync_grist_writes": after_again["writes"] - after_first["writes"],
                "old_resync": old,
                "load_average_1min": load,  # before the first sync, after it, after the re-sync
                "first_tasks_s": first["task_s"],
                "resync_tasks_s": again["task_s"],
            }
            print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
