-- Which run's records each <entity>_delta holds (the latest row per entity), with the staging prefixes, stage
-- parameters and row counts of every run's stage: the write step checks the delta is still its own, complete
-- (another run may have staged since, a crash empties unlogged tables) and otherwise rebuilds it from its own
-- staging files. Logged, so it survives what the deltas do not.
CREATE TABLE IF NOT EXISTS staged_deltas (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entity    text        NOT NULL,
    run_id    text        NOT NULL,
    prefixes  text[]      NOT NULL,
    children  text[]      NOT NULL,
    params    jsonb       NOT NULL,  -- what the stage statement was given besides run and entity
    row_counts jsonb      NOT NULL,
    staged_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (entity, run_id)
)
