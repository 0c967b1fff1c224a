-- clients_delta -> clients: inserts new clients, updates those whose values differ. An empty tag list never
-- replaces a non-empty one (as the original system: a client's tags are not lost to an answer without them).
WITH merged AS (
    SELECT d.id, d.company_name, d.status, d.client_type,
        CASE WHEN coalesce(cardinality(d.tags), 0) = 0 AND cardinality(t.tags) > 0 THEN t.tags ELSE d.tags END AS tags,
        d.preferred_technician_id, d.default_contact_id, d.personal_notes, d.preference_notes, d.locale,
        d.created_at, d.updated_at,
        t.id IS NULL AS is_new,
        (t.company_name, t.status, t.client_type, t.tags, t.preferred_technician_id, t.default_contact_id,
         t.personal_notes, t.preference_notes, t.locale, t.created_at, t.updated_at) AS old
    FROM clients_delta d
    LEFT JOIN clients t ON t.id = d.id
),
changed AS (
    SELECT * FROM merged
    WHERE is_new OR old IS DISTINCT FROM (company_name, status, client_type, tags, preferred_technician_id,
                                         default_contact_id, personal_notes, preference_notes, locale, created_at,
                                         updated_at)
),
written AS (
    INSERT INTO clients AS t (id, company_name, status, client_type, tags, preferred_technician_id,
                              default_contact_id, personal_notes, preference_notes, locale, created_at, updated_at,
                              ingested_at)
    SELECT id, company_name, status, client_type, tags, preferred_technician_id, default_contact_id, personal_notes,
        preference_notes, locale, created_at, updated_at, now()
    FROM changed
    ON CONFLICT (id) DO UPDATE SET
        company_name = excluded.company_name, status = excluded.status, client_type = excluded.client_type,
        tags = excluded.tags, preferred_technician_id = excluded.preferred_technician_id,
        default_contact_id = excluded.default_contact_id, personal_notes = excluded.personal_notes,
        preference_notes = excluded.preference_notes, locale = excluded.locale, created_at = excluded.created_at,
        updated_at = excluded.updated_at, ingested_at = excluded.ingested_at
    RETURNING xmax = 0 AS inserted
)
SELECT count(*) FILTER (WHERE inserted) AS inserted,
       count(*) FILTER (WHERE NOT inserted) AS updated,
       (SELECT count(*) FROM clients_delta) - count(*) AS unchanged
FROM written
