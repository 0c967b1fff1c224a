-- This run's typed, de-duplicated timeline entries, ready to upsert. Unlogged: rebuilt every run.
CREATE UNLOGGED TABLE IF NOT EXISTS timeline_entries_delta (LIKE timeline_entries INCLUDING DEFAULTS)
