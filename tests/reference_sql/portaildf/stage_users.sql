-- users_raw -> users_delta: one row per looked-up user, its kind mapped from the directory's two flags;
-- an answer that cannot be read goes to quarantine with the reason (that user is left as it is).
-- Also returns the not-found user ids and the failures, which the report lists (ids, never emails: the report
-- is logged), and how many answers were ambiguous (several case variants of the address, different flags).
WITH checked AS (
    SELECT seq, record,
        CASE
            WHEN jsonb_typeof(record) <> 'object' THEN 'not a JSON object'
            WHEN jsonb_typeof(record->'user_id') IS DISTINCT FROM 'string' THEN 'user_id: missing or not a string'
            WHEN record->>'outcome' NOT IN ('found', 'not_found', 'failed') OR record->>'outcome' IS NULL
                THEN 'outcome: not one of found, not_found, failed'
            WHEN record->>'outcome' <> 'found' THEN NULL
            WHEN jsonb_typeof(record->'record') IS DISTINCT FROM 'object' THEN 'record: missing or not an object'
            WHEN jsonb_typeof(record->'record'->'exterieur') IS DISTINCT FROM 'boolean'
                THEN 'exterieur: missing or not a boolean'
            WHEN jsonb_typeof(record->'record'->'gestionnaire') IS DISTINCT FROM 'boolean'
                THEN 'gestionnaire: missing or not a boolean'
            WHEN jsonb_typeof(record->'record'->'id_user') = 'number' AND record->'record'->>'id_user' !~ '^[0-9]{1,18}$'
                OR coalesce(jsonb_typeof(record->'record'->'id_user'), 'null') NOT IN ('number', 'null')
                THEN 'id_user: not an integer'
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
    INSERT INTO users_delta (user_id, email, outcome, id_user, exterieur, gestionnaire, kind, reason)
    SELECT DISTINCT ON (user_id) user_id, email, outcome, id_user, exterieur, gestionnaire,
        CASE
            WHEN outcome <> 'found' THEN NULL
            WHEN exterieur AND gestionnaire THEN 'prestataire, gestionnaire'
            WHEN exterieur THEN 'prestataire'
            WHEN gestionnaire THEN 'gestionnaire'
            ELSE 'aucun'
        END,
        reason
    FROM (
        SELECT c.seq, c.record->>'user_id' AS user_id, coalesce(btrim(u.email), '') AS email,
            c.record->>'outcome' AS outcome,
            (c.record->'record'->>'id_user')::bigint AS id_user,
            (c.record->'record'->>'exterieur')::boolean AS exterieur,
            (c.record->'record'->>'gestionnaire')::boolean AS gestionnaire,
            c.record->>'reason' AS reason
        FROM checked c
        LEFT JOIN users u ON u.id::text = c.record->>'user_id'  -- answers carry no email
        WHERE c.reason IS NULL
    ) AS answers
    ORDER BY user_id, seq DESC
    RETURNING outcome, user_id, reason
)
SELECT (SELECT count(*) FROM checked) AS received,
       (SELECT count(*) FROM staged) AS staged,
       (SELECT count(*) FROM quarantined) AS quarantined,
       (SELECT count(*) FROM checked WHERE reason IS NULL) - (SELECT count(*) FROM staged) AS duplicates,
       (SELECT count(*) FROM staged WHERE outcome = 'found') AS found,
       (SELECT count(*) FROM staged WHERE outcome = 'not_found') AS not_found,
       (SELECT count(*) FROM staged WHERE outcome = 'failed') AS failed,
       (SELECT count(DISTINCT record->>'user_id') FROM checked WHERE reason IS NULL AND record ? 'ambiguous')
           AS ambiguous,
       (SELECT coalesce(jsonb_agg(user_id ORDER BY user_id), '[]') FROM staged WHERE outcome = 'not_found')
           AS not_found_ids,
       (SELECT coalesce(jsonb_agg(jsonb_build_object('user_id', user_id, 'reason', reason) ORDER BY user_id), '[]')
        FROM staged WHERE outcome = 'failed') AS failures
