-- This run's typed, de-duplicated contacts, ready to upsert. Unlogged: rebuilt every run.
CREATE UNLOGGED TABLE IF NOT EXISTS contacts_delta (LIKE contacts INCLUDING DEFAULTS)
