-- Tables created by the first version (before Gazelle's real schema was known) get the new columns and lose
-- the foreign keys that made appointments and timeline wait for clients. Runs before the declared tables are
-- made (usersync.gazelle): a no-op on a new schema or on tables already upgraded.
DO $$
BEGIN
    ALTER TABLE IF EXISTS clients ADD COLUMN IF NOT EXISTS personal_notes text,
        ADD COLUMN IF NOT EXISTS preference_notes text, ADD COLUMN IF NOT EXISTS locale text,
        ALTER COLUMN updated_at DROP NOT NULL;
    ALTER TABLE IF EXISTS pianos ADD COLUMN IF NOT EXISTS dampp_chaser_installed boolean,
        ADD COLUMN IF NOT EXISTS dampp_chaser_humidistat_model text, ADD COLUMN IF NOT EXISTS dampp_chaser_mfg_date date,
        ALTER COLUMN updated_at DROP NOT NULL;
    ALTER TABLE IF EXISTS events ADD COLUMN IF NOT EXISTS local_date date, ADD COLUMN IF NOT EXISTS local_time time,
        DROP CONSTRAINT IF EXISTS events_client_id_fkey;
    ALTER TABLE IF EXISTS timeline_entries ADD COLUMN IF NOT EXISTS invoice_id text,
        ADD COLUMN IF NOT EXISTS estimate_id text,
        DROP CONSTRAINT IF EXISTS timeline_entries_client_id_fkey,
        DROP CONSTRAINT IF EXISTS timeline_entries_piano_id_fkey;
    -- the first version's staging tables are made again, after, from their table's new shape
    IF to_regclass('clients_delta') IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'clients_delta' AND column_name = 'locale'
    ) THEN
        DROP TABLE IF EXISTS clients_delta, pianos_delta, events_delta, timeline_entries_delta;
    END IF;
END
$$
