"""
### ds_to_grist__&lt;name&gt;: the dossiers of a Démarches Simplifiées démarche -> a Grist document

One DAG per enabled configuration of dags/ds_to_grist.yaml (or the file USERSYNC_DS_TO_GRIST_CONFIG names).
Daily at the configuration's time (Europe/Paris), +15 min per earlier configuration on the same document.

Per run: both APIs answer -> the démarche's descriptors -> the Grist tables `Dossiers`, `Champs`, `Annotations`,
`Repetable_rows`, `Instructeurs` and their columns made to match (columns a person added are kept) -> the dossiers
updated since the last successful run (everything on the first run or with `full_refresh`; `since` overrides),
staged as JSON -> COPY -> the Postgres mirror (schema `ds_<name>`) -> one set-based upsert finds what changed ->
only those rows go to Grist (add-or-update, bodies under 1 MB, at most 10 in flight) -> dossiers DS deleted, and
dossiers that no longer pass the filters (state or group changed; after a full read, those not listed), are
removed -> instructeurs kept in step -> report (log, XCom, `ds_<name>.sync_runs`).

Connections: the configuration's DS connection (password = token), Grist connection (password = API key), and
`ds_to_grist_db` (Postgres).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow.sdk import CronTriggerTimetable, Param, TaskGroup, dag, task
from usersync import dag_parts, ds, ds_grist, report, staging
from usersync.db import SQL_DIR, TargetDb, session_settings
from usersync.grist import GristClient


def build(config: ds_grist.Config):
    db = TargetDb(ds_grist.DB_CONN, config.schema, sync="ds_to_grist")

    @dag(
        dag_id=config.dag_id,
        description=f"Démarches Simplifiées démarche {config.demarche} -> Grist document {config.document}",
        schedule=CronTriggerTimetable(config.cron, timezone="Europe/Paris"),
        start_date=datetime(2026, 1, 1, tzinfo=UTC),
        catchup=False,
        max_active_runs=1,
        dagrun_timeout=timedelta(hours=2),
        default_args=dag_parts.default_args(db),
        tags=["usersync", "ds", "grist"],
        params={
            "full_refresh": Param(False, type="boolean", description="Re-read every dossier and re-write every row."),
            "dry_run": Param(
                False, type="boolean", description="Read and compute; write nothing to Grist (nor the mirror)."
            ),
            "since": Param(
                None,
                type=["null", "string"],
                format="date-time",
                description="Read the dossiers updated since this time instead of the last successful run's watermark.",
            ),
        },
        template_searchpath=[str(SQL_DIR)],
        user_defined_macros={"schema": config.schema},
        doc_md=__doc__,
    )
    def sync():
        with TaskGroup("ds"):
            ds_up = dag_parts.api_sensor(config.ds_conn, ds.GRAPHQL_PATH, up=(200, 400, 401, 403, 405))
        with TaskGroup("grist"):
            grist_up = dag_parts.api_sensor(config.grist_conn, f"api/docs/{config.document}/tables", up=(200, 401, 403))
        create_tables = dag_parts.create_tables(ds_grist.DB_CONN, config.schema, "ds_to_grist", [])

        def folder(dag_run):
            path = staging.run_dir(dag_run.dag_id, dag_run.run_id)
            path.mkdir(parents=True, exist_ok=True)
            return path

        @task
        def match_grist_schema(params=None, dag_run=None) -> dict:
            """The démarche's descriptors (staged) -> the Grist tables and columns (added, never dropped)."""
            api = ds.client(config.ds_conn)
            descriptors = ds.fetch_descriptors(api, config.demarche)
            staging.write_json(folder(dag_run) / "descriptors.json", descriptors)
            tables = ds_grist.grist_tables(ds.schema(descriptors))
            figures = {"ds_api": api.stats.as_dict()}
            if params["dry_run"]:
                return {**figures, "columns_added": {}, "grist_api": {}}
            client = GristClient(config.grist_conn, config.document)
            changes = client.ensure_schema(tables)
            return {
                **figures,
                "columns_added": changes.columns_added,
                "kept_columns": changes.undeclared,
                "type_conflicts": {k: list(v) for k, v in changes.type_conflicts.items()},
                "grist_api": client.api.stats.as_dict(),
            }

        @task
        def fetch_dossiers(params=None, dag_run=None) -> dict:
            """Stage the dossiers updated since the watermark, the deleted ones and the instructor groups."""
            last = db.query("last_watermark", {"dag_id": dag_run.dag_id}) or {}
            watermark = last.get("watermark")
            since = params["since"] or (None if params["full_refresh"] or watermark is None else watermark.isoformat())
            started = datetime.now(UTC)
            api = ds.client(config.ds_conn)
            # The filters are applied in load_mirror. An incremental read lists every state, so that a dossier
            # whose state or group changed comes back and leaves the mirror if it no longer passes them; a full
            # read asks for the selected states only (what it does not list leaves the mirror).
            paginate = ds.dossiers_paginator(
                api,
                config.demarche,
                states=None if since else config.states or None,
                updated_since=since,
                # a day early: the range is on the Paris date of dateDepot
                created_since=None
                if since or not config.deposited_from
                else f"{config.deposited_from - timedelta(days=1)}T00:00:00Z",
            )
            manifest = staging.fetch_to_staging(folder(dag_run) / "dossiers", paginate, ds.first_page(), api)
            at_fetch_end = api.stats.as_dict()  # the manifest counts the fetch's calls (earlier tries' too)
            deleted = ds.fetch_deleted(api, config.demarche, since)
            groupes = ds.fetch_groupes(api, config.demarche)
            if config.groupes:
                groupes = [g for g in groupes if g["number"] in config.groupes]
            staging.write_json(
                folder(dag_run) / "others.json",
                {"deleted": [d["number"] for d in deleted], "instructeurs": ds.instructeur_rows(groupes)},
            )
            stats = api.stats.as_dict()
            return {
                "since": since,
                "watermark": started.isoformat(),
                "fetched": manifest["records"],
                "pages": manifest["pages"],
                "deleted": len(deleted),
                "ds_api": {k: manifest[k] + stats[k] - at_fetch_end[k] for k in ("api_calls", "throttled", "retries")},
            }

        @task
        def load_mirror(matched: dict, fetched: dict, params=None, dag_run=None) -> dict:
            """Flatten, COPY, stage, upsert into the mirror and queue what changed for Grist; a dry run rolls
            everything back after counting."""
            descriptors = staging.read_json(folder(dag_run) / "descriptors.json")
            others = staging.read_json(folder(dag_run) / "others.json")
            schema = ds.schema(descriptors)
            mirror = ds_grist.entities(schema)
            rows = {name: [] for name in mirror}
            refused, listed, deselected = [], [], []
            for page in staging.staged_pages(folder(dag_run) / "dossiers"):
                for dossier in staging.read_ndjson(page):
                    listed.append(dossier["number"])
                    if not config.selects(dossier):
                        deselected.append(dossier["number"])
                        continue
                    try:
                        flat = ds.flatten(dossier, schema)
                    except (KeyError, TypeError, ValueError) as exc:
                        refused.append((dossier, f"cannot be flattened: {type(exc).__name__}: {exc}"))
                        continue
                    for name, table_rows in flat.items():
                        rows[name] += table_rows
            rows["instructeurs"] = others["instructeurs"]
            from airflow.providers.postgres.hooks.postgres import PostgresHook

            conn = PostgresHook(postgres_conn_id=ds_grist.DB_CONN).get_conn()
            conn.prepare_threshold = None
            try:
                with conn.cursor() as cur:
                    cur.execute(session_settings(config.schema))
                    added = ds_grist.prepare(cur, config.schema, mirror)
                    for name, table_rows in rows.items():
                        ds_grist.copy_rows(cur, name, table_rows)
                    # A column added to a Grist table holds Grist's default (0, false, "") in the rows already
                    # there: those rows are rewritten once, with the real (empty) values.
                    grown = {name for name, (table, _) in ds_grist.TABLES.items() if table in matched["columns_added"]}
                    counts = ds_grist.load(
                        cur,
                        mirror,
                        dag_run.run_id,
                        deleted=others["deleted"],
                        deselected=deselected,
                        listed=listed if fetched["since"] is None else None,
                        refused=refused,
                        rewrite=set(mirror) if params["full_refresh"] else grown,
                    )
                if params["dry_run"]:
                    conn.rollback()
                else:
                    conn.commit()
            finally:
                conn.close()
            return {"selected": len(listed) - len(deselected), "mirror_columns_added": added, **counts}

        @task
        def write_to_grist(loaded: dict, params=None) -> dict:
            """The pending rows to Grist; each table's entries cleared once Grist accepted them."""
            if params["dry_run"]:
                return {"tables": {}, "grist_api": {}, "too_large": 0}
            client = GristClient(config.grist_conn, config.document)
            with db.transaction() as cur:
                written = ds_grist.write_pending(cur, client, _run_id(), session_settings(config.schema))
            return {"tables": written.tables, "too_large": written.too_large, "grist_api": client.api.stats.as_dict()}

        def _run_id():
            from airflow.sdk import get_current_context

            return get_current_context()["dag_run"].run_id

        @task
        def report_run(matched: dict, fetched: dict, loaded: dict, written: dict, params=None, dag_run=None) -> dict:
            grist_api = dict(matched["grist_api"])
            for key, value in written["grist_api"].items():
                grist_api[key] = grist_api.get(key, 0) + value
            ds_api = dict(fetched["ds_api"])
            for key, value in matched["ds_api"].items():
                ds_api[key] = ds_api.get(key, 0) + value
            tables = written["tables"] or {
                ds_grist.TABLES[k.split(".")[0]][0] + (".removed" if k.endswith("remove") else ".to_write"): n
                for k, n in loaded["pending"].items()
            }
            return report.close_run(
                db,
                dag_run,
                dry_run=params["dry_run"],
                mode="full" if fetched["since"] is None else "incremental",
                since=fetched["since"],
                fetched=fetched["fetched"],
                pages=fetched["pages"],
                selected=loaded["selected"],
                deleted_in_ds=fetched["deleted"],
                dossiers_removed=loaded["dossiers_deleted"],
                dossiers_deselected=loaded["dossiers_deselected"],
                quarantined=sum(loaded[t].get("quarantined", 0) for t in ds_grist.TABLES) + written["too_large"],
                quarantined_dossiers=loaded["quarantined_dossiers"],
                columns_added=matched["columns_added"],
                kept_columns=matched.get("kept_columns", {}),
                grist=tables,
                ds_api=ds_api,
                grist_api=grist_api,
                mirror={
                    t: {k: v for k, v in loaded[t].items() if k in ("inserted", "updated", "unchanged", "removed")}
                    for t in ds_grist.TABLES
                },
                api_calls=ds_api.get("api_calls", 0) + grist_api.get("api_calls", 0),
                throttled=ds_api.get("throttled", 0) + grist_api.get("throttled", 0),
                watermark=None if params["dry_run"] else fetched["watermark"],
            )

        matched = match_grist_schema()
        fetched = fetch_dossiers()
        loaded = load_mirror(matched, fetched)
        written = write_to_grist(loaded)
        dag_parts.check_params() >> [ds_up, grist_up, create_tables]
        [ds_up, grist_up] >> matched
        [matched, create_tables] >> fetched
        report_run(matched, fetched, loaded, written)

    return sync()


CONFIG = Path(os.environ.get("USERSYNC_DS_TO_GRIST_CONFIG", ds_grist.CONFIG_FILE))
for _config in ds_grist.configurations(CONFIG.read_text()):
    globals()[_config.dag_id] = build(_config)
