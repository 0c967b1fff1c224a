-- Landing table for COPY: one lookup answer per row, in staged order. Unlogged: rebuilt every run.
CREATE UNLOGGED TABLE IF NOT EXISTS users_raw (
    seq    bigint GENERATED ALWAYS AS IDENTITY,
    record jsonb NOT NULL
)
