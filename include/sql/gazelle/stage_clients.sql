-- clients_raw -> clients_delta and contacts_delta (each client's contacts are nested in its record, in
-- allContacts); the last record per id wins; a client that cannot be read goes to quarantine with its contacts,
-- and so does a client with more contacts than clients.graphql asks for (allContacts(first: 50)). Every value
-- that is cast is checked first (timestamps by timestamp_problem()), so no cast can fail for the whole batch.
WITH checked AS (
    SELECT seq, record,
        CASE
            WHEN jsonb_typeof(record) <> 'object' THEN 'not a JSON object'
            WHEN jsonb_typeof(record->'id') IS DISTINCT FROM 'string' THEN 'id: missing or not a string'
            WHEN record->>'createdAt' IS NOT NULL AND timestamp_problem(record->>'createdAt') IS NOT NULL
                THEN 'createdAt: ' || timestamp_problem(record->>'createdAt')
            WHEN record->>'updatedAt' IS NOT NULL AND timestamp_problem(record->>'updatedAt') IS NOT NULL
                THEN 'updatedAt: ' || timestamp_problem(record->>'updatedAt')
            WHEN coalesce(jsonb_typeof(record->'tags'), 'null') NOT IN ('array', 'null') THEN 'tags: not a list'
            WHEN jsonb_typeof(record->'allContacts'->'nodes') IS DISTINCT FROM 'array'
                THEN 'allContacts: missing or not a connection'
            WHEN record->'allContacts'->'pageInfo'->'hasNextPage' = 'true'
                THEN 'allContacts: more contacts than the query asks for; raise allContacts(first:) in clients.graphql'
            WHEN contact_problem IS NOT NULL THEN 'allContacts: ' || contact_problem
        END AS reason
    FROM clients_raw
    LEFT JOIN LATERAL (  -- the first contact that cannot be read: its client is refused with it
        SELECT problem AS contact_problem
        FROM jsonb_array_elements(CASE jsonb_typeof(record->'allContacts'->'nodes')
                                      WHEN 'array' THEN record->'allContacts'->'nodes' ELSE '[]' END) AS c,
        LATERAL (SELECT CASE
            WHEN jsonb_typeof(c->'id') IS DISTINCT FROM 'string' THEN 'a contact without a string id'
            WHEN coalesce(jsonb_typeof(c->'wantsEmail'), 'null') NOT IN ('boolean', 'null')
                THEN 'wantsEmail: not a boolean'
            WHEN coalesce(jsonb_typeof(c->'wantsText'), 'null') NOT IN ('boolean', 'null')
                THEN 'wantsText: not a boolean'
            WHEN c->>'createdAt' IS NOT NULL AND timestamp_problem(c->>'createdAt') IS NOT NULL
                THEN 'createdAt: ' || timestamp_problem(c->>'createdAt')
            WHEN c->>'updatedAt' IS NOT NULL AND timestamp_problem(c->>'updatedAt') IS NOT NULL
                THEN 'updatedAt: ' || timestamp_problem(c->>'updatedAt')
        END AS problem) AS p
        WHERE problem IS NOT NULL
        LIMIT 1
    ) AS contacts ON true
    OFFSET 0
),
latest AS (
    SELECT DISTINCT ON (record->>'id') record
    FROM checked
    WHERE reason IS NULL
    ORDER BY record->>'id', seq DESC
),
quarantined AS (
    INSERT INTO quarantine (run_id, entity, reason, record)
    SELECT %(run_id)s, %(entity)s, reason, record FROM checked WHERE reason IS NOT NULL
    RETURNING 1
),
staged AS (
    INSERT INTO clients_delta (id, company_name, status, client_type, tags, preferred_technician_id,
                               default_contact_id, personal_notes, preference_notes, locale, created_at, updated_at)
    SELECT record->>'id', record->>'companyName', record->>'status', record->>'clientType',
        ARRAY(SELECT jsonb_array_elements_text(coalesce(record->'tags', '[]'))),
        record->>'preferredTechnicianId', record->'defaultContact'->>'id', record->>'personalNotes',
        record->>'preferenceNotes', record->'localization'->>'locale',
        (record->>'createdAt')::timestamptz, (record->>'updatedAt')::timestamptz
    FROM latest
    RETURNING 1
),
contacts AS (
    INSERT INTO contacts_delta (id, client_id, is_default, first_name, last_name, title, wants_email, wants_text,
                                email, phone, street1, street2, municipality, postal_code, region,
                                created_at, updated_at)
    SELECT DISTINCT ON (c->>'id')
        c->>'id', record->>'id', c->>'id' IS NOT DISTINCT FROM record->'defaultContact'->>'id', c->>'firstName', c->>'lastName',
        c->>'title', (c->>'wantsEmail')::boolean, (c->>'wantsText')::boolean, c->'defaultEmail'->>'email',
        c->'defaultPhone'->>'phoneNumber', c->'defaultLocation'->>'street1', c->'defaultLocation'->>'street2',
        c->'defaultLocation'->>'municipality', c->'defaultLocation'->>'postalCode',
        c->'defaultLocation'->>'region', (c->>'createdAt')::timestamptz, (c->>'updatedAt')::timestamptz
    FROM latest, jsonb_array_elements(record->'allContacts'->'nodes') AS c
    ORDER BY c->>'id'
    RETURNING 1
)
SELECT (SELECT count(*) FROM checked) AS received,
       (SELECT count(*) FROM staged) AS staged,
       (SELECT count(*) FROM quarantined) AS quarantined,
       (SELECT count(*) FROM checked WHERE reason IS NULL) - (SELECT count(*) FROM staged) AS duplicates,
       (SELECT count(*) FROM contacts) AS contacts_staged
