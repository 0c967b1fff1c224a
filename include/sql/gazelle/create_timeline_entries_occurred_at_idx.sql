-- Foreign keys and windows are looked up by this column.
CREATE INDEX IF NOT EXISTS timeline_entries_occurred_at_idx ON timeline_entries (occurred_at)
