-- users_raw -> users_delta: valid records, typed, the last one per id winning;
-- every other record goes to quarantine with the reason it was refused.
WITH checked AS (
    SELECT seq, record,
        CASE
            WHEN jsonb_typeof(record) <> 'object' THEN 'not a JSON object'
            WHEN jsonb_typeof(record->'id') IS DISTINCT FROM 'number' OR record->>'id' !~ '^[0-9]{1,18}$'
                THEN 'id: missing or not an integer'
            WHEN jsonb_typeof(record->'login') IS DISTINCT FROM 'string' OR record->>'login' = ''
                THEN 'login: missing or not a string'
            WHEN jsonb_typeof(record->'email') IS DISTINCT FROM 'string' THEN 'email: missing or not a string'
            WHEN coalesce(jsonb_typeof(record->'first_name'), 'null') NOT IN ('string', 'null')
                THEN 'first_name: not a string'
            WHEN coalesce(jsonb_typeof(record->'last_name'), 'null') NOT IN ('string', 'null')
                THEN 'last_name: not a string'
            WHEN coalesce(jsonb_typeof(record->'pool_month'), 'null') NOT IN ('string', 'null')
                THEN 'pool_month: not a string'
            WHEN coalesce(jsonb_typeof(record->'pool_year'), 'null') NOT IN ('string', 'null')
                THEN 'pool_year: not a string'
            WHEN coalesce(jsonb_typeof(record->'location'), 'null') NOT IN ('string', 'null')
                THEN 'location: not a string'
            WHEN jsonb_typeof(record->'wallet') = 'number' AND record->>'wallet' !~ '^-?[0-9]{1,9}$'
                OR coalesce(jsonb_typeof(record->'wallet'), 'null') NOT IN ('number', 'null')
                THEN 'wallet: not an integer'
            WHEN jsonb_typeof(record->'correction_point') = 'number'
                AND record->>'correction_point' !~ '^-?[0-9]{1,9}$'
                OR coalesce(jsonb_typeof(record->'correction_point'), 'null') NOT IN ('number', 'null')
                THEN 'correction_point: not an integer'
            WHEN jsonb_typeof(record->'updated_at') IS DISTINCT FROM 'string'
                OR record->>'updated_at' !~ '^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}(:?\d{2})?)$'
                THEN 'updated_at: missing or not an ISO 8601 timestamp'
        END AS reason
    FROM users_raw
),
quarantined AS (
    INSERT INTO quarantine (run_id, entity, reason, record)
    SELECT %(run_id)s, %(entity)s, reason, record FROM checked WHERE reason IS NOT NULL
    RETURNING 1
),
staged AS (
    INSERT INTO users_delta (id, login, email, first_name, last_name, pool_month, pool_year, location,
                             wallet, correction_point, updated_at)
    SELECT DISTINCT ON ((record->>'id')::bigint)
        (record->>'id')::bigint, record->>'login', record->>'email', record->>'first_name',
        record->>'last_name', record->>'pool_month', record->>'pool_year', record->>'location',
        (record->>'wallet')::integer, (record->>'correction_point')::integer,
        (record->>'updated_at')::timestamptz
    FROM checked
    WHERE reason IS NULL
    ORDER BY (record->>'id')::bigint, seq DESC
    RETURNING 1
)
SELECT (SELECT count(*) FROM checked) AS received,
       (SELECT count(*) FROM staged) AS staged,
       (SELECT count(*) FROM quarantined) AS quarantined,
       (SELECT count(*) FROM checked WHERE reason IS NULL) - (SELECT count(*) FROM staged) AS duplicates
