-- The application users to look up: every user with an email (only those without a kind when only_missing),
-- in id order, at most `limit` of them (NULL: all).
SELECT id::text AS id, btrim(email) AS email
FROM users
WHERE btrim(email) <> ''
  AND (NOT %(only_missing)s OR kind IS NULL)
ORDER BY id
LIMIT %(limit)s
