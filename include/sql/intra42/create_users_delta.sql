-- This run's typed, de-duplicated users, ready to upsert. Unlogged: rebuilt every run.
CREATE UNLOGGED TABLE IF NOT EXISTS users_delta (
    id               bigint PRIMARY KEY,
    login            text        NOT NULL,
    email            text        NOT NULL,
    first_name       text,
    last_name        text,
    pool_month       text,
    pool_year        text,
    location         text,
    wallet           integer,
    correction_point integer,
    updated_at       timestamptz NOT NULL
)
