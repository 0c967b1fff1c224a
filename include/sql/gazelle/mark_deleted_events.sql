-- The window's events the API no longer lists in it (deleted, or moved to another day) are removed: the table
-- mirrors each window it synced (a moved event comes back with the window of its new day). Events quarantined
-- in this run are kept. active_before lets the caller refuse an answer that looks truncated.
WITH in_window AS (
    SELECT id FROM events
    WHERE start >= %(startOn)s::date::timestamp AT TIME ZONE 'UTC'
      AND start < (%(endOn)s::date + 1)::timestamp AT TIME ZONE 'UTC'
),
removed AS (
    DELETE FROM events e
    USING in_window w
    WHERE e.id = w.id
      AND NOT EXISTS (SELECT 1 FROM events_delta d WHERE d.id = e.id)
      AND NOT EXISTS (SELECT 1 FROM quarantine q
                      WHERE q.run_id = %(run_id)s AND q.entity = %(entity)s AND q.record->>'id' = e.id)
    RETURNING 1
)
SELECT (SELECT count(*) FROM removed) AS marked,
       (SELECT count(*) FROM in_window) AS active_before
