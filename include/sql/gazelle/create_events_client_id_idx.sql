-- Foreign keys and windows are looked up by this column.
CREATE INDEX IF NOT EXISTS events_client_id_idx ON events (client_id)
