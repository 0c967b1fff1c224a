-- Foreign keys and windows are looked up by this column.
CREATE INDEX IF NOT EXISTS timeline_entries_piano_id_idx ON timeline_entries (piano_id)
