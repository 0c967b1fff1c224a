"""usersync: the building blocks every sync DAG is made of.

api       ApiClient on HttpHook: connection-driven base URL and secrets, auth flows, rate limits, retries
staging   paginated fetch to per-run staging files (ObjectStoragePath), resumable
load      COPY into <entity>_delta, set-based upsert in one transaction, deletion guard
window    which slice of the source a run fetches (incremental, interval, full)
branch    skip a sync when its target table is already populated
report    the run report (log table, XCom, sync_runs)
db        a sync's target database: connection, schema, SQL files
"""
