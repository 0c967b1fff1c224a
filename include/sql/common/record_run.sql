-- A run's report: its row becomes 'success' (errors of earlier failed attempts stay listed).
INSERT INTO sync_runs (dag_id, run_id, status, mode, dry_run, started_at, watermark, report)
VALUES (%(dag_id)s, %(run_id)s, 'success', %(mode)s, %(dry_run)s, %(started_at)s, %(watermark)s, %(report)s)
ON CONFLICT (dag_id, run_id) DO UPDATE SET
    status = 'success', mode = EXCLUDED.mode, dry_run = EXCLUDED.dry_run, started_at = EXCLUDED.started_at,
    finished_at = now(), watermark = EXCLUDED.watermark, report = EXCLUDED.report
