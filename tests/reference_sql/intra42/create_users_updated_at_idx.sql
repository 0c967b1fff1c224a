CREATE INDEX IF NOT EXISTS users_updated_at_idx ON users (updated_at)
