-- Foreign keys and windows are looked up by this column.
CREATE INDEX IF NOT EXISTS contacts_client_id_idx ON contacts (client_id)
