-- users_raw -> users_delta: typed technicians, the last record per id winning; the rest to quarantine.
WITH checked AS (
    SELECT seq, record,
        CASE
            WHEN jsonb_typeof(record) <> 'object' THEN 'not a JSON object'
            WHEN jsonb_typeof(record->'id') IS DISTINCT FROM 'string' THEN 'id: missing or not a string'
            WHEN record->>'createdAt' IS NOT NULL AND timestamp_problem(record->>'createdAt') IS NOT NULL
                THEN 'createdAt: ' || timestamp_problem(record->>'createdAt')
            WHEN record->>'updatedAt' IS NOT NULL AND timestamp_problem(record->>'updatedAt') IS NOT NULL
                THEN 'updatedAt: ' || timestamp_problem(record->>'updatedAt')
        END AS reason
    FROM users_raw
    OFFSET 0
),
quarantined AS (
    INSERT INTO quarantine (run_id, entity, reason, record)
    SELECT %(run_id)s, %(entity)s, reason, record FROM checked WHERE reason IS NOT NULL
    RETURNING 1
),
staged AS (
    INSERT INTO users_delta (id, first_name, last_name, email, status, created_at, updated_at)
    SELECT DISTINCT ON (record->>'id')
        record->>'id', record->>'firstName', record->>'lastName', record->>'email', record->>'status',
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
