-- users_delta -> users.kind: set the kind of the users the directory knows, where it differs. Users it does
-- not know and failed lookups are left as they are. Returns the transitions (old kind -> new kind) too.
WITH changed AS (
    SELECT u.id, u.kind AS old_kind, d.kind AS new_kind
    FROM users u
    JOIN users_delta d ON d.user_id = u.id::text
    WHERE d.outcome = 'found' AND u.kind IS DISTINCT FROM d.kind
),
written AS (
    UPDATE users u SET kind = c.new_kind
    FROM changed c
    WHERE u.id = c.id
    RETURNING 1
)
SELECT (SELECT count(*) FROM written) AS updated,
       (SELECT count(*) FROM users_delta WHERE outcome = 'found') - (SELECT count(*) FROM written) AS unchanged,
       (SELECT coalesce(jsonb_object_agg(transition, n), '{}')
        FROM (SELECT coalesce(old_kind, '(none)') || ' -> ' || new_kind AS transition, count(*) AS n
              FROM changed GROUP BY 1) AS t) AS transitions
