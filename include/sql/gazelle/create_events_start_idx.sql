-- Foreign keys and windows are looked up by this column.
CREATE INDEX IF NOT EXISTS events_start_idx ON events (start)
