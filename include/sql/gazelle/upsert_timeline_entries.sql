-- timeline_entries_delta -> timeline_entries: inserts new entries, updates those whose values differ. An empty
-- summary or comment never replaces a non-empty one (as the original system: a text once read is not lost to
-- an answer without it).
WITH merged AS (
    SELECT d.id, d.client_id, d.piano_id, d.user_id, d.invoice_id, d.estimate_id, d.occurred_at, d.type,
        CASE WHEN coalesce(d.summary, '') = '' AND t.summary <> '' THEN t.summary ELSE d.summary END AS summary,
        CASE WHEN coalesce(d.comment, '') = '' AND t.comment <> '' THEN t.comment ELSE d.comment END AS comment,
        t.id IS NULL AS is_new,
        (t.client_id, t.piano_id, t.user_id, t.invoice_id, t.estimate_id, t.occurred_at, t.type, t.summary,
         t.comment) AS old
    FROM timeline_entries_delta d
    LEFT JOIN timeline_entries t ON t.id = d.id
),
changed AS (
    SELECT * FROM merged
    WHERE is_new OR old IS DISTINCT FROM (client_id, piano_id, user_id, invoice_id, estimate_id, occurred_at, type,
                                         summary, comment)
),
written AS (
    INSERT INTO timeline_entries AS t (id, client_id, piano_id, user_id, invoice_id, estimate_id, occurred_at, type,
                                       summary, comment, ingested_at)
    SELECT id, client_id, piano_id, user_id, invoice_id, estimate_id, occurred_at, type, summary, comment, now()
    FROM changed
    ON CONFLICT (id) DO UPDATE SET
        client_id = excluded.client_id, piano_id = excluded.piano_id, user_id = excluded.user_id,
        invoice_id = excluded.invoice_id, estimate_id = excluded.estimate_id, occurred_at = excluded.occurred_at,
        type = excluded.type, summary = excluded.summary, comment = excluded.comment,
        ingested_at = excluded.ingested_at
    RETURNING xmax = 0 AS inserted
)
SELECT count(*) FILTER (WHERE inserted) AS inserted,
       count(*) FILTER (WHERE NOT inserted) AS updated,
       (SELECT count(*) FROM timeline_entries_delta) - count(*) AS unchanged
FROM written
