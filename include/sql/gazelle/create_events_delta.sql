-- This run's typed, de-duplicated events, ready to upsert. Unlogged: rebuilt every run.
CREATE UNLOGGED TABLE IF NOT EXISTS events_delta (LIKE events INCLUDING DEFAULTS)
