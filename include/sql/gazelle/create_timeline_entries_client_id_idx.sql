-- Foreign keys and windows are looked up by this column.
CREATE INDEX IF NOT EXISTS timeline_entries_client_id_idx ON timeline_entries (client_id)
