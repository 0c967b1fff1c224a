-- This run's typed, de-duplicated pianos, ready to upsert. Unlogged: rebuilt every run.
CREATE UNLOGGED TABLE IF NOT EXISTS pianos_delta (LIKE pianos INCLUDING DEFAULTS)
