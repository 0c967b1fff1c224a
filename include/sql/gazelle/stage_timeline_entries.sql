-- timeline_entries_raw -> timeline_entries_delta, the last record per id winning. The API takes only a lower
-- bound (occurredAtGet): entries that occurred after the window's end (%(to)s) are left out here. No check of
-- the client or piano: timeline entries have no foreign keys (they load whatever happened to those syncs).
WITH checked AS (
    SELECT seq, record,
        CASE
            WHEN jsonb_typeof(record) <> 'object' THEN 'not a JSON object'
            WHEN jsonb_typeof(record->'id') IS DISTINCT FROM 'string' THEN 'id: missing or not a string'
            WHEN timestamp_problem(record->>'occurredAt') IS NOT NULL
                THEN 'occurredAt: ' || timestamp_problem(record->>'occurredAt')
            WHEN jsonb_typeof(record->'client'->'id') IS DISTINCT FROM 'string' THEN 'client: missing'
        END AS reason
    FROM timeline_entries_raw
    OFFSET 0
),
quarantined AS (
    INSERT INTO quarantine (run_id, entity, reason, record)
    SELECT %(run_id)s, %(entity)s, reason, record FROM checked WHERE reason IS NOT NULL
    RETURNING 1
),
windowed AS (
    SELECT seq, record, (record->>'occurredAt')::timestamptz <= %(to)s::timestamptz AS in_window
    FROM checked
    WHERE reason IS NULL
),
staged AS (
    INSERT INTO timeline_entries_delta (id, client_id, piano_id, user_id, invoice_id, estimate_id, occurred_at, type,
                                        summary, comment)
    SELECT DISTINCT ON (record->>'id')
        record->>'id', record->'client'->>'id', record->'piano'->>'id', record->'user'->>'id',
        record->'invoice'->>'id', record->'estimate'->>'id', (record->>'occurredAt')::timestamptz, record->>'type',
        record->>'summary', record->>'comment'
    FROM windowed
    WHERE in_window
    ORDER BY record->>'id', seq DESC
    RETURNING 1
)
SELECT (SELECT count(*) FROM checked) AS received,
       (SELECT count(*) FROM staged) AS staged,
       (SELECT count(*) FROM quarantined) AS quarantined,
       (SELECT count(*) FROM windowed WHERE NOT in_window) AS outside_window,
       (SELECT count(*) FROM windowed WHERE in_window) - (SELECT count(*) FROM staged) AS duplicates
