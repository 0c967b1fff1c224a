-- Where the next incremental run starts: the watermark of the DAG's last run that stored one (only runs that read
-- everything since the previous watermark do); and when the last full read started (a daily one reconciles).
-- No watermark means no such run yet (interval runs store none): the next run reads everything.
SELECT (SELECT watermark FROM sync_runs
        WHERE dag_id = %(dag_id)s AND status = 'success' AND NOT dry_run AND watermark IS NOT NULL
        ORDER BY finished_at DESC LIMIT 1) AS watermark,
       (SELECT max(coalesce(started_at, finished_at)) FROM sync_runs
        WHERE dag_id = %(dag_id)s AND status = 'success' AND NOT dry_run AND watermark IS NOT NULL
          AND mode = 'full') AS last_full
