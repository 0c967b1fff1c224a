-- Where the next incremental run starts: the watermark of the DAG's last run that wrote.
SELECT watermark
FROM sync_runs
WHERE dag_id = %(dag_id)s AND NOT dry_run AND watermark IS NOT NULL
ORDER BY finished_at DESC
LIMIT 1
