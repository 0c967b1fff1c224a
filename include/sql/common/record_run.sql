INSERT INTO sync_runs (dag_id, run_id, mode, dry_run, started_at, watermark, report)
VALUES (%(dag_id)s, %(run_id)s, %(mode)s, %(dry_run)s, %(started_at)s, %(watermark)s, %(report)s)
