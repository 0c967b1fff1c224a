CREATE UNIQUE INDEX IF NOT EXISTS sync_runs_run_idx ON sync_runs (dag_id, run_id)
