-- Full refresh: mark (never delete) the students the API no longer returns. A record quarantined in
-- this run is still in the source, so it is not marked. active_before lets the caller refuse the run.
WITH marked AS (
    UPDATE users u
    SET deleted_at = now(), ingested_at = now()
    WHERE u.deleted_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM users_delta d WHERE d.id = u.id)
      AND NOT EXISTS (SELECT 1 FROM quarantine q
                      WHERE q.run_id = %(run_id)s AND q.entity = %(entity)s AND q.record->>'id' = u.id::text)
    RETURNING 1
)
SELECT (SELECT count(*) FROM marked) AS marked,
       (SELECT count(*) FROM users WHERE deleted_at IS NULL) AS active_before
