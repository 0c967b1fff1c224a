-- Records the source sent that could not be loaded, with the reason, kept for inspection.
CREATE TABLE IF NOT EXISTS quarantine (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id         text        NOT NULL,
    entity         text        NOT NULL,
    reason         text        NOT NULL,
    record         jsonb       NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now()
)
