-- Brings a sync_runs table created before failed runs were recorded to the current shape (a no-op after).
ALTER TABLE sync_runs
    ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'success',
    ADD COLUMN IF NOT EXISTS errors jsonb NOT NULL DEFAULT '[]',
    ALTER COLUMN mode DROP NOT NULL,
    ALTER COLUMN report DROP NOT NULL
