-- clients_raw -> clients_delta and contacts_delta (each client's contacts are nested in its record, in
-- allContacts); the last record per id wins; a client that cannot be read goes to quarantine with its contacts,
-- and so does a client with more contacts than clients.graphql asks for (allContacts(first: 50)).
WITH checked AS (
    SELECT seq, record,
        CASE
            WHEN jsonb_typeof(record) <> 'object' THEN 'not a JSON object'
            WHEN jsonb_typeof(record->'id') IS DISTINCT FROM 'string' THEN 'id: missing or not a string'
            WHEN record->>'updatedAt' !~ '^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})$'
                THEN 'updatedAt: not an ISO 8601 timestamp'
            WHEN coalesce(jsonb_typeof(record->'tags'), 'null') NOT IN ('array', 'null') THEN 'tags: not a list'
            WHEN jsonb_typeof(record->'allContacts'->'nodes') IS DISTINCT FROM 'array'
                THEN 'allContacts: missing or not a connection'
            WHEN (record->'allContacts'->'pageInfo'->>'hasNextPage')::boolean
                THEN 'allContacts: more contacts than the query asks for; raise allContacts(first:) in clients.graphql'
            WHEN EXISTS (SELECT 1 FROM jsonb_array_elements(record->'allContacts'->'nodes') AS c
                         WHERE jsonb_typeof(c->'id') IS DISTINCT FROM 'string')
                THEN 'allContacts: a contact without a string id'
        END AS reason
    FROM clients_raw
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
        c->>'id', record->>'id', c->>'id' = record->'defaultContact'->>'id', c->>'firstName', c->>'lastName',
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
