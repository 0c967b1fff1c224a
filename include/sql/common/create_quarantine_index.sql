CREATE INDEX IF NOT EXISTS quarantine_run_idx ON quarantine (run_id, entity)
