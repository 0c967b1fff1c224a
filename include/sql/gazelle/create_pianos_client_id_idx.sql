-- Foreign keys and windows are looked up by this column.
CREATE INDEX IF NOT EXISTS pianos_client_id_idx ON pianos (client_id)
