-- users_delta -> users: insert new students, update those whose values differ, touch nothing else. A record
-- older than the stored one (a run that fetched before another wrote) never replaces it: it counts as stale.
WITH changed AS (
    SELECT d.*
    FROM users_delta d
    LEFT JOIN users u ON u.id = d.id
    WHERE u.id IS NULL
       OR d.updated_at >= u.updated_at
      AND (u.login, u.email, u.first_name, u.last_name, u.pool_month, u.pool_year, u.location, u.wallet,
           u.correction_point, u.updated_at, u.deleted_at)
          IS DISTINCT FROM
          (d.login, d.email, d.first_name, d.last_name, d.pool_month, d.pool_year, d.location, d.wallet,
           d.correction_point, d.updated_at, NULL::timestamptz)
),
written AS (
    INSERT INTO users AS u (id, login, email, first_name, last_name, pool_month, pool_year, location,
                            wallet, correction_point, updated_at, ingested_at, deleted_at)
    SELECT id, login, email, first_name, last_name, pool_month, pool_year, location,
           wallet, correction_point, updated_at, now(), NULL
    FROM changed
    ON CONFLICT (id) DO UPDATE SET
        login = excluded.login, email = excluded.email, first_name = excluded.first_name,
        last_name = excluded.last_name, pool_month = excluded.pool_month, pool_year = excluded.pool_year,
        location = excluded.location, wallet = excluded.wallet, correction_point = excluded.correction_point,
        updated_at = excluded.updated_at, ingested_at = excluded.ingested_at, deleted_at = NULL
    RETURNING xmax = 0 AS inserted
)
SELECT count(*) FILTER (WHERE inserted) AS inserted,
       count(*) FILTER (WHERE NOT inserted) AS updated,
       (SELECT count(*) FROM users_delta) - count(*) - (SELECT count(*) FROM users_delta d JOIN users u USING (id)
                                                        WHERE d.updated_at < u.updated_at) AS unchanged,
       (SELECT count(*) FROM users_delta d JOIN users u USING (id) WHERE d.updated_at < u.updated_at) AS stale
FROM written
