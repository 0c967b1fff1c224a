-- The bulk sync's users (spec §1): active, not demouser, in id order, each with the providers it syncs
-- (auto_sync AND is_active AND NOT is_deleted) in created_at order; one filter for the run and the dry run.
-- No credentials here: they are read by the chunk that uses them and never leave it.
SELECT u.id AS user_id,
       coalesce(jsonb_agg(jsonb_build_object('id', p.id, 'type', p.provider_type, 'name', p.connection_name)
                          ORDER BY p.created_at, p.id) FILTER (WHERE p.id IS NOT NULL), '[]') AS providers
FROM users u
LEFT JOIN cloud_providers p ON p.user_id = u.id AND p.auto_sync AND p.is_active AND NOT p.is_deleted
WHERE u.is_active AND u.role <> 'demouser'
  AND (%(user_ids)s::int[] IS NULL OR u.id = ANY (%(user_ids)s::int[]))
GROUP BY u.id
ORDER BY u.id
