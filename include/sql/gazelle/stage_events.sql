-- events_raw -> events_delta: typed events with the ids of their pianos and their start's local date and time
-- in the account's zone (%(timezone)s), the last record per id winning. The query asks a day more on each side
-- of the window: only the events whose local day is in [startOn, endOn] are kept. No check of the client or
-- technician: events have no foreign keys (appointments load whatever happened to the clients sync).
WITH checked AS (
    SELECT seq, record,
        CASE
            WHEN jsonb_typeof(record) <> 'object' THEN 'not a JSON object'
            WHEN jsonb_typeof(record->'id') IS DISTINCT FROM 'string' THEN 'id: missing or not a string'
            WHEN timestamp_problem(record->>'start') IS NOT NULL
                THEN 'start: ' || timestamp_problem(record->>'start')
            WHEN record->>'createdAt' IS NOT NULL AND timestamp_problem(record->>'createdAt') IS NOT NULL
                THEN 'createdAt: ' || timestamp_problem(record->>'createdAt')
            WHEN record->>'updatedAt' IS NOT NULL AND timestamp_problem(record->>'updatedAt') IS NOT NULL
                THEN 'updatedAt: ' || timestamp_problem(record->>'updatedAt')
            WHEN coalesce(jsonb_typeof(record->'isAllDay'), 'null') NOT IN ('boolean', 'null')
                THEN 'isAllDay: not a boolean'
            WHEN coalesce(jsonb_typeof(record->'confirmedByClient'), 'null') NOT IN ('boolean', 'null')
                THEN 'confirmedByClient: not a boolean'
            WHEN coalesce(jsonb_typeof(record->'allEventPianos'->'nodes'), 'null') NOT IN ('array', 'null')
                THEN 'allEventPianos: not a connection'
            WHEN jsonb_typeof(record->'duration') = 'number' AND record->>'duration' !~ '^[0-9]{1,6}$'
                OR coalesce(jsonb_typeof(record->'duration'), 'null') NOT IN ('number', 'null')
                THEN 'duration: not an integer'
        END AS reason
    FROM events_raw
    OFFSET 0
),
quarantined AS (
    INSERT INTO quarantine (run_id, entity, reason, record)
    SELECT %(run_id)s, %(entity)s, reason, record FROM checked WHERE reason IS NOT NULL
    RETURNING 1
),
localized AS (
    SELECT seq, record, local_start, local_start::date BETWEEN %(startOn)s::date AND %(endOn)s::date AS in_window
    FROM checked, LATERAL (SELECT (record->>'start')::timestamptz AT TIME ZONE %(timezone)s AS local_start) AS l
    WHERE reason IS NULL
),
staged AS (
    INSERT INTO events_delta (id, client_id, user_id, title, start, local_date, local_time, duration, is_all_day,
                              type, status, notes, confirmed_by_client, piano_ids, created_at, updated_at)
    SELECT DISTINCT ON (record->>'id')
        record->>'id', record->'client'->>'id', record->'user'->>'id', record->>'title',
        (record->>'start')::timestamptz, local_start::date, local_start::time, (record->>'duration')::integer,
        (record->>'isAllDay')::boolean, record->>'type', record->>'status', record->>'notes',
        (record->>'confirmedByClient')::boolean,
        ARRAY(SELECT p->'piano'->>'id' FROM jsonb_array_elements(coalesce(record->'allEventPianos'->'nodes', '[]')) AS p
              ORDER BY 1),
        (record->>'createdAt')::timestamptz, (record->>'updatedAt')::timestamptz
    FROM localized
    WHERE in_window
    ORDER BY record->>'id', seq DESC
    RETURNING 1
)
SELECT (SELECT count(*) FROM checked) AS received,
       (SELECT count(*) FROM staged) AS staged,
       (SELECT count(*) FROM quarantined) AS quarantined,
       (SELECT count(*) FROM localized WHERE NOT in_window) AS outside_window,
       (SELECT count(*) FROM localized WHERE in_window) - (SELECT count(*) FROM staged) AS duplicates
