-- The application owns `users`; this sync only reads id/email and writes kind. Fail early, and clearly, when
-- the table or one of those columns is missing (a wrong connection or schema).
DO $$
DECLARE
    missing text;
BEGIN
    SELECT string_agg(wanted, ', ') INTO missing
    FROM unnest(ARRAY['id', 'email', 'kind']) AS wanted
    WHERE NOT EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'users' AND column_name = wanted
    );
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'table %.users must exist with columns id, email, kind (missing: %)',
            current_schema(), missing;
    END IF;
END
$$
