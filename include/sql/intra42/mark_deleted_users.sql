-- Full refresh: mark (never delete) the students the API no longer returns. A record quarantined in
-- this run is still in the source, so it is not marked (a line Postgres could not store as jsonb is kept as a JSON
-- string: its id is read from the text). Nor is a row written since this run's fetch started
-- (%(fetch_started)s, epoch seconds): another run wrote it from a newer answer. active_before lets the caller
-- refuse the run.
WITH quarantined AS (
    SELECT CASE WHEN jsonb_typeof(record) = 'string' THEN substring(record #>> '{}' FROM '^\{"id":(\d+)[,}]')
                ELSE record->>'id' END AS id
    FROM quarantine
    WHERE run_id = %(run_id)s AND entity = %(entity)s
),
marked AS (
    UPDATE users u
    SET deleted_at = now(), ingested_at = now()
    WHERE u.deleted_at IS NULL
      AND u.ingested_at < coalesce(to_timestamp(%(fetch_started)s), 'infinity')
      AND NOT EXISTS (SELECT 1 FROM users_delta d WHERE d.id = u.id)
      AND NOT EXISTS (SELECT 1 FROM quarantined q WHERE q.id = u.id::text)
    RETURNING 1
)
SELECT (SELECT count(*) FROM marked) AS marked,
       (SELECT count(*) FROM users WHERE deleted_at IS NULL) AS active_before
