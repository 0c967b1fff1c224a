-- timeline_entries_raw -> timeline_entries_delta, the last record per id winning. An entry whose client or
-- piano is not loaded goes to quarantine.
WITH checked AS (
    SELECT seq, record,
        CASE
            WHEN jsonb_typeof(record) <> 'object' THEN 'not a JSON object'
            WHEN jsonb_typeof(record->'id') IS DISTINCT FROM 'string' THEN 'id: missing or not a string'
            WHEN record->>'occurredAt' !~ '^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})$'
                THEN 'occurredAt: missing or not an ISO 8601 timestamp'
            WHEN NOT EXISTS (SELECT 1 FROM clients WHERE id = record->'client'->>'id')
                THEN 'client: not in clients'
            WHEN record->'piano'->>'id' IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM pianos WHERE id = record->'piano'->>'id')
                THEN 'piano: not in pianos'
        END AS reason
    FROM timeline_entries_raw
    OFFSET 0
),
quarantined AS (
    INSERT INTO quarantine (run_id, entity, reason, record)
    SELECT %(run_id)s, %(entity)s, reason, record FROM checked WHERE reason IS NOT NULL
    RETURNING 1
),
staged AS (
    INSERT INTO timeline_entries_delta (id, client_id, piano_id, user_id, occurred_at, type, summary, comment)
    SELECT DISTINCT ON (record->>'id')
        record->>'id', record->'client'->>'id', record->'piano'->>'id', record->'user'->>'id',
        (record->>'occurredAt')::timestamptz, record->>'type', record->>'summary', record->>'comment'
    FROM checked
    WHERE reason IS NULL
    ORDER BY record->>'id', seq DESC
    RETURNING 1
)
SELECT (SELECT count(*) FROM checked) AS received,
       (SELECT count(*) FROM staged) AS staged,
       (SELECT count(*) FROM quarantined) AS quarantined,
       (SELECT count(*) FROM checked WHERE reason IS NULL) - (SELECT count(*) FROM staged) AS duplicates
