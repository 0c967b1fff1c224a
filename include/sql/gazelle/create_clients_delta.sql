-- This run's typed, de-duplicated clients, ready to upsert. Unlogged: rebuilt every run.
CREATE UNLOGGED TABLE IF NOT EXISTS clients_delta (LIKE clients INCLUDING DEFAULTS)
