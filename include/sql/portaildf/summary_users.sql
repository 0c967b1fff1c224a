-- What this run's lookups said, and the kind distribution of the application's users once its changes are
-- applied. User ids, never emails: the report is logged. `ambiguous`: the users whose answer had several case
-- variants of the address with different flags (lookup_user marks them; users_raw holds this run's answers).
SELECT (SELECT count(*) FROM users_delta WHERE outcome = 'not_found') AS not_found,
       (SELECT count(*) FROM users_delta WHERE outcome = 'failed') AS failed,
       (SELECT count(DISTINCT d.user_id) FROM users_raw r JOIN users_delta d ON d.user_id = r.record->>'user_id'
        WHERE r.record ? 'ambiguous') AS ambiguous,
       (SELECT coalesce(jsonb_agg(user_id ORDER BY user_id), '[]') FROM users_delta WHERE outcome = 'not_found')
           AS not_found_ids,
       (SELECT coalesce(jsonb_agg(jsonb_build_object('user_id', user_id, 'reason', reason) ORDER BY user_id), '[]')
        FROM users_delta WHERE outcome = 'failed') AS failures,
       (SELECT coalesce(json_object_agg(kind, n ORDER BY n DESC, kind), '{}')
        FROM (SELECT coalesce(kind, '(none)') AS kind, count(*) AS n FROM users GROUP BY 1) AS k) AS kinds
