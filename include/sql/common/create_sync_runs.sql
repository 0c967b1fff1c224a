-- One row per run, failed ones too: the run report, and the watermark the next incremental run starts from.
CREATE TABLE IF NOT EXISTS sync_runs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dag_id        text        NOT NULL,
    run_id        text        NOT NULL,
    status        text        NOT NULL DEFAULT 'success',
    mode          text,
    dry_run       boolean     NOT NULL,
    started_at    timestamptz,
    finished_at   timestamptz NOT NULL DEFAULT now(),
    watermark     timestamptz,
    report        jsonb,
    errors        jsonb       NOT NULL DEFAULT '[]'
)
