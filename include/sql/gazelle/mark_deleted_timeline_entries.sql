-- The window's timeline entries the API no longer lists in it are removed: the table mirrors each window it
-- synced. Entries quarantined in this run are kept. active_before lets the caller refuse a truncated answer.
WITH in_window AS (
    SELECT id FROM timeline_entries
    WHERE occurred_at BETWEEN %(from)s::timestamptz AND %(to)s::timestamptz
),
removed AS (
    DELETE FROM timeline_entries t
    USING in_window w
    WHERE t.id = w.id
      AND NOT EXISTS (SELECT 1 FROM timeline_entries_delta d WHERE d.id = t.id)
      AND NOT EXISTS (SELECT 1 FROM quarantine q
                      WHERE q.run_id = %(run_id)s AND q.entity = %(entity)s AND q.record->>'id' = t.id)
    RETURNING 1
)
SELECT (SELECT count(*) FROM removed) AS marked,
       (SELECT count(*) FROM in_window) AS active_before
