-- events_raw -> events_delta: typed events with the ids of their pianos, the last record per id winning.
-- An event whose client is not in clients goes to quarantine.
WITH checked AS (
    SELECT seq, record,
        CASE
            WHEN jsonb_typeof(record) <> 'object' THEN 'not a JSON object'
            WHEN jsonb_typeof(record->'id') IS DISTINCT FROM 'string' THEN 'id: missing or not a string'
            WHEN record->>'start' !~ '^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$'
                THEN 'start: missing or not an ISO 8601 timestamp'
            WHEN jsonb_typeof(record->'duration') = 'number' AND record->>'duration' !~ '^[0-9]{1,6}$'
                OR coalesce(jsonb_typeof(record->'duration'), 'null') NOT IN ('number', 'null')
                THEN 'duration: not an integer'
            WHEN record->'client'->>'id' IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM clients WHERE id = record->'client'->>'id')
                THEN 'client: not in clients'
        END AS reason
    FROM events_raw
    OFFSET 0
),
quarantined AS (
    INSERT INTO quarantine (run_id, entity, reason, record)
    SELECT %(run_id)s, %(entity)s, reason, record FROM checked WHERE reason IS NOT NULL
    RETURNING 1
),
staged AS (
    INSERT INTO events_delta (id, client_id, user_id, title, start, duration, is_all_day, type, status, notes,
                              confirmed_by_client, piano_ids, created_at, updated_at)
    SELECT DISTINCT ON (record->>'id')
        record->>'id', record->'client'->>'id', record->'user'->>'id', record->>'title',
        (record->>'start')::timestamptz, (record->>'duration')::integer, (record->>'isAllDay')::boolean,
        record->>'type', record->>'status', record->>'notes', (record->>'confirmedByClient')::boolean,
        ARRAY(SELECT p->'piano'->>'id' FROM jsonb_array_elements(coalesce(record->'allEventPianos'->'nodes', '[]')) AS p
              ORDER BY 1),
        (record->>'createdAt')::timestamptz, (record->>'updatedAt')::timestamptz
    FROM checked
    WHERE reason IS NULL
    ORDER BY record->>'id', seq DESC
    RETURNING 1
)
SELECT (SELECT count(*) FROM checked) AS received,
       (SELECT count(*) FROM staged) AS staged,
       (SELECT count(*) FROM quarantined) AS quarantined,
       (SELECT count(*) FROM checked WHERE reason IS NULL) - (SELECT count(*) FROM staged) AS duplicates
