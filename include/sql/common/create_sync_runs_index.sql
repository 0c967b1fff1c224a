CREATE INDEX IF NOT EXISTS sync_runs_dag_finished_idx ON sync_runs (dag_id, finished_at DESC)
