-- The window's events the API no longer lists in it (deleted, or moved out of the window) are kept and marked
-- status 'CANCELLED' (as the original system does; Gazelle's own value is 'CANCELED'): the day views and
-- late-assignment checks read them. The window is the days [startOn, endOn] in the account's zone. Events
-- quarantined in this run are left alone. active_before (the window's rows not yet so marked) lets the caller
-- refuse an answer that looks truncated.
WITH in_window AS (
    SELECT id FROM events
    WHERE local_date BETWEEN %(startOn)s::date AND %(endOn)s::date
      AND status IS DISTINCT FROM 'CANCELLED'
),
cancelled AS (
    UPDATE events e
    SET status = 'CANCELLED', ingested_at = now()
    FROM in_window w
    WHERE e.id = w.id
      AND NOT EXISTS (SELECT 1 FROM events_delta d WHERE d.id = e.id)
      AND NOT EXISTS (SELECT 1 FROM quarantine q
                      WHERE q.run_id = %(run_id)s AND q.entity = %(entity)s AND q.record->>'id' = e.id)
    RETURNING 1
)
SELECT (SELECT count(*) FROM cancelled) AS marked,
       (SELECT count(*) FROM in_window) AS active_before
