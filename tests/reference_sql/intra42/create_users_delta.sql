-- This run's typed, de-duplicated users, ready to upsert: shaped like users. Unlogged: rebuilt every run.
CREATE UNLOGGED TABLE IF NOT EXISTS users_delta (LIKE users INCLUDING DEFAULTS)
