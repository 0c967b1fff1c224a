-- pianos_raw -> pianos_delta: typed pianos, the last record per id winning. A piano whose client is not in
-- clients goes to quarantine (its client may be newer than this run's clients; the next run loads it).
WITH checked AS (
    SELECT seq, record,
        CASE
            WHEN jsonb_typeof(record) <> 'object' THEN 'not a JSON object'
            WHEN jsonb_typeof(record->'id') IS DISTINCT FROM 'string' THEN 'id: missing or not a string'
            WHEN record->>'createdAt' IS NOT NULL AND timestamp_problem(record->>'createdAt') IS NOT NULL
                THEN 'createdAt: ' || timestamp_problem(record->>'createdAt')
            WHEN record->>'updatedAt' IS NOT NULL AND timestamp_problem(record->>'updatedAt') IS NOT NULL
                THEN 'updatedAt: ' || timestamp_problem(record->>'updatedAt')
            WHEN jsonb_typeof(record->'year') = 'number' AND record->>'year' !~ '^[0-9]{1,4}$'
                OR coalesce(jsonb_typeof(record->'year'), 'null') NOT IN ('number', 'null')
                THEN 'year: not an integer'
            WHEN record->>'damppChaserMfgDate' !~ '^\d{4}-\d{2}-\d{2}$'
                THEN 'damppChaserMfgDate: not a YYYY-MM-DD date'
            WHEN record->>'damppChaserMfgDate' IS NOT NULL  -- a date is a timestamp's first 10 characters
                AND timestamp_problem(record->>'damppChaserMfgDate' || 'T00:00:00Z') IS NOT NULL
                THEN 'damppChaserMfgDate: ' || timestamp_problem(record->>'damppChaserMfgDate' || 'T00:00:00Z')
            WHEN coalesce(jsonb_typeof(record->'damppChaserInstalled'), 'null') NOT IN ('boolean', 'null')
                THEN 'damppChaserInstalled: not a boolean'
            WHEN NOT EXISTS (SELECT 1 FROM clients WHERE id = record->'client'->>'id')
                THEN 'client: not in clients'
        END AS reason
    FROM pianos_raw
    OFFSET 0
),
quarantined AS (
    INSERT INTO quarantine (run_id, entity, reason, record)
    SELECT %(run_id)s, %(entity)s, reason, record FROM checked WHERE reason IS NOT NULL
    RETURNING 1
),
staged AS (
    INSERT INTO pianos_delta (id, client_id, make, model, serial_number, type, year, status, location, notes,
                              dampp_chaser_installed, dampp_chaser_humidistat_model, dampp_chaser_mfg_date,
                              created_at, updated_at)
    SELECT DISTINCT ON (record->>'id')
        record->>'id', record->'client'->>'id', record->>'make', record->>'model', record->>'serialNumber',
        record->>'type', (record->>'year')::integer, record->>'status', record->>'location', record->>'notes',
        (record->>'damppChaserInstalled')::boolean, record->>'damppChaserHumidistatModel',
        (record->>'damppChaserMfgDate')::date, (record->>'createdAt')::timestamptz, (record->>'updatedAt')::timestamptz
    FROM checked
    WHERE reason IS NULL
    ORDER BY record->>'id', seq DESC
    RETURNING 1
)
SELECT (SELECT count(*) FROM checked) AS received,
       (SELECT count(*) FROM staged) AS staged,
       (SELECT count(*) FROM quarantined) AS quarantined,
       (SELECT count(*) FROM checked WHERE reason IS NULL) - (SELECT count(*) FROM staged) AS duplicates
