-- A task failed for good: the run's row becomes 'failed' and the error joins its list (never overwritten).
INSERT INTO sync_runs (dag_id, run_id, status, dry_run, started_at, errors)
VALUES (%(dag_id)s, %(run_id)s, 'failed', %(dry_run)s, %(started_at)s, jsonb_build_array(%(error)s::jsonb))
ON CONFLICT (dag_id, run_id) DO UPDATE SET
    status = 'failed', finished_at = now(), errors = sync_runs.errors || EXCLUDED.errors
