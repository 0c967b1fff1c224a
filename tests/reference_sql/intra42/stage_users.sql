-- users_raw -> users_delta: valid records, typed, the last one per id winning;
-- every other record goes to quarantine with the reason it was refused.
-- The reason is computed once per record (OFFSET 0 keeps the subquery from being flattened into the uses of
-- `reason`); `checked` keeps only the typed columns, and the raw record only for refused ones, so its
-- tuplestore is a fraction of users_raw.
WITH checked AS (
    SELECT seq, reason,
        CASE WHEN reason IS NOT NULL THEN record END AS record,
        CASE WHEN reason IS NULL THEN (record->>'id')::bigint END AS id,
        record->>'login' AS login, record->>'email' AS email, record->>'first_name' AS first_name,
        record->>'last_name' AS last_name, record->>'pool_month' AS pool_month,
        record->>'pool_year' AS pool_year, record->>'location' AS location,
        CASE WHEN reason IS NULL THEN (record->>'wallet')::integer END AS wallet,
        CASE WHEN reason IS NULL THEN (record->>'correction_point')::integer END AS correction_point,
        CASE WHEN reason IS NULL THEN (record->>'updated_at')::timestamptz END AS updated_at
    FROM (
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
                THEN 'updated_at: missing or not an ISO 8601 timestamp'
            WHEN timestamp_problem(record->>'updated_at') IS NOT NULL  -- then the cast below cannot fail
                THEN 'updated_at: ' || timestamp_problem(record->>'updated_at')
        END AS reason
        FROM users_raw
        OFFSET 0
    ) AS validated
),
quarantined AS (
    INSERT INTO quarantine (run_id, entity, reason, record)
    SELECT %(run_id)s, %(entity)s, reason, record FROM checked WHERE reason IS NOT NULL
    RETURNING 1
),
staged AS (
    INSERT INTO users_delta (id, login, email, first_name, last_name, pool_month, pool_year, location,
                             wallet, correction_point, updated_at)
    SELECT DISTINCT ON (id)
        id, login, email, first_name, last_name, pool_month, pool_year, location,
        wallet, correction_point, updated_at
    FROM checked
    WHERE reason IS NULL
    ORDER BY id, seq DESC
    RETURNING 1
)
SELECT (SELECT count(*) FROM checked) AS received,
       (SELECT count(*) FROM staged) AS staged,
       (SELECT count(*) FROM quarantined) AS quarantined,
       (SELECT count(*) FROM checked WHERE reason IS NULL) - (SELECT count(*) FROM staged) AS duplicates
